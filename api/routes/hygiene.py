"""Token hygiene: the access review (`GET /v0/access/review`) and the workspace's settings
(`GET|PUT /v0/workspace/settings`: the cap on token lifetimes). Each handler only translates."""

from __future__ import annotations

import csv
import io
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from tokentrail.api.deps import caller, get_service, params
from tokentrail.api.heavy import RenderedInThread
from tokentrail.api.routes.ledger import _cell, _instant
from tokentrail.api.schemas import query_param, responses
from tokentrail.api.wire import Params
from tokentrail.domain.clock import format_instant
from tokentrail.domain.errors import InvalidInput
from tokentrail.domain.policy import Caller
from tokentrail.domain.scopes import read_scope
from tokentrail.projections.review import Review, ReviewRow

router = APIRouter(tags=["hygiene"], route_class=RenderedInThread)

REVIEW_COLUMNS = (
    "token_id",
    "name",
    "kind",
    "scopes",
    "filters",
    "origin",
    "created_at",
    "created_by",
    "last_refresh_at",
    "last_used_at",
    "expires_at",
    "age_days",
)

_REVIEW_ROW = {
    "type": "object",
    "properties": {
        "token_id": {"type": "string"},
        "name": {"type": "string"},
        "kind": {"type": "string", "description": "custom, datafile, default or user"},
        "scopes": {"type": "array", "items": {"type": "object"}},
        "filters": {"type": "array", "items": {"type": "string"}},
        "origin": {"type": "object"},
        "created_at": {"type": "string"},
        "created_by": {"type": "object", "description": "`{token_id, name}` of the token that created it"},
        "last_refresh_at": {"type": "string", "nullable": True},
        "last_used_at": {"type": "string", "nullable": True},
        "used_after": {"type": "boolean", "description": "used since `as_of` (the last use before it is unknown)"},
        "expires_at": {"type": "string", "nullable": True},
        "age_seconds": {"type": "integer"},
    },
}


def _opt(micros: int | None) -> str | None:
    return format_instant(micros) if micros is not None else None


def row_object(row: ReviewRow) -> dict[str, Any]:
    return {
        "token_id": row.token_id,
        "name": row.name,
        "kind": row.kind,
        "scopes": [read_scope(x).wire() for x in row.scopes],
        "filters": row.filters,
        "origin": row.origin,
        "created_at": format_instant(row.created_at),
        "created_by": row.created_by,
        "last_refresh_at": _opt(row.last_refresh_at),
        "last_used_at": _opt(row.last_used_at),
        "used_after": row.used_after,
        "expires_at": _opt(row.expires_at),
        "age_seconds": row.age_seconds,
    }


def review_object(found: Review) -> dict[str, Any]:
    return {
        "as_of": format_instant(found.at),
        "summary": found.summary(),
        "tokens": [row_object(r) for r in found.rows],
    }


def review_csv(found: Review) -> str:
    """One line per token, every cell neutralised against formula injection (as the audit export)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(REVIEW_COLUMNS)
    for row in found.rows:
        origin = row.origin.get("type", "") + (f":{row.origin['resource_id']}" if row.origin.get("resource_id") else "")
        by = row.created_by or {}
        cells = {
            "token_id": row.token_id,
            "name": row.name,
            "kind": row.kind,
            "scopes": " ".join(row.scopes),
            "filters": " | ".join(row.filters),
            "origin": origin,
            "created_at": format_instant(row.created_at),
            "created_by": by.get("name") or by.get("token_id") or "",
            "last_refresh_at": _opt(row.last_refresh_at),
            "last_used_at": _opt(row.last_used_at),
            "expires_at": _opt(row.expires_at),
            "age_days": row.age_seconds // 86_400,
        }
        writer.writerow([_cell(cells[c]) for c in REVIEW_COLUMNS])
    return buffer.getvalue()


_REVIEW_RESPONSES = responses(
    {
        "type": "object",
        "required": ["as_of", "summary", "tokens"],
        "properties": {
            "as_of": {"type": "string"},
            "summary": {"type": "object"},
            "tokens": {"type": "array", "items": _REVIEW_ROW},
        },
    },
    400,
    403,
)
# `format=csv` answers the same rows as CSV: documented, so that clients (and the fuzzer) expect it.
_REVIEW_RESPONSES[200]["content"]["text/csv"] = {"schema": {"type": "string"}}


@router.get(
    "/v0/access/review",
    summary="The access review: every token alive at an instant, with its facts and a summary",
    description=(
        "One row per token alive at `as_of` (default: now): scopes and filters, origin, created at and "
        "by, last refresh, last use, expiry and age; and a summary (tokens by scope type, with ADMIN, "
        "unused for 90 days, older than a year, without expiry). ADMIN or TOKENS. `format=csv` answers "
        "a spreadsheet-safe CSV of the rows."
    ),
    response_model=None,
    openapi_extra={
        "parameters": [
            query_param("as_of", "The instant reviewed (default: now)"),
            query_param("format", "`json` (default) or `csv`", enum=["json", "csv"]),
        ]
    },
    responses=_REVIEW_RESPONSES,
)
def access_review(request: Request, who: Caller = Depends(caller), p: Params = Depends(params)) -> Any:
    fmt = (p.get("format") or "json").lower()
    if fmt not in ("json", "csv"):
        raise InvalidInput("format must be json or csv")
    at = _instant(p, "as_of", default_now=True)
    assert at is not None
    found = get_service(request).reads.access_review(who, at)
    if fmt == "csv":
        return Response(
            review_csv(found),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="access-review.csv"'},
        )
    return review_object(found)


_SETTINGS = {
    "type": "object",
    "required": ["max_token_lifetime"],
    "properties": {
        "max_token_lifetime": {
            "type": "integer",
            "nullable": True,
            "description": "Seconds: the longest life of a token created or refreshed (null: no cap)",
        }
    },
}


@router.get(
    "/v0/workspace/settings",
    summary="The workspace's token hygiene settings",
    response_model=None,
    responses=responses(_SETTINGS, 403, 404),
)
def get_settings(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    return get_service(request).reads.workspace_settings(who)


@router.put(
    "/v0/workspace/settings",
    summary="Change the workspace's token hygiene settings (ADMIN)",
    description=(
        "`max_token_lifetime` (seconds from 60, or `none`): a token created afterwards without an expiry "
        "expires after that long, one asked for with a later expiry is refused, a refresh brings a later "
        "expiry (or none) down to now + the cap, and `PUT /v0/tokens/{x}?expiration_time=` must stay "
        "within it. Default and user tokens, and tokens of deployments, are not capped. Recorded as an "
        "event (`SettingsChanged`)."
    ),
    response_model=None,
    openapi_extra={"parameters": [query_param("max_token_lifetime", "Seconds (at least 60), or `none`")]},
    responses=responses(_SETTINGS, 400, 403, 404),
)
def put_settings(request: Request, who: Caller = Depends(caller), p: Params = Depends(params)) -> dict[str, Any]:
    service = get_service(request)
    if "max_token_lifetime" not in p:
        raise InvalidInput("max_token_lifetime is required: seconds, or none")
    raw = (p.get("max_token_lifetime") or "").strip().lower()
    if raw == "none":
        cap = None
    elif raw.isascii() and raw.isdigit() and len(raw) <= 12:
        cap = int(raw)
    else:
        raise InvalidInput("max_token_lifetime must be whole seconds, or none")
    service.command(lambda: service.ledger.configure_workspace(who, cap))
    return service.reads.workspace_settings(who)
