"""The Auth Tokens page and the token page: list, create, rename, edit scopes, copy, refresh and
delete, each through the ledger's use cases with the signed-in token as the caller."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends
from starlette.responses import RedirectResponse, Response

from tokentrail.api.deps import audit_context
from tokentrail.api.ui import session as sessions
from tokentrail.api.ui.editor import PERMISSIONS_BY_KIND, WORKSPACE_SCOPES, Editor
from tokentrail.api.ui.exposure import ExposureView, exposure_view
from tokentrail.api.ui.pages import Page, SignInRequired, UiRoute, poster, ui_instant, viewer
from tokentrail.api.ui.timeline import timeline
from tokentrail.domain.clock import now, to_micros
from tokentrail.domain.errors import InvalidInput, LedgerError, NotFound
from tokentrail.domain.ledger import MAX_GRACE_SECONDS
from tokentrail.domain.policy import (
    Op,
    allows,
    in_reach,
    may_see_value,
    require_token_manager,
)
from tokentrail.domain.scopes import Scope
from tokentrail.projections.queries import TokenRow

router = APIRouter(route_class=UiRoute)

# Messages after a redirect, by key: only these fixed texts can reach the page through the URL.
DONE = {
    "created": "Token created.",
    "saved": "Scopes saved.",
    "unchanged": "Nothing to save: the token already had exactly these scopes.",
    "renamed": "Token renamed.",
    "refreshed": "Token refreshed: copy its new value.",
    "deleted": "Token deleted.",
    "expiry-set": "Expiry set.",
    "expiry-cleared": "Expiry removed: the token no longer expires.",
}
PROTECTED_KINDS = ("default", "user")


@dataclass
class TokenView:
    """A token as the signed-in caller may see and handle it."""

    row: TokenRow
    scopes: tuple[Scope, ...]
    value: str | None  # only when the caller may see it
    is_self: bool
    protected: bool  # default and user tokens: refresh only
    manageable: bool  # the caller's rights reach this token (ADMIN needed for privileged ones)
    can_change: bool  # scopes, name, description
    can_refresh: bool
    can_delete: bool
    can_set_expiry: bool  # set or clear the expiry (Op.UPDATE; never a default or user token)
    expired: bool  # its expiry has passed: it can only be deleted
    last_used_at: int | None  # µs (None: never used)

    @property
    def badge(self) -> str | None:
        if self.row.kind == "default":
            return "default"
        if self.row.kind == "user":
            return "user token"
        if self.row.kind == "datafile":
            return "from datafile"
        return None


def token_view(page: Page, row: TokenRow, last_used: dict[str, int] | None = None) -> TokenView:
    """`last_used`: every shown token's last use, read once for a list (else read for this one)."""
    caller = page.caller
    if last_used is None:
        last_used = page.service.usage.last_used([row.id])
    expired = row.expired(to_micros(now()))
    scopes = row.parsed_scopes
    own = row.id == caller.token_id
    in_realm = row.workspace_id == caller.workspace_id
    facts = row.facts
    live = in_reach(caller, facts) and not row.deleted
    # `manageable`: the caller's rights reach this token at all (the wording of the page's notes).
    manages = in_realm and (allows(caller, Op.DESCRIBE, facts) or allows(caller, Op.UPDATE, facts))
    protected = row.kind in PROTECTED_KINDS
    value = None
    if not row.deleted and may_see_value(caller, facts):
        value = page.service.signer.make(row.workspace_id, row.id, row.generation)
    return TokenView(
        row=row,
        scopes=scopes,
        value=value,
        is_self=own,
        protected=protected,
        manageable=manages,
        can_change=live and not expired and allows(caller, Op.UPDATE, facts) and allows(caller, Op.DELETE, facts),
        can_refresh=live and not expired and allows(caller, Op.REFRESH, facts),
        can_delete=live and not protected and allows(caller, Op.DELETE, facts),
        can_set_expiry=live and not expired and not protected and allows(caller, Op.UPDATE, facts),
        expired=expired,
        last_used_at=last_used.get(row.id),
    )


def find_token(page: Page, token_id: str) -> TokenRow:
    """A token the caller may look at by its id (from the page's URL), deleted ones included."""
    try:
        key = str(uuid.UUID(token_id))
    except ValueError:
        raise NotFound("Token not found") from None
    return page.reads.token_by_id(page.caller, key)


# -- the list -----------------------------------------------------------------------------------


