"""The audit page: the trail with filters, paged by cursor; CSV/NDJSON exports streamed from the
trail; the hash chain's verification and a signed checkpoint (ADMIN only, as in the API)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse, Response, StreamingResponse

from tokentrail.api.export import audit_body
from tokentrail.api.ui.pages import Page, UiRoute, ui_instant, viewer
from tokentrail.api.ui.timeline import ScopeDiff
from tokentrail.domain.errors import InvalidInput
from tokentrail.domain.policy import Op, allows
from tokentrail.projections.history import MAX_PAGE, AuditQuery

router = APIRouter(route_class=UiRoute)

EVENT_TYPES = (
    "Created",
    "ScopeAdded",
    "ScopeRemoved",
    "Renamed",
    "DescriptionChanged",
    "Refreshed",
    "ExpirySet",
    "Deleted",
    "Issued",
    "Deployed",
    "TokenLookedUp",
)
FILTERS = ("from", "to", "actor", "token", "resource", "event", "deployment", "revocation")
PAGE_SIZES = (25, 50, 100, 250)


@dataclass
class AuditFilters:
    """The filter form's fields, as typed (to fill the form again and to build links)."""

    values: dict[str, str]
    limit: int

    @classmethod
    def from_query(cls, params: Any) -> AuditFilters:
        values = {name: (params.get(name) or "").strip()[:256] for name in FILTERS}
        raw_limit = params.get("limit") or "50"
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
            raise InvalidInput(f"limit must be from 1 to {MAX_PAGE}")
        if values["event"] and values["event"] not in EVENT_TYPES:
            raise InvalidInput(f"event must be one of {', '.join(EVENT_TYPES)}")
        return cls(values, int(raw_limit))

    def query(self, workspace_id: str) -> AuditQuery:
        v = self.values
        token_id = token_name = None
        if v["token"]:
            try:
                token_id = str(uuid.UUID(v["token"]))
            except ValueError:
                token_name = v["token"]
        return AuditQuery(
            workspace_id=workspace_id,
            start=ui_instant(v["from"], "From"),
            end=ui_instant(v["to"], "Until"),
            actor=v["actor"] or None,
            token_id=token_id,
            token_name=token_name,
            resource=v["resource"] or None,
            events=(v["event"],) if v["event"] else (),
            deployment=v["deployment"] or None,
            revocation=v["revocation"] or None,
        )

    def link(self, **extra: str) -> str:
        fields = {k: x for k, x in self.values.items() if x}
        if self.limit != 50:
            fields["limit"] = str(self.limit)
        fields.update(extra)
        return urlencode(fields)

    @property
    def active(self) -> bool:
        return any(self.values.values())


@router.get("/audit")
def audit_page(page: Page = Depends(viewer)) -> Response:
    params = page.request.query_params
    filters = AuditFilters.from_query(params)
    cursor = params.get("cursor") or None
    context: dict[str, Any] = {
        "filters": filters,
        "event_types": EVENT_TYPES,
        "page_sizes": PAGE_SIZES,
        "export_query": filters.link(),
        "can_verify": allows(page.caller, Op.VERIFY),
        "rows": [],
        "next_link": None,
        "first_link": f"/ui/audit?{filters.link()}" if cursor else None,
    }
    try:
        events, next_cursor = page.reads.audit_page(
            page.caller, filters.query(page.caller.workspace_id), cursor, filters.limit
        )
    except InvalidInput as error:  # a bad time or cursor: said beside the filters
        return page.render("audit.html", status=error.status, error=error.message, **context)
    context["rows"] = [(e, ScopeDiff.between(e["scopes_before"], e["scopes_after"])) for e in events]
    if next_cursor:
        context["next_link"] = f"/ui/audit?{filters.link(cursor=next_cursor)}"
    return page.render("audit.html", **context)


@router.get("/audit/export.{fmt}")
def audit_export(fmt: str, page: Page = Depends(viewer)) -> Response:
    """The filtered trail, streamed whole (a page at a time from the read model)."""
    query = AuditFilters.from_query(page.request.query_params).query(page.caller.workspace_id)
    if fmt not in ("ndjson", "csv"):
        page.reads.audit_rows(page.caller, query)  # a caller that may not read the trail hears 403 first
        raise InvalidInput("export format must be csv or ndjson")
    body = audit_body(page.reads.audit_rows(page.caller, query), fmt)
    if fmt == "ndjson":
        return StreamingResponse(
            body,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": 'attachment; filename="audit.ndjson"'},
        )
    return StreamingResponse(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
    )


@router.get("/audit/verify")
def audit_verify(page: Page = Depends(viewer)) -> Response:
    """Recompute the hash chain; `?partial=1` answers the status box alone (for the audit page)."""
    report = page.reads.verify(page.caller)
    partial = page.request.query_params.get("partial") == "1"
    return page.render("audit_verify.html", report=report, partial=partial)


@router.get("/audit/checkpoint")
def audit_checkpoint(page: Page = Depends(viewer)) -> Response:
    checkpoint = page.reads.checkpoint(page.caller)
    return JSONResponse(
        checkpoint,
        headers={"Content-Disposition": f'attachment; filename="tokentrail-checkpoint-{checkpoint["position"]}.json"'},
    )
