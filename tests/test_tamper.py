"""Tamper evidence: an edited, deleted, inserted or reordered stored event is detected and
the first bad position named, by `verify_chain`, by `GET /v0/audit/verify`, and by a signed
checkpoint taken before the corruption. The corruptions are made with SQL on eventsourcing's own
table (`stored_events` on SQLite, `<app name>_events` on PostgreSQL), as an intruder with database
access would make them, on both backends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tokentrail.api.app import create_app
from tokentrail.domain.chain import GENESIS, event_bytes, next_hash
from tokentrail.domain.policy import Caller
from tokentrail.service import Service
from tokentrail.verify import make_checkpoint, verify_chain, verify_checkpoint

# -- a small ledger and raw access to its event table ---------------------------------------------


class Store:
    """The event store's table, addressed by log position, through plain SQL."""

    def __init__(self, service: Service) -> None:
        self.service = service
        recorder = service.ledger.recorder
        if service.backend == "postgres":
            self.table = f'"{recorder.datastore.schema}"."{recorder.events_table_name}"'
            self.position = "notification_id"
        else:
            self.table = f'"{recorder.events_table_name}"'
            self.position = "rowid"

    def run(self, sql: str, **params: Any) -> Any:
        with self.service.write_engine.begin() as conn:
            return conn.execute(text(sql.format(t=self.table, p=self.position)), params)

    def row(self, position: int) -> dict[str, Any]:
        result = self.run("SELECT originator_id, originator_version, topic, state FROM {t} WHERE {p} = :n", n=position)
        row = result.mappings().one()
        return dict(row)

    def head(self) -> int:
        return self.run("SELECT MAX({p}) FROM {t}").scalar_one()

    def put(self, position: int, row: dict[str, Any]) -> None:
        self.run(
            "INSERT INTO {t} ({p}, originator_id, originator_version, topic, state) VALUES (:n, :o, :v, :topic, :s)",
            n=position,
            o=row["originator_id"],
            v=row["originator_version"],
            topic=row["topic"],
            s=row["state"],
        )

    def delete(self, position: int) -> None:
        self.run("DELETE FROM {t} WHERE {p} = :n", n=position)

    def shift(self, start: int, by: int) -> None:
        """Renumber every event from `start` on by `by`, through negative ids to dodge uniqueness."""
        self.run("UPDATE {t} SET {p} = -({p} + :by) WHERE {p} >= :start", start=start, by=by)
        self.run("UPDATE {t} SET {p} = -{p} WHERE {p} < 0")


def ledger_with_history(service: Service, admin: Caller) -> int:
    """Tokens created, re-scoped, renamed, refreshed and deleted; returns the log's head."""
    ledger = service.ledger
    ids = [
        str(service.command(lambda i=i: ledger.create_token(admin, f"t{i}", ["PIPES:READ:top"])).token.id)
        for i in range(4)
    ]
    service.command(lambda: ledger.update_token(admin, ids[0], add=["DATASOURCES:READ:events"]))
    service.command(lambda: ledger.update_token(admin, ids[1], name="renamed"))
    service.command(lambda: ledger.refresh_token(admin, ids[2], grace_seconds=30))
    service.command(lambda: ledger.delete_token(admin, ids[3]))
    return service.ledger.recorder.max_notification_id()


@pytest.fixture
def admin_value(service: Service, workspace) -> str:
    setup, _ = workspace
    admin = setup.tokens[0]
    return service.signer.make(admin.workspace_id, str(admin.id), admin.generation)


@pytest.fixture
def ledger(service: Service, workspace, admin_value) -> Iterator[tuple[Service, Store, int, dict[str, Any]]]:
    """(service, store, head, the operator's checkpoint of the whole store before any corruption).

    (`GET /v0/audit/checkpoint` signs a workspace's own prefix of the chain: tests/test_security.py.)"""
    _, admin = workspace
    head = ledger_with_history(service, admin)
    checkpoint = make_checkpoint(service, service.checkpoint_key())
    assert checkpoint["position"] == head
    yield service, Store(service), head, checkpoint


