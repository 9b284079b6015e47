"""Plumbing shared by the console's pages: who is signed in, reading forms safely, rendering
templates, and turning refusals into HTML pages (the JSON API's handlers answer JSON).

Every page authenticates the session's token value again, with origin "ui" and the request's id,
so a page can do exactly what that token could do through the API, and every change it makes is
recorded as coming from the console.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tokentrail.api.ui import session as sessions
from tokentrail.domain.clock import from_micros, now, parse_instant
from tokentrail.domain.errors import InvalidInput, LedgerError, NotFound, Unauthenticated
from tokentrail.domain.policy import Caller, Op, allows, require_token_manager
from tokentrail.projections.queries import UserRow
from tokentrail.reads import Reads
from tokentrail.service import Service

API_DIR = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = API_DIR / "templates"
STATIC_DIR = API_DIR / "static"
MAX_FIELDS = 1200
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


# -- refusals ------------------------------------------------------------------------------------


class SignInRequired(Exception):
    """No session, or its token stopped working: send the browser to the sign-in page."""

    def __init__(self, message: str | None = None, clear: bool = False) -> None:
        super().__init__(message or "")
        self.message = message
        self.clear = clear


class FormRefused(Exception):
    """A POST that failed the anti-forgery checks or could not be read at all."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class UiRoute(APIRoute):
    """Routes of the console: refusals become HTML pages, every answer gets the security headers."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def ui_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInRequired as refusal:
                response = _to_sign_in(request, refusal)
            except FormRefused as refusal:
                response = error_page(request, refusal.status, refusal.message)
            except LedgerError as error:
                response = error_page(request, error.status, error.message)
            except RequestValidationError:
                response = error_page(request, 400, "The request's parameters could not be read.")
            response.headers.update(SECURITY_HEADERS)
            return response

        return ui_handler


def _to_sign_in(request: Request, refusal: SignInRequired) -> Response:
    target = "/ui/signin"
    query = []
    if request.method == "GET":
        query.append(
            "next=" + quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""), safe="")
        )
    if refusal.message:
        query.append("reason=expired")
    response = RedirectResponse(target + ("?" + "&".join(query) if query else ""), status_code=303)
    if refusal.clear:
        sessions.clear(request, response)
    return response


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    page = getattr(request.state, "ui_page", None)  # signed in: keep the header and navigation
    return render(
        request, "error.html", status=status, page=page, title=_TITLES.get(status, "Refused"), message=message
    )


_TITLES = {400: "That did not work", 403: "Not allowed", 404: "Not found", 405: "Not allowed", 409: "Conflict"}


# -- the signed-in page ---------------------------------------------------------------------------


@dataclass
class Form:
    """The fields of a posted form (urlencoded or multipart without files)."""

    pairs: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str, default: str = "") -> str:
        for key, value in self.pairs:
            if key == name:
                return value
        return default

    def getlist(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name]

    def keys(self) -> set[str]:
        return {key for key, _ in self.pairs}


@dataclass
class Page:
    """What a page handler works with: the service, the session and the authenticated caller."""

    request: Request
    session: sessions.Session
    caller: Caller
    form: Form = field(default_factory=Form)

    @property
    def service(self) -> Service:
        return self.request.app.state.service

    @property
    def reads(self) -> Reads:
        return self.service.reads

    @property
    def manages_tokens(self) -> bool:
        return allowed(require_token_manager, self.caller)

    @property
    def investigates(self) -> bool:
        """May trace exposure and look values up (the Incident page and the token page's exposure)."""
        return allows(self.caller, Op.INVESTIGATE)

    @property
    def reviews(self) -> bool:
        """May read the access review (the Review page, as `GET /v0/access/review`)."""
        return allows(self.caller, Op.READ_AUDIT)

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return render(self.request, template, status=status, page=self, **context)


def allowed(check: Callable[..., None], *args: Any) -> bool:
    """Ask one of the domain's `require_…` rules a yes/no question (to show or hide a control;
    the use case checks again when the control is used)."""
    try:
        check(*args)
    except LedgerError:
        return False
    return True


def _authenticate(request: Request, session: sessions.Session | None) -> Caller:
    if session is None or not session.value:
        raise SignInRequired()
    try:
        return sessions.authenticate(request, session)
    except Unauthenticated:
        raise SignInRequired("expired", clear=True) from None


def viewer(request: Request) -> Page:
    """Dependency of every GET page: the signed-in caller, or off to the sign-in page."""
    session = sessions.read(request)
    caller = _authenticate(request, session)
    assert session is not None
    request.state.ui_page = page = Page(request, session, caller)
    return page


async def read_form(request: Request) -> Form:
    """The posted fields, or a 400 for anything that is not a small, plain form."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise FormRefused(400, "Expected a form submission.")
    try:
        data = await request.form(max_files=0, max_fields=MAX_FIELDS)
        pairs = list(data.multi_items())
    except Exception:  # noqa: BLE001 - python-multipart and Starlette raise several kinds
        raise FormRefused(400, "The form could not be read.") from None
    out: list[tuple[str, str]] = []
    for key, value in pairs:
        if not isinstance(value, str):
            raise FormRefused(400, "The form must not carry files.")
        if "\x00" in key or "\x00" in value:
            raise FormRefused(400, "The form must not contain NUL characters.")
        out.append((key, value))
    return Form(out)


async def checked_form(request: Request) -> tuple[sessions.Session | None, Form]:
    """Anti-forgery checks common to every POST, signed in or not."""
    if not sessions.same_origin(request):
        raise FormRefused(403, "This form was sent from another site; it was refused.")
    form = await read_form(request)
    session = sessions.read(request)
    if not sessions.csrf_matches(session, form.get("csrf")):
        raise FormRefused(
            403, "This form has expired or did not come from this console. Reload the page and try again."
        )
    return session, form


async def poster(request: Request) -> Page:
    """Dependency of every signed-in POST: a checked form, then the caller."""
    session, form = await checked_form(request)
    caller = await run_in_threadpool(_authenticate, request, session)
    assert session is not None
    request.state.ui_page = page = Page(request, session, caller, form)
    return page


# -- rendering ------------------------------------------------------------------------------------


def _asset_version() -> str:
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.glob("*")):
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def format_time(value: Any, precise: bool = False) -> str:
    """Micros or an ISO string → "2026-03-01 12:00:05 UTC" (microseconds when precise)."""
    moment = _moment(value)
    if moment is None:
        return ""
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if precise and moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + " UTC"


def relative_time(value: Any, now_micros: int | None = None) -> str:
    """Micros or an ISO string → "3 days ago" (or "in 3 days" for a future instant), to one unit."""
    moment = _moment(value)
    if moment is None:
        return ""
    current = from_micros(now_micros) if now_micros is not None else now()
    seconds = int((current - moment).total_seconds())
    ahead, seconds = seconds < 0, abs(seconds)
    if seconds < 60:
        return "just now" if not ahead else "in under a minute"
    for size, unit in (
        (365 * 86_400, "year"),
        (30 * 86_400, "month"),
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
    ):
        if seconds >= size:
            count = seconds // size
            text = f"{count} {unit}{'s' if count != 1 else ''}"
            return f"in {text}" if ahead else f"{text} ago"
    raise AssertionError("unreachable")


def short_time(value: Any) -> str:
    """Micros or an ISO string → "2026-03-01 12:00" (UTC, to the minute: for dense tables)."""
    moment = _moment(value)
    return moment.strftime("%Y-%m-%d %H:%M") if moment else ""


def iso_time(value: Any) -> str:
    moment = _moment(value)
    return moment.isoformat(timespec="microseconds") if moment else ""


def _moment(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return from_micros(value)
    return datetime.fromisoformat(str(value))


_env = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["time"] = format_time
_env.filters["iso"] = iso_time
_env.filters["short_time"] = short_time
_env.filters["ago"] = relative_time
_env.filters["local_input"] = lambda micros: local_input(micros)
_env.filters["duration"] = lambda seconds: duration(seconds)
_env.globals["asset_version"] = _asset_version()


def render(
    request: Request, template: str, status: int = 200, page: Page | None = None, **context: Any
) -> HTMLResponse:
    base: dict[str, Any] = {
        "page": page,
        "me": page.caller if page else None,
        "csrf": page.session.csrf if page else "",
        "workspace_name": _workspace_name(page) if page else "",
        "manages_tokens": page.manages_tokens if page else False,
        "investigates": page.investigates if page else False,
        "reviews": page.reviews if page else False,
        "path": request.url.path,
        "request_id": getattr(request.state, "request_id", ""),
        "error": None,
        "flash": None,
    }
    base.update(context)
    html = _env.get_template(template).render(**base)
    return HTMLResponse(html, status_code=status)


def _workspace_name(page: Page) -> str:
    try:
        found = page.reads.workspace(page.caller)
    except NotFound:
        return ""
    return found.email if isinstance(found, UserRow) else found.name


# -- small parsers shared by the pages -------------------------------------------------------------

_LOCAL_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?")


def ui_instant(raw: str, what: str) -> int | None:
    """A time from a form: `datetime-local` values are UTC (the console shows every time in UTC);
    ISO 8601 with an offset and Unix seconds are read as the API reads them."""
    raw = (raw or "").strip()
    if not raw:
        return None
    if _LOCAL_INSTANT.fullmatch(raw):
        raw += "+00:00"
    try:
        return parse_instant(raw)
    except InvalidInput as error:
        raise InvalidInput(f"{what}: {error.message}") from None


def duration(seconds: int) -> str:
    """Seconds → "90 days", "12 hours", "45 minutes" (the largest whole unit), else "N seconds"."""
    for size, unit in ((86_400, "day"), (3_600, "hour"), (60, "minute")):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def local_input(micros: int) -> str:
    """Micros → a `datetime-local` value in UTC, to the second."""
    return from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S")
