"""Read models to wire objects (through the marshmallow schemas)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from tokentrail.api.schemas import TokenSchema, WorkspaceSchema
from tokentrail.domain.clock import format_instant
from tokentrail.domain.exposure import Interval, Reach
from tokentrail.domain.policy import Caller, ValueVisibility, may_see_value
from tokentrail.domain.scopes import Scope, read_scope
from tokentrail.domain.values import TokenSigner
from tokentrail.projections.queries import ListedKey, ListedToken, TokenRow, WorkspaceRow
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
# The static members around the two dynamic ones: three segments, each a tuple of names.
_SEGMENTS: list[tuple[str, ...]] = [()]
for _key in _ORDER:
    if _key in _DYNAMIC:
        _SEGMENTS.append(())
    else:
        _SEGMENTS[-1] += (_key,)


class _Entry(NamedTuple):
    host: str | None
    position: int  # the token's last event when the entry was made
    first: str  # `{"id":…` and the static members before the first dynamic one
    middle: str  # the static members between the dynamic ones
    last: str  # the static members after them, and `}`
    value: str  # the token's value (`TokenSigner.make`): in this process's memory only
    kind: str  # what the value's visibility depends on
    workspace_id: str
    scopes: str


class FragmentCache:
    """Serialized static members of token objects, by token id, valid while the token's row is
    unchanged: an entry is used only while the token's last event (`position`) is the one it was
    made from, so any change to the token (rename, description, scopes, expiry set or removed,
    refresh, delete: each an event) makes it a miss and a new dump, and a deleted token is never
    listed again (its entry ages out). Only the keys of the listed tokens are read on a hit; the
    rows of the misses are read in one go. Bounded: past `max_entries` (about a kilobyte each) the
    oldest entries go first. Each entry also keeps the token's value, signed once (signing ten
    thousand values was a third of a listing's time): in this process's memory only, as the key
    that makes every value is; never written anywhere, and put in an answer only for a caller the
    policy lets see it. A refresh is a new event, so the entry of a refreshed token is remade."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def entries(
        self, signer: TokenSigner, keys: list[ListedKey], load: Callable[[list[str]], dict[str, ListedToken]]
    ) -> list[tuple[str, _Entry]]:
        """(id, entry) of each listed token, in order; `load` reads the rows of the misses (one
        deleted since its key was read is left out)."""
        host = signer.host
        known = self._entries.get
        found: list[_Entry | None] = []
        missing: list[str] = []
        for key in keys:
            entry = known(key.id)
            if entry is not None and entry.position == key.position and entry.host == host:
                found.append(entry)
            else:
                found.append(None)
                missing.append(key.id)
        if not missing:
            return [(key.id, entry) for key, entry in zip(keys, found) if entry is not None]
        rows = load(missing)
        made = {token_id: self._make(signer, row) for token_id, row in rows.items()}
        with self._lock:
            self.misses += len(made)
            for token_id, entry in made.items():
                self._entries.pop(token_id, None)
                while len(self._entries) >= self.max_entries:
                    del self._entries[next(iter(self._entries))]
                self._entries[token_id] = entry
        out = []
        for key, entry in zip(keys, found):
            entry = entry if entry is not None else made.get(key.id)
            if entry is not None:
                out.append((key.id, entry))
        return out

    @staticmethod
    def _make(signer: TokenSigner, row: ListedToken) -> _Entry:
        origin: dict[str, Any] = {"type": row.origin_type}
        if row.origin_resource_id:
            origin["resource_id"] = row.origin_resource_id
        data = {
            "id": row.id,
            "name": row.name,
            "description": row.description,
            "scopes": [read_scope(x).wire() for x in row.scope_texts],
            "origin": origin,
            "host": signer.host,
            "expires_at": _instant(row.expires_at),
        }
        dumped = _token_schema.dump(data)
        # Every member is written `,"name":value`; the object's first one (`id`, static) loses its
        # comma to the opening brace, and the dynamic ones bring their own.
        first, middle, last = (
            "".join(f",{_dumps(k)}:{_dumps(dumped[k])}" for k in keys if k in dumped) for keys in _SEGMENTS
        )
        return _Entry(
            signer.host,
            row.position,
            "{" + first[1:],
            middle,
            last + "}",
            signer.make(row.workspace_id, row.id, row.generation),
            row.kind,
            row.workspace_id,
            row.scopes,
        )


fragments = FragmentCache()


def token_list_body(
    service: Service,
    keys: list[ListedKey],
    caller: Caller,
    load: Callable[[list[str]], dict[str, ListedToken]],
    head: dict[str, Any] | None = None,
    tail: dict[str, Any] | None = None,
) -> bytes:
    """The JSON body `{**head, "tokens": [token objects], **tail}` of the listed tokens, exactly
    as `JSONResponse` renders it with `token_objects(service, rows, caller)` as the list. `load`
    reads the rows the fragment cache misses (`Reads.listed_tokens`)."""
    listed = fragments.entries(service.signer, keys, load)
    last_used = service.usage.last_used_of(token_id for token_id, _ in listed)
    sees = ValueVisibility(caller)
    objects = []
    for token_id, e in listed:
        # A value is `p.` and base64url, an instant ISO 8601: nothing in them needs escaping.
        if sees(token_id, e.kind, e.workspace_id, e.scopes, _parsed):
            value = f',"token":"{e.value}"'
        else:
            value = ""
        used = last_used.get(token_id)
        use = ',"last_used_at":null' if used is None else f',"last_used_at":"{format_instant(used)}"'
        objects.append(
            f"{e.first}{value}{e.middle}{use}{e.last}" if _TOKEN_FIRST else f"{e.first}{use}{e.middle}{value}{e.last}"
        )
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
