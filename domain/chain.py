"""The audit hash chain: h_n = SHA-256(h_{n-1} || canonical bytes of stored event n).

The canonical bytes include the event's log position, so an edited, deleted, inserted or
reordered stored event changes every hash from that position on.
"""

from __future__ import annotations

import hashlib
import struct
from uuid import UUID

GENESIS = "0" * 64


def event_bytes(position: int, originator_id: UUID | str, version: int, topic: str, state: bytes) -> bytes:
    oid = originator_id.bytes if isinstance(originator_id, UUID) else UUID(str(originator_id)).bytes
    return b"".join((struct.pack(">QQ", position, version), oid, topic.encode("utf-8"), b"\x00", bytes(state)))


def next_hash(previous_hex: str, canonical: bytes) -> str:
    return hashlib.sha256(bytes.fromhex(previous_hex) + canonical).hexdigest()
