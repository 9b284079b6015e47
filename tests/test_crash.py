"""Crash safety: `kill -9` of a serving process in the middle of a burst of writes, on both backends.

Client threads create, refresh and delete tokens through a real `tokentrail serve` process; while
they are at it the server gets SIGKILL (no shutdown handler, no rollback but the database's own).
After a restart on the same store:

- every change answered 2xx before the kill is there (creates with their name and scopes, deletes,
  every acknowledged refresh's generation in the token's history, and the last acknowledged value
  accepted when no later change of that token was in flight);
- nothing is half applied: in the event store every live custom token holds its name index and
  every claimed name index points to a live token of that name (they are saved in one transaction);
- names are unique; the read models equal a rebuild from the log; the hash chain verifies.

Each client thread runs one request at a time, so at the kill at most one of its changes is in
flight (it may or may not have committed): the checks allow exactly that and nothing more.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TEST_SECRET
from tests.serve_process import initialise_store, serve, server_env
from tokentrail.domain.model import Token, TokenName, token_name_id
from tokentrail.projections.rebuild import rebuild
from tokentrail.service import Service
from tokentrail.verify import verify_chain

pytestmark = pytest.mark.e2e

THREADS = 6
OWNED = 3  # tokens each thread creates before the burst, to refresh and delete during it
ACKS_BEFORE_KILL = 60
MAX_BURST_SECONDS = 10.0  # on a busy machine, kill after this long with fewer acknowledgements
MIN_ACKS = 2 * THREADS


@dataclass
class Pending:
    op: str
    token_id: str | None  # None for a create, whose id is unknown until it answers
    name: str | None = None


@dataclass
class ClientLog:
    """What one client thread saw: only 2xx answers count as acknowledged."""

    created: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {"name", "scopes"}
    refreshed: dict[str, list[str]] = field(default_factory=dict)  # id -> acknowledged values, in order
    deleted: set[str] = field(default_factory=set)
    pending: Pending | None = None
    acks: int = 0
    failures: list[str] = field(default_factory=list)  # non-2xx answers: none are expected


def _client(
    base: str,
    admin: str,
    index: int,
    owned: list[dict[str, Any]],
    log: ClientLog,
    acks: list[int],
    lock: threading.Lock,
) -> None:
    rng = random.Random(index)
    live = [t["id"] for t in owned]
    for t in owned:
        log.created[t["id"]] = {"name": t["name"], "scopes": t["scopes"]}
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=20)
    n = 0
    try:
        while True:
            n += 1
            kind = ("create", "refresh", "delete")[n % 3]
            if kind != "create" and not live:
                kind = "create"
            if kind == "create":
                name = f"crash {index}-{n}"
                scope = f"DATASOURCES:READ:ds_{index}_{n}"
                log.pending = Pending("create", None, name)
                response = http.post("/v0/tokens", params={"name": name, "scope": scope})
                if response.status_code == 200:
                    body = response.json()
                    log.created[body["id"]] = {"name": name, "scopes": [scope]}
                    live.append(body["id"])
            elif kind == "refresh":
                token_id = rng.choice(live)
                log.pending = Pending("refresh", token_id)
                response = http.post(f"/v0/tokens/{token_id}/refresh")
                if response.status_code == 200:
                    log.refreshed.setdefault(token_id, []).append(response.json()["token"])
            else:
                token_id = live.pop(rng.randrange(len(live)))
                log.pending = Pending("delete", token_id)
                response = http.delete(f"/v0/tokens/{token_id}")
                if response.status_code == 200:
                    log.deleted.add(token_id)
            if response.status_code != 200:
                log.failures.append(f"{kind}: {response.status_code} {response.text[:200]}")
                return
            log.pending = None
            log.acks += 1
            with lock:
                acks[0] += 1
    except httpx.TransportError:
        return  # the server died under us: `pending` says what may or may not have committed
    finally:
        http.close()


def _store_aggregates(service: Service) -> tuple[list[Token], list[TokenName], int]:
    """Every Token and TokenName in the event store, read through the write side's repository."""
    recorder = service.ledger.recorder
    ids: dict[str, set] = {"tokentrail.token.Created.v1": set(), "tokentrail.token_name.Created.v1": set()}
    position = count = 0
    while True:
        notes = recorder.select_notifications(start=position + 1, limit=1000)
        if not notes:
            break
        count += len(notes)
        for note in notes:
            if note.topic in ids:
                ids[note.topic].add(note.originator_id)
        position = notes[-1].id
    get = service.ledger.repository.get
    return (
        [get(i) for i in ids["tokentrail.token.Created.v1"]],
        [get(i) for i in ids["tokentrail.token_name.Created.v1"]],
        count,
    )