@router.get("/")
@router.get("")
def home() -> Response:
    return RedirectResponse("/ui/tokens", status_code=303)


@router.get("/tokens")
def list_tokens(page: Page = Depends(viewer), done: str = "") -> Response:
    rows = page.reads.visible_tokens(page.caller)
    user_row = page.reads.own_user_token(page.caller)
    used = page.service.usage.last_used_of([r.id for r in rows] + ([user_row.id] if user_row else []))
    return page.render(
        "tokens.html",
        tokens=[token_view(page, r, used) for r in rows],
        user_token=token_view(page, user_row, used) if user_row else None,
        flash=DONE.get(done),
    )


# -- create -------------------------------------------------------------------------------------


def _editor_page(
    page: Page,
    editor: Editor,
    status: int = 200,
    error: str | None = None,
    view: TokenView | None = None,
    rename_error: str | None = None,
    flash: str | None = None,
    expiry_error: str | None = None,
    expiry_input: str = "",
) -> Response:
    events = page.reads.events_of(page.caller, view.row) if view is not None else []
    return page.render(
        "token.html" if view is not None else "token_new.html",
        status=status,
        editor=editor,
        view=view,
        workspace_scopes=WORKSPACE_SCOPES,
        permissions=PERMISSIONS_BY_KIND,
        entries=timeline(events),
        exposure=_exposure(page, view, events),
        error=error,
        rename_error=rename_error,
        flash=flash,
        max_grace=MAX_GRACE_SECONDS,
        expiry_error=expiry_error,
        expiry_input=expiry_input,
        lifetime_cap=_lifetime_cap(page, view),
    )


def _lifetime_cap(page: Page, view: TokenView | None) -> int | None:
    """The workspace's cap on token lifetimes, for the expiry form's hint (seconds; None: none)."""
    if view is None or not view.can_set_expiry:
        return None
    cap: int | None = page.reads.workspace_settings(page.caller)["max_token_lifetime"]
    return cap


def _exposure(page: Page, view: TokenView | None, events: list[dict[str, Any]]) -> ExposureView | None:
    """The token's exposure timeline, for callers the policy lets investigate (a user's own token,
    outside the workspace, has none here)."""
    if view is None or not page.investigates or view.row.workspace_id != page.caller.workspace_id:
        return None
    return exposure_view(page.reads.exposure(page.caller, view.row.id), events)


@router.get("/tokens/new")
def new_token(page: Page = Depends(viewer)) -> Response:
    require_token_manager(page.caller)
    return _editor_page(page, Editor())


@router.post("/tokens/new")
def create_token(page: Page = Depends(poster)) -> Response:
    require_token_manager(page.caller)
    editor = Editor.from_form(page.form)
    if editor.apply(page.form.get("action", "save")):
        return _editor_page(page, editor)
    service, caller = page.service, page.caller
    try:
        scopes = editor.scopes()
        change = service.command(
            lambda: service.ledger.create_token(caller, editor.name, scopes, editor.description, {"type": "C"})
        )
    except LedgerError as error:
        return _editor_page(page, editor, status=error.status, error=error.message)
    return RedirectResponse(f"/ui/tokens/{change.token.id}?done=created", status_code=303)


# -- one token ----------------------------------------------------------------------------------


@router.get("/tokens/{token_id}")
def show_token(token_id: str, page: Page = Depends(viewer), done: str = "") -> Response:
    row = find_token(page, token_id)
    view = token_view(page, row)
    return _editor_page(
        page, Editor.from_scopes(row.name, row.description, view.scopes), view=view, flash=DONE.get(done)
    )


@router.post("/tokens/{token_id}")
def save_token(token_id: str, page: Page = Depends(poster)) -> Response:
    """Save: the checked scopes and rows replace the token's scopes, in one update."""
    row = find_token(page, token_id)
    view = token_view(page, row)
    editor = Editor.from_form(page.form)
    editor.name = row.name
    if editor.apply(page.form.get("action", "save")):
        return _editor_page(page, editor, view=view)
    service, caller = page.service, page.caller
    try:
        scopes = editor.scopes()
        change = service.command(
            lambda: service.ledger.update_token(caller, row.id, scopes=scopes, description=editor.description)
        )
    except LedgerError as error:
        return _editor_page(page, editor, status=error.status, error=error.message, view=view)
    return RedirectResponse(f"/ui/tokens/{row.id}?done={'saved' if change.position else 'unchanged'}", status_code=303)


