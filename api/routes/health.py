"""Liveness, readiness and metrics: for load balancers and Prometheus, without a token."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from tokentrail.api.deps import get_service
from tokentrail.api.schemas import responses
from tokentrail.domain import clock
from tokentrail.domain.clock import format_instant, to_micros
from tokentrail.domain.errors import LedgerError, StoreUnavailable
from tokentrail.redact import redact
from tokentrail.service import Service

DEFAULT_READY_MAX_LAG = 10.0

router = APIRouter(tags=["operations"])


@router.get(
    "/",
    summary="Where things are: a browser goes to the console, a program gets the addresses",
    description="Needs no token. A request that accepts HTML is redirected (307) to the web console "
    "at `/ui`; anything else gets a JSON map of the console, the API reference and the "
    "operations routes.",
    response_model=None,
    responses=responses(
        {
            "type": "object",
            "properties": {k: {"type": "string"} for k in ("service", "console", "api_docs", "openapi")},
        }
    ),
)
async def index(request: Request) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/ui", status_code=307)
    return JSONResponse(
        {
            "service": "tokentrail",
            "console": "/ui",
            "api_docs": "/docs",
            "openapi": "/openapi.json",
            "tokens": "/v0/tokens",
            "audit": "/v0/audit",
            "health": "/healthz",
            "ready": "/readyz",
            "metrics": "/metrics",
        }
    )


@router.get(
    "/healthz",
    summary="Liveness: 200 while the process answers HTTP",
    description="Needs no token and does not touch the database (that is `/readyz`).",
    response_model=None,
    responses=responses({"type": "object", "properties": {"ok": {"type": "boolean"}}}),
)
async def healthz() -> JSONResponse:
    return JSONResponse({"ok": True})


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    description="Needs no token. Requests by route template, latency, projection lag, auth cache "
    "hits and misses, events written by type, revocation visibility. No label holds a token value "
    "or a token name.",
    response_class=Response,
    responses={
        200: {
            "description": "The metrics, in Prometheus text format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(request.app.state.metrics.render)  # reads the store
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/readyz",
    summary="Readiness: 200 while the database answers, 503 naming why not",
    description="Needs no token. `head` is the log's last position, `projected` what this server's "
    "read models include; 503 when the store does not answer, or when events older than "
    "`TOKENTRAIL_READY_MAX_LAG` seconds (default 10) cannot be projected (naming since when). With `TOKENTRAIL_AUDIT_SINK` set, `audit_sink` shows the sink's state "
    "(`ok`, `behind`, `lag_seconds`, `error`, `failing_since`, who delivers); a failing sink leaves "
    "the answer 200: it delays delivery, it does not make the server unfit for requests.",
    response_model=None,
    responses=responses(
        {
            "type": "object",
            "properties": {"ready": {"type": "boolean"}, "head": {"type": "integer"}, "projected": {"type": "integer"}},
        },
        503,
    ),
)
async def readyz(request: Request) -> JSONResponse:
    service = get_service(request)
    try:
        state = await run_in_threadpool(service.readiness)
        if state["projected"] < state["head"]:
            stalled = await run_in_threadpool(_stalled_projection, service)
            if stalled is not None:
                return JSONResponse(
                    {"error": stalled, **state},
                    status_code=503,
                    headers={"Retry-After": str(StoreUnavailable.retry_after)},
                )
            state = await run_in_threadpool(service.readiness)
    except StoreUnavailable as error:
        return JSONResponse(
            {"error": error.message}, status_code=503, headers={"Retry-After": str(StoreUnavailable.retry_after)}
        )
    sink = getattr(request.app.state, "audit_sink", None)
    if sink is not None:
        # Shown, not a reason to take the server out of rotation: a sink that is down delays
        # delivery and never fails an API request.
        try:
            state["audit_sink"] = await run_in_threadpool(sink.status)
        except Exception as error:  # noqa: BLE001 - the store answered a moment ago; say what happened
            state["audit_sink"] = {"target": sink.target.description, "ok": False, "error": type(error).__name__}
    return JSONResponse({"ready": True, **state})


def ready_lag_bound(service: Service) -> float:
    """`TOKENTRAIL_READY_MAX_LAG` seconds (default 10): how old the oldest event the read models
    do not include yet may be before the server is not ready."""
    raw = service.environ.get("TOKENTRAIL_READY_MAX_LAG", "").strip()
    try:
        bound = float(raw) if raw else DEFAULT_READY_MAX_LAG
    except ValueError:
        bound = DEFAULT_READY_MAX_LAG
    return bound if bound > 0 else DEFAULT_READY_MAX_LAG


def _stalled_projection(service: Service) -> str | None:
    """The read models are behind the log: catch them up, as a request would. None when that
    works or the oldest missing event is younger than the bound; else what is wrong, and since when."""
    reason = ""
    try:
        service.sync()
    except LedgerError as error:
        reason = f": {error.message}"
    except Exception as error:  # noqa: BLE001 - a projection that fails is what readiness reports
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        reason = f": the projector failed: {type(error).__name__}: {redact(first)}"
    events, seconds = service.projection_lag()
    if events == 0 or seconds <= ready_lag_bound(service):
        return None
    since = format_instant(to_micros(clock.now()) - int(seconds * 1_000_000))
    return (
        f"projection stalled: {events} events not projected, the oldest written at {since} "
        f"({seconds:.1f} s ago){reason}"
    )
