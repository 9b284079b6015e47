"""Read models to wire objects (through the marshmallow schemas)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from tokentrail.api.schemas import TokenSchema, WorkspaceSchema
from tokentrail.domain.clock import format_instant
from tokentrail.domain.exposure import Interval, Reach
from tokentrail.domain.policy import Caller, ValueVisibility, may_see_value
from tokentrail.domain.scopes import Scope, read_scope
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


def _runs(order: list[str]) -> list[str | tuple[str, ...]]:
    """The order as runs of static members (a tuple of names) between the dynamic ones (a name)."""
    runs: list[str | tuple[str, ...]] = []
    current: list[str] = []
    for key in order:
        if key in _DYNAMIC:
            if current:
                runs.append(tuple(current))
                current = []
            runs.append(key)
        else:
            current.append(key)
    if current:
        runs.append(tuple(current))
    return runs


_RUNS = _runs(_ORDER)


class FragmentCache:
    """Serialized static members of token objects, by token id, valid while the columns they were
    made from are unchanged: each entry holds the tuple of those columns (its key) and is used
    only when the row listed now has the same tuple, so any change to the token (rename,
    description, scopes, origin, expiry; refresh changes only the value, made per request) is a
    miss and a new dump, and a deleted token is simply never listed again. Bounded: past
    `max_entries` the oldest entries go first. Holds no value, nor anything a value is made from
    beyond the public columns."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, tuple[tuple[Any, ...], tuple[str, ...]]] = {}
        self._lock = threading.Lock()
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def static_runs(self, host: str | None, row: ListedToken) -> tuple[str, ...]:
        key = (host, row.name, row.description, row.origin_type, row.origin_resource_id, row.scopes, row.expires_at)
        entry = self._entries.get(row.id)
        if entry is not None and entry[0] == key:
            return entry[1]
        runs = self._dump(host, row)
        with self._lock:
            self.misses += 1
            self._entries.pop(row.id, None)
            while len(self._entries) >= self.max_entries:
                del self._entries[next(iter(self._entries))]
            self._entries[row.id] = (key, runs)
        return runs

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
        return tuple(
            ",".join(f"{_dumps(k)}:{_dumps(dumped[k])}" for k in run if k in dumped)
            for run in _RUNS
            if not isinstance(run, str)
        )


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
    host = signer.host
    sees = ValueVisibility(caller)
    cache = fragments
    objects = []
    for row in rows:
        static = iter(cache.static_runs(host, row))
        members = []
        for run in _RUNS:
            if run == "token":
                if sees(row.id, row.kind, row.workspace_id, row.scopes, partial(_parsed, row)):
                    # A value is `p.` and base64url: nothing in it needs escaping.
                    members.append(f'"token":"{signer.make(row.workspace_id, row.id, row.generation)}"')
            elif run == "last_used_at":
                used = last_used.get(row.id)
                members.append('"last_used_at":null' if used is None else f'"last_used_at":{_dumps(_instant(used))}')
            else:
                text = next(static)
                if text:
                    members.append(text)
        objects.append("{" + ",".join(members) + "}")
    before = "".join(f"{_dumps(k)}:{_dumps(v)}," for k, v in (head or {}).items())
    after = "".join(f",{_dumps(k)}:{_dumps(v)}" for k, v in (tail or {}).items())
    return ("{" + before + '"tokens":[' + ",".join(objects) + "]" + after + "}").encode("utf-8")


def _parsed(row: ListedToken) -> tuple[Scope, ...]:
    return tuple(read_scope(x) for x in row.scope_texts)


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
