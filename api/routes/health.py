"""Liveness, readiness and metrics: for load balancers and Prometheus, without a token."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from tokentrail.api.deps import get_service
from tokentrail.api.schemas import responses
from tokentrail.domain.errors import StoreUnavailable

router = APIRouter(tags=["operations"])


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
    "read models include.",
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
    try:
        state = await run_in_threadpool(get_service(request).readiness)
    except StoreUnavailable as error:
        return JSONResponse(
            {"error": error.message}, status_code=503, headers={"Retry-After": str(StoreUnavailable.retry_after)}
        )
    return JSONResponse({"ready": True, **state})
