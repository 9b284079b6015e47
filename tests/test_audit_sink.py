"""Audit sinks (TOKENTRAIL_AUDIT_SINK): every audit event delivered to a file, syslog or an HTTP
endpoint, in log order, at least once, from the sink's own tracked position; a sink that is down
delays delivery, shows in /readyz and /metrics, and never slows or fails an API request; with
several servers on one database exactly one delivers."""

from __future__ import annotations

import json
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.api_helpers import make_realm, url
from tests.serve_process import initialise_store, serve
from tokentrail.api.app import create_app
from tokentrail.service import Service
from tokentrail.sinks import AuditSink, parse_target, syslog_message

SECRET = "audit-sink-test-secret-key-0123456789abcdef"


def _service(service: Service, tmp_path: Path, **env: str) -> Service:
    return Service(service.database.url, data=tmp_path, environ={**service.environ, **env})


def _visible_positions(service: Service) -> list[int]:
    with service.read_engine.connect() as conn:
        return [r[0] for r in conn.execute(text("SELECT position FROM tt_audit WHERE visible ORDER BY position"))]


def _wait(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _create(client: TestClient, admin: str, name: str) -> None:
    answer = client.post(url("/v0/tokens", admin, name=name, scope="PIPES:READ:top"))
    assert answer.status_code == 200, answer.text


def _positions(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["position"] for line in path.read_text().splitlines() if line.strip()]


# -- targets ------------------------------------------------------------------------------------------


def test_sink_targets_parse_and_never_keep_credentials() -> None:
    assert parse_target("file:/var/log/tt.ndjson").path == Path("/var/log/tt.ndjson")
    syslog = parse_target("syslog:logs.internal:514")
    assert (syslog.host, syslog.port, syslog.protocol) == ("logs.internal", 514, "udp")
    assert parse_target("syslog+tcp:10.0.0.1:6514").protocol == "tcp"
    http = parse_target("https://user:pa55@siem.example:8443/ingest?key=k1")
    assert http.description == "https://siem.example:8443/ingest"
    assert "pa55" not in http.name and http.name == parse_target("https://siem.example:8443/ingest").name
    for bad in ("file:", "syslog:host", "syslog:host:99999", "ftp://x", "kafka:topic", "https://"):
        with pytest.raises(ValueError, match="TOKENTRAIL_AUDIT_SINK"):
            parse_target(bad)


def test_a_malformed_sink_stops_the_server_at_start(service, tmp_path: Path) -> None:
    broken = _service(service, tmp_path, TOKENTRAIL_AUDIT_SINK="syslog:nowhere")
    try:
        with pytest.raises(ValueError, match="HOST:PORT"):
            create_app(broken)
    finally:
        broken.close()


def test_a_syslog_message_is_rfc_5424() -> None:
    event = {"position": 7, "at": "2026-03-01T10:00:00.000001+00:00", "type": "Refreshed", "token_name": "x"}
    message = syslog_message(event, "host-1", 42).decode()
    header = re.match(r"<110>1 (\S+) host-1 tokentrail 42 Refreshed - (.*)$", message)
    assert header and header.group(1) == event["at"] and json.loads(header.group(2)) == event


# -- a file sink, in process ---------------------------------------------------------------------------


def test_a_file_sink_gets_every_audit_event_in_log_order(service, tmp_path: Path) -> None:
    sink_file = tmp_path / "sink" / "audit.ndjson"
    sinking = _service(service, tmp_path, TOKENTRAIL_AUDIT_SINK=f"file:{sink_file}", TOKENTRAIL_AUDIT_SINK_BATCH="3")
    try:
        realm = make_realm(sinking, "main", "owner@example.com")
        other = make_realm(sinking, "second", "else@example.com")
        with TestClient(create_app(sinking)) as client:
            for i in range(5):
                _create(client, realm.admin, f"t{i}")
                _create(client, other.admin, f"o{i}")
            expected = _visible_positions(sinking)
            _wait(lambda: _positions(sink_file) == expected, what="the sink to catch up")
            ready = client.get("/readyz").json()
            assert ready["audit_sink"]["ok"] and ready["audit_sink"]["behind"] == 0
            assert ready["audit_sink"]["delivering_here"] is True
            metrics = client.get("/metrics").text
            assert re.search(r"^tokentrail_audit_sink_lag_events 0\.0$", metrics, re.M)
            assert re.search(r"^tokentrail_audit_sink_up 1\.0$", metrics, re.M)
        lines = [json.loads(line) for line in sink_file.read_text().splitlines()]
        # The audit event of GET /v0/audit, every workspace's, with its hash.
        assert {e["workspace_id"] for e in lines} >= {realm.id, other.id}
        assert all(set(e) >= {"position", "at", "type", "actor", "request_id", "origin", "hash"} for e in lines)
        assert oct(sink_file.stat().st_mode & 0o777) == "0o600"
    finally:
        sinking.close()


# -- HTTP sinks: failing, then recovering; hanging ------------------------------------------------------


class Collector:
    """An HTTP endpoint that records the NDJSON batches it accepts; `status` is what it answers,
    `delay` how long it waits first."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        self.headers: list[dict[str, str]] = []
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                collector.attempts += 1
                if collector.delay:
                    time.sleep(collector.delay)
                status = collector.status
                if status == 200:
                    collector.received += [json.loads(line) for line in body.splitlines() if line.strip()]
                    collector.headers.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def positions(self) -> list[int]:
        return [e["position"] for e in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    found = Collector()
    yield found
    found.close()


def test_an_http_sink_that_answers_500_for_a_while_gets_everything_once_it_recovers(
    service, tmp_path: Path, collector: Collector
) -> None:
    collector.status = 500
    sinking = _service(
        service,
        tmp_path,
        TOKENTRAIL_AUDIT_SINK=collector.url,
        TOKENTRAIL_AUDIT_SINK_AUTHORIZATION="Bearer sink-secret",
        TOKENTRAIL_AUDIT_SINK_BACKOFF_MAX="0.3",
    )
    try:
        realm = make_realm(sinking, "main", "owner@example.com")
        with TestClient(create_app(sinking)) as client:
            _wait(lambda: collector.attempts >= 2, what="failed attempts")
            started = time.monotonic()
            for i in range(5):
                _create(client, realm.admin, f"during-{i}")
            assert time.monotonic() - started < 5  # the failing sink holds no request up
            ready = client.get("/readyz")
            assert ready.status_code == 200  # still fit for requests
            state = ready.json()["audit_sink"]
            assert state["ok"] is False and "500" in state["error"] and state["failing_since"]
            assert state["behind"] == len(_visible_positions(sinking))
            metrics = client.get("/metrics").text
            assert re.search(r"^tokentrail_audit_sink_up 0\.0$", metrics, re.M)
            failures = re.search(r"^tokentrail_audit_sink_failures_total (\S+)$", metrics, re.M)
            assert failures and float(failures.group(1)) >= 2
            assert collector.received == []

            collector.status = 200  # the endpoint recovers
            _create(client, realm.admin, "after")
            expected = _visible_positions(sinking)
            _wait(lambda: collector.positions() == expected, what="delivery after recovery")
            state = client.get("/readyz").json()["audit_sink"]
            assert state["ok"] is True and state["error"] is None and state["behind"] == 0
        assert all(h.get("Authorization") == "Bearer sink-secret" for h in collector.headers)
        assert all(h.get("Content-Type") == "application/x-ndjson" for h in collector.headers)
    finally:
        sinking.close()


def test_a_sink_that_hangs_never_slows_an_api_request(service, tmp_path: Path, collector: Collector) -> None:
    collector.delay = 3.0
    sinking = _service(service, tmp_path, TOKENTRAIL_AUDIT_SINK=collector.url)
    try:
        realm = make_realm(sinking, "main", "owner@example.com")
        with TestClient(create_app(sinking)) as client:
            _wait(lambda: collector.attempts >= 1, what="a first POST")  # the sink is now stuck in it
            for i in range(3):
                started = time.monotonic()
                _create(client, realm.admin, f"fast-{i}")
                assert client.get(url("/v0/tokens", realm.admin)).status_code == 200
                assert time.monotonic() - started < 1.0
    finally:
        sinking.close()


# -- syslog ---------------------------------------------------------------------------------------------


def test_syslog_sinks_over_udp_and_tcp(service, tmp_path: Path) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(0.2)
    tcp_messages: list[bytes] = []

    class TcpHandler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while True:  # octet counting: "LEN SP MSG"
                length = b""
                while not length.endswith(b" "):
                    byte = self.rfile.read(1)
                    if not byte:
                        return
                    length += byte
                tcp_messages.append(self.rfile.read(int(length)))

    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), TcpHandler)
    tcp.daemon_threads = True
    threading.Thread(target=tcp.serve_forever, daemon=True).start()
    try:
        for spec in (f"syslog:127.0.0.1:{udp.getsockname()[1]}", f"syslog+tcp:127.0.0.1:{tcp.server_address[1]}"):
            sinking = _service(service, tmp_path, TOKENTRAIL_AUDIT_SINK=spec)
            try:
                if not sinking.queries.all_workspaces():
                    make_realm(sinking, "main", "owner@example.com")
                expected = _visible_positions(sinking)
                sink = AuditSink.from_environ(sinking)
                assert sink is not None
                sink.start()
                try:
                    received: list[bytes] = []
                    if spec.startswith("syslog:"):

                        def udp_caught_up() -> bool:
                            try:
                                received.append(udp.recv(65536))
                            except TimeoutError:
                                pass
                            return len(received) >= len(expected)

                        _wait(udp_caught_up, what="UDP messages")
                    else:
                        _wait(lambda: len(tcp_messages) >= len(expected), what="TCP messages")
                        received = list(tcp_messages)
                finally:
                    sink.stop()
                events = [json.loads(re.sub(rb"^<110>1 \S+ \S+ tokentrail \d+ \S+ - ", b"", m)) for m in received]
                assert [e["position"] for e in events] == expected, spec
            finally:
                sinking.close()
    finally:
        udp.close()
        tcp.shutdown()
        tcp.server_close()


# -- several servers: exactly one delivers ------------------------------------------------------------------


def test_with_two_servers_on_one_database_exactly_one_delivers(service, tmp_path: Path, collector: Collector) -> None:
    env = {"TOKENTRAIL_AUDIT_SINK": collector.url, "TOKENTRAIL_AUDIT_SINK_BATCH": "2"}
    first, second = _service(service, tmp_path, **env), _service(service, tmp_path, **env)
    sinks: list[AuditSink] = []
    try:
        realm = make_realm(first, "main", "owner@example.com")
        sinks = [AuditSink.from_environ(first), AuditSink.from_environ(second)]  # type: ignore[list-item]
        for sink in sinks:
            sink.start()
        _wait(lambda: collector.positions() == _visible_positions(first), what="first delivery")
        assert sorted(s.delivering for s in sinks) == [False, True]
        with TestClient(create_app(service)) as client:  # a third server, without the sink
            for i in range(6):
                _create(client, realm.admin, f"both-{i}")
        _wait(lambda: collector.positions() == _visible_positions(first), what="delivery of new events")
        assert len(collector.positions()) == len(set(collector.positions()))  # nothing sent twice

        # The deliverer goes away: the other takes over from the stored position.
        leader = next(s for s in sinks if s.delivering)
        leader.stop()
        standby = next(s for s in sinks if s is not leader)
        with TestClient(create_app(service)) as client:
            _create(client, realm.admin, "after-failover")
        _wait(lambda: collector.positions() == _visible_positions(first), timeout=20, what="failover")
        assert standby.delivering
        assert collector.positions() == sorted(set(collector.positions()))
    finally:
        for sink in sinks:
            sink.stop()
        first.close()
        second.close()


# -- kill -9 mid-stream, restart: everything, in order, duplicates only at the restart point ----------------


def _runs_of(delivered: list[int], expected: list[int]) -> list[tuple[int, int]]:
    """`delivered` as runs of consecutive elements of `expected`: [(start index, end index)]."""
    index = {p: i for i, p in enumerate(expected)}
    runs: list[list[int]] = []
    for position in delivered:
        i = index[position]
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return [(a, b) for a, b in runs]


@pytest.mark.e2e
def test_a_server_killed_mid_stream_resumes_its_sink_with_every_event_in_order(
    database_url: str, tmp_path: Path
) -> None:
    info = initialise_store(database_url, tmp_path, SECRET)
    sink_file = tmp_path / "audit.ndjson"
    env = {"TOKENTRAIL_AUDIT_SINK": f"file:{sink_file}", "TOKENTRAIL_AUDIT_SINK_BATCH": "1"}
    restarts = 2
    written = 0
    for round_ in range(restarts + 1):
        served = serve(database_url, tmp_path, SECRET, tmp_path / f"serve-{round_}.log", env=env)
        try:
            with httpx.Client(base_url=served.url, timeout=10) as http:
                for _ in range(15):
                    answer = http.post(
                        "/v0/tokens", params={"token": info["admin"], "name": f"k{written}", "scope": "PIPES:READ:top"}
                    )
                    assert answer.status_code == 200, answer.text
                    written += 1
            if round_ < restarts:
                # Mid-stream: the sink is still delivering one event per batch.
                _wait(lambda: len(_positions(sink_file)) >= 3, what="some delivery")
                served.kill9()
            else:
                verifier = Service(database_url, data=tmp_path, environ={"TOKENTRAIL_SECRET_KEY": SECRET})
                try:
                    expected = _visible_positions(verifier)
                finally:
                    verifier.close()
                _wait(lambda: _positions(sink_file)[-1:] == expected[-1:], timeout=30, what="the last event")
        finally:
            served.stop()
    delivered = _positions(sink_file)
    assert sorted(set(delivered)) == expected  # every event, nothing else
    runs = _runs_of(delivered, expected)
    print(f"sink after {restarts} kill -9: {len(delivered)} lines for {len(expected)} events, runs {runs}")
    # In order: runs of consecutive events; a new run starts only at a restart, going back at most
    # to where the previous one ended (the batch sent but not yet recorded as sent).
    assert runs[0][0] == 0 and runs[-1][1] == len(expected) - 1
    assert len(runs) <= restarts + 1, runs
    for (_, end), (start, _) in zip(runs, runs[1:]):
        assert start <= end + 1, runs
        assert end - start + 1 <= 1, runs  # batches of one: at most that one event again
