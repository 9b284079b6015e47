"""Tamper evidence: re-walk the event store, recompute the hash chain, compare it position by
position with the hashes the projector recorded, and check signed checkpoints.

Without a checkpoint (`verify_chain` alone) the store is compared with the trail the projector
recorded as each event arrived, so these are found, at the first bad position:
- an edited event (its recomputed hash differs from the recorded one);
- a reordered pair (the first of the two hashes differently);
- a deleted event, in the middle or at the tail (a recorded position with no stored event), or
  deleted with the later events renumbered to close the gap (the next event now hashes differently);
- an inserted event, in a gap of the positions (a stored event the trail never recorded) or with
  the later events renumbered to make room (it hashes differently from what was recorded there).
What it cannot see: a change made to the store *and* the trail together (the recorded hashes and
the tracking row recomputed, or the last events deleted with their trail rows and the tracking row
wound back), and an event appended after the head by someone writing straight to the database,
which the projector then records like any other. The trail lives in the same database, so an
intruder who can rewrite one can rewrite both.

A checkpoint closes the first gap: it signs (position, head) with an Ed25519 key that never enters
the database, so any later change to an event at or before its position, or the loss of events up
to it, fails `verify_checkpoint`, whatever was done to the trail. Events appended after the newest
checkpoint are vouched for only by the next one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, select

from tokentrail.domain import clock
from tokentrail.domain.chain import GENESIS
from tokentrail.domain.errors import InvalidInput
from tokentrail.keys import key_id
from tokentrail.projections import schema as s
from tokentrail.projections.projector import TRACKING_NAME

if TYPE_CHECKING:
    from tokentrail.service import Service

CHUNK = 5000
STORED_CHUNK = 20_000


@dataclass
class ChainReport:
    ok: bool
    events_checked: int
    first_bad_position: int | None
    head: str
    reason: str | None = None
    through: int = 0  # the last position this check covered

    def wire(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events_checked": self.events_checked,
            "first_bad_position": self.first_bad_position,
            "head": self.head,
            "reason": self.reason,
        }


def _stored(service: Service, until: int, after: int = 0) -> Iterator[tuple[int, bytes]]:
    """(position, canonical bytes) of every stored event after `after` up to `until`, read straight from the
    event store's table in large pages: the rows as they are on disk, without decoding them.

    PostgreSQL builds each row's canonical bytes itself (`chain.event_bytes`: the position and
    version as big-endian 8-byte integers, the id's 16 bytes, the topic in UTF-8, a zero byte, the
    state) and sends them in binary: no hex-encoded bytea to decode, no UUID object per row."""
    recorder = service.ledger.recorder
    table = recorder.events_table_name
    if service.backend == "postgres":
        schema = recorder.datastore.schema
        sql = (
            "SELECT notification_id, int8send(notification_id) || int8send(originator_version) || "
            "uuid_send(originator_id) || convert_to(topic, 'UTF8') || '\\x00'::bytea || state "
            f'FROM "{schema}"."{table}" '
            "WHERE notification_id > %s AND notification_id <= %s ORDER BY notification_id LIMIT %s"
        )
        for rows in _pages(service, sql, until, binary=True, after=after):
            yield from rows
        return
    sql = (
        f'SELECT rowid, originator_id, originator_version, topic, state FROM "{table}" '
        "WHERE rowid > ? AND rowid <= ? ORDER BY rowid LIMIT ?"
    )
    pack = struct.Struct(">QQ").pack
    for rows in _pages(service, sql, until, after=after):
        for pos, oid, version, topic, state in rows:
            # Same bytes as chain.event_bytes, without building a UUID per row.
            oid_bytes = oid.bytes if isinstance(oid, UUID) else _uuid_bytes(oid)
            yield pos, b"".join((pack(pos, version), oid_bytes, topic.encode("utf-8"), b"\x00", bytes(state)))


def _pages(service: Service, sql: str, until: int, binary: bool = False, after: int = 0) -> Iterator[list[Any]]:
    """Pages of STORED_CHUNK rows of `sql` (parameters: after, until, limit; the first column is
    the position), through the raw driver cursor: no per-row processing by SQLAlchemy. `binary`
    (psycopg only) asks for the results in PostgreSQL's binary format."""
    position = after
    while position < until:
        with service.read_engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            cursor = raw.cursor(binary=True) if binary else raw.cursor()  # type: ignore[union-attr]
            try:
                cursor.execute(sql, (position, until, STORED_CHUNK))
                rows = cursor.fetchall()
            finally:
                cursor.close()
        if rows:
            yield rows
        if len(rows) < STORED_CHUNK:
            return
        position = rows[-1][0]


def _uuid_bytes(text: str) -> bytes:
    compact = text.replace("-", "")
    if len(compact) != 32:
        return UUID(text).bytes
    return bytes.fromhex(compact)


def _recorded(service: Service, until: int, after: int = 0) -> Iterator[tuple[int, str]]:
    """(position, hash) the projector recorded, in large pages through the raw driver cursor."""
    mark = "%s" if service.backend == "postgres" else "?"
    sql = (
        f"SELECT position, hash FROM {s.audit.name} WHERE position > {mark} AND position <= {mark} "
        f"ORDER BY position LIMIT {mark}"
    )
    for rows in _pages(service, sql, until, after=after):
        yield from rows


def tracked(service: Service) -> tuple[int, str]:
    with service.read_engine.connect() as conn:
        row = conn.execute(
            select(s.tracking.c.position, s.tracking.c.head).where(s.tracking.c.name == TRACKING_NAME)
        ).first()
    return (row[0], row[1]) if row else (0, GENESIS)


