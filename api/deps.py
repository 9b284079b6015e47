"""Request plumbing shared by the routes: the service, the caller, the parameters, the body."""

from __future__ import annotations

import uuid

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyQuery, HTTPBearer
from starlette.concurrency import run_in_threadpool

from tokentrail.api.wire import Params, request_id
from tokentrail.domain.errors import Unauthenticated
from tokentrail.domain.policy import Caller
from tokentrail.service import Service

# Token requests carry a few parameters or a JWT's scopes; a deployment carries datafiles of at most
# 1 MiB each. Anything larger is refused with 413 before it is read.
MAX_BODY = 8 * 1024 * 1024


# For OpenAPI (and the /docs "Authorize" button) only: `caller` reads the credentials itself, from
# the raw query string or a form body, as Tinybird's server does.
_query_token = APIKeyQuery(
    name="token",
    scheme_name="token",
    auto_error=False,
    description="A token value as `?token=<value>` (what Tinybird's CLIs send)",
)
_bearer = HTTPBearer(scheme_name="bearer", auto_error=False, description="`Authorization: Bearer <value>`")


async def documented_credentials(
    _query: str | None = Security(_query_token), _header: object = Security(_bearer)
) -> None:
    """Declares the two ways of passing a token; reads nothing itself. `async`: a plain `def`
    dependency costs a trip through the thread pool on every request."""


def get_service(request: Request) -> Service:
    return request.app.state.service


def request_context(request: Request) -> dict[str, str | None]:
    """Who is calling through what: a request id (echoed in X-Request-Id) and the origin."""
    if not hasattr(request.state, "request_id"):
        request.state.request_id = request_id(request.headers.get("x-request-id")) or uuid.uuid4().hex
    origin = request.headers.get("x-tokentrail-origin", "").lower()
    # "ui" is the console's own mark (it authenticates with origin="ui" itself): an API caller
    # must not make its changes read in the audit trail as made through the console.
    if origin not in ("cli", "api"):
        origin = "cli" if b"cli_version=" in request.scope.get("query_string", b"") else "api"
    return {"request_id": request.state.request_id, "origin": origin}


def token_value(request: Request, params: Params) -> str | None:
    value = params.get("token")
    if value:
        return value
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


async def params(request: Request) -> Params:
    body = await read_body(request)
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        body = b""  # files (a deployment's datafiles), not form-encoded parameters
    return Params.parse(request.scope.get("query_string", b""), body)


async def read_body(request: Request) -> bytes:
    if not hasattr(request.state, "body"):
        request.state.body = await request.body()
    return request.state.body


async def caller(request: Request, _: None = Depends(documented_credentials)) -> Caller:
    """Authenticate the request: `?token=` (what Tinybird's CLIs send) or a Bearer header."""
    service = get_service(request)
    p = await params(request)
    value = token_value(request, p)
    if not value:
        raise Unauthenticated("a token is required: pass ?token= or Authorization: Bearer")
    if not service.fresh():  # only a log that may have moved costs a thread-pool trip
        await run_in_threadpool(service.sync)
    return service.auth.authenticate(value, **request_context(request))
