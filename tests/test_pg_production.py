"""Production on PostgreSQL (and SQLite where it applies): nothing can hold the store.

- a deployment of 10,000 TOKEN lines commits in bounded time while another server keeps creating;
- more than 10,000 lines, default names and their look-alikes are refused with a 400 naming the line;
- a command never commits after its time budget, and lock waits are retried within it only;
- any number of servers start at once on a fresh database;
- with the database unreachable (a TCP proxy in front of it, stopped) requests answer 503 with
  Retry-After within 5 s, `/readyz` says why, and service resumes when the database is back;
- a wrong database URL fails at start-up within 5 s naming the real cause.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.conftest import PG_HOST, PG_PORT, PG_USER, TEST_SECRET
from tests.serve_process import free_port, serve
from tests.test_api import Realm, assert_error, create, head, make_realm, url
from tokentrail.api.app import create_app
from tokentrail.domain import ledger as ledger_module
from tokentrail.domain.datafiles import MAX_TOKEN_LINES, is_reserved_name, read_project
from tokentrail.domain.errors import DatafileError, StoreUnavailable
from tokentrail.service import Service
from tokentrail.storage import pgstore

BIG = MAX_TOKEN_LINES


def token_lines(count: int, prefix: str = "t") -> str:
    return "SCHEMA >\n    `a` String\n\n" + "".join(f"TOKEN {prefix}{i} READ\n" for i in range(count))


def deploy(client: TestClient, token: str, files: dict[str, str]) -> Any:
    return client.post(url("/v0/deployments", token), content=json.dumps(files).encode())


# -- a deployment of 10,000 tokens, while another server creates ---------------------------------


@pytest.mark.slow
def test_ten_thousand_token_lines_deploy_while_another_server_keeps_creating(
    service: Service,
    client: TestClient,
    ws: Realm,
    database_url: str,
    tmp_path: Path,
    backend: str,
) -> None:
    other = serve(database_url, tmp_path, TEST_SECRET, tmp_path / "other.log")  # another process
    latencies: list[float] = []
    failures: list[str] = []
    done = threading.Event()

    def keep_creating() -> None:
        with httpx.Client(base_url=other.url, timeout=60) as http:
            n = 0
            while not done.is_set():
                started = time.monotonic()
                answer = http.post(url("/v0/tokens", ws.admin, name=f"side {n}", scope="PIPES:READ:p"))
                latencies.append(time.monotonic() - started)
                if answer.status_code != 200:
                    failures.append(answer.text)
                n += 1
                time.sleep(0.05)

    creator = threading.Thread(target=keep_creating)
    creator.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        answer = deploy(client, ws.admin, {"datasources/big.datasource": token_lines(BIG)})
        took = time.monotonic() - started
        time.sleep(0.3)
    finally:
        done.set()
        creator.join()
        other.stop()
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["deployment"]["token_changes"]) == BIG
    assert took < 30, took
    assert not failures, failures[:3]
    assert latencies and max(latencies) < 15, max(latencies)
    print(
        f"\n[{backend}] deploy of {BIG} TOKEN lines: {took:.1f} s; {len(latencies)} creates on "
        f"another server meanwhile, slowest {max(latencies):.2f} s"
    )
    listed = client.get(url("/v0/tokens", ws.admin)).json()["tokens"]
    assert sum(1 for t in listed if t["name"].startswith("t")) == BIG


def test_more_than_ten_thousand_token_lines_are_refused_naming_the_line(
    client: TestClient, ws: Realm, service: Service
) -> None:
    before = head(service)
    files = {"datasources/a.datasource": token_lines(BIG // 2, "a"), "pipes/b.pipe": token_lines(BIG // 2 + 1, "b")}
    error = assert_error(deploy(client, ws.admin, files), 400)
    assert "pipes/b.pipe:" in error and f"at most {BIG} TOKEN lines" in error, error
    assert head(service) == before


# -- default names and their look-alikes ---------------------------------------------------------


LOOK_ALIKES = [
    "user token",
    "admin token",
    "create datasource token",
    "admin root@x",
    "Admin Token",
    "ADMIN  token",
    "ａｄｍｉｎ ｔｏｋｅｎ",
    "\u0430dmin token",
    "user\u200b token",
    "user\u00a0token",
    "create\u2003datasource token",
    "USER TOKEN\u200d",
    "admin anything at all",
]


@pytest.mark.parametrize("name", LOOK_ALIKES)
def test_reserved_names_are_recognised(name: str) -> None:
    assert is_reserved_name(name)


@pytest.mark.parametrize("name", ["my token", "administrator", "admins", "token admin", "users token", "admin"])
def test_ordinary_names_are_not_reserved(name: str) -> None:
    assert not is_reserved_name(name)


def test_datafile_tokens_cannot_take_default_names_or_look_alikes(
    client: TestClient, ws: Realm, service: Service
) -> None:
    before = head(service)
    for name in LOOK_ALIKES:
        text = "SCHEMA >\n    `a` String\nTOKEN fine READ\nTOKEN " + json.dumps(name, ensure_ascii=False) + " READ\n"
        error = assert_error(deploy(client, ws.admin, {"datasources/a.datasource": text}), 400)
        assert "datasources/a.datasource:4" in error and "reserved" in error, (name, error)
    assert head(service) == before


# -- links out of the project --------------------------------------------------------------------


def test_read_project_refuses_a_link_out_of_the_project(tmp_path: Path) -> None:
    project, outside = tmp_path / "project", tmp_path / "outside"
    (project / "datasources").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (project / "datasources" / "ok.datasource").write_text("TOKEN ok READ\n")
    (project / "datasources" / "inner.datasource").symlink_to(project / "datasources" / "ok.datasource")
    assert set(read_project(project)) == {"datasources/ok.datasource", "datasources/inner.datasource"}
    (project / "pw.datasource").symlink_to(outside / "secret.txt")
    with pytest.raises(DatafileError) as refused:
        read_project(project)
    assert "pw.datasource" in str(refused.value) and "outside the project" in str(refused.value)
    (project / "pw.datasource").unlink()
    (outside / "x.pipe").write_text("TOKEN x READ\n")
    (project / "pipes").symlink_to(outside, target_is_directory=True)  # a linked folder: not entered
    assert "pipes/x.pipe" not in read_project(project)


def test_cli_deploy_refuses_a_link_out_of_the_project(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tokentrail.api.cli import app as cli_app

    project = tmp_path / "project"
    project.mkdir()
    (project / "pw.datasource").symlink_to("/etc/passwd")
    result = CliRunner().invoke(
        cli_app,
        ["deploy", str(project), "--database-url", f"sqlite:///{tmp_path / 'x.db'}"],
        env={"TOKENTRAIL_SECRET_KEY": TEST_SECRET},
    )
    assert result.exit_code != 0
    assert "outside the project folder" in result.output, result.output
    assert "root:" not in result.output


# -- a command's time budget ---------------------------------------------------------------------


def test_a_command_that_outlives_its_budget_writes_nothing(
    service: Service, ws: Realm, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = service.auth.authenticate(ws.admin)
    before = head(service)
    monkeypatch.setattr(ledger_module, "COMMAND_SECONDS", 0.2)

    def slow_current_tokens() -> list[Any]:
        time.sleep(0.3)  # the caller is long gone by the time the plan is ready
        return []

    with pytest.raises(StoreUnavailable, match="nothing was written"):
        service.ledger.deploy(admin, {"pipes/p.pipe": "TOKEN late READ\n"}, slow_current_tokens)
    assert head(service) == before


@pytest.fixture
def pg_url(make_pg_database: Any) -> str:
    return make_pg_database()


def test_lock_waits_are_retried_within_the_budget_only(
    pg_url: str, tmp_path: Path, environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer stuck behind the events table's lock gives up (503) within the command's budget,
    and its change is not committed when the lock is released afterwards."""
    monkeypatch.setattr(pgstore, "LOCK_TIMEOUT", 1)
    monkeypatch.setattr(ledger_module, "COMMAND_SECONDS", 1.5)
    service = Service(pg_url, data=tmp_path, environ=environ)
    try:
        realm = make_realm(service, "main", "owner@example.com")
        client = TestClient(create_app(service), raise_server_exceptions=False)
        before = head(service)
        dbname = pg_url.rsplit("/", 1)[1]
        with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname) as holder:
            holder.execute("LOCK TABLE tokentrail_events IN EXCLUSIVE MODE")
            started = time.monotonic()
            answer = client.post(url("/v0/tokens", realm.admin, name="blocked", scope="PIPES:READ:p"))
            took = time.monotonic() - started
            holder.rollback()
        assert_error(answer, 503)
        assert answer.headers["Retry-After"].isdigit()
        assert 1.0 <= took < 4.0, took
        time.sleep(0.3)
        assert head(service) == before  # nothing committed after the answer
        create(client, realm.admin, "after", "PIPES:READ:p")  # and the store works on
    finally:
        service.close()


