"""The Incident page: look up which token a (leaked) value is, and revoke tokens in bulk.

- Lookup: the value is POSTed in the form's body (never in a URL), answered by
  `tokentrail.incident.lookup` (which records who looked up which token, never the value), and never
  written back into the page: the field comes back empty.
- Bulk revocation (ADMIN only): the selectors form → Preview (the plan from the read door, nothing
  written) → Confirm (the same selectors and the reason, CSRF-protected like every console POST),
  applied by `tokentrail.incident.revoke` as one change with one revocation id; the browser is then
  sent to the revocation's own page, read back from the audit trail.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends
from starlette.responses import RedirectResponse, Response

from tokentrail import incident
from tokentrail.api.ui.pages import Form, Page, UiRoute, poster, ui_instant, viewer
from tokentrail.domain.errors import Conflict, InvalidInput, LedgerError, NotFound
from tokentrail.domain.ledger import MAX_REASON_LENGTH, validate_reason
from tokentrail.domain.policy import Op, allows, authorize
from tokentrail.domain.scopes import SCOPE_TYPES
from tokentrail.projections.history import MAX_PAGE, AuditQuery
from tokentrail.projections.queries import TokenRow, WorkspaceRow
from tokentrail.reads import Identified, Selectors

router = APIRouter(route_class=UiRoute)

SELECTORS = ("created_by", "created_from", "created_to", "deployment", "resource", "scope_type")
REASONS = {
    "current": "It is the token's current value.",
    "grace": "The token was refreshed; this value is still accepted until its grace period ends.",
    "refreshed": "The token was refreshed: this value is no longer accepted.",
    "deleted": "The token was deleted: this value is no longer accepted.",
    "expired": "The JWT expired.",
}


@dataclass
class RevokeForm:
    """The selectors and the reason, as typed (to fill the forms again and carry them to Confirm)."""

    values: dict[str, str]
    reason: str

    @classmethod
    def empty(cls) -> RevokeForm:
        return cls({name: "" for name in SELECTORS}, "")

    @classmethod
    def from_form(cls, form: Form) -> RevokeForm:
        return cls({name: form.get(name).strip() for name in SELECTORS}, form.get("reason").strip())

    def selectors(self) -> Selectors:
        v = self.values
        return Selectors(
            created_by=v["created_by"] or None,
            created_from=ui_instant(v["created_from"], "Created from"),
            created_to=ui_instant(v["created_to"], "Created before"),
            deployment=v["deployment"] or None,
            resource=v["resource"] or None,
            scope_type=v["scope_type"] or None,
        )


def _render(page: Page, status: int = 200, **context: Any) -> Response:
    base: dict[str, Any] = {
        "can_revoke": allows(page.caller, Op.REVOKE),
        "scope_types": sorted(SCOPE_TYPES),
        "revoke": RevokeForm.empty(),
        "max_reason": MAX_REASON_LENGTH,
        "found": None,
        "found_admin_id": None,
        "reasons": REASONS,
        "lookup_error": None,
        "revoke_error": None,
        "plan": None,
        "changed": False,
        "revoked": None,
    }
    base.update(context)
    return page.render("incident.html", status=status, **base)


@router.get("/incident")
def incident_page(page: Page = Depends(viewer), revocation: str = "") -> Response:
    authorize(page.caller, Op.INVESTIGATE)
    if not revocation:
        return _render(page)
    try:
        revocation_id = str(uuid.UUID(revocation))
    except ValueError:
        raise InvalidInput("revocation must be a revocation id") from None
    query = AuditQuery(workspace_id=page.caller.workspace_id, revocation=revocation_id, events=("Deleted",))
    events, more = page.reads.audit_page(page.caller, query, None, MAX_PAGE)
    if not events:
        raise NotFound("Revocation not found")
    details = events[0].get("details") or {}
    revoked = {
        "id": revocation_id,
        "reason": details.get("reason") or "",
        "at": events[0]["at"],
        "actor": events[0]["actor"],
        "tokens": [(e["token_id"], e["token_name"]) for e in events],
        "more": more is not None,
    }
    return _render(page, revoked=revoked, flash=f"Revoked {len(events)}{'+' if more else ''} tokens.")


# -- lookup ---------------------------------------------------------------------------------------


@router.post("/incident/lookup")
def lookup(page: Page = Depends(poster)) -> Response:
    """Which token a value is. The value is read from the form and never rendered back."""
    authorize(page.caller, Op.INVESTIGATE)
    value = page.form.get("token").strip()
    try:
        if not value:
            raise InvalidInput("Paste a token value or a JWT to look it up.")
        found = incident.lookup(page.service, page.caller, value)
    except (InvalidInput, NotFound) as error:
        message = error.message
        if isinstance(error, NotFound):
            message = "No token of this workspace has or had this value (or it was not signed by this server)."
        return _render(page, status=error.status, lookup_error=message)
    return _render(page, found=found, found_admin_id=_admin_id(page, found))


def _admin_id(page: Page, found: Identified) -> str | None:
    """The admin token whose values sign the workspace's JWTs (a JWT's answer links to it)."""
    if not found.jwt:
        return None
    workspace = page.reads.workspace(page.caller)
    return workspace.admin_token_id if isinstance(workspace, WorkspaceRow) else None


# -- bulk revocation ------------------------------------------------------------------------------


@router.post("/incident/revoke")
def revoke(page: Page = Depends(poster)) -> Response:
    """Preview (`action=preview`: the plan, nothing written) or Confirm (`action=confirm`: revoke
    the tokens the preview showed, with its reason)."""
    authorize(page.caller, Op.REVOKE)
    form = RevokeForm.from_form(page.form)
    action = page.form.get("action", "preview")
    if action not in ("preview", "confirm"):
        raise InvalidInput("action must be preview or confirm")
    try:
        selectors = form.selectors()
        if form.reason or action == "confirm":
            validate_reason(form.reason)
        plan = page.reads.revocation_plan(page.caller, selectors)
        if action == "preview":
            return _render(page, revoke=form, plan=plan)
        previewed = set(page.form.getlist("planned"))
        if previewed != {row.id for row in plan}:
            raise Conflict("The tokens these selectors match changed since the preview: check the plan again.")
        revocation_id, _revoked = incident.revoke(page.service, page.caller, selectors, form.reason, dry_run=False)
    except LedgerError as error:
        if error.status == 403:
            raise
        plan_now = _plan_or_none(page, form)
        return _render(
            page,
            status=error.status,
            revoke=form,
            revoke_error=error.message,
            plan=plan_now,
            changed=isinstance(error, Conflict),
        )
    if revocation_id is None:
        return _render(page, revoke=form, plan=[], revoke_error="Nothing was revoked: no token matches any more.")
    return RedirectResponse(f"/ui/incident?revocation={revocation_id}", status_code=303)


def _plan_or_none(page: Page, form: RevokeForm) -> list[TokenRow] | None:
    """The plan as it stands, to show again beside a refusal (None when the selectors are the problem)."""
    try:
        return page.reads.revocation_plan(page.caller, form.selectors())
    except InvalidInput:
        return None
