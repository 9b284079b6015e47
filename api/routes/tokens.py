"""Tinybird's Token API: `/v0/tokens` and friends. Each handler only translates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from tokentrail import jwts, paging
from tokentrail.api import present
from tokentrail.api.deps import caller, get_service, params, read_body
from tokentrail.api.heavy import RenderedInThread
from tokentrail.api.routes import ledger
from tokentrail.api.schemas import (
    JwtRequestSchema,
    JwtResponseSchema,
    OkSchema,
    TokenListSchema,
    TokenSchema,
    form_body,
    json_schema,
    load,
    path_param,
    query_param,
    responses,
)
from tokentrail.api.wire import Params, json_body
from tokentrail.domain.clock import parse_duration
from tokentrail.domain.errors import Forbidden, InvalidInput, MethodNotAllowed
from tokentrail.domain.policy import Caller
from tokentrail.projections.queries import TokenRow
from tokentrail.service import Service

router = APIRouter(tags=["tokens"], route_class=RenderedInThread)

# OpenAPI declarations of the parameters the handlers read from the raw query string.
_AS_OF = query_param("as_of", "A past instant (ISO 8601 with offset, or Unix seconds): the state then, without values")
_NAME = query_param("name", "The token's name (form-encoded: `read+api+token`)", required=True)
_SCOPE = query_param(
    "scope",
    "A scope such as `DATASOURCES:READ:events:<sql_filter>`, repeated; sent unencoded, so `+` is a plus",
    many=True,
)
_DESCRIPTION = query_param("description", "Free text")
_ORIGIN = query_param("origin", "C (custom, the default), DS (datasource) or P (pipe)", enum=["C", "DS", "P"])
_RESOURCE_ID = query_param("resource_id", "The datasource or pipe of a DS/P origin")
_EXPIRATION = query_param(
    "expiration_time",
    "Unix seconds in the future. With a JSON body: a JWT of the body's scopes. Without a body: a static "
    "token that stops authenticating then",
    type="integer",
)
_REF = path_param("ref", "The token's id, name or value, percent-encoded (`read%20api%20token`)")
_CREATE_PARAMS = [_NAME, _SCOPE, _DESCRIPTION, _ORIGIN, _RESOURCE_ID, _EXPIRATION]
_UPDATE_PARAMS = [
    query_param("scope", "Replaces all the token's scopes with these (repeated, unencoded)", many=True),
    query_param("name", "A new name (unchanged when absent)"),
    query_param("description", "A new description (unchanged when absent)"),
    query_param("expiration_time", "Unix seconds in the future: the token expires then; `none` removes the expiry"),
]
_UNUSED_FOR = query_param(
    "unused_for",
    "Only tokens not used for this long (`90d`, `12h`, `30m`, `2w`, or seconds); never-used ones count from "
    "their creation",
)


_LIMIT = query_param(
    "limit",
    f"At most this many tokens (1 to {paging.MAX_LIMIT}), and a `next_cursor` for the next page; "
    "without `limit` nor `cursor`, every token and no `next_cursor` (as Tinybird answers)",
    type="integer",
    minimum=1,
    maximum=paging.MAX_LIMIT,
)
_CURSOR = query_param(
    "cursor",
    f"`next_cursor` of the previous page of the same listing (same workspace, same `as_of`), unchanged; "
    f"alone, pages of {paging.DEFAULT_LIMIT}",
)
# The listing: `tokens`, and `next_cursor` only when paged (`limit` or `cursor`).
_LISTING = json_schema(TokenListSchema())
_LISTING["properties"]["next_cursor"] = {
    "type": ["string", "null"],
    "description": "Only with `limit` or `cursor`: the next page's `cursor`, null on the last page",
}


@router.get(
    "/v0/tokens",
    summary="List the workspace's tokens (ADMIN or TOKENS)",
    description=(
        "In creation order. With `limit` (and then `cursor`), a page at a time: the answer adds "
        "`next_cursor`, null on the last page. A token that lives throughout the walk is on exactly "
        "one page; one created during it is on a later page; one deleted before its page is not "
        "listed. A bad `limit` or a cursor that is not this listing's is a 400. With `as_of`, the "
        "table as it stood then, in the order of each token's last change before then, pages the "
        "same way (the past does not change; an instant not yet past can). `unused_for` takes no paging."
    ),
    response_model=None,
    openapi_extra={"parameters": [_AS_OF, _UNUSED_FOR, _LIMIT, _CURSOR]},
    responses=responses(_LISTING, 400, 403),
)
def list_tokens(request: Request, who: Caller = Depends(caller), p: Params = Depends(params)) -> Response:
    service = get_service(request)
    limit, cursor = paging.parse_limit(p.get("limit")), p.get("cursor")
    if p.get("as_of"):
        return ledger.tokens_as_of(request, who, p.get("as_of"), limit, cursor)
    if "unused_for" in p:
        if limit is not None or cursor is not None:
            raise InvalidInput("unused_for takes no limit or cursor: it answers every stale token")
        found = service.reads.stale_tokens(who, parse_duration(p.get("unused_for") or ""))
        return JSONResponse({"tokens": present.token_objects(service, found.rows, who, found.last_used)})
    keys, next_cursor = service.reads.token_page(who, limit, cursor)
    paged = limit is not None or cursor is not None
    # The body is rendered here, as JSONResponse would render {"tokens": [TokenSchema dumps]}, from
    # per-token fragments (api/present.py): no dict per token, no jsonable_encoder walk.
    body = present.token_list_body(
        service,
        keys,
        who,
        lambda ids: service.reads.listed_tokens(who, ids),
        tail={"next_cursor": next_cursor} if paged else None,
    )
    return Response(body, media_type="application/json")


@router.post(
    "/v0/tokens",
    summary="Create a static token, or a JWT when expiration_time comes with a JSON body",
    description=(
        "A static token takes `name` and one or more `scope` (query or form body), and optionally "
        "`expiration_time` (Unix seconds) with no body: it then stops authenticating at that instant "
        "(under the workspace's `max_token_lifetime`, a token without one expires after that long). "
        'A JWT takes `name`, `expiration_time` and a JSON body `{"scopes": [...], "limits": {"rps": N}}` '
        'of any Content-Type, and answers `{"token": "<jwt>", ...}`: `expiration_time` with a non-empty '
        "body is always a JWT request, as Tinybird's CLIs send it."
    ),
    response_model=None,
    openapi_extra={
        "parameters": _CREATE_PARAMS,
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {"schema": json_schema(JwtRequestSchema())},
                **form_body(*_CREATE_PARAMS)["content"],
            },
        },
    },
    responses=responses(
        {"oneOf": [json_schema(TokenSchema()), json_schema(JwtResponseSchema())]},
        400,
        403,
        409,
        413,
        ok_description="The token object (static) or the JWT",
    ),
)
def create_token(
    request: Request,
    who: Caller = Depends(caller),
    p: Params = Depends(params),
    body: bytes = Depends(read_body),
) -> dict[str, Any]:
    service = get_service(request)
    if "expiration_time" in p and body.strip():
        # Tinybird's JWT create: expiration_time and a JSON body of scopes. Without a body,
        # expiration_time is a static token's expiry.
        return _create_jwt(service, who, p, body)
    origin: dict[str, Any] = {"type": p.get("origin") or "C"}
    if p.get("resource_id"):
        origin["resource_id"] = p.get("resource_id")
    expires = _expiry(p) if "expiration_time" in p else None
    change = service.command(
        lambda: service.ledger.create_token(
            who, p.get("name") or "", p.getlist("scope"), p.get("description") or "", origin, expires_at=expires
        )
    )
    return present.token_object(service, _row(service, str(change.token.id)), who)


def _create_jwt(service: Service, who: Caller, p: Params, body: bytes) -> dict[str, Any]:
    data = load(JwtRequestSchema(), json_body(body))
    issued = jwts.issue(service, who, p.get("name") or "", p.int("expiration_time"), data["scopes"], data.get("limits"))
    return JwtResponseSchema().dump(issued)


def _expiry(p: Params, allow_none: bool = False) -> int | None:
    """`expiration_time`: Unix seconds (digits only), or `none` where removing is allowed."""
    raw = (p.get("expiration_time") or "").strip()
    if allow_none and raw.lower() == "none":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise InvalidInput(
            "expiration_time must be Unix seconds (a whole number) in the future" + (", or none" if allow_none else "")
        )
    return int(raw)


def token_ref(request: Request) -> str:
    """The `{ref}` path segment, percent-decoded. Read here rather than declared as a FastAPI
    parameter: it needs no validation (any text is a name to look up), so no 422 can arise."""
    return request.path_params["ref"]


@router.get(
    "/v0/tokens/{ref:path}/refresh",
    summary="Refused: refresh is a POST",
    status_code=405,
    response_model=None,
    openapi_extra={"parameters": [_REF]},
    responses=responses(None, 404, 405),  # 404: a ref no route matches (one with a line break)
)
def refresh_get() -> None:
    raise MethodNotAllowed("refresh must be done with POST")


@router.post(
    "/v0/tokens/{ref:path}/refresh",
    summary="Give a token a new value (same id)",
    description=(
        "Needs ADMIN or TOKENS (a token cannot refresh itself otherwise). The previous value stops "
        "working at once, or after `grace_seconds`; meanwhile it only authenticates (it cannot "
        "manage tokens, refresh, issue JWTs or deploy). Each refreshed-out value keeps its own grace."
    ),
    response_model=None,
    openapi_extra={
        "parameters": [
            _REF,
            query_param("grace_seconds", "Keep the previous value working this long", type="integer", minimum=0),
        ]
    },
    responses=responses(TokenSchema(), 400, 403, 404, 409),
)
def refresh_token(
    request: Request, ref: str = Depends(token_ref), who: Caller = Depends(caller), p: Params = Depends(params)
) -> dict[str, Any]:
    service = get_service(request)
    grace = p.int("grace_seconds", 0, minimum=0) or 0
    change = service.command(lambda: service.ledger.refresh_token(who, ref, grace))
    return present.token_object(service, _row(service, str(change.token.id)), who)


@router.get(
    "/v0/tokens/{ref:path}",
    summary="One token by id, name or value",
    description="Any valid token may read itself; reading others needs ADMIN or TOKENS.",
    response_model=None,
    openapi_extra={"parameters": [_REF, _AS_OF]},
    responses=responses(TokenSchema(), 400, 403, 404),
)
def get_token(
    request: Request, ref: str = Depends(token_ref), who: Caller = Depends(caller), p: Params = Depends(params)
) -> dict[str, Any]:
    service = get_service(request)
    if p.get("as_of"):
        return ledger.token_as_of(request, who, ref, p.get("as_of"))
    return present.token_object(service, service.reads.token(who, ref), who)


@router.put(
    "/v0/tokens/{ref:path}",
    summary="Replace scopes (scope=…), rename, describe, set or remove the expiry",
    description="Parameters may also come in a form-encoded body without Content-Type (long scope lists).",
    response_model=None,
    openapi_extra={"parameters": [_REF, *_UPDATE_PARAMS], "requestBody": form_body(*_UPDATE_PARAMS)},
    responses=responses(TokenSchema(), 400, 403, 404, 409, 413),
)
def update_token(
    request: Request, ref: str = Depends(token_ref), who: Caller = Depends(caller), p: Params = Depends(params)
) -> dict[str, Any]:
    service = get_service(request)
    scopes = p.getlist("scope")
    expiry = (_expiry(p, allow_none=True),) if "expiration_time" in p else None
    change = service.command(
        lambda: service.ledger.update_token(
            who,
            ref,
            scopes=scopes if scopes else None,
            name=p.get("name") if p.get("name") else None,
            description=p.get("description"),
            expiry=expiry,
        )
    )
    return present.token_object(service, _row(service, str(change.token.id)), who)


@router.delete(
    "/v0/tokens/{ref:path}",
    summary="Delete a token (not a default one)",
    response_model=None,
    openapi_extra={"parameters": [_REF]},
    responses=responses(OkSchema(), 403, 404, 409),
)
def delete_token(request: Request, ref: str = Depends(token_ref), who: Caller = Depends(caller)) -> dict[str, Any]:
    service = get_service(request)
    service.command(lambda: service.ledger.delete_token(who, ref))
    return {"ok": True}


def _row(service: Service, token_id: str) -> TokenRow:
    row = service.queries.token(token_id)
    if row is None:  # the command's events are projected before we get here
        raise Forbidden("token vanished")
    return row
