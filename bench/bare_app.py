"""The HTTP baseline: a bare FastAPI app whose routes return a constant, served exactly like the
product (`uvicorn bench.bare_app:app`, 1 worker). `/sync` is a plain `def` route (run in the thread
pool, like tokentrail's handlers); `/async` an `async def` one (run on the event loop)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

app = FastAPI()
CONSTANT = {"valid": True, "allowed": True}


@app.get("/sync")
def constant_sync() -> dict[str, Any]:
    return CONSTANT


@app.get("/async")
async def constant_async() -> dict[str, Any]:
    return CONSTANT