def test_kill_9_mid_burst_loses_no_acknowledged_change(database_url: str, backend: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store = initialise_store(database_url, data, TEST_SECRET)
    admin, workspace_id = store["admin"], store["workspace_id"]
    log_file = tmp_path / "serve.log"
    served = serve(database_url, data, TEST_SECRET, log_file)
    try:
        owned: list[list[dict[str, Any]]] = []
        with httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {admin}"}, timeout=20) as http:
            for i in range(THREADS):
                mine = []
                for j in range(OWNED):
                    scope = f"PIPES:READ:pipe_{i}_{j}"
                    r = http.post("/v0/tokens", params={"name": f"owned {i}-{j}", "scope": scope})
                    assert r.status_code == 200, r.text
                    mine.append({"id": r.json()["id"], "name": f"owned {i}-{j}", "scopes": [scope]})
                owned.append(mine)

        logs = [ClientLog() for _ in range(THREADS)]
        acks, lock = [0], threading.Lock()
        threads = [
            threading.Thread(target=_client, args=(served.url, admin, i, owned[i], logs[i], acks, lock), daemon=True)
            for i in range(THREADS)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        while acks[0] < ACKS_BEFORE_KILL and time.monotonic() - started < MAX_BURST_SECONDS:
            assert not any(log.failures for log in logs), [log.failures for log in logs]
            time.sleep(0.01)
        served.kill9()
        killed_at = acks[0]
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)
    finally:
        served.stop()

    failures = [f for log in logs for f in log.failures]
    assert not failures, f"non-2xx answers during the burst: {failures}"
    assert killed_at >= MIN_ACKS, f"only {killed_at} changes acknowledged in {MAX_BURST_SECONDS} s"
    in_flight = [log.pending for log in logs if log.pending is not None]
    assert in_flight, "the kill landed while no request was in flight: it proved nothing"
    print(
        f"\n{backend}: killed after {killed_at} acknowledged changes, {len(in_flight)} in flight: "
        f"{sorted(p.op for p in in_flight)}"
    )

    # -- restart on the same store and check every acknowledged change through the API ----------
    restarted = serve(database_url, data, TEST_SECRET, log_file)
    try:
        with httpx.Client(base_url=restarted.url, headers={"Authorization": f"Bearer {admin}"}, timeout=20) as http:
            listed = http.get("/v0/tokens")
            assert listed.status_code == 200, listed.text
            tokens = {t["id"]: t for t in listed.json()["tokens"]}
            names = [t["name"] for t in tokens.values()]
            assert len(names) == len(set(names)), "two live tokens share a name"
            for log in logs:
                uncertain = log.pending.token_id if log.pending else None
                for token_id, created in log.created.items():
                    if token_id in log.deleted:
                        assert token_id not in tokens, f"acknowledged delete of {created['name']} undone"
                        assert http.get(f"/v0/tokens/{token_id}").status_code == 404
                    elif token_id == uncertain and log.pending.op == "delete":
                        pass  # its delete was in flight: either state is right
                    else:
                        assert token_id in tokens, f"acknowledged create of {created['name']} lost"
                        got = tokens[token_id]
                        assert got["name"] == created["name"]
                        scopes = [f"{s['type']}:{s['resource']}" for s in got["scopes"]]
                        assert scopes == created["scopes"]
                for token_id, values in log.refreshed.items():
                    if token_id in log.deleted or token_id == uncertain:
                        continue  # a later change of this token may have committed
                    answer = http.get(f"/v0/tokens/{token_id}", headers={"Authorization": f"Bearer {values[-1]}"})
                    assert answer.status_code == 200, f"the last acknowledged refresh of {token_id} is lost"
                    assert answer.json()["token"] == values[-1]
            # The in-flight creates: committed or not, never half (checked in the store below).
    finally:
        restarted.stop()

    # -- the store: nothing half applied; read models equal a rebuild; the chain verifies --------
    service = Service(database_url, data=data, environ=server_env(database_url, data, TEST_SECRET))
    try:
        service.sync()
        stored_tokens, indexes, events = _store_aggregates(service)
        by_id = {str(t.id): t for t in stored_tokens}
        for token in stored_tokens:
            index = service.ledger.repository.get(token_name_id(token.workspace_id, token.name))
            if token.deleted:
                assert index.token_id != str(token.id), f"deleted {token.name!r} still holds its name"
            else:
                assert index.token_id == str(token.id), f"live {token.name!r} does not hold its name"
        for index in indexes:
            if index.token_id is not None:
                token = by_id[index.token_id]
                assert not token.deleted and token.name == index.name, f"name index {index.name!r} is stale"
        for log in logs:
            for token_id, values in log.refreshed.items():
                generations = {
                    e.generation
                    for e in service.ledger.repository.event_store.get(by_id[token_id].id)
                    if isinstance(e, Token.Refreshed)
                }
                for value in values:
                    claims = service.signer.read(value)
                    assert claims is not None and claims.generation in generations, "acknowledged refresh lost"
            for token_id in log.deleted:
                assert by_id[token_id].deleted
            pending = log.pending
            if pending is not None and pending.op == "create":
                same = [t for t in stored_tokens if t.name == pending.name and t.workspace_id == workspace_id]
                assert len(same) <= 1

        report = rebuild(service, verify=True)
        assert report.ok, report.differences
        chain = verify_chain(service)
        assert chain.ok, chain.reason
        assert chain.events_checked == events
        print(
            f"{backend}: {len(stored_tokens)} tokens in the store, rebuild equal ({sum(report.rows.values())} rows), "
            f"chain verified over {chain.events_checked} events"
        )
    finally:
        service.close()
