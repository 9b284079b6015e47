"""Request plumbing shared by the routes: the service, the caller, the parameters, the body."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyQuery, HTTPBearer
from starlette.concurrency import run_in_threadpool

from tokentrail.api.proxies import proxies
from tokentrail.api.wire import Params
from tokentrail.domain.errors import Unauthenticated
from tokentrail.domain.policy import Caller
from tokentrail.redact import claimed
from tokentrail.service import Service

# Token requests carry a few parameters or a JWT's scopes; a deployment carries datafiles of at most
# 1 MiB each. Anything larger is refused with 413 before it is read.
MAX_BODY = 8 * 1024 * 1024
# What the audit keeps of the free text a client sends about itself, at most.
MAX_USER_AGENT = 256
MAX_CLAIMED_ORIGIN = 64
MAX_CLAIMED_REQUEST_ID = 128


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


def request_context(request: Request) -> dict[str, Any]:
    """Who is calling through what: the server's request id (echoed in X-Request-Id) and the
    origin as the server knows it (`api`: the console and deployments set their own)."""
    if not hasattr(request.state, "request_id"):
        request.state.request_id = uuid.uuid4().hex
    return {"request_id": request.state.request_id, "origin": "api"}


def audit_context(request: Request, origin: str | None = None) -> dict[str, Any]:
    """`request_context` plus what a change records about where it came from: the client's
    address (X-Forwarded-For believed only from TOKENTRAIL_TRUSTED_PROXIES) and user agent as
    the server saw them, and, apart, what the client claims (X-Tokentrail-Origin, X-Request-Id)."""
    context = request_context(request)
    if origin is not None:
        context["origin"] = origin
    context["client"] = {
        "address": proxies(request).client_address(request),
        "user_agent": claimed(request.headers.get("user-agent"), MAX_USER_AGENT),
    }
    said = request.headers.get("x-tokentrail-origin")
    if said is None and b"cli_version=" in request.scope.get("query_string", b""):
        said = "cli"  # Tinybird's CLIs mark their requests with cli_version=: a claim too
    claims = {
        "origin": claimed(said, MAX_CLAIMED_ORIGIN),
        "request_id": getattr(request.state, "claimed_request_id", None),
    }
    context["claimed"] = {k: v for k, v in claims.items() if v is not None}
    return context


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
    return service.auth.authenticate(value, **audit_context(request))
