"""Token references: what `{x}` in `/v0/tokens/{x}` (and a CLI's NAME argument) designates.

One parser for every entrypoint, so that a `GET` and a `PUT` of one reference always reach one
token: a value (`p.…`, verified with the server key), else an id (a UUID in its plain 32-hex or
hyphenated spelling only: no `urn:uuid:` or braces, which Python's `UUID()` would also take),
else a name. Token names can never take the first two forms (`validate_name` refuses them).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Literal

from tokentrail.domain.values import TokenSigner

MAX_REF_LENGTH = 1024
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class TokenRef:
    kind: Literal["value", "id", "name"]
    text: str  # the name as given, or the canonical id
    token_id: str | None = None
    workspace_id: str | None = None  # values only: the realm signed into the value
    generation: str | None = None  # values only: which generation the value is


def parse_ref(ref: object, signer: TokenSigner) -> TokenRef | None:
    """What `ref` designates, or None when it can designate no token at all."""
    if not isinstance(ref, str) or not ref or len(ref) > MAX_REF_LENGTH:
        return None
    if any(ord(c) < 32 or ord(c) == 127 for c in ref):
        return None  # no name holds these (and PostgreSQL cannot compare NUL)
    if ref.startswith("p."):
        claims = signer.read(ref)
        if claims is None:
            return None
        return TokenRef("value", claims.token_id, claims.token_id, claims.workspace_id, claims.generation)
    if _UUID.fullmatch(ref):
        token_id = str(uuid.UUID(ref))
        return TokenRef("id", token_id, token_id)
    return TokenRef("name", ref)


def looks_like_reference(name: str) -> bool:
    """Would this name be read as a value or an id, by us or by anything built on `UUID()`?"""
    if name.startswith("p.") or _UUID.fullmatch(name):
        return True
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True
