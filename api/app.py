"""The FastAPI application: routers, the one place where domain errors become HTTP answers."""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from eventsourcing import persistence as es_persistence
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tokentrail.api import ui
from tokentrail.api.deps import MAX_BODY, MAX_CLAIMED_REQUEST_ID
from tokentrail.api.heavy import HeavyReadGate, heavy_concurrency
from tokentrail.api.metrics import Metrics, MetricsMiddleware
from tokentrail.api.proxies import TrustedProxies
from tokentrail.api.routes import deployments, forward, health, hygiene, incident, ledger, tokens, workspaces
from tokentrail.api.ui.session_store import ConsoleSessions, SessionSettings
from tokentrail.domain.errors import LedgerError, StoreUnavailable
from tokentrail.redact import claimed
from tokentrail.service import Service
from tokentrail.sinks import AuditSink

log = logging.getLogger("tokentrail.api")
SWITCH_INTERVAL = 0.001  # seconds; Python's default is 0.005


def create_app(service: Service) -> FastAPI:
    # Read once here so that a malformed setting stops the server at start.
    sink = AuditSink.from_environ(service)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The audit sink delivers from its own thread while the server serves, never in a request.
        if sink is not None:
            sink.start()
        try:
            yield
        finally:
            if sink is not None:
                sink.stop()
            # On shutdown (uvicorn's SIGTERM or Ctrl-C), write the last uses not yet written.
            service.usage.close()

    app = FastAPI(
        lifespan=lifespan,
        title="tokentrail",
        version="0.1.0",
        description=(
            "A token ledger speaking Tinybird's Token API. Authenticate with `?token=<value>` or "
            '`Authorization: Bearer <value>`. Every error is JSON `{"error": "…"}`.'
        ),
    )
    app.state.service = service
    app.state.audit_sink = sink
    app.state.metrics = Metrics(service, sink)
    # Read once here so that a malformed setting stops the server at start.
    app.state.proxies = TrustedProxies.from_environ(service.environ)
    app.state.console_sessions = ConsoleSessions(
        service.write_engine, service.read_engine, SessionSettings.from_environ(service.environ)
    )
    # Introspection (/v0/auth) is the hottest route: its router is matched first.
    app.include_router(hygiene.router)  # /v0/workspace/settings, /v0/access/review
    app.include_router(workspaces.router)
    app.include_router(ledger.router)  # before tokens: its /v0/tokens/{x}/history must match first
    app.include_router(incident.router)  # before tokens too: /v0/tokens/{x}/exposure, /lookup, /revoke
    app.include_router(tokens.router)
    app.include_router(deployments.router)
    app.include_router(forward.router)
    app.include_router(ui.router)
    app.include_router(health.router)
    app.mount("/ui/static", StaticFiles(directory=ui.STATIC_DIR), name="ui-static")
    # Introspection is the hottest route. Its handler takes only the request, so a plain Starlette
    # route serves it ahead of everything else, without FastAPI's per-request dependency solving;
    # the FastAPI declaration of the same handler documents it in the OpenAPI schema.
    app.router.routes.insert(0, Route("/v0/auth", workspaces.introspect, methods=["GET"], include_in_schema=False))

    @app.exception_handler(LedgerError)
    async def _ledger_error(request: Request, error: LedgerError) -> JSONResponse:
        if isinstance(error, StoreUnavailable):
            _log_unavailable(request, error)
            return _unavailable(request, error.message)
        return _error(request, error.status, error.message)

    # The database down, unreachable or out of time: 503 with Retry-After, whichever layer saw it
    # (the event store's recorder, the read models' SQLAlchemy engine, psycopg itself).
    for unavailable in UNAVAILABLE_ERRORS:
        app.add_exception_handler(unavailable, _store_error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = {404: "Not found", 405: "Method not allowed"}.get(error.status_code, str(error.detail))
        return _error(request, error.status_code, message, getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(request, 400, f"invalid request: {where} {first.get('msg', '')}".strip())

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        # The route's template, not the path: a path may hold a token value (`/v0/tokens/p.…`).
        route = route_template(request)
        log.exception(
            "unexpected error handling %s %s (request id %s)",
            request.method,
            route,
            getattr(request.state, "request_id", None),
        )
        return _error(request, 500, "internal error; the request id identifies it in the server log")

    app.add_middleware(HeavyReadGate, concurrency=heavy_concurrency(service.environ))
    app.add_middleware(RequestIdMiddleware)
    # Outermost: counts every answer, the 413s of RequestIdMiddleware included.
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics, routes=app.router.routes)
    return app


UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    es_persistence.OperationalError,
    es_persistence.InterfaceError,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,  # no pooled connection within the pool's wait
    psycopg.OperationalError,
    psycopg.InterfaceError,
)


