"""Tinybird's wire quirks, in one place.

Tinybird's CLIs append `scope=` values to the URL without encoding, so a `+` in a filter is a
literal plus (a standard form parser would read a space), while names arrive form-encoded
(`read+api+token`). POST/PUT bodies come without a Content-Type: form-encoded parameters (a long
PUT moves its `scope=` string there) or, for JWTs, JSON.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from tokentrail.domain.errors import InvalidInput

RAW_PARAMS = frozenset({"scope"})  # values whose '+' is a literal plus
MAX_PARAMS = 1000


class Params:
    """Multi-valued parameters from the query string and a form-encoded body."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs

    @classmethod
    def parse(cls, query: bytes | str, body: bytes = b"") -> Params:
        """Parameters of the raw query string (bytes, as the server received them) and of a
        form-encoded body; a JSON body (a JWT's) is left to `json_body`."""
        if isinstance(query, str):  # an already decoded query string (Starlette's `url.query`)
            query = query.encode("utf-8")
        pairs = _split(query, "the query string")
        if body and not body.lstrip().startswith((b"{", b"[")):
            pairs += _split(body, "the request body")
        if len(pairs) > MAX_PARAMS:
            raise InvalidInput(f"too many parameters (at most {MAX_PARAMS})")
        if any("\x00" in key or "\x00" in value for key, value in pairs):
            # PostgreSQL text cannot hold NUL: refuse it here rather than fail while writing.
            raise InvalidInput("parameters must not contain NUL characters")
        return cls(pairs)

    def get(self, name: str, default: str | None = None) -> str | None:
        for key, value in self._pairs:
            if key == name:
                return value
        return default

    def getlist(self, name: str) -> list[str]:
        return [value for key, value in self._pairs if key == name]

    def __contains__(self, name: str) -> bool:
        return any(key == name for key, _ in self._pairs)

    def int(self, name: str, default: int | None = None, *, minimum: int | None = None) -> int | None:
        raw = self.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidInput(f"{name} must be a whole number") from None
        if minimum is not None and value < minimum:
            raise InvalidInput(f"{name} must be at least {minimum}")
        return value


def _split(data: bytes, where: str) -> list[tuple[str, str]]:
    """Split `a=1&b=2`, percent-decoding to bytes first and then decoding UTF-8 strictly, so that
    raw or percent-encoded bytes that are not UTF-8 are refused (as Tinybird's server does) rather
    than stored as replacement characters."""
    pairs = []
    for part in data.split(b"&"):
        if not part:
            continue
        key, _, value = part.partition(b"=")
        name = _utf8(unquote_to_bytes(key.replace(b"+", b" ")), where)
        if name not in RAW_PARAMS:
            value = value.replace(b"+", b" ")
        pairs.append((name, _utf8(unquote_to_bytes(value), where)))
    return pairs


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{where} is not valid UTF-8") from None


def json_body(body: bytes) -> Any:
    """Parse a JSON body whatever its Content-Type (Tinybird's JWT create sends none)."""
    if not body or not body.strip():
        raise InvalidInput("a JSON body is required")
    try:
        data = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
        # Lone surrogates (`"\\ud800"`) parse, but no UTF-8 store or JWT can hold them.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError):
        raise InvalidInput("the request body is not valid JSON") from None
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} does not fit a double")
    return value
