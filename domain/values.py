"""Token values in Tinybird's `p.<payload>.<signature>` format.

The payload is `{"u": workspace_id, "id": token_id, "host": null, "g": generation}`; the signature is
HMAC-SHA256 of the base64url payload with the server key. `g` is a random nonce recorded by each
Created/Refreshed event, so refreshing changes the value while the id stays. The ledger stores the
ids and the nonce but never the signature: without the server key nothing stored rebuilds a value.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

MAX_VALUE_LENGTH = 1024
_json_string = json.encoder.encode_basestring_ascii  # what json.dumps does with a str


@dataclass(frozen=True)
class ValueClaims:
    """What a well-signed value says; the ledger still has to check it is current."""

    workspace_id: str
    token_id: str
    generation: str


def new_generation() -> str:
    return secrets.token_urlsafe(12)


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64url(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Makes and checks token values with the server key (which never enters the database)."""

    def __init__(self, key: bytes, host: str | None = None) -> None:
        if len(key) < 32:
            raise ValueError("the server key must be at least 32 bytes")
        self._key = key
        self.host = host
        self._host_json = json.dumps(host)
        # HMAC-SHA256's two keyed states (RFC 2104), made once: signing a value then costs two
        # hashes of a copied state, not a new HMAC (a listing signs ten thousand values).
        block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        if not hmac.compare_digest(self._hmac(b"check"), hmac.digest(key, b"check", "sha256")):
            raise RuntimeError("HMAC-SHA256 self-check failed")

    def make(self, workspace_id: str, token_id: str, generation: str) -> str:
        return self.value(self.payload(workspace_id, token_id, generation))

    def payload(self, workspace_id: str, token_id: str, generation: str) -> str:
        """The value's public part (base64url of its claims): no secret, nothing a value can be
        rebuilt from without the key; `value` signs it."""
        # `json.dumps({"u": …, "id": …, "host": …, "g": …}, separators=(",", ":"))` written out:
        # the same bytes (each string through json.dumps' own ASCII string encoder), without
        # building a dict and an encoder per value (a listing makes ten thousand).
        claims = (
            f'{{"u":{_json_string(workspace_id)},"id":{_json_string(token_id)},'
            f'"host":{self._host_json},"g":{_json_string(generation)}}}'
        )
        return b64url(claims.encode())

    def value(self, payload: str) -> str:
        """The value of a `payload`: `p.<payload>.<signature>`."""
        return f"p.{payload}.{self._sign(payload)}"

    def tag(self, purpose: str, *parts: str) -> str:
        """A MAC, with the server key, of `parts` for `purpose` (say, a listing's cursor): what the
        server hands out and must later recognise as its own. Its input starts with `purpose` and
        NUL bytes, which no value's base64url payload holds, so a tag is never a value's signature."""
        message = "\0".join(("tokentrail", purpose, *parts)).encode("utf-8")
        return b64url(hmac.digest(self._key, message, "sha256")[:18])

    def read(self, value: str) -> ValueClaims | None:
        """Return the claims of a value signed with this key, or None for anything else."""
        if not isinstance(value, str) or len(value) > MAX_VALUE_LENGTH or not value.startswith("p."):
            return None
        parts = value.split(".")
        if len(parts) != 3:
            return None
        _, encoded, signature = parts
        if not (encoded.isascii() and signature.isascii()):  # compare_digest refuses non-ASCII str
            return None
        if not hmac.compare_digest(self._sign(encoded), signature):
            return None
        try:
            payload = json.loads(b64url_decode(encoded))
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        if not isinstance(payload, dict):
            return None
        u, id_, g = payload.get("u"), payload.get("id"), payload.get("g")
        if not (isinstance(u, str) and isinstance(id_, str) and isinstance(g, str)):
            return None
        return ValueClaims(u, id_, g)

    def _sign(self, encoded: str) -> str:
        return b64url(self._hmac(encoded.encode("ascii", "replace")))

    def _hmac(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def looks_like_value(text: str) -> bool:
    return text.startswith("p.") and text.count(".") == 2