def assert_detected(service: Service, checkpoint: dict[str, Any], first_bad: int, admin_value: str) -> None:
    """verify_chain, the API and the earlier checkpoint all see the corruption at `first_bad`."""
    report = verify_chain(service)
    assert not report.ok and report.first_bad_position == first_bad, report
    assert report.events_checked == first_bad - 1 and report.reason
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        response = client.get(f"/v0/audit/verify?token={admin_value}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is False and body["first_bad_position"] == first_bad, body
    checked = verify_checkpoint(service, checkpoint, service.checkpoint_key().public_key())
    assert not checked.ok and checked.reason, checked
    assert checked.chain is not None and checked.chain.first_bad_position == first_bad, checked


def middle(head: int) -> int:
    return head // 2


# -- an untouched ledger ----------------------------------------------------------------------------


def test_an_untouched_ledger_verifies_through_the_function_the_api_and_a_checkpoint(ledger, admin_value) -> None:
    service, _, head, checkpoint = ledger
    report = verify_chain(service)
    assert report.ok and report.events_checked == head and report.first_bad_position is None
    with TestClient(create_app(service)) as client:
        body = client.get(f"/v0/audit/verify?token={admin_value}").json()
        served = client.get(f"/v0/audit/checkpoint?token={admin_value}").json()
    # The API answers for the caller's workspace: its own events, up to its own last one.
    assert body["ok"] is True and body["first_bad_position"] is None and 0 < body["events_checked"] <= head
    assert served["position"] <= head and served["head"] == body["head"]
    made = make_checkpoint(service, service.checkpoint_key())
    for taken in (checkpoint, served, made):
        assert verify_checkpoint(service, taken, service.checkpoint_key().public_key()).ok
    for taken in (checkpoint, made):
        assert taken["position"] == head and taken["head"] == report.head


def test_the_recorded_hashes_are_the_chain_over_the_stored_rows(ledger) -> None:
    """The fast walk in verify.py hashes exactly chain.event_bytes of each stored row."""
    service, store, head, checkpoint = ledger
    digest = GENESIS
    for position in range(1, head + 1):
        row = store.row(position)
        digest = next_hash(
            digest, event_bytes(position, row["originator_id"], row["originator_version"], row["topic"], row["state"])
        )
    assert digest == checkpoint["head"] == verify_chain(service).head


def test_the_event_table_is_the_one_the_ledger_writes(ledger) -> None:
    service, store, head, _ = ledger
    expected = "stored_events" if service.backend == "sqlite" else "tokentrail_events"
    assert service.ledger.recorder.events_table_name == expected
    assert store.head() == head


# -- edited --------------------------------------------------------------------------------------


def test_an_edited_event_is_detected_at_its_position(ledger, admin_value) -> None:
    service, store, head, checkpoint = ledger
    k = middle(head)
    row = store.row(k)
    state = bytes(row["state"])
    forged = state.replace(b"top", b"pot") if b"top" in state else state[:-1] + bytes([state[-1] ^ 1])
    store.run("UPDATE {t} SET state = :s WHERE {p} = :n", s=forged, n=k)
    assert_detected(service, checkpoint, k, admin_value)


def test_an_edit_to_the_first_and_to_the_last_event_is_detected(ledger, admin_value) -> None:
    service, store, head, checkpoint = ledger
    for k in (head, 1):  # the last first, so that the first bad position then moves to 1
        row = store.row(k)
        store.run("UPDATE {t} SET state = :s WHERE {p} = :n", s=bytes(row["state"]) + b" ", n=k)
        assert_detected(service, checkpoint, k, admin_value)


# -- deleted -------------------------------------------------------------------------------------


def test_a_deleted_event_is_detected_at_its_position(ledger, admin_value) -> None:
    service, store, head, checkpoint = ledger
    k = middle(head)
    store.delete(k)
    assert_detected(service, checkpoint, k, admin_value)


def test_a_deleted_event_with_later_ones_renumbered_is_detected(ledger, admin_value) -> None:
    service, store, head, checkpoint = ledger
    k = middle(head)
    store.delete(k)
    store.shift(k + 1, -1)  # positions stay contiguous: 1..head-1
    assert store.head() == head - 1
    assert_detected(service, checkpoint, k, admin_value)


def test_the_last_event_deleted_is_detected(ledger, admin_value) -> None:
    service, store, head, checkpoint = ledger
    store.delete(head)
    assert_detected(service, checkpoint, head, admin_value)


def test_a_tail_deleted_with_its_trail_rows_is_caught_only_by_a_checkpoint(ledger) -> None:
    """Deleting the last events and their audit rows, and winding the tracking row back, leaves a
    shorter chain that is consistent in itself: only a checkpoint taken earlier can tell."""
    service, store, head, checkpoint = ledger
    for position in (head, head - 1):
        store.delete(position)
    earlier = verify_chain(service, until=head - 2).head
    with service.write_engine.begin() as conn:
        conn.execute(text("DELETE FROM tt_audit WHERE position > :n"), {"n": head - 2})
        conn.execute(text("UPDATE tt_tracking SET position = :n, head = :h"), {"n": head - 2, "h": earlier})
    assert verify_chain(service).ok  # consistent in itself
    checked = verify_checkpoint(service, checkpoint, service.checkpoint_key().public_key())
    assert not checked.ok and checked.chain is not None
    assert checked.chain.first_bad_position == head - 1, checked
    assert "missing" in (checked.reason or ""), checked


# -- inserted ------------------------------------------------------------------------------------


def forged_row(store: Store, like: int) -> dict[str, Any]:
    """A copy of the event at `like` under a fresh version of its aggregate: a plausible forgery."""
    row = store.row(like)
    return {**row, "originator_version": row["originator_version"] + 1000}


def test_an_event_inserted_into_a_gap_is_detected_at_its_position(ledger) -> None:
    """Positions may have gaps (PostgreSQL's sequence skips on rollback): a forged row in one."""
    service, store, head, _ = ledger
    k = middle(head)
    store.shift(k, 1)  # an intruder's view of a gap at k; then the trail is re-recorded to match
    with service.write_engine.begin() as conn:
        conn.execute(text("UPDATE tt_audit SET position = -(position + 1) WHERE position >= :k"), {"k": k})
        conn.execute(text("UPDATE tt_audit SET position = -position WHERE position < 0"))
        conn.execute(text("UPDATE tt_audit_resources SET position = -(position + 1) WHERE position >= :k"), {"k": k})
        conn.execute(text("UPDATE tt_audit_resources SET position = -position WHERE position < 0"))
        conn.execute(text("UPDATE tt_tracking SET position = position + 1"))
    _rechain(service)  # the trail now matches a store with a gap at k
    clean = verify_chain(service)
    assert clean.ok and clean.events_checked == head
    gapped = make_checkpoint(service, service.checkpoint_key())
    store.put(k, forged_row(store, 1))
    report = verify_chain(service)
    assert not report.ok and report.first_bad_position == k and "inserted" in (report.reason or ""), report
    checked = verify_checkpoint(service, gapped, service.checkpoint_key().public_key())
    assert not checked.ok and checked.chain is not None and checked.chain.first_bad_position == k


def test_an_inserted_event_with_later_ones_renumbered_is_detected(ledger, admin_value) -> None:
    """The hard case: positions stay contiguous, every later event moves up by one."""
    service, store, head, checkpoint = ledger
    k = middle(head)
    forged = forged_row(store, 2)
    store.shift(k, 1)
    store.put(k, forged)
    assert store.head() == head + 1
    assert_detected(service, checkpoint, k, admin_value)


# -- reordered -----------------------------------------------------------------------------------


def test_two_events_swapped_are_detected_at_the_first_of_them(ledger, admin_value) -> None:
    service, store, head, checkpoint = ledger
    i, j = middle(head), middle(head) + 2
    a, b = store.row(i), store.row(j)
    store.delete(i)
    store.delete(j)
    store.put(i, b)
    store.put(j, a)
    assert_detected(service, checkpoint, i, admin_value)


def test_two_adjacent_events_swapped_are_detected(ledger, admin_value) -> None:
    service, store, head, checkpoint = ledger
    i = head - 1
    a, b = store.row(i), store.row(i + 1)
    store.delete(i)
    store.delete(i + 1)
    store.put(i, b)
    store.put(i + 1, a)
    assert_detected(service, checkpoint, i, admin_value)


# -- the trail rewritten too ---------------------------------------------------------------------


def _rechain(service: Service) -> None:
    """What an intruder with database access could do: recompute every recorded hash and the head."""
    store = Store(service)
    digest = GENESIS
    with service.write_engine.begin() as conn:
        positions = [p for (p,) in conn.execute(text("SELECT position FROM tt_audit ORDER BY position"))]
    for position in positions:
        row = store.row(position)
        digest = next_hash(
            digest, event_bytes(position, row["originator_id"], row["originator_version"], row["topic"], row["state"])
        )
        with service.write_engine.begin() as conn:
            conn.execute(text("UPDATE tt_audit SET hash = :h WHERE position = :p"), {"h": digest, "p": position})
    with service.write_engine.begin() as conn:
        conn.execute(text("UPDATE tt_tracking SET head = :h"), {"h": digest})


def test_an_edit_with_the_trail_recomputed_passes_the_chain_but_fails_the_checkpoint(ledger) -> None:
    """Without a checkpoint an intruder who rewrites events and hashes alike goes unseen; the
    signed checkpoint, whose key never enters the database, catches it."""
    service, store, head, checkpoint = ledger
    k = middle(head)
    store.run("UPDATE {t} SET state = :s WHERE {p} = :n", s=bytes(store.row(k)["state"]) + b" ", n=k)
    _rechain(service)
    assert verify_chain(service).ok
    checked = verify_checkpoint(service, checkpoint, service.checkpoint_key().public_key())
    assert not checked.ok and "head" in (checked.reason or ""), checked


def test_a_checkpoint_with_a_forged_head_or_signature_is_refused(ledger) -> None:
    service, _, _, checkpoint = ledger
    key = service.checkpoint_key().public_key()
    assert not verify_checkpoint(service, {**checkpoint, "head": "f" * 64}, key).ok
    assert not verify_checkpoint(service, {**checkpoint, "position": checkpoint["position"] - 1}, key).ok
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other = Ed25519PrivateKey.generate().public_key()
    assert not verify_checkpoint(service, checkpoint, other).ok


def test_only_an_admin_may_verify_or_take_a_checkpoint(service, workspace) -> None:
    _, admin = workspace
    manager = service.command(lambda: service.ledger.create_token(admin, "manager", ["TOKENS"])).token
    value = service.signer.make(manager.workspace_id, str(manager.id), manager.generation)
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        for path in ("/v0/audit/verify", "/v0/audit/checkpoint"):
            response = client.get(f"{path}?token={value}")
            assert response.status_code == 403 and response.json()["error"], response.text
