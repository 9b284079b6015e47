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
from tokentrail.api.ui.pages import Page, SignInRequired, UiRoute, poster, viewer
from tokentrail.api.ui.timeline import timeline
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
    can_change: bool  # scopes, name, description, delete
    can_refresh: bool

    @property
    def badge(self) -> str | None:
        if self.row.kind == "default":
            return "default"
        if self.row.kind == "user":
            return "user token"
        if self.row.kind == "datafile":
            return "from datafile"
        return None


def token_view(page: Page, row: TokenRow) -> TokenView:
    caller = page.caller
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
        can_change=live and allows(caller, Op.UPDATE, facts) and allows(caller, Op.DELETE, facts),
        can_refresh=live and allows(caller, Op.REFRESH, facts),
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
    return page.render(
        "tokens.html",
        tokens=[token_view(page, r) for r in rows],
        user_token=token_view(page, user_row) if user_row else None,
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
    )


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
