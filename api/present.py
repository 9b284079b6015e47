"""Read models to wire objects (through the marshmallow schemas)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from tokentrail.api.schemas import TokenSchema, WorkspaceSchema
from tokentrail.domain.clock import format_instant
from tokentrail.domain.exposure import Interval, Reach
from tokentrail.domain.policy import Caller, ValueVisibility, may_see_value
from tokentrail.domain.scopes import Scope, read_scope
from tokentrail.domain.values import TokenSigner
from tokentrail.projections.queries import ListedToken, TokenRow, WorkspaceRow
from tokentrail.reads import Exposure, Identified
from tokentrail.service import Service

_token_schema = TokenSchema()
_workspace_schema = WorkspaceSchema()


def _data(service: Service, row: TokenRow, caller: Caller | None, last_used: int | None) -> dict[str, Any]:
    scopes = row.parsed_scopes
    data: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "scopes": [s.wire() for s in scopes],
        "origin": row.origin,
        "host": service.signer.host,
        "expires_at": _instant(row.expires_at),
        "last_used_at": _instant(last_used),
    }
    if caller is None or may_see_value(caller, row.facts):
        data["token"] = service.signer.make(row.workspace_id, row.id, row.generation)
    return data


def token_object(service: Service, row: TokenRow, caller: Caller | None) -> dict[str, Any]:
    last_used = service.usage.last_used([row.id]).get(row.id)
    return _token_schema.dump(_data(service, row, caller, last_used))


def token_objects(
    service: Service, rows: list[TokenRow], caller: Caller | None, last_used: dict[str, int] | None = None
) -> list[dict[str, Any]]:
    """`token_object` of every row, dumped in one `many=True` pass of the same schema."""
    if last_used is None:
        last_used = service.usage.last_used_of(r.id for r in rows)
    return _token_schema.dump([_data(service, row, caller, last_used.get(row.id)) for row in rows], many=True)


# -- the token list, fast ---------------------------------------------------------------------
#
# `GET /v0/tokens` answers every token of the workspace (ten thousand and more). Its body is what
# `JSONResponse({"tokens": token_objects(...)})` renders, byte for byte, but built from per-token
# JSON fragments: the members of a token object that depend on the token's stored columns alone
# are dumped through `TokenSchema` (marshmallow: the wire format) once, when the token is first
# listed or after it changed, and kept; the two that are the request's own, the value (per caller,
# an HMAC) and `last_used_at` (changes without any event), are added to each answer.

# The response's JSON dialect: starlette's `JSONResponse.render`.
_dumps: Callable[[Any], str] = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
).encode
_DYNAMIC = ("token", "last_used_at")
# Member order of a token object: as TokenSchema dumps it (asked of the schema, not assumed).
_ORDER = list(
    _token_schema.dump(
        {k: ([] if k == "scopes" else {"type": "C"} if k == "origin" else "x") for k in _token_schema.fields}
    )
)


if _ORDER[0] in _DYNAMIC or [k for k in _ORDER if k in _DYNAMIC] not in (list(_DYNAMIC), list(_DYNAMIC)[::-1]):
    raise RuntimeError("token_list_body expects TokenSchema to start with a static member and hold both dynamic ones")
_TOKEN_FIRST = _ORDER.index("token") < _ORDER.index("last_used_at")
# The static members between the dynamic ones: three segments, each a tuple of names.
_SEGMENTS: list[tuple[str, ...]] = [()]
for _key in _ORDER:
    if _key in _DYNAMIC:
        _SEGMENTS.append(())
    else:
        _SEGMENTS[-1] += (_key,)


class FragmentCache:
    """Serialized static members of token objects, by token id, valid while the token's row is
    unchanged: each entry keeps every column it was made from (and the host) and is used only when
    the row listed now has the same ones, so any change to the token (rename, description, scopes,
    origin, expiry set or removed; a refresh changes the generation) is a miss and a new dump, and
    a deleted token is never listed again (its entry ages out). Bounded: past `max_entries` (about
    a kilobyte each) the oldest entries go first. Holds no value: only public columns and a value's
    public half (`TokenSigner.payload`); the signature, made with the server key, is added to each
    answer."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, tuple[str | None, tuple[Any, ...], tuple[str, ...], str]] = {}
        self._lock = threading.Lock()
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, signer: TokenSigner, row: ListedToken) -> tuple[tuple[str, ...], str]:
        """The three static pieces of the row's token object, and its value's payload."""
        key = row[1:-1]  # every column but the id (the entry's) and the list position
        entry = self._entries.get(row.id)
        if entry is not None and entry[1] == key and entry[0] == signer.host:
            return entry[2], entry[3]
        runs = self._dump(signer.host, row)
        payload = signer.payload(row.workspace_id, row.id, row.generation)
        with self._lock:
            self.misses += 1
            self._entries.pop(row.id, None)
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[row.id] = (signer.host, key, runs, payload)
        return runs, payload

    @staticmethod
    def _dump(host: str | None, row: ListedToken) -> tuple[str, ...]:
        origin: dict[str, Any] = {"type": row.origin_type}
        if row.origin_resource_id:
            origin["resource_id"] = row.origin_resource_id
        data = {
            "id": row.id,
            "name": row.name,
            "description": row.description,
            "scopes": [read_scope(x).wire() for x in row.scope_texts],
            "origin": origin,
            "host": host,
            "expires_at": _instant(row.expires_at),
        }
        dumped = _token_schema.dump(data)
        # Every member is written `,"name":value`; the object's first one (`id`, static) loses its
        # comma to the opening brace, and the dynamic ones bring their own.
        texts = ["".join(f",{_dumps(k)}:{_dumps(dumped[k])}" for k in keys if k in dumped) for keys in _SEGMENTS]
        return ("{" + texts[0][1:], *texts[1:-1], texts[-1] + "}")


