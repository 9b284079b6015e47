"""Verification that starts from a signed checkpoint (`verify_since_checkpoint`): it reads only the
events after the checkpoint, finds a change made to them, and finds a rewrite of the events before
it even when the intruder recomputed the whole trail to match, which the walk from genesis cannot.
On both backends."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from tests.test_tamper import Store, ledger_with_history
from tokentrail.domain.chain import GENESIS, event_bytes, next_hash
from tokentrail.service import Service
from tokentrail.verify import make_checkpoint, verify_chain, verify_since_checkpoint


def history_with_checkpoint(service: Service, workspace: Any) -> tuple[dict[str, Any], int, int]:
    """A history, a checkpoint of it, then more history: (checkpoint, its position, the head)."""
    _, admin = workspace
    first = ledger_with_history(service, admin)
    checkpoint = make_checkpoint(service, service.checkpoint_key())
    assert checkpoint["position"] == first
    for i in range(3):
        service.command(lambda i=i: service.ledger.create_token(admin, f"later{i}", ["PIPES:READ:top"]))
    service.sync()
    head = service.ledger.recorder.max_notification_id()
    assert head > first
    return checkpoint, first, head


def public_key(service: Service) -> Any:
    return service.checkpoint_key().public_key()


def test_it_checks_only_the_events_after_the_checkpoint_and_ends_at_the_same_head(service, workspace) -> None:
    checkpoint, first, head = history_with_checkpoint(service, workspace)
    report = verify_since_checkpoint(service, checkpoint, public_key(service))
    assert report.ok and report.chain is not None, report
    assert report.chain.events_checked == head - first
    assert report.chain.head == verify_chain(service).head


def test_an_event_edited_after_the_checkpoint_is_found_at_its_position(service, workspace) -> None:
    checkpoint, first, head = history_with_checkpoint(service, workspace)
    store = Store(service)
    k = first + 2
    store.run("UPDATE {t} SET state = :s WHERE {p} = :n", s=bytes(store.row(k)["state"]) + b" ", n=k)
    report = verify_since_checkpoint(service, checkpoint, public_key(service))
    assert not report.ok and report.chain is not None and report.chain.first_bad_position == k, report


def test_a_rewrite_before_the_checkpoint_with_the_trail_recomputed_is_found(service, workspace) -> None:
    """The intruder edits an early event and recomputes every recorded hash and the tracked head:
    the walk from genesis agrees with the forged trail; the walk from the signed head does not."""
    checkpoint, first, head = history_with_checkpoint(service, workspace)
    store = Store(service)
    k = first // 2
    store.run("UPDATE {t} SET state = :s WHERE {p} = :n", s=bytes(store.row(k)["state"]) + b" ", n=k)
    digest, forged = GENESIS, []
    for position in range(1, head + 1):
        row = store.row(position)
        digest = next_hash(
            digest, event_bytes(position, row["originator_id"], row["originator_version"], row["topic"], row["state"])
        )
        forged.append({"h": digest, "n": position})
    with service.write_engine.begin() as conn:
        conn.execute(text("UPDATE tt_audit SET hash = :h WHERE position = :n"), forged)
        conn.execute(text("UPDATE tt_tracking SET head = :h"), {"h": digest})
    assert verify_chain(service).ok  # the forged trail is self-consistent
    report = verify_since_checkpoint(service, checkpoint, public_key(service))
    assert not report.ok and report.chain is not None and report.chain.first_bad_position == first + 1, report


def test_a_checkpoint_with_a_forged_head_or_another_key_is_refused_before_any_walk(service, workspace) -> None:
    checkpoint, _, _ = history_with_checkpoint(service, workspace)
    forged = {**checkpoint, "head": "0" * 64}
    report = verify_since_checkpoint(service, forged, public_key(service))
    assert not report.ok and report.chain is None and "signature" in (report.reason or "")
    other = Ed25519PrivateKey.generate().public_key()
    report = verify_since_checkpoint(service, checkpoint, other)
    assert not report.ok and report.chain is None and "another key" in (report.reason or "")
