"""Readiness: may a load balancer send this server requests? (The store must answer.)"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.deps import get_system
from api.schemas import responses
from domain.errors import StoreUnavailable

router = APIRouter(tags=["operations"])


@router.get(
    "/readyz",
    summary="Readiness: 200 while the database answers, 503 naming why not",
    description="Needs no token. `head` is the log's last position, `projected` what this server's "
    "read models include.",
    response_model=None,
    responses=responses(
        {"type": "object", "properties": {"ready": {"type": "boolean"}, "head": {"type": "integer"},
                                          "projected": {"type": "integer"}}},
        503,
    ),
)
async def readyz(request: Request) -> JSONResponse:
    try:
        state = await run_in_threadpool(get_system(request).readiness)
    except StoreUnavailable as error:
        return JSONResponse({"error": error.message}, status_code=503,
                            headers={"Retry-After": str(StoreUnavailable.retry_after)})
    return JSONResponse({"ready": True, **state})
