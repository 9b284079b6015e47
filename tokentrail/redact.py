"""Keeping token values out of what the server records about a request.

Free text that a client chooses (its `User-Agent`, an `X-Request-Id`, an `X-Tokentrail-Origin`) and
the server's own log lines may hold a token value, by mistake or on purpose. Anything shaped like a
static value (`p.<payload>.<signature>`) or a JWT (`eyJ….eyJ….<signature>`) is replaced by
`[redacted]` before it is stored in an event or written to a log.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"
_VALUE = re.compile(
    r"p\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # a static token value
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"  # a JWT (its header starts {")
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def redact(text: str) -> str:
    """`text` with every token-shaped substring replaced by `[redacted]`."""
    return _VALUE.sub(REDACTED, text)


def claimed(text: str | None, limit: int) -> str | None:
    """What a client says about itself, fit to record: control characters dropped, token-shaped
    substrings redacted, at most `limit` characters; None when nothing is left."""
    if text is None:
        return None
    cleaned = redact(_CONTROL.sub("", text)).strip()[:limit]
    return cleaned or None