def test_every_connection_to_postgresql_carries_the_timeouts(
    pg_url: str, tmp_path: Path, environ: dict[str, str]
) -> None:
    from sqlalchemy import text

    service = Service(pg_url, data=tmp_path, environ=environ)
    try:
        settings = "SELECT current_setting('statement_timeout') AS s, current_setting('idle_in_transaction_session_timeout') AS i"
        with service.ledger.recorder.datastore.get_connection() as conn:  # the event store's pool
            row = conn.execute(settings).fetchone()
            assert (row["s"], row["i"]) == ("20s", "10s"), row
        for engine in (service.read_engine, service.write_engine):
            with engine.connect() as conn:
                assert tuple(conn.execute(text(settings)).one()) == ("20s", "10s")
        assert service.ledger.recorder.datastore.lock_timeout == pgstore.LOCK_TIMEOUT
    finally:
        service.close()


# -- concurrent starts ---------------------------------------------------------------------------


def start_at_once(count: int, url: str, tmp_path: Path, environ: dict[str, str]) -> tuple[list[Service], list[str]]:
    """`count` servers constructed at the same instant; returns those that started and the errors."""
    barrier = threading.Barrier(count)
    services: list[Service] = []
    errors: list[str] = []
    lock = threading.Lock()

    def start() -> None:
        barrier.wait()
        try:
            opened = Service(url, data=tmp_path, environ=environ)
        except BaseException as error:  # noqa: BLE001 - collected and reported by the caller
            with lock:
                errors.append(f"{type(error).__name__}: {error}")
            return
        with lock:
            services.append(opened)

    threads = [threading.Thread(target=start) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return services, errors


def test_many_servers_start_at_once_on_a_fresh_database_and_on_an_existing_one(
    pg_url: str, tmp_path: Path, environ: dict[str, str]
) -> None:
    services, errors = start_at_once(10, pg_url, tmp_path, environ)  # fresh: nothing created yet
    try:
        assert not errors and len(services) == 10, errors
        realm = make_realm(services[0], "main", "owner@example.com")
    finally:
        for s in services:
            s.close()
    services, errors = start_at_once(10, pg_url, tmp_path, environ)  # existing, with a workspace
    try:
        assert not errors and len(services) == 10, errors
        services[-1].sync()
        assert services[-1].queries.workspace_by_name("main").id == realm.id
    finally:
        for s in services:
            s.close()


# -- outages -------------------------------------------------------------------------------------


class Proxy:
    """A TCP proxy in front of PostgreSQL that the test stops (every connection cut, new ones
    refused) and starts again on the same port: an outage, as the servers see it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._sockets: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    p = Proxy((PG_HOST, PG_PORT))
    p.start()
    yield p
    p.stop()


def run_concurrently(count: int, call: Any) -> list[Any]:
    results: list[Any] = [None] * count
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = call(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_an_outage_answers_503_with_retry_after_within_5_s_and_service_resumes(
    pg_url: str,
    proxy: Proxy,
    tmp_path: Path,
    environ: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    through_proxy = pg_url.replace(f":{PG_PORT}/", f":{proxy.port}/")
    service = Service(through_proxy, data=tmp_path, environ=environ)
    client = TestClient(create_app(service), raise_server_exceptions=False)
    try:
        realm = make_realm(service, "main", "owner@example.com")
        create(client, realm.admin, "before", "PIPES:READ:p")
        assert client.get("/readyz").status_code == 200

        proxy.stop()
        caplog.set_level(logging.WARNING, logger="tokentrail.api")
        concurrent = run_concurrently(
            8,
            lambda i: timed(
                lambda: client.post(url("/v0/tokens", realm.admin, name=f"during {i}", scope="PIPES:READ:p"))
            ),
        )
        assert {a.status_code for a, _ in concurrent} == {503}
        slowest = max(took for _, took in concurrent)
        assert slowest < 5, sorted(took for _, took in concurrent)
        print(f"\noutage: 8 concurrent creates answered 503, slowest in {slowest:.2f} s")
        time.sleep(pgstore.DOWN_SECONDS + 0.1)  # a single request after the store was marked down
        answer, took = timed(lambda: client.post(url("/v0/tokens", realm.admin, name="during", scope="PIPES:READ:p")))
        assert_error(answer, 503)
        assert answer.headers["Retry-After"].isdigit() and took < 5, (took, answer.text)
        print(f"outage: create answered 503 in {took:.2f} s")
        answer, took = timed(lambda: client.get(url("/v0/auth", realm.admin)))
        assert answer.status_code in (200, 503) and took < 5, (answer.status_code, took)
        auth_status = answer.status_code
        print(f"outage: /v0/auth answered {answer.status_code} in {took:.2f} s")
        answer, took = timed(lambda: client.get("/readyz"))
        error = assert_error(answer, 503)
        assert "Connection refused" in error and took < 5 and answer.headers["Retry-After"], (error, took)
        print(f"outage: /readyz answered 503 in {took:.2f} s: {error}")
        logged = [r.getMessage() for r in caplog.records if "store unavailable" in r.getMessage()]
        assert any("POST /v0/tokens" in m for m in logged), logged
        assert not any("(no route)" in m for m in logged), logged
        assert auth_status == 200 or any("GET /v0/auth" in m for m in logged), logged

        proxy.start()
        started = time.monotonic()
        while True:
            answer = client.post(url("/v0/tokens", realm.admin, name="after", scope="PIPES:READ:p"))
            if answer.status_code == 200 or time.monotonic() - started > 10:
                break
            time.sleep(0.1)
        assert answer.status_code == 200, answer.text
        print(f"outage: service back {time.monotonic() - started:.2f} s after the database")
        names = {t["name"] for t in client.get(url("/v0/tokens", realm.admin)).json()["tokens"]}
        assert {"before", "after"} <= names and "during" not in names
        assert client.get("/readyz").status_code == 200
    finally:
        client.close()
        service.close()


def test_a_database_that_refuses_connections_answers_503_and_comes_back(
    pg_url: str,
    tmp_path: Path,
    environ: dict[str, str],
) -> None:
    """The other kind of outage: the server up, the database closed to connections."""
    service = Service(pg_url, data=tmp_path, environ=environ)
    client = TestClient(create_app(service), raise_server_exceptions=False)
    dbname = pg_url.rsplit("/", 1)[1]
    admin = psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True)
    try:
        realm = make_realm(service, "main", "owner@example.com")
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
        answer, took = timed(lambda: client.post(url("/v0/tokens", realm.admin, name="during", scope="PIPES:READ:p")))
        assert_error(answer, 503)
        assert took < 5 and answer.headers["Retry-After"], took
        error = assert_error(client.get("/readyz"), 503)
        assert "not currently accepting connections" in error, error
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        started = time.monotonic()
        while (
            answer := client.post(url("/v0/tokens", realm.admin, name="after", scope="PIPES:READ:p"))
        ).status_code != 200:
            assert time.monotonic() - started < 10, answer.text
            time.sleep(0.1)
    finally:
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        admin.close()
        client.close()
        service.close()


def test_a_database_restart_costs_no_request(pg_url: str, tmp_path: Path, environ: dict[str, str]) -> None:
    """Every pooled connection is cut (as by a PostgreSQL restart) between two requests: the next
    ones find their connections broken, drop them and answer normally."""
    service = Service(pg_url, data=tmp_path, environ=environ)
    client = TestClient(create_app(service), raise_server_exceptions=False)
    dbname = pg_url.rsplit("/", 1)[1]
    try:
        realm = make_realm(service, "main", "owner@example.com")
        for i in range(3):
            create(client, realm.admin, f"before {i}", "PIPES:READ:p")
            assert client.get(url("/v0/tokens", realm.admin)).status_code == 200
        with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as admin:
            cut = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (dbname,)
            ).fetchone()[0]
        assert cut >= 3
        for i in range(3):
            create(client, realm.admin, f"after {i}", "PIPES:READ:p")
            assert client.get(url("/v0/tokens", realm.admin)).status_code == 200
            assert client.get(url("/v0/auth", realm.admin)).json()["valid"] is True
    finally:
        client.close()
        service.close()


# -- a wrong URL at start-up ---------------------------------------------------------------------


@pytest.mark.parametrize("case", ["database", "port"])
def test_a_wrong_url_at_start_up_names_the_cause_within_5_s(
    case: str, postgres_available: bool, tmp_path: Path, environ: dict[str, str]
) -> None:
    if case == "database":
        bad, expected = (
            f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/tt_no_such_db",
            'database "tt_no_such_db" does not exist',
        )
    else:
        port = free_port()
        bad, expected = f"postgresql://{PG_USER}@127.0.0.1:{port}/x", "refused"
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as refused:
        Service(bad, data=tmp_path, environ=environ)
    took = time.monotonic() - started
    assert took < 5, took
    assert expected in refused.value.message, refused.value.message
    print(f"\nwrong {case}: refused in {took:.2f} s: {refused.value.message}")


def test_cli_reports_a_wrong_url_in_one_line(postgres_available: bool, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tokentrail.api.cli import app as cli_app

    result = CliRunner().invoke(
        cli_app,
        ["migrate", "--database-url", f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/tt_no_such_db"],
        env={"TOKENTRAIL_SECRET_KEY": TEST_SECRET, "TOKENTRAIL_DATA_DIR": str(tmp_path)},
    )
    assert result.exit_code != 0
    assert 'database "tt_no_such_db" does not exist' in result.output, result.output


def test_route_template_names_plain_starlette_routes(service: Service) -> None:
    from starlette.requests import Request

    from tokentrail.api.app import route_template

    app = create_app(service)
    # FastAPI's routes record themselves in the scope (the outage test checks a logged one);
    # the plain Starlette route of /v0/auth does not, and is matched again.
    for path, template in (("/v0/auth", "/v0/auth"), ("/nowhere", "(no route)")):
        scope = {
            "type": "http",
            "method": "GET",
            "path": path,
            "root_path": "",
            "query_string": b"",
            "headers": [],
            "app": app,
        }
        assert route_template(Request(scope)) == template