def verify_chain(
    service: Service,
    until: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    since: tuple[int, str] | None = None,
) -> ChainReport:
    """Recompute the chain from the store up to `until` (default: all that is projected).

    `since=(position, head)` starts the walk after `position` with `head` as the previous hash
    instead of at genesis: the events up to `position` are taken as vouched for (by a checkpoint
    whose signature the caller checked: `verify_since_checkpoint`), and only the later ones are
    read. `events_checked` then counts those later events."""
    service.sync()
    position, recorded_head = tracked(service)
    limit = position if until is None else min(until, position)
    after, head = since if since is not None else (0, GENESIS)
    stored, recorded = _stored(service, limit, after), _recorded(service, limit, after)
    checked = 0
    head_bytes, sha256 = bytes.fromhex(head), hashlib.sha256
    a, b = next(stored, None), next(recorded, None)

    def bad(at: int, reason: str) -> ChainReport:
        return ChainReport(False, checked, at, head, reason)

    while a is not None or b is not None:
        if a is not None and b is not None and a[0] == b[0]:
            # chain.next_hash, kept in binary between steps.
            head_bytes = sha256(head_bytes + a[1]).digest()
            head = head_bytes.hex()
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
    return ChainReport(True, checked, None, head, through=limit)


def workspace_view(service: Service, workspace_id: str, report: ChainReport) -> ChainReport:
    """The report as one workspace's admin may read it.

    The chain runs through every workspace's events, so its check is the whole store's; but the
    count of events and the head hash would tell one tenant how busy the others are. A workspace
    admin reads whether the chain is intact (and where it first breaks), the number of its own
    workspace's events covered, and the head as of its own last event (the `hash` of its last
    audit row, which it can already read).
    """
    if not report.ok:
        return ChainReport(False, 0, report.first_bad_position, "", report.reason)
    count, position, head = _workspace_head(service, workspace_id, report.through)
    return ChainReport(True, count, None, head or GENESIS, through=position)


def _workspace_head(service: Service, workspace_id: str, through: int) -> tuple[int, int, str | None]:
    a = s.audit
    with service.read_engine.connect() as conn:
        count = conn.execute(
            select(func.count()).select_from(a).where(a.c.workspace_id == workspace_id, a.c.position <= through)
        ).scalar_one()
        last = conn.execute(
            select(a.c.position, a.c.hash)
            .where(a.c.workspace_id == workspace_id, a.c.position <= through)
            .order_by(a.c.position.desc())
            .limit(1)
        ).first()
    return int(count), (int(last[0]) if last else 0), (last[1] if last else None)


# -- checkpoints ---------------------------------------------------------------------------------


def _signed_bytes(body: dict[str, Any]) -> bytes:
    fields = {k: body[k] for k in ("position", "head", "at", "key_id")}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def make_checkpoint(service: Service, key: Ed25519PrivateKey, workspace_id: str | None = None) -> dict[str, Any]:
    """Sign (position, head, time) of the projected log with the checkpoint key.

    For a workspace (an admin's API call) the checkpoint is taken at that workspace's last event:
    a prefix of the chain, checked the same way, that tells nothing of other workspaces' activity.
    """
    service.sync()
    position, head = tracked(service)
    if workspace_id is not None:
        _, position, own_head = _workspace_head(service, workspace_id, position)
        head = own_head or GENESIS
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


def _signed_checkpoint(checkpoint: Any, public_key: Ed25519PublicKey) -> tuple[int, str, CheckpointReport | None]:
    """A checkpoint's position and head, and a refusal when our key did not sign it as it is.
    A body that is not a checkpoint at all is InvalidInput (400)."""
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
        return position, head, CheckpointReport(False, position, "the checkpoint was signed with another key", None)
    try:
        public_key.verify(signature, signed)
    except InvalidSignature:
        return position, head, CheckpointReport(False, position, "the checkpoint's signature is not valid", None)
    return position, head, None


def verify_checkpoint(service: Service, checkpoint: Any, public_key: Ed25519PublicKey) -> CheckpointReport:
    """Is the checkpoint signed by our key, and does the store still hash to its head?"""
    position, head, refused = _signed_checkpoint(checkpoint, public_key)
    if refused is not None:
        return refused
    chain = verify_chain(service, until=position)
    if not chain.ok:
        return CheckpointReport(False, position, chain.reason, chain)
    reached, _ = tracked(service)
    if reached < position:
        missing = ChainReport(
            False,
            chain.events_checked,
            reached + 1,
            chain.head,
            "events up to the checkpoint are missing from the log (deleted at its tail)",
        )
        return CheckpointReport(False, position, missing.reason, missing)
    if chain.events_checked == 0 and position > 0 or chain.head != head:
        return CheckpointReport(False, position, "the events up to the checkpoint no longer hash to its head", chain)
    return CheckpointReport(True, position, None, chain)


def verify_since_checkpoint(
    service: Service, checkpoint: Any, public_key: Ed25519PublicKey, until: int | None = None
) -> CheckpointReport:
    """Verify the events *after* a checkpoint, starting from its signed head: what a ledger whose
    older events are archived (with the checkpoint) can still check, in time proportional to the
    events since. The checkpoint's signature is checked first; the events up to its position are
    not read (`verify_checkpoint` re-walks those)."""
    position, head, refused = _signed_checkpoint(checkpoint, public_key)
    try:
        bytes.fromhex(head)  # the chain restarts from this head
    except ValueError as error:
        raise InvalidInput(f"not a checkpoint: {error}") from None
    if refused is not None:
        return refused
    reached, _ = tracked(service)
    if reached < position:
        return CheckpointReport(
            False, position, "the log ends before the checkpoint (events deleted at its tail)", None
        )
    chain = verify_chain(service, until=until, since=(position, head))
    return CheckpointReport(chain.ok, position, chain.reason, chain)