@router.post("/tokens/{token_id}/rename")
def rename_token(token_id: str, page: Page = Depends(poster)) -> Response:
    row = find_token(page, token_id)
    service, caller, name = page.service, page.caller, page.form.get("name")
    try:
        service.command(lambda: service.ledger.update_token(caller, row.id, name=name))
    except LedgerError as error:
        view = token_view(page, row)
        editor = Editor.from_scopes(row.name, row.description, view.scopes)
        return _editor_page(page, editor, status=error.status, view=view, rename_error=error.message)
    return RedirectResponse(f"/ui/tokens/{row.id}?done=renamed", status_code=303)


@router.post("/tokens/{token_id}/refresh")
def refresh_token(token_id: str, page: Page = Depends(poster)) -> Response:
    row = find_token(page, token_id)
    service, caller = page.service, page.caller
    try:
        grace = _grace_seconds(page.form.get("grace_seconds"))
        change = service.command(lambda: service.ledger.refresh_token(caller, row.id, grace))
    except LedgerError as error:
        view = token_view(page, row)
        editor = Editor.from_scopes(row.name, row.description, view.scopes)
        return _editor_page(page, editor, status=error.status, view=view, error=error.message)
    response = RedirectResponse(f"/ui/tokens/{row.id}?done=refreshed", status_code=303)
    if row.id == caller.token_id:
        # The refresh ended this session (it was opened with the old generation): the browser
        # that did it stays signed in, with a new session opened with the new value.
        service.sync()
        fresh = service.queries.token(str(change.token.id))
        assert fresh is not None
        value = service.signer.make(fresh.workspace_id, fresh.id, fresh.generation)
        sessions.sign_out(page.request, page.session)
        renewed = service.auth.authenticate(value, **audit_context(page.request, origin="ui"))
        sessions.write(page.request, response, sessions.sign_in(page.request, value, renewed))
    return response


@router.post("/tokens/{token_id}/expiry")
def set_expiry(token_id: str, page: Page = Depends(poster)) -> Response:
    """Set (`action=set`, `expires_at` a UTC datetime-local) or clear (`action=clear`) the expiry,
    through the same use case as `PUT /v0/tokens/{x}?expiration_time=`: the workspace's lifetime
    cap applies, and a refusal is shown on the token page with nothing written."""
    row = find_token(page, token_id)
    service, caller = page.service, page.caller
    action = page.form.get("action", "set")
    raw = page.form.get("expires_at").strip()[:64]
    try:
        if action == "clear":
            expiry: int | None = None
        elif action == "set":
            at = ui_instant(raw, "Expires at")
            if at is None:
                raise InvalidInput("Pick the date and time (UTC) at which the token expires")
            expiry = -(-at // 1_000_000)  # whole Unix seconds, never before the instant picked
        else:
            raise InvalidInput("action must be set or clear")
        service.command(lambda: service.ledger.update_token(caller, row.id, expiry=(expiry,)))
    except LedgerError as error:
        view = token_view(page, row)
        editor = Editor.from_scopes(row.name, row.description, view.scopes)
        return _editor_page(page, editor, status=error.status, view=view, expiry_error=error.message, expiry_input=raw)
    return RedirectResponse(
        f"/ui/tokens/{row.id}?done={'expiry-cleared' if expiry is None else 'expiry-set'}", status_code=303
    )


def _grace_seconds(raw: str) -> int:
    raw = raw.strip()
    if not raw:
        return 0
    if not raw.isdigit() or len(raw) > 9:
        raise InvalidInput(f"grace_seconds must be a whole number from 0 to {MAX_GRACE_SECONDS}")
    return int(raw)


@router.get("/tokens/{token_id}/delete")
def confirm_delete(token_id: str, page: Page = Depends(viewer)) -> Response:
    view = token_view(page, find_token(page, token_id))
    return page.render("token_delete.html", view=view)


@router.post("/tokens/{token_id}/delete")
def delete_token(token_id: str, page: Page = Depends(poster)) -> Response:
    row = find_token(page, token_id)
    service, caller = page.service, page.caller
    try:
        service.command(lambda: service.ledger.delete_token(caller, row.id))
    except LedgerError as error:
        return page.render("token_delete.html", status=error.status, view=token_view(page, row), error=error.message)
    if row.id == caller.token_id:
        sessions.sign_out(page.request, page.session)
        raise SignInRequired("deleted", clear=True)
    return RedirectResponse("/ui/tokens?done=deleted", status_code=303)
