"""Scale-out: two `tokentrail serve` processes on one PostgreSQL database, concurrent writers on both.

PostgreSQL only, by design and not by a skip: scale-out is a PostgreSQL feature. A SQLite store is
one file with one writer at a time and is meant to be served by one process; there is no SQLite
variant of this module to skip.

- Names stay unique: writers on both servers race to create the same names; each name is won by
  exactly one create, every other create of it is refused (`already exists`), and the winner's
  token is the one listed.
- No lost updates: writers on both servers change one token at once (descriptions through one,
  scope replacements through the other, refreshes through both). Every acknowledged change is an
  event of that token, the final state is the last acknowledged change of each field, and the
  newest refreshed value is the one accepted. A `409` (retries exhausted) is refused, not applied.
- A write through one server is visible through the other within a bounded time, measured here
  (create, refresh and delete, both directions) and asserted against a generous bound.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER, TEST_SECRET, _pg_admin
from tests.serve_process import Served, initialise_store, serve, server_env
from tokentrail.domain.model import Token
from tokentrail.projections.rebuild import rebuild
from tokentrail.service import Service
from tokentrail.verify import verify_chain

pytestmark = pytest.mark.e2e

NAMES = 16
RACERS_PER_SERVER = 2
UPDATES = 20
VISIBILITY_BOUND = 5.0  # seconds; generous: each read catches its server up to the log's head


class Pair:
    def __init__(self, url: str, data: Path, a: Served, b: Served, admin: str, workspace_id: str) -> None:
        self.database_url, self.data, self.a, self.b = url, data, a, b
        self.admin, self.workspace_id = admin, workspace_id

    def client(self, served: Served, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {token or self.admin}"}, timeout=30)


@pytest.fixture(scope="module")
def pair(postgres_available: bool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """One throwaway PostgreSQL database and two servers on it, shared by the module's tests
    (each works on names and tokens of its own)."""
    database = f"tt_test_{uuid.uuid4().hex[:16]}"
    with _pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"
    data = tmp_path_factory.mktemp("scale-out")
    try:
        store = initialise_store(url, data, TEST_SECRET)
        a = serve(url, data, TEST_SECRET, data / "serve-a.log")
        try:
            b = serve(url, data, TEST_SECRET, data / "serve-b.log")
            try:
                yield Pair(url, data, a, b, store["admin"], store["workspace_id"])
            finally:
                b.stop()
        finally:
            a.stop()
    finally:
        with _pg_admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _run(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)


def _check_store(pair: Pair) -> Service:
    service = Service(pair.database_url, data=pair.data, environ=server_env(pair.database_url, pair.data, TEST_SECRET))
    service.sync()
    report = rebuild(service, verify=True)
    assert report.ok, report.differences
    chain = verify_chain(service)
    assert chain.ok, chain.reason
    return service


def test_names_stay_unique_across_two_servers_postgres(pair: Pair) -> None:
    names = [f"shared {i}" for i in range(NAMES)]
    wins: dict[str, list[tuple[str, str, str]]] = {n: [] for n in names}  # name -> [(server, id, scope)]
    refusals: list[tuple[str, int, str]] = []
    unexpected: list[str] = []
    lock = threading.Lock()

    def racer(served: Served, label: str) -> None:
        order = names[:]
        random.Random(label).shuffle(order)
        with pair.client(served) as http:
            for name in order:
                scope = f"DATASOURCES:READ:{label}_{name.split()[1]}"
                r = http.post("/v0/tokens", params={"name": name, "scope": scope})
                with lock:
                    if r.status_code == 200:
                        wins[name].append((label, r.json()["id"], scope))
                    elif r.status_code == 400 and "already exists" in r.json().get("error", ""):
                        refusals.append((name, r.status_code, label))
                    else:
                        unexpected.append(f"{label} {name}: {r.status_code} {r.text[:200]}")

    _run(
        [
            threading.Thread(target=racer, args=(served, f"{tag}{i}"))
            for tag, served in (("a", pair.a), ("b", pair.b))
            for i in range(RACERS_PER_SERVER)
        ]
    )
    assert not unexpected, unexpected
    racers = 2 * RACERS_PER_SERVER
    for name, won in wins.items():
        assert len(won) == 1, f"{name!r} was created {len(won)} times: {won}"
    assert len(refusals) == NAMES * (racers - 1)
    servers_won = {won[0][0][0] for won in wins.values()}
    print(
        f"\n{NAMES} names raced by {racers} writers on 2 servers: {NAMES} created "
        f"(won through {sorted(servers_won)}), {len(refusals)} refused as taken"
    )

    for served in (pair.a, pair.b):
        with pair.client(served) as http:
            listed = http.get("/v0/tokens").json()["tokens"]
        live = [t for t in listed if t["name"] in wins]
        assert sorted(t["name"] for t in live) == sorted(names)
        for token in live:
            ((_, token_id, scope),) = wins[token["name"]]
            assert token["id"] == token_id
            assert [f"{s['type']}:{s['resource']}:{s.get('filter', '')}".rstrip(":") for s in token["scopes"]] == [
                scope
            ]
    _check_store(pair).close()


def test_no_lost_updates_on_one_token_from_two_servers_postgres(pair: Pair) -> None:
    with pair.client(pair.a) as http:
        r = http.post("/v0/tokens", params={"name": "contended", "scope": "DATASOURCES:READ:ds_start"})
        assert r.status_code == 200, r.text
        token_id = r.json()["id"]

    acked: dict[str, list[Any]] = {"description": [], "scope": [], "refresh": []}
    conflicts: dict[str, int] = {"description": 0, "scope": 0, "refresh": 0}
    unexpected: list[str] = []
    lock = threading.Lock()

    def writer(served: Served, field: str) -> None:
        with pair.client(served) as http:
            for i in range(UPDATES):
                while True:  # a 409 (retries exhausted) applied nothing: send the same change again
                    if field == "description":
                        value: Any = f"described {i} via {served.url}"
                        r = http.put(f"/v0/tokens/{token_id}", params={"description": value})
                    elif field == "scope":
                        value = f"DATASOURCES:READ:ds_{i}"
                        r = http.put(f"/v0/tokens/{token_id}", params={"scope": value})
                    else:
                        r = http.post(f"/v0/tokens/{token_id}/refresh")
                        value = r.json().get("token") if r.status_code == 200 else None
                    with lock:
                        if r.status_code == 200:
                            acked[field].append(value)
                            break
                        if r.status_code == 409:
                            conflicts[field] += 1
                            continue
                        unexpected.append(f"{field}: {r.status_code} {r.text[:200]}")
                        return

    _run(
        [
            threading.Thread(target=writer, args=(pair.a, "description")),
            threading.Thread(target=writer, args=(pair.b, "scope")),
            threading.Thread(target=writer, args=(pair.a, "refresh")),
            threading.Thread(target=writer, args=(pair.b, "refresh")),
        ]
    )
    assert not unexpected, unexpected
    assert len(acked["description"]) == len(acked["scope"]) == UPDATES
    assert len(acked["refresh"]) == 2 * UPDATES

    service = _check_store(pair)
    try:
        events = list(service.ledger.repository.event_store.get(uuid.UUID(token_id)))
        described = [e.description for e in events if isinstance(e, Token.DescriptionChanged)]
        added = [e.scope for e in events if isinstance(e, Token.ScopeAdded)]
        refreshed = [e.generation for e in events if isinstance(e, Token.Refreshed)]
        # Every acknowledged change is one event, in the order each writer was answered.
        assert described == acked["description"]
        assert added == [f"DATASOURCES:READ:ds_{i}" for i in range(UPDATES)]
        # Every acknowledged refresh is one Refreshed event. Its answer carries the token's value as
        # the read models hold it when answering: its own generation, or a newer one when a
        # concurrent refresh through the other server committed in between (never an older one).
        assert len(refreshed) == len(acked["refresh"])
        answered = [service.signer.read(v).generation for v in acked["refresh"]]
        assert set(answered) <= set(refreshed)
        own = sum(1 for g in answered if answered.count(g) == 1)
        token = service.ledger.repository.get(uuid.UUID(token_id))
        assert token.description == acked["description"][-1]
        assert token.scopes == [acked["scope"][-1]]
        newest = next(v for v in acked["refresh"] if service.signer.read(v).generation == refreshed[-1])
    finally:
        service.close()
    for served in (pair.a, pair.b):
        with pair.client(served) as http:
            got = http.get(f"/v0/tokens/{token_id}").json()
            assert got["description"] == acked["description"][-1]
            assert got["token"] == newest
        with pair.client(served, newest) as http:
            assert http.get(f"/v0/tokens/{token_id}").status_code == 200
        for stale in acked["refresh"]:
            if stale != newest:
                with pair.client(served, stale) as http:
                    assert http.get(f"/v0/tokens/{token_id}").status_code == 403
                break
    print(
        f"\none token, 4 writers on 2 servers: {UPDATES} descriptions, {UPDATES} scope sets, "
        f"{2 * UPDATES} refreshes acknowledged and all in the log ({own} answered with their own value, "
        f"the others with a concurrent newer one); 409s retried: {conflicts}"
    )


def test_a_write_on_one_server_is_visible_on_the_other_postgres(pair: Pair) -> None:
    """Lag: from the writer's 2xx answer to the first answer of the other server showing the change
    (clients are opened once, so the figure is the servers' and not the client's set-up)."""
    lags: dict[str, list[float]] = {"create": [], "refresh": [], "delete": []}
    clients = {id(pair.a): pair.client(pair.a), id(pair.b): pair.client(pair.b)}

    def until_seen(served: Served, check: Callable[[httpx.Client], bool]) -> float:
        started = time.monotonic()
        while not check(clients[id(served)]):
            assert time.monotonic() - started < VISIBILITY_BOUND * 2, "never became visible"
            time.sleep(0.001)
        return time.monotonic() - started

    try:
        for i in range(10):
            writer, reader = (pair.a, pair.b) if i % 2 == 0 else (pair.b, pair.a)
            http = clients[id(writer)]
            created = http.post("/v0/tokens", params={"name": f"seen {i}", "scope": "PIPES:READ:p"})
            assert created.status_code == 200, created.text
            token_id = created.json()["id"]
            lags["create"].append(until_seen(reader, lambda h: h.get(f"/v0/tokens/{token_id}").status_code == 200))
            refreshed = http.post(f"/v0/tokens/{token_id}/refresh")
            assert refreshed.status_code == 200
            value = refreshed.json()["token"]
            lags["refresh"].append(
                until_seen(
                    reader,
                    lambda h: (
                        h.get(f"/v0/tokens/{token_id}", headers={"Authorization": f"Bearer {value}"}).status_code == 200
                    ),
                )
            )
            assert http.delete(f"/v0/tokens/{token_id}").status_code == 200
            lags["delete"].append(until_seen(reader, lambda h: h.get(f"/v0/tokens/{token_id}").status_code == 404))
    finally:
        for client in clients.values():
            client.close()

    worst = max(max(v) for v in lags.values())
    summary = ", ".join(
        f"{k} p50 {statistics.median(v) * 1000:.1f} ms max {max(v) * 1000:.1f} ms" for k, v in lags.items()
    )
    print(f"\nvisibility across servers (10 of each, both directions; bound {VISIBILITY_BOUND:.0f} s): {summary}")
    assert worst < VISIBILITY_BOUND, summary
