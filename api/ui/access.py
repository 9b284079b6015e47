"""The access page: who could READ, APPEND or DROP a Data Source or Pipe at an instant, through
which scope and filter; and, given a second instant, what was gained, lost and changed between."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.responses import Response

from tokentrail.api.ui.pages import Page, UiRoute, format_time, ui_instant, viewer
from tokentrail.domain.clock import now, to_micros
from tokentrail.domain.errors import InvalidInput, LedgerError
from tokentrail.domain.policy import Op, authorize
from tokentrail.domain.scopes import KINDS, PERMISSIONS, RESOURCE_NAME

router = APIRouter(route_class=UiRoute)


@router.get("/access")
def access_page(page: Page = Depends(viewer)) -> Response:
    authorize(page.caller, Op.READ_AUDIT)
    params = page.request.query_params
    form = {
        name: (params.get(name) or "").strip()[:256] for name in ("resource", "kind", "permission", "at", "compare")
    }
    form["kind"] = form["kind"] or "datasource"
    form["permission"] = form["permission"] or "READ"
    current = to_micros(now())
    workspace_id = page.caller.workspace_id
    known = sorted(page.history.known_resources(workspace_id, 0, current), key=lambda kr: (kr[1], kr[0]))
    context: dict[str, Any] = {
        "form": form,
        "known": known,
        "kinds": KINDS,
        "permissions": PERMISSIONS,
        "grants": None,
        "diff": None,
    }
    submitted = any(form[name] for name in ("resource", "at", "compare"))
    if submitted:
        try:
            context.update(_answer(page, form, current))
        except LedgerError as error:
            return page.render("access.html", status=error.status, error=error.message, **context)
    return page.render("access.html", **context)


def _answer(page: Page, form: dict[str, str], current: int) -> dict[str, Any]:
    _check(form)
    workspace_id = page.caller.workspace_id
    at = ui_instant(form["at"], "At") or current
    compare = ui_instant(form["compare"], "Compare with")
    resource = form["resource"] or None
    if compare is None:
        if resource is None:
            raise InvalidInput("Name a Data Source or Pipe, or give a second time to compare with")
        grants = page.history.access(workspace_id, resource, form["kind"], form["permission"], at)
        return {"grants": grants, "at": format_time(at, precise=True)}
    start, end = sorted((at, compare))
    diff = page.history.access_diff(
        workspace_id,
        start,
        end,
        resource,
        form["kind"] if resource else None,
        form["permission"] if resource else None,
    )
    return {"diff": diff, "start": format_time(start, precise=True), "end": format_time(end, precise=True)}


def _check(form: dict[str, str]) -> None:
    if form["resource"] and not RESOURCE_NAME.fullmatch(form["resource"]):
        raise InvalidInput("resource must name a datasource or pipe")
    if form["kind"] not in KINDS:
        raise InvalidInput("kind must be datasource or pipe")
    if form["permission"] not in PERMISSIONS or (form["kind"] == "pipe" and form["permission"] == "APPEND"):
        raise InvalidInput("permission must be READ, APPEND (datasources) or DROP")