def _log_unavailable(request: Request, error: Exception) -> None:
    log.warning(
        "store unavailable handling %s %s (request id %s): %s: %s",
        request.method,
        route_template(request),
        getattr(request.state, "request_id", None),
        type(error).__name__,
        _first_line(error),
    )


async def _store_error(request: Request, error: Exception) -> JSONResponse:
    _log_unavailable(request, error)
    return _unavailable(
        request, "the database is unavailable or did not answer in time; nothing was changed, try again"
    )


def _unavailable(request: Request, message: str) -> JSONResponse:
    return _error(request, 503, message, {"Retry-After": str(StoreUnavailable.retry_after)})


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""


def route_template(request: Request) -> str:
    """The template of the route that matched (`/v0/tokens/{token}`), never the path itself.

    FastAPI records its route in the scope; plain Starlette routes (the fast `/v0/auth`) and
    mounts do not, so they are matched again here."""
    route = request.scope.get("route")
    if route is not None and hasattr(route, "path"):
        return str(route.path)
    scope = {**request.scope, "type": "http"}
    for candidate in request.app.router.routes:
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return str(getattr(candidate, "path", "(no route)"))
    return "(no route)"


def _error(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    headers = dict(headers or {})
    rid = getattr(request.state, "request_id", None)
    if rid:
        headers["X-Request-Id"] = rid
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class RequestIdMiddleware:
    """Gives every request an id of the server's making, echoes it in `X-Request-Id`, keeps an
    `X-Request-Id` the client sent as its claim, and refuses bodies over MAX_BODY with 413 before
    anything reads them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent_id = length = None
        for key, value in scope["headers"]:  # only the two headers read here are decoded
            key = key.lower()
            if key == b"x-request-id":
                sent_id = value.decode("latin-1")
            elif key == b"content-length":
                length = value.decode("latin-1")
        # The request id is always the server's own; one the client sent is kept apart, as a
        # claim (the audit records both, labelled).
        rid = uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["claimed_request_id"] = claimed(sent_id, MAX_CLAIMED_REQUEST_ID)
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
            response = JSONResponse(
                {"error": f"request body too large (at most {MAX_BODY} bytes)"},
                status_code=413,
                headers={"X-Request-Id": rid},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY:
                    raise _TooLarge()
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                if not any(k.lower() == b"x-request-id" for k, _ in message["headers"]):
                    message["headers"].append((b"x-request-id", rid.encode()))
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except _TooLarge:
            response = JSONResponse({"error": "request body too large"}, status_code=413)
            await response(scope, receive, send_with_id)


class _TooLarge(Exception):
    pass


def app_from_env() -> Any:
    """Uvicorn factory: `uvicorn --factory tokentrail.api.app:app_from_env`.

    The server hands the GIL over every millisecond rather than every 5: with heavy reads running
    in worker threads, the event loop that answers `/v0/auth` otherwise waits up to a whole
    interval at every hand-over (bench/heavy_reads.py: p99 under 30 heavy clients 91 -> 30 ms)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    return create_app(Service())