fragments = FragmentCache()


def token_list_body(
    service: Service,
    rows: list[ListedToken],
    caller: Caller,
    last_used: dict[str, int] | None = None,
    head: dict[str, Any] | None = None,
    tail: dict[str, Any] | None = None,
) -> bytes:
    """The JSON body `{**head, "tokens": [token objects of rows], **tail}`, exactly as
    `JSONResponse` renders it with `token_objects(service, rows, caller)` as the list."""
    if last_used is None:
        last_used = service.usage.last_used_of(r.id for r in rows)
    signer = service.signer
    sees = ValueVisibility(caller)
    cache = fragments
    objects = []
    for row in rows:
        (first, middle, last), payload = cache.get(signer, row)
        # A value is `p.` and base64url, an instant ISO 8601: nothing in them needs escaping.
        if sees(row.id, row.kind, row.workspace_id, row.scopes, _parsed):
            value = f',"token":"{signer.value(payload)}"'
        else:
            value = ""
        used = last_used.get(row.id)
        use = ',"last_used_at":null' if used is None else f',"last_used_at":"{format_instant(used)}"'
        objects.append(f"{first}{value}{middle}{use}{last}" if _TOKEN_FIRST else f"{first}{use}{middle}{value}{last}")
    before = "".join(f"{_dumps(k)}:{_dumps(v)}," for k, v in (head or {}).items())
    after = "".join(f",{_dumps(k)}:{_dumps(v)}" for k, v in (tail or {}).items())
    return ("{" + before + '"tokens":[' + ",".join(objects) + "]" + after + "}").encode("utf-8")


def _parsed(scopes_column: str) -> tuple[Scope, ...]:
    return tuple(read_scope(x) for x in json.loads(scopes_column))


def workspace_object(workspace: WorkspaceRow, caller: Caller) -> dict[str, Any]:
    return _workspace_schema.dump(
        {
            "id": workspace.id,
            "name": workspace.name,
            "user_email": workspace.owner_email,
            "user_id": workspace.owner_user_id,
            "scope": "admin" if caller.admin else ("user" if caller.user else "guest"),
        }
    )


def scope_texts(scopes: list[str]) -> list[str]:
    """Canonical strings for a list of scope strings (for comparisons and display)."""
    return [str(read_scope(s)) for s in scopes]


def _instant(micros: int | None) -> str | None:
    return format_instant(micros) if micros is not None else None


def _intervals(intervals: list[Interval]) -> list[dict[str, str | None]]:
    return [{"from": _instant(start), "to": _instant(end)} for start, end in intervals]


def _reach_objects(entries: list[tuple[Reach, list[Interval]]]) -> list[dict[str, Any]]:
    return [
        {
            "kind": item.kind,
            "resource": item.resource,
            "permission": item.permission,
            "via": item.via,
            "filter": item.filter,
            "intervals": _intervals(intervals),
        }
        for item, intervals in entries
    ]


def exposure_object(found: Exposure) -> dict[str, Any]:
    """`GET /v0/tokens/{x}/exposure`: `from`/`to` are the window asked for, else the token's (or the
    value's) life; `to` is null while it is still open."""
    start = found.start if found.start is not None else (found.lives[0][0] if found.lives else None)
    end = found.end if found.end is not None else (found.lives[-1][1] if found.lives else None)
    return {
        "token_id": found.token.id,
        "name": found.token.name,
        "deleted": found.token.deleted,
        "generation": found.generation,
        "from": _instant(start),
        "to": _instant(end),
        "valid": _intervals(found.lives),
        "exposure": _reach_objects(found.exposure),
        "escalation": [{"via": via, "intervals": _intervals(spans)} for via, spans in found.escalation.items()],
        "jwts": [
            {
                "id": jwt["id"],
                "name": jwt["name"],
                "issued_at": _instant(jwt["issued_at"]),
                "expires_at": _instant(jwt["expires_at"]),
                "invalidated_at": _instant(jwt["invalidated_at"]),
                "exposure": _reach_objects(jwt["exposure"]),
            }
            for jwt in found.jwts
        ],
    }


def lookup_object(found: Identified) -> dict[str, Any]:
    """`POST /v0/tokens/lookup`: which token a value is or was, never the value."""
    return {
        "token_id": found.token_id,
        "name": found.name,
        "workspace_id": found.workspace_id,
        "generation": found.generation,
        "valid_from": _instant(found.valid_from),
        "valid_until": _instant(found.valid_until),
        "valid_now": found.valid_now,
        "reason": found.reason,
        "jwt": found.jwt,
    }
