"""Tamper evidence: re-walk the event store, recompute the hash chain, compare it position by
position with the hashes the projector recorded, and check signed checkpoints.

An edited or reordered event changes the recomputed hash at its position; a deleted event leaves a
recorded position with no stored event; an inserted one, a stored event the trail never recorded.
Rewriting the store and the recorded hashes together is caught by a checkpoint signed earlier with
a key that never enters the database.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import and_, select

from domain import clock
from domain.errors import InvalidInput
from projections import schema as s
from projections.chain import GENESIS, event_bytes, next_hash
from projections.keys import key_id
from projections.projector import TRACKING_NAME
from projections.system import System

CHUNK = 5000


@dataclass
class ChainReport:
    ok: bool
    events_checked: int
    first_bad_position: int | None
    head: str
    reason: str | None = None

    def wire(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events_checked": self.events_checked,
            "first_bad_position": self.first_bad_position,
            "head": self.head,
            "reason": self.reason,
        }


def _stored(system: System, until: int) -> Iterator[tuple[int, bytes]]:
    position = 0
    while position < until:
        notes = system.ledger.recorder.select_notifications(
            start=position + 1, limit=CHUNK, stop=until
        )
        if not notes:
            return
        for n in notes:
            yield n.id, event_bytes(n.id, n.originator_id, n.originator_version, n.topic, n.state)
        position = notes[-1].id


def _recorded(system: System, until: int) -> Iterator[tuple[int, str]]:
    a = s.audit
    position = 0
    while True:
        with system.read_engine.connect() as conn:
            rows = conn.execute(
                select(a.c.position, a.c.hash)
                .where(and_(a.c.position > position, a.c.position <= until))
                .order_by(a.c.position)
                .limit(CHUNK)
            ).all()
        yield from ((p, h) for p, h in rows)
        if len(rows) < CHUNK:
            return
        position = rows[-1][0]


def tracked(system: System) -> tuple[int, str]:
    with system.read_engine.connect() as conn:
        row = conn.execute(
            select(s.tracking.c.position, s.tracking.c.head).where(s.tracking.c.name == TRACKING_NAME)
        ).first()
    return (row[0], row[1]) if row else (0, GENESIS)


def verify_chain(
    system: System, until: int | None = None, progress: Callable[[int, int], None] | None = None
) -> ChainReport:
    """Recompute the chain from the store up to `until` (default: all that is projected)."""
    system.sync()
    position, recorded_head = tracked(system)
    limit = position if until is None else min(until, position)
    stored, recorded = _stored(system, limit), _recorded(system, limit)
    head, checked = GENESIS, 0
    a, b = next(stored, None), next(recorded, None)

    def bad(at: int, reason: str) -> ChainReport:
        return ChainReport(False, checked, at, head, reason)

    while a is not None or b is not None:
        if a is not None and b is not None and a[0] == b[0]:
            head = next_hash(head, a[1])
            if head != b[1]:
                return bad(a[0], "the stored event differs from the one recorded (edited or reordered)")
            checked += 1
            if progress and checked % CHUNK == 0:
                progress(checked, limit)
            a, b = next(stored, None), next(recorded, None)
        elif b is None or (a is not None and a[0] < b[0]):
            return bad(a[0], "an event is in the store that the trail never recorded (inserted)")
        else:
            return bad(b[0], "a recorded event is missing from the store (deleted)")
    if until is None and head != recorded_head:
        return bad(position, "the recorded chain head does not match the events")
    if progress:
        progress(checked, limit)
    return ChainReport(True, checked, None, head)


# -- checkpoints ---------------------------------------------------------------------------------


def _signed_bytes(body: dict[str, Any]) -> bytes:
    fields = {k: body[k] for k in ("position", "head", "at", "key_id")}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def make_checkpoint(system: System, key: Ed25519PrivateKey) -> dict[str, Any]:
    """Sign (position, head, time) of the projected log with the checkpoint key."""
    system.sync()
    position, head = tracked(system)
    body: dict[str, Any] = {
        "position": position,
        "head": head,
        "at": clock.format_instant(clock.to_micros(clock.now())),
        "key_id": key_id(key.public_key()),
    }
    body["signature"] = base64.urlsafe_b64encode(key.sign(_signed_bytes(body))).decode().rstrip("=")
    return body


@dataclass
class CheckpointReport:
    ok: bool
    position: int
    reason: str | None
    chain: ChainReport | None

    def wire(self) -> dict[str, Any]:
        out = asdict(self)
        out["chain"] = self.chain.wire() if self.chain else None
        return out


def verify_checkpoint(system: System, checkpoint: Any, public_key: Ed25519PublicKey) -> CheckpointReport:
    """Is the checkpoint signed by our key, and does the store still hash to its head?"""
    if not isinstance(checkpoint, dict):
        raise InvalidInput("a checkpoint is a JSON object")
    try:
        position = int(checkpoint["position"])
        head = str(checkpoint["head"])
        signature = base64.urlsafe_b64decode(str(checkpoint["signature"]) + "==")
        signed = _signed_bytes(checkpoint)
    except (KeyError, TypeError, ValueError) as error:
        raise InvalidInput(f"not a checkpoint: {error}") from None
    if checkpoint.get("key_id") != key_id(public_key):
        return CheckpointReport(False, position, "the checkpoint was signed with another key", None)
    try:
        public_key.verify(signature, signed)
    except InvalidSignature:
        return CheckpointReport(False, position, "the checkpoint's signature is not valid", None)
    chain = verify_chain(system, until=position)
    if not chain.ok:
        return CheckpointReport(False, position, chain.reason, chain)
    if chain.events_checked == 0 and position > 0 or chain.head != head:
        return CheckpointReport(
            False, position, "the events up to the checkpoint no longer hash to its head", chain
        )
    return CheckpointReport(True, position, None, chain)
