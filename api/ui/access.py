"""The access page: who could READ, APPEND or DROP a Data Source or Pipe at an instant, through
which scope and filter; and, given a second instant, what was gained, lost and changed between."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.responses import Response

from tokentrail.api.ui.pages import Page, UiRoute, format_time, ui_instant, viewer
from tokentrail.domain.clock import now, to_micros
from tokentrail.domain.errors import InvalidInput
from tokentrail.domain.scopes import KINDS, PERMISSIONS

router = APIRouter(route_class=UiRoute)
ANY = "any"


@router.get("/access")
def access_page(page: Page = Depends(viewer)) -> Response:
    params = page.request.query_params
    form = {
        name: (params.get(name) or "").strip()[:256] for name in ("resource", "kind", "permission", "at", "compare")
    }
    form["kind"] = form["kind"] or "datasource"
    form["permission"] = form["permission"] or "READ"
    current = to_micros(now())
    known = sorted(page.reads.known_resources(page.caller, 0, current), key=lambda kr: (kr[1], kr[0]))
    context: dict[str, Any] = {
        "form": form,
        "known": known,
        "kinds": (*KINDS, ANY),
        "permissions": (*PERMISSIONS, ANY),
        "grants": None,
        "diff": None,
    }
    submitted = any(form[name] for name in ("resource", "at", "compare"))
    if submitted:
        try:
            context.update(_answer(page, form, current))
        except InvalidInput as error:
            return page.render("access.html", status=error.status, error=error.message, **context)
    return page.render("access.html", **context)


def _answer(page: Page, form: dict[str, str], current: int) -> dict[str, Any]:
    at = ui_instant(form["at"], "At") or current
    compare = ui_instant(form["compare"], "Compare with")
    resource = form["resource"] or None
    if compare is None:
        if resource is None:
            raise InvalidInput("Name a Data Source or Pipe, or give a second time to compare with")
        if ANY in (form["kind"], form["permission"]):
            raise InvalidInput("Choose a kind and a permission to ask who held it (Any is for comparing)")
        grants = page.reads.access(page.caller, resource, form["kind"], form["permission"], at)
        return {"grants": grants, "at": format_time(at, precise=True)}
    start, end = sorted((at, compare))
    # The Kind and Permission selectors filter the comparison whether or not a name is given;
    # "Any" leaves that one out.
    diff = page.reads.access_diff(
        page.caller,
        start,
        end,
        resource,
        None if form["kind"] == ANY else form["kind"],
        None if form["permission"] == ANY else form["permission"],
    )
    return {"diff": diff, "start": format_time(start, precise=True), "end": format_time(end, precise=True)}
