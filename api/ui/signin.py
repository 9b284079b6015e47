"""Sign in by pasting a token; sign out. The value travels once, in a POST body (never in a URL,
so no access log sees it), and is then kept only in the encrypted session cookie; whether that
cookie still signs anyone in is decided by the server-side session it names (api/ui/session.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from starlette.responses import RedirectResponse, Response

from tokentrail.api.deps import audit_context
from tokentrail.api.ui import session as sessions
from tokentrail.api.ui.pages import Form, UiRoute, checked_form, render
from tokentrail.domain.errors import Unauthenticated
from tokentrail.service import Service

router = APIRouter(route_class=UiRoute)

REASONS = {
    "expired": "Your session ended: the token was refreshed, deleted or the session grew too old. Sign in again.",
    "signed_out": "You are signed out.",
}


def safe_next(target: str | None) -> str:
    """Only a path of this console: never another site (no open redirect)."""
    if target and target.startswith("/ui/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/ui/tokens"


@router.get("/signin")
def signin_form(request: Request, next: str = "", reason: str = "") -> Response:
    session = sessions.read(request)
    if session is not None and session.value:
        try:
            sessions.authenticate(request, session)
            return RedirectResponse(safe_next(next), status_code=303)
        except Unauthenticated:
            session = None
    fresh = session is None
    if fresh:
        session = sessions.Session.anonymous()
    assert session is not None
    response = render(request, "signin.html", csrf=session.csrf, next=safe_next(next), flash=REASONS.get(reason))
    if fresh:
        sessions.write(request, response, session)
    return response


@router.post("/signin")
def signin(request: Request, checked: tuple[sessions.Session | None, Form] = Depends(checked_form)) -> Response:
    session, form = checked
    assert session is not None
    value = "".join(form.get("token").split())  # pasted values often carry a newline or spaces
    target = safe_next(form.get("next"))
    message = None
    if not value:
        message = "Paste a token to sign in."
    elif len(value) > sessions.MAX_VALUE_LENGTH:
        message = "This token is too long to keep in a session; sign in with a static token."
    else:
        service: Service = request.app.state.service
        service.sync()
        try:
            caller = service.auth.authenticate(value, **audit_context(request, origin="ui"))
            opened = sessions.sign_in(request, value, caller)
        except Unauthenticated:
            message = "That token is not valid: it may have been refreshed or deleted."
    if message is not None:
        return render(request, "signin.html", status=403, csrf=session.csrf, next=target, error=message)
    sessions.sign_out(request, session)  # a session already open in this browser ends here
    response = RedirectResponse(target, status_code=303)
    sessions.write(request, response, opened)
    return response


@router.post("/signout")
def signout(request: Request, checked: tuple[sessions.Session | None, Form] = Depends(checked_form)) -> Response:
    """Ends the server-side session: the cookie, even if kept or copied, signs nobody in again."""
    sessions.sign_out(request, checked[0])
    response = RedirectResponse("/ui/signin?reason=signed_out", status_code=303)
    sessions.clear(request, response)
    return response
