"""This project's own routes: point-in-time views, histories, the audit trail, access questions,
and the chain's verification and checkpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tokentrail.api.deps import caller, get_service, params
from tokentrail.api.export import CSV_COLUMNS, audit_body
from tokentrail.api.export import cell as _cell
from tokentrail.api.heavy import RenderedInThread
from tokentrail.api.schemas import path_param, query_param, responses
from tokentrail.api.wire import Params
from tokentrail.domain.clock import format_instant, now, parse_instant, to_micros
from tokentrail.domain.errors import InvalidInput
from tokentrail.domain.policy import Caller
from tokentrail.domain.scopes import read_scope
from tokentrail.projections.history import AuditQuery
from tokentrail.projections.queries import TokenRow
from tokentrail.reads import Reads

router = APIRouter(tags=["ledger"], route_class=RenderedInThread)


# OpenAPI declarations of what these routes read from the raw query string and answer.
_NULLABLE_STRING = {"type": ["string", "null"]}
_AUDIT_EVENT = {
    "type": "object",
    "required": ["position", "at", "type", "actor", "hash"],
    "properties": {
        "position": {"type": "integer"},
        "at": {"type": "string"},
        "type": {"type": "string"},
        "workspace_id": _NULLABLE_STRING,
        "token_id": _NULLABLE_STRING,
        "token_name": _NULLABLE_STRING,
        "actor": {"type": "object", "properties": {"token_id": _NULLABLE_STRING, "name": _NULLABLE_STRING}},
        "request_id": _NULLABLE_STRING,
        "origin": _NULLABLE_STRING,
        "deployment_id": _NULLABLE_STRING,
        "scopes_before": {"type": ["array", "null"]},
        "scopes_after": {"type": ["array", "null"]},
        "details": {"type": ["object", "null"]},
        "hash": {"type": "string"},
        "aggregate": {"type": "string", "description": "token, workspace, user, jwt or deployment"},
        "client": {
            "type": ["object", "null"],
            "description": "The client as the server saw it (null for events recorded before this was kept)",
            "properties": {"address": _NULLABLE_STRING, "user_agent": _NULLABLE_STRING},
        },
        "claimed": {
            "type": ["object", "null"],
            "description": "What the client said about itself (X-Tokentrail-Origin, X-Request-Id): unverified",
            "properties": {"origin": _NULLABLE_STRING, "request_id": _NULLABLE_STRING},
        },
    },
}
_GRANT = {
    "type": "object",
    "required": ["token_id", "name", "via", "filter", "jwt"],
    "properties": {
        "token_id": {"type": "string"},
        "name": {"type": "string"},
        "via": {"type": "string"},
        "filter": {"type": "string"},
        "jwt": {"type": "boolean"},
    },
}
_AUDIT_PARAMS = [
    query_param("from", "Events at or after this instant (ISO 8601 with an offset, or Unix seconds)"),
    query_param("to", "Events before this instant"),
    query_param("actor", "Id or name of the token that made the change"),
    query_param("token_id", "Events of this token"),
    query_param("token_name", "Events of tokens with this name (past names too)"),
    query_param("resource", "Events whose scopes before or after touch this datasource or pipe"),
    query_param("event", "Comma-separated event types: Created, ScopeAdded, ScopeRemoved, Refreshed, Deleted, …"),
    query_param("deployment", "The changes of one deployment id"),
    query_param("revocation", "The deletions of one bulk revocation (its `revocation_id`)"),
    query_param("cursor", "`next_cursor` of the previous page"),
    query_param("limit", "Events per page (default 100, at most 1000)", type="integer"),
    query_param("format", "`json` (default, paginated), `ndjson` or `csv` (the whole result, streamed)"),
]
_AUDIT_RESPONSES = responses(
    {
        "type": "object",
        "required": ["events", "next_cursor"],
        "properties": {"events": {"type": "array", "items": _AUDIT_EVENT}, "next_cursor": _NULLABLE_STRING},
    },
    400,
    403,
)
_AUDIT_RESPONSES[200]["content"].update(
    {"application/x-ndjson": {"schema": {"type": "string"}}, "text/csv": {"schema": {"type": "string"}}}
)
_ACCESS_FILTERS = [
    query_param("resource", "Datasource or pipe name"),
    query_param("kind", "`datasource` (default) or `pipe`"),
    query_param("permission", "`READ` (default), `APPEND` (datasources) or `DROP`"),
]
_CHANGE = {"type": "object", "properties": {"before": _GRANT, "after": _GRANT}}
_CHAIN = {
    "type": "object",
    "required": ["ok", "events_checked", "head"],
    "properties": {
        "ok": {"type": "boolean"},
        "events_checked": {"type": "integer"},
        "first_bad_position": {"type": ["integer", "null"]},
        "head": _NULLABLE_STRING,
        "reason": _NULLABLE_STRING,
    },
}
_CHECKPOINT = {
    "type": "object",
    "required": ["position", "head", "at", "key_id", "signature"],
    "properties": {
        "position": {"type": "integer"},
        "head": {"type": "string"},
        "at": {"type": "string"},
        "key_id": {"type": "string"},
        "signature": {"type": "string"},
    },
}


def reads(request: Request) -> Reads:
    return get_service(request).reads


def _instant(p: Params, name: str, default_now: bool = False) -> int | None:
    raw = p.get(name)
    if raw is None or raw == "":
        return to_micros(now()) if default_now else None
    return parse_instant(raw)


def tokens_as_of(
    request: Request, who: Caller, raw: str, limit: int | None = None, cursor: str | None = None
) -> JSONResponse:
    """`GET /v0/tokens?as_of=`: the token table as it stood then, without values; with `limit`
    or `cursor`, one page of it and `next_cursor`."""
    at = parse_instant(raw)
    rows, next_cursor = reads(request).tokens_as_of_page(who, at, limit, cursor)
    # Plain JSON already: answered as is, without jsonable_encoder's walk over every token.
    answer: dict[str, Any] = {"as_of": format_instant(at), "tokens": [as_of_object(r) for r in rows]}
    if limit is not None or cursor is not None:
        answer["next_cursor"] = next_cursor
    return JSONResponse(answer)


def token_as_of(request: Request, who: Caller, ref: str, raw: str) -> dict[str, Any]:
    """`GET /v0/tokens/{x}?as_of=`: one token as it stood then, without its value."""
    at = parse_instant(raw)
    return {"as_of": format_instant(at), **as_of_object(reads(request).token_as_of(who, ref, at))}


def as_of_object(row: TokenRow) -> dict[str, Any]:
    """A token object as it stood at an instant: never with a value."""
    return {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "scopes": [read_scope(x).wire() for x in row.scopes],
        "origin": row.origin,
        "host": None,
        "expires_at": format_instant(row.expires_at) if row.expires_at is not None else None,
    }


@router.get(
    "/v0/tokens/{ref:path}/history",
    summary="Every event of one token (deleted ones too)",
    response_model=None,
    openapi_extra={"parameters": [path_param("ref", "The token's id, value or (past or present) name")]},
    responses=responses(
        {
            "type": "object",
            "required": ["token_id", "events"],
            "properties": {"token_id": {"type": "string"}, "events": {"type": "array", "items": _AUDIT_EVENT}},
        },
        400,
        403,
        404,
    ),
)
def token_history(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    ref = request.path_params["ref"]  # not a declared parameter: any text is a name to look up
    token_id, events = reads(request).token_history(who, ref)
    return {"token_id": token_id, "events": events}


def audit_query(who: Caller, p: Params) -> AuditQuery:
    events = tuple(e for e in (p.get("event") or "").split(",") if e)
    return AuditQuery(
        workspace_id=who.workspace_id,
        start=_instant(p, "from"),
        end=_instant(p, "to"),
        actor=p.get("actor") or None,
        token_id=p.get("token_id") or None,
        token_name=p.get("token_name") or None,
        resource=p.get("resource") or None,
        events=events,
        deployment=p.get("deployment") or None,
        revocation=p.get("revocation") or None,
    )


@router.get(
    "/v0/audit",
    summary="The audit trail, filtered and paginated; ndjson/csv stream it whole",
    response_model=None,
    openapi_extra={"parameters": _AUDIT_PARAMS},
    responses=_AUDIT_RESPONSES,
)
def audit(request: Request, who: Caller = Depends(caller), p: Params = Depends(params)) -> Any:
    door = reads(request)
    query = audit_query(who, p)
    fmt = (p.get("format") or "json").lower()
    if fmt == "json":
        events, cursor = door.audit_page(who, query, p.get("cursor"), p.int("limit", 100))
        return {"events": events, "next_cursor": cursor}
    if fmt not in ("ndjson", "csv"):
        door.audit_rows(who, query)  # a caller that may not read the trail hears 403 first
        raise InvalidInput("format must be json, ndjson or csv")
    body = audit_body(door.audit_rows(who, query), fmt)
    if fmt == "ndjson":
        return StreamingResponse(
            body,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": 'attachment; filename="audit.ndjson"'},
        )
    return StreamingResponse(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
    )


__all__ = ["CSV_COLUMNS", "_cell"]  # also read by the hygiene routes and the tests


@router.get(
    "/v0/access",
    summary="Who held a permission on a datasource or pipe at an instant",
    response_model=None,
    openapi_extra={"parameters": [*_ACCESS_FILTERS, query_param("as_of", "The instant asked about (default: now)")]},
    responses=responses(
        {
            "type": "object",
            "required": ["resource", "kind", "permission", "as_of", "grants"],
            "properties": {
                "resource": {"type": "string"},
                "kind": {"type": "string"},
                "permission": {"type": "string"},
                "as_of": {"type": "string"},
                "grants": {"type": "array", "items": _GRANT},
            },
        },
        400,
        403,
    ),
)
def access(request: Request, who: Caller = Depends(caller), p: Params = Depends(params)) -> dict[str, Any]:
    resource = p.get("resource") or ""
    kind = (p.get("kind") or "datasource").lower()
    permission = (p.get("permission") or "READ").upper()
    at = _instant(p, "as_of", default_now=True)
    assert at is not None
    grants = reads(request).access(who, resource, kind, permission, at)
    return {"resource": resource, "kind": kind, "permission": permission, "as_of": format_instant(at), "grants": grants}


@router.get(
    "/v0/access/diff",
    summary="Permissions gained, lost and changed between two instants",
    response_model=None,
    openapi_extra={
        "parameters": [
            query_param("from", "The earlier instant (required)"),
            query_param("to", "The later instant (default: now)"),
            *_ACCESS_FILTERS,
        ]
    },
    responses=responses(
        {
            "type": "object",
            "required": ["from", "to", "gained", "lost", "changed"],
            "properties": {
                "from": {"type": "string"},
                "to": {"type": "string"},
                "gained": {"type": "array", "items": _GRANT},
                "lost": {"type": "array", "items": _GRANT},
                "changed": {"type": "array", "items": _CHANGE},
            },
        },
        400,
        403,
    ),
)
def access_diff(request: Request, who: Caller = Depends(caller), p: Params = Depends(params)) -> dict[str, Any]:
    start, end = _instant(p, "from"), _instant(p, "to", default_now=True)
    assert end is not None
    diff = reads(request).access_diff(
        who,
        start,
        end,
        p.get("resource") or None,
        (p.get("kind") or "").lower() or None,
        (p.get("permission") or "").upper() or None,
    )
    assert start is not None  # the door refuses a missing `from`
    return {"from": format_instant(start), "to": format_instant(end), **diff}


@router.get(
    "/v0/audit/verify",
    summary="Recompute the audit hash chain from the event store",
    response_model=None,
    responses=responses(_CHAIN, 403),
)
def audit_verify(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    return reads(request).verify(who).wire()


@router.get(
    "/v0/audit/checkpoint",
    summary="A signed checkpoint of the chain's head",
    response_model=None,
    responses=responses(_CHECKPOINT, 403),
)
def audit_checkpoint(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    return reads(request).checkpoint(who)
