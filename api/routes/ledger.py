"""This project's own routes: point-in-time views, histories, the audit trail, access questions,
and the chain's verification and checkpoints."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tokentrail.api.deps import caller, get_service, params
from tokentrail.api.heavy import RenderedInThread
from tokentrail.api.schemas import path_param, query_param, responses
from tokentrail.api.wire import Params
from tokentrail.domain.clock import format_instant, now, parse_instant, to_micros
from tokentrail.domain.errors import InvalidInput, NotFound
from tokentrail.domain.policy import Caller, Op, authorize
from tokentrail.domain.refs import parse_ref
from tokentrail.domain.scopes import KINDS, PERMISSIONS, RESOURCE_NAME
from tokentrail.projections.history import AuditQuery, History
from tokentrail.projections.queries import TokenRow
from tokentrail.service import Service
from tokentrail.verify import make_checkpoint, verify_chain, workspace_view

router = APIRouter(tags=["ledger"], route_class=RenderedInThread)
CSV_COLUMNS = (
    "position",
    "at",
    "type",
    "workspace_id",
    "token_id",
    "token_name",
    "actor_token_id",
    "actor_name",
    "request_id",
    "origin",
    "deployment_id",
    "scopes_before",
    "scopes_after",
    "hash",
)


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


def history(request: Request) -> History:
    return request.app.state.history


def _instant(p: Params, name: str, default_now: bool = False) -> int | None:
    raw = p.get(name)
    if raw is None or raw == "":
        return to_micros(now()) if default_now else None
    return parse_instant(raw)


class LedgerViews:
    """Point-in-time variants of the Tinybird token routes (`?as_of=`)."""

    def __init__(self, service: Service, history: History) -> None:
        self.service = service
        self.history = history

    def tokens_as_of(self, who: Caller, raw: str) -> JSONResponse:
        at = parse_instant(raw)
        rows = self.history.tokens_as_of(who.workspace_id, at)
        # Plain JSON already: answered as is, without jsonable_encoder's walk over every token.
        return JSONResponse({"as_of": format_instant(at), "tokens": [as_of_object(r) for r in rows]})

    def token_as_of(self, who: Caller, ref: str, raw: str) -> dict[str, Any]:
        authorize(who, Op.READ_AUDIT)
        at = parse_instant(raw)
        token_id = resolve_any(self.service, self.history, who, ref, at)
        row = self.history.token_as_of(who.workspace_id, at, token_id=token_id) if token_id else None
        parsed = parse_ref(ref, self.service.signer)
        if row is None and parsed is not None and parsed.kind == "name":
            row = self.history.token_as_of(who.workspace_id, at, name=ref)
        if row is None:
            raise NotFound(f"Token not found as of {format_instant(at)}")
        return {"as_of": format_instant(at), **as_of_object(row)}


def as_of_object(row: TokenRow) -> dict[str, Any]:
    """A token object as it stood at an instant: never with a value."""
    from tokentrail.domain.scopes import read_scope

    return {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "scopes": [read_scope(x).wire() for x in row.scopes],
        "origin": row.origin,
        "host": None,
    }


def resolve_any(service: Service, hist: History, who: Caller, ref: str, at: int | None = None) -> str | None:
    """A token id of the caller's workspace from a value (current or not: the history of a
    refreshed-out value is what an investigation asks for), an id or a (past or present) name."""
    parsed = parse_ref(ref, service.signer)
    if parsed is None:
        return None
    if parsed.kind == "value":
        return parsed.token_id if parsed.workspace_id == who.workspace_id else None
    if parsed.kind == "id":
        row = service.queries.token(parsed.text)
        return parsed.text if row is not None and row.workspace_id == who.workspace_id else None
    current = service.queries.token_by_name(who.workspace_id, ref)
    if current is not None and at is None:
        return current.id
    ids = hist.token_ids_named(who.workspace_id, ref)
    return ids[0] if ids else (current.id if current else None)


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
    service, hist = get_service(request), history(request)
    token_id = resolve_any(service, hist, who, ref)
    if token_id is not None and token_id == who.token_id:
        # Its own history is reading itself: not for a value in its grace window, nor a JWT.
        own = service.queries.token(token_id)
        authorize(who, Op.READ, own.facts if own is not None else None)
    else:
        # Before "not found": a caller that may not read the trail learns nothing of which
        # names and ids exist.
        authorize(who, Op.READ_AUDIT)
    if token_id is None:
        raise NotFound("Token not found")
    events = hist.token_history(token_id)
    if not events or events[0]["workspace_id"] != who.workspace_id:
        raise NotFound("Token not found")
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
    )


@router.get(
    "/v0/audit",
    summary="The audit trail, filtered and paginated; ndjson/csv stream it whole",
    response_model=None,
    openapi_extra={"parameters": _AUDIT_PARAMS},
    responses=_AUDIT_RESPONSES,
)
def audit(request: Request, who: Caller = Depends(caller), p: Params = Depends(params)) -> Any:
    authorize(who, Op.READ_AUDIT)
    hist = history(request)
    query = audit_query(who, p)
    fmt = (p.get("format") or "json").lower()
    if fmt == "json":
        events, cursor = hist.audit_page(query, p.get("cursor"), p.int("limit", 100))
        return {"events": events, "next_cursor": cursor}
    if fmt == "ndjson":
        lines = (json.dumps(e, separators=(",", ":")) + "\n" for e in hist.audit_stream(query))
        return StreamingResponse(
            lines,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": 'attachment; filename="audit.ndjson"'},
        )
    if fmt == "csv":
        return StreamingResponse(
            audit_csv(hist.audit_stream(query)),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
        )
    raise InvalidInput("format must be json, ndjson or csv")


def audit_csv(events: Iterator[dict[str, Any]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for event in events:
        flat = {**event, "actor_token_id": event["actor"]["token_id"], "actor_name": event["actor"]["name"]}
        flat["scopes_before"] = json.dumps(event["scopes_before"]) if event["scopes_before"] is not None else ""
        flat["scopes_after"] = json.dumps(event["scopes_after"]) if event["scopes_after"] is not None else ""
        writer.writerow([_cell(flat.get(c)) for c in CSV_COLUMNS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # Keep spreadsheet tools from evaluating cells as formulas (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _access_params(p: Params) -> tuple[str, str, str]:
    resource = p.get("resource") or ""
    kind = (p.get("kind") or "datasource").lower()
    permission = (p.get("permission") or "READ").upper()
    if not RESOURCE_NAME.fullmatch(resource):
        raise InvalidInput("resource must name a datasource or pipe")
    if kind not in KINDS:
        raise InvalidInput("kind must be datasource or pipe")
    if permission not in PERMISSIONS or (kind == "pipe" and permission == "APPEND"):
        raise InvalidInput("permission must be READ, APPEND (datasources) or DROP")
    return resource, kind, permission


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
    authorize(who, Op.READ_AUDIT)
    resource, kind, permission = _access_params(p)
    at = _instant(p, "as_of", default_now=True)
    assert at is not None
    grants = history(request).access(who.workspace_id, resource, kind, permission, at)
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
    authorize(who, Op.READ_AUDIT)
    start, end = _instant(p, "from"), _instant(p, "to", default_now=True)
    if start is None or end is None:
        raise InvalidInput("from is required")
    if start > end:
        raise InvalidInput("from must not be after to")
    resource = kind = permission = None
    if p.get("resource"):
        resource, kind, permission = _access_params(p)
        kind = p.get("kind") and kind
        permission = p.get("permission") and permission
    elif p.get("kind") or p.get("permission"):
        kind = (p.get("kind") or "").lower() or None
        permission = (p.get("permission") or "").upper() or None
        if kind not in (None, *KINDS) or permission not in (None, *PERMISSIONS):
            raise InvalidInput("kind must be datasource or pipe; permission READ, APPEND or DROP")
    diff = history(request).access_diff(who.workspace_id, start, end, resource, kind, permission)
    return {"from": format_instant(start), "to": format_instant(end), **diff}


@router.get(
    "/v0/audit/verify",
    summary="Recompute the audit hash chain from the event store",
    response_model=None,
    responses=responses(_CHAIN, 403),
)
def audit_verify(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    authorize(who, Op.VERIFY)
    service = get_service(request)
    return workspace_view(service, who.workspace_id, verify_chain(service)).wire()


@router.get(
    "/v0/audit/checkpoint",
    summary="A signed checkpoint of the chain's head",
    response_model=None,
    responses=responses(_CHECKPOINT, 403),
)
def audit_checkpoint(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    authorize(who, Op.VERIFY)
    service = get_service(request)
    return make_checkpoint(service, service.checkpoint_key(), workspace_id=who.workspace_id)
