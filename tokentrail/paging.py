"""Paging of the token listings (`GET /v0/tokens?limit=&cursor=`, with or without `as_of`).

A page is the next `limit` tokens of the listing's order after the cursor's position; the cursor
(`next_cursor` of the previous page) is `<payload>.<tag>`: the payload is the position in
`projections/history.py`'s cursor format, the tag a MAC with the server key of the payload, the
caller's workspace and which listing it pages (now, or as of one instant). A cursor is therefore
only good for the listing and workspace it came from: altered, forged, or carried to another
workspace or another `as_of`, it is refused (400) before anything is read, and so it cannot be used
to learn anything about another workspace.
"""

from __future__ import annotations

import hmac
import re

from tokentrail.domain.errors import InvalidInput
from tokentrail.domain.values import TokenSigner
from tokentrail.projections.history import MAX_CURSOR_LENGTH, decode_cursor, encode_cursor

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 1_000  # a cursor without a limit
_CURSOR = re.compile(rf"([A-Za-z0-9_-]{{1,{MAX_CURSOR_LENGTH}}})\.([A-Za-z0-9_-]{{24}})")
_PURPOSE = "token-list-cursor"
INVALID_CURSOR = "invalid cursor: pass the next_cursor of the previous page of this same listing unchanged"


def parse_limit(raw: str | None) -> int | None:
    """`limit`: absent is None (the whole list); otherwise a whole number from 1 to MAX_LIMIT."""
    if raw is None:
        return None
    text = raw.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 6 or not 1 <= int(text) <= MAX_LIMIT:
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def encode(signer: TokenSigner, workspace_id: str, listing: str, position: int) -> str:
    payload = encode_cursor(position)
    return f"{payload}.{signer.tag(_PURPOSE, workspace_id, listing, payload)}"


def decode(signer: TokenSigner, workspace_id: str, listing: str, cursor: str | None) -> int:
    """The position after which the page starts (0: from the first), or InvalidInput."""
    if cursor is None:
        return 0
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise InvalidInput(INVALID_CURSOR)
    payload, tag = match.groups()
    if not hmac.compare_digest(signer.tag(_PURPOSE, workspace_id, listing, payload), tag):
        raise InvalidInput(INVALID_CURSOR)
    try:
        return decode_cursor(payload)
    except InvalidInput:  # cannot happen for a tag we made, but never trust that
        raise InvalidInput(INVALID_CURSOR) from None
