"""Read models to wire objects (through the marshmallow schemas)."""

from __future__ import annotations

from typing import Any

from tokentrail.api.schemas import TokenSchema, WorkspaceSchema
from tokentrail.domain.clock import format_instant
from tokentrail.domain.exposure import Interval, Reach
from tokentrail.domain.policy import Caller, may_see_value
from tokentrail.domain.scopes import read_scope
from tokentrail.projections.queries import TokenRow, WorkspaceRow
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
