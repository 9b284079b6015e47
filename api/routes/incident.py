"""Incident response: a token's exposure, lookup by value, bulk revocation. Each handler only
translates; `service.reads` and `tokentrail.incident` decide."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from tokentrail import incident
from tokentrail.api import present
from tokentrail.api.deps import caller, get_service, params, read_body
from tokentrail.api.heavy import RenderedInThread
from tokentrail.api.schemas import path_param, query_param, responses
from tokentrail.api.wire import Params, json_body
from tokentrail.domain.clock import parse_instant
from tokentrail.domain.errors import InvalidInput
from tokentrail.domain.policy import Caller
from tokentrail.reads import Selectors

router = APIRouter(tags=["incident response"], route_class=RenderedInThread)

_NULLABLE_STRING = {"type": ["string", "null"]}
_INTERVALS = {
    "type": "array",
    "items": {"type": "object", "properties": {"from": {"type": "string"}, "to": _NULLABLE_STRING}},
}
_REACH = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["kind", "resource", "permission", "via", "filter", "intervals"],
        "properties": {
            "kind": {"type": "string"},
            "resource": {"type": "string"},
            "permission": {"type": "string"},
            "via": {"type": "string"},
            "filter": {"type": "string"},
            "intervals": _INTERVALS,
        },
    },
}
_EXPOSURE = {
    "type": "object",
    "required": ["token_id", "name", "from", "to", "exposure", "jwts"],
    "properties": {
        "token_id": {"type": "string"},
        "name": {"type": "string"},
        "deleted": {"type": "boolean"},
        "generation": {"type": ["integer", "null"]},
        "from": _NULLABLE_STRING,
        "to": _NULLABLE_STRING,
        "valid": _INTERVALS,
        "exposure": _REACH,
        "escalation": {"type": "array", "items": {"type": "object"}},
        "jwts": {"type": "array", "items": {"type": "object"}},
    },
}
_LOOKUP = {
    "type": "object",
    "required": ["token_id", "name", "workspace_id", "generation", "valid_from", "valid_until", "valid_now", "reason"],
    "properties": {
        "token_id": {"type": "string"},
        "name": {"type": "string"},
        "workspace_id": {"type": "string"},
        "generation": {"type": ["integer", "null"]},
        "valid_from": {"type": "string"},
        "valid_until": _NULLABLE_STRING,
        "valid_now": {"type": "boolean"},
        "reason": {"type": "string", "enum": ["current", "grace", "refreshed", "deleted", "expired"]},
        "jwt": {"type": "boolean"},
    },
}
_REVOKED = {
    "type": "object",
    "required": ["revocation_id", "dry_run", "tokens"],
    "properties": {
        "revocation_id": _NULLABLE_STRING,
        "dry_run": {"type": "boolean"},
        "tokens": {
            "type": "array",
            "items": {"type": "object", "properties": {"token_id": {"type": "string"}, "name": {"type": "string"}}},
        },
    },
}
_SELECTORS = [
    query_param("created_by", "Tokens created by this token (id or name)"),
    query_param("created_from", "Tokens created at or after this instant"),
    query_param("created_to", "Tokens created before this instant"),
    query_param("deployment", "Tokens created or changed by this deployment id"),
    query_param("resource", "Tokens holding a scope on this datasource or pipe"),
    query_param("scope_type", "Tokens holding a scope of this type (`DATASOURCES:READ`, `ADMIN`, …)"),
]


def _instant(p: Params, name: str) -> int | None:
    raw = p.get(name)
    return parse_instant(raw) if raw else None


@router.get(
    "/v0/tokens/{ref:path}/exposure",
    summary="Everything a token (or one of its values) could reach, over which intervals",
    response_model=None,
    openapi_extra={
        "parameters": [
            path_param("ref", "The token's id, (past or present) name, or a value (current or not)"),
            query_param("from", "Only what could be reached from this instant"),
            query_param("to", "Only what could be reached before this instant"),
        ]
    },
    responses=responses(_EXPOSURE, 400, 403, 404),
)
def exposure(request: Request, who: Caller = Depends(caller), p: Params = Depends(params)) -> JSONResponse:
    ref = request.path_params["ref"]
    found = get_service(request).reads.exposure(who, ref, _instant(p, "from"), _instant(p, "to"))
    # Plain JSON already (a long-lived token's answer runs to thousands of intervals): answered as
    # is, without jsonable_encoder's walk over it.
    return JSONResponse(present.exposure_object(found))


@router.post(
    "/v0/tokens/lookup",
    summary="Which token a value is or was (the value in a JSON body, never in the URL)",
    description=(
        'Send `{"token": "<value>"}`. A value this server did not sign, or of another workspace, is a 404. '
        "The lookup is recorded in the audit trail (who looked up which token), never the value."
    ),
    response_model=None,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}
                }
            },
        }
    },
    responses=responses(_LOOKUP, 400, 403, 404),
)
def lookup(request: Request, who: Caller = Depends(caller), body: bytes = Depends(read_body)) -> dict[str, Any]:
    data = json_body(body)
    value = data.get("token") if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        raise InvalidInput('send the value as a JSON body: {"token": "<value>"}')
    return present.lookup_object(incident.lookup(get_service(request), who, value))


@router.post(
    "/v0/tokens/revoke",
    summary="Revoke (delete) every token matching all the selectors, as one audited change",
    description=(
        "At least one selector. Default tokens are never selected. `dry_run=true` answers the plan and "
        "writes nothing; otherwise `reason` is required and every deletion's audit event carries the "
        "answer's `revocation_id` (`GET /v0/audit?revocation=<id>`). One revocation deletes at most "
        "20,000 tokens (one transaction); a bigger plan is refused (400) whole."
    ),
    response_model=None,
    openapi_extra={
        "parameters": [
            *_SELECTORS,
            query_param("reason", "Why (required unless dry_run)"),
            query_param("dry_run", "`true`: the plan only, nothing written", enum=["true", "false"]),
        ]
    },
    responses=responses(_REVOKED, 400, 403, 409),
)
def revoke(request: Request, who: Caller = Depends(caller), p: Params = Depends(params)) -> dict[str, Any]:
    dry_run = (p.get("dry_run") or "false").lower()
    if dry_run not in ("true", "false", "1", "0"):
        raise InvalidInput("dry_run must be true or false")
    selectors = Selectors(
        created_by=p.get("created_by") or None,
        created_from=_instant(p, "created_from"),
        created_to=_instant(p, "created_to"),
        deployment=p.get("deployment") or None,
        resource=p.get("resource") or None,
        scope_type=p.get("scope_type") or None,
    )
    dry = dry_run in ("true", "1")
    revocation_id, tokens = incident.revoke(get_service(request), who, selectors, p.get("reason"), dry)
    return {
        "revocation_id": revocation_id,
        "dry_run": dry,
        "tokens": [{"token_id": token_id, "name": name} for token_id, name in tokens],
    }
