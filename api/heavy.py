"""Heavy reads run a few at a time, so that they cannot starve introspection.

An access diff, an audit page of a thousand rows, an export, a verification of the whole chain or a
listing "as of" an instant costs tens to hundreds of milliseconds of Python each. Thirty of them at
once filled the thread pool and, through the GIL, pushed `/v0/auth` (a few microseconds of work) to
seconds. This ASGI middleware lets at most `HEAVY_CONCURRENCY` of them run at a time per process;
the others wait on the event loop (costing nothing) for a slot, and everything else, introspection
first, passes straight through. Their answers are also encoded in the worker thread
(`RenderedInThread`), not on the event loop that answers introspection.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
from collections.abc import Callable
from typing import Any

import anyio
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEAVY_CONCURRENCY = 2


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's `malloc_trim`: CPython returns freed objects to malloc, which keeps the pages;
    this gives them back to the system. None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _malloc_trim()

# Paths whose every GET is heavy (API and console); plus any GET carrying `as_of=`.
HEAVY_PATHS = frozenset(
    {
        "/v0/audit",
        "/v0/access",
        "/v0/access/diff",
        "/v0/audit/verify",
        "/v0/audit/checkpoint",
        "/ui/audit",
        "/ui/access",
        "/ui/audit/verify",
        "/ui/audit/checkpoint",
    }
)
HEAVY_PREFIXES = ("/ui/audit/export.",)


def heavy_concurrency(environ: dict[str, str]) -> int:
    """TOKENTRAIL_HEAVY_READS: heavy reads at a time per process (default 2; 0: no limit)."""
    text = environ.get("TOKENTRAIL_HEAVY_READS", "").strip()
    if not text:
        return HEAVY_CONCURRENCY
    if not text.isdigit():
        raise ValueError("TOKENTRAIL_HEAVY_READS must be a whole number (0: no limit)")
    return int(text)


def is_heavy(scope: Scope) -> bool:
    if scope.get("method") != "GET":
        return False
    path = scope.get("path", "")
    if path in HEAVY_PATHS or path.startswith(HEAVY_PREFIXES):
        return True
    if path.startswith("/v0/tokens/") and path.endswith("/history"):
        return True
    query = scope.get("query_string", b"")
    return b"as_of=" in query and path.startswith(("/v0/tokens", "/ui/"))


class HeavyReadGate:
    """Admits heavy reads `HEAVY_CONCURRENCY` at a time; the slot is held until the answer has been
    sent in full (a streamed export included)."""

    def __init__(self, app: ASGIApp, concurrency: int = HEAVY_CONCURRENCY) -> None:
        self.app = app
        self.concurrency = concurrency
        self._limiter: anyio.CapacityLimiter | None = None  # made on the server's event loop
        self._running = 0  # heavy reads admitted or waiting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.concurrency or not is_heavy(scope):
            await self.app(scope, receive, send)
            return
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.concurrency)
        # The body is read before a slot is taken (every route reads it anyway, and the outer
        # middleware bounds it): a client, authenticated or not, that announces a body and never
        # sends it must not hold a slot, and with two such connections every heavy read.
        messages = await _whole_request(receive)
        if messages[-1]["type"] == "http.disconnect":
            return  # gone before its request was complete: nobody to answer
        self._running += 1
        try:
            async with self._limiter:
                await self.app(scope, _replayed(messages, receive), send)
        finally:
            self._running -= 1
            if self._running == 0 and _MALLOC_TRIM is not None:
                # The last heavy read is done: hand the memory its rows took back to the system,
                # so that a burst of exports or diffs does not leave the server at its peak size.
                await anyio.to_thread.run_sync(_MALLOC_TRIM, 0)


async def _whole_request(receive: Receive) -> list[Message]:
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def _replayed(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


class RenderedInThread(APIRoute):
    """A route whose plain-`def` endpoint's dict or list answer is encoded and rendered to JSON in
    the worker thread that ran it. (FastAPI otherwise encodes a `def` endpoint's answer on the
    event loop: for an audit page of a thousand rows that held up every `/v0/auth` behind it.)"""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not inspect.iscoroutinefunction(endpoint):
            endpoint = _rendered(endpoint, kwargs.get("status_code") or 200)
        super().__init__(path, endpoint, **kwargs)


def _rendered(endpoint: Callable[..., Any], status_code: int) -> Callable[..., Any]:
    @functools.wraps(endpoint)  # FastAPI reads the parameters (dependencies) through __wrapped__
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = endpoint(*args, **kwargs)
        if isinstance(result, (dict, list)):
            return JSONResponse(jsonable_encoder(result), status_code=status_code)
        return result

    return wrapper
