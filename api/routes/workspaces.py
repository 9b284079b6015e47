"""Workspaces, regions and token introspection."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from tokentrail.api import present
from tokentrail.api.deps import caller, get_service, params, request_context, token_value
from tokentrail.api.schemas import (
    IntrospectionSchema,
    NewWorkspaceSchema,
    RegionsSchema,
    WorkspaceListSchema,
    WorkspaceSchema,
    query_param,
    responses,
)
from tokentrail.api.wire import Params
from tokentrail.domain.errors import InvalidInput, LedgerError, StoreUnavailable
from tokentrail.domain.policy import Caller
from tokentrail.domain.scopes import MAX_SCOPE_LENGTH, check_permission, parse_scope
from tokentrail.projections.queries import UserRow

router = APIRouter(tags=["workspaces"])
_INTROSPECTION = IntrospectionSchema()  # one instance: building a schema costs more than a dump


# First in the file and in the app: introspection is the hottest route.
@router.get(
    "/v0/auth",
    summary="Introspect the calling token: is it valid, may it do `permission`?",
    description="`valid` is false for a token that is unknown, refreshed out, deleted or expired.",
    response_model=None,
    openapi_extra={
        "parameters": [
            query_param("permission", "A scope to check, e.g. `ADMIN`, `DATASOURCES:READ:events`, `PIPES:READ:top`")
        ],
        "security": [{"token": []}, {"bearer": []}],
    },
    responses=responses(IntrospectionSchema(), 400),
)
async def introspect(request: Request) -> JSONResponse:
    # The hottest route (every query a client makes may be checked): no dependencies to solve; the
    # credentials are declared for OpenAPI in `openapi_extra` instead.
    p = await params(request)
    service = get_service(request)
    value = token_value(request, p)
    permission = p.get("permission")
    if permission is not None and len(permission) > MAX_SCOPE_LENGTH:
        raise InvalidInput(f"permission is longer than {MAX_SCOPE_LENGTH} characters")
    if not service.fresh():  # on the event loop unless the log may have moved
        await run_in_threadpool(service.sync)
    try:
        if not value:
            raise InvalidInput("a token is required: pass ?token= or Authorization: Bearer")
        who = service.auth.authenticate(value, **request_context(request))
    except LedgerError as error:
        if isinstance(error, (InvalidInput, StoreUnavailable)):
            raise
        return JSONResponse(_INTROSPECTION.dump({"valid": False, "allowed": False}))
    out: dict[str, Any] = {
        "valid": True,
        "workspace_id": who.workspace_id,
        "token_id": who.token_id,
        "name": who.name,
        "jwt": who.is_jwt,
        "allowed": None,
        "via": None,
        "filter": None,
    }
    if permission:
        # Parsed only for an authenticated caller: an anonymous one cannot make us parse SQL.
        grant = check_permission(who.scopes, parse_scope(permission))
        out.update(allowed=grant is not None, via=grant.via if grant else None, filter=grant.filter if grant else None)
    return JSONResponse(_INTROSPECTION.dump(out))  # already plain JSON: no jsonable_encoder walk


_WORKSPACE = {"response_model": None, "responses": responses(WorkspaceSchema(), 403, 404)}


@router.get("/v0/workspace", summary="The caller's workspace (Classic CLI start-up)", **_WORKSPACE)
@router.get("/v1/workspace", summary="The caller's workspace (Forward CLI start-up)", **_WORKSPACE)
def get_workspace(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    found = get_service(request).reads.workspace(who)
    if isinstance(found, UserRow):  # a user token's realm is its user
        return {"id": found.id, "name": found.email, "user_email": found.email, "user_id": found.id, "scope": "user"}
    return present.workspace_object(found, who)


@router.get(
    "/v0/regions",
    summary="Regions (none: this is a single-region server)",
    response_model=None,
    responses=responses(RegionsSchema()),
)
def regions() -> dict[str, Any]:
    return {"regions": []}


@router.post(
    "/v1/workspaces",
    summary="Create a workspace with its default tokens (user token)",
    response_model=None,
    openapi_extra={"parameters": [query_param("name", "The new workspace's name", required=True)]},
    responses=responses(NewWorkspaceSchema(), 400, 403, 409),
)
def create_workspace(request: Request, who: Caller = Depends(caller), p: Params = Depends(params)) -> dict[str, Any]:
    service = get_service(request)
    user = service.reads.user(who)
    setup = service.command(lambda: service.ledger.setup_workspace(p.get("name") or "", user.email, who))
    workspace = service.queries.workspace(str(setup.workspace.id))
    assert workspace is not None
    rows = [service.queries.token(str(t.id)) for t in setup.tokens]
    tokens = [present.token_object(service, r, None) for r in rows if r is not None]
    admin = next(t for t in tokens if t["name"] == "admin token")
    return NewWorkspaceSchema().dump(
        {**present.workspace_object(workspace, who), "scope": "admin", "token": admin["token"], "tokens": tokens}
    )


@router.get(
    "/v1/user/workspaces",
    summary="The workspaces of the user token's user",
    response_model=None,
    responses=responses(WorkspaceListSchema(), 403),
)
def user_workspaces(request: Request, who: Caller = Depends(caller)) -> dict[str, Any]:
    rows = get_service(request).reads.workspaces(who)
    return WorkspaceListSchema().dump(
        {"workspaces": [{**present.workspace_object(w, who), "scope": "admin"} for w in rows]}
    )
