"""The access review page: every token alive at an instant (now, or an "as of" instant) with its
scopes and filters, origin, creation, last refresh, last use, expiry and age, under a summary; and
its CSV, the same spreadsheet-safe file as `GET /v0/access/review?format=csv`. Who may read it is
the read door's rule (`Reads.access_review`), as for the API."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Depends
from starlette.responses import Response

from tokentrail.api.routes.hygiene import review_csv
from tokentrail.api.ui.pages import Page, UiRoute, format_time, ui_instant, viewer
from tokentrail.domain.clock import now, to_micros
from tokentrail.domain.errors import InvalidInput
from tokentrail.domain.policy import Op, authorize
from tokentrail.domain.scopes import read_scope
from tokentrail.projections.review import OLD_DAYS, UNUSED_DAYS, Review

router = APIRouter(route_class=UiRoute)


def _review(page: Page) -> tuple[str, int, Review]:
    """The `as_of` typed (to fill the form again), the instant reviewed and the review."""
    raw = (page.request.query_params.get("as_of") or "").strip()[:64]
    at = ui_instant(raw, "As of") or to_micros(now())
    return raw, at, page.reads.access_review(page.caller, at)


@router.get("/review")
def review_page(page: Page = Depends(viewer)) -> Response:
    try:
        raw, at, found = _review(page)
    except InvalidInput as error:
        raw = (page.request.query_params.get("as_of") or "").strip()[:64]
        authorize(page.caller, Op.READ_AUDIT)  # the read door's rule: a refused caller gets its 403 first
        return page.render("review.html", status=error.status, error=error.message, as_of=raw, review=None)
    summary = found.summary()
    return page.render(
        "review.html",
        as_of=raw,
        at=at,
        at_text=format_time(at, precise=bool(raw)),
        review=found,
        summary=summary,
        unused=summary[f"unused_{UNUSED_DAYS}_days"],
        unused_days=UNUSED_DAYS,
        old_days=OLD_DAYS,
        rows=[
            {"row": r, "scopes": [read_scope(x) for x in r.scopes], "unused": r.unused(at), "admin": r.admin}
            for r in found.rows
        ],
        csv_link="/ui/review.csv" + (f"?{urlencode({'as_of': raw})}" if raw else ""),
    )


@router.get("/review.csv")
def review_download(page: Page = Depends(viewer)) -> Response:
    _, _, found = _review(page)
    return Response(
        review_csv(found),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="access-review.csv"'},
    )
