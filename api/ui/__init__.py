"""The web console at /ui: server-rendered pages over the same use cases and rules as the JSON API.

`router` holds every page; `STATIC_DIR` is what `/ui/static` serves (CSS and a little JavaScript).
"""

from __future__ import annotations

from fastapi import APIRouter

from tokentrail.api.ui import access, audit, incident, review, signin, tokens
from tokentrail.api.ui.pages import STATIC_DIR

router = APIRouter(include_in_schema=False)
for pages in (signin.router, tokens.router, audit.router, access.router, review.router, incident.router):
    router.include_router(pages, prefix="/ui")

__all__ = ["router", "STATIC_DIR"]
