"""The console's session: which token the browser signed in with, and its anti-forgery token.

Sessions live on the server, in `tt_console_sessions` (see session_store.py), so
every `tokentrail serve` on one database agrees on them and they can end: at sign-out, when the
token they were opened with is refreshed or deleted, after an idle timeout
(TOKENTRAIL_SESSION_IDLE_SECONDS, 30 minutes by default) and at an absolute lifetime
(TOKENTRAIL_SESSION_MAX_SECONDS, 12 hours). The table holds only a hash of the session id.

The browser holds one cookie (`tokentrail_ui`: HttpOnly, SameSite=Strict, Path=/ui, Secure over
HTTPS) whose value is AES-GCM-encrypted with a key derived from the server key: the session id,
the CSRF token and the token value the console acts with. The value never reaches the browser in
clear, and is stored nowhere on the server; the cookie alone is worth nothing once the server-side
record has ended, so a cookie replayed after sign-out signs nobody in.

Forms carry the session's CSRF token in a hidden field; a POST is accepted only when that field
matches the session and the Origin (or, lacking it, the Referer) names this host (the Host header,
or X-Forwarded-Host when a trusted proxy sent the request: see api/proxies.py).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fastapi import Request
from starlette.responses import Response

from tokentrail import keys
from tokentrail.api.deps import audit_context
from tokentrail.api.proxies import proxies
from tokentrail.api.ui.session_store import ConsoleSessions, SessionSettings
from tokentrail.domain.errors import Unauthenticated
from tokentrail.domain.policy import Caller
from tokentrail.service import Service

COOKIE = "tokentrail_ui"
COOKIE_PATH = "/ui"
# Browsers keep about 4 KiB per cookie: a static token value (~150 characters) fits with room to
# spare, a JWT of the largest size the API accepts does not.
MAX_VALUE_LENGTH = 2048
_AAD = b"tokentrail ui session v2"


@dataclass(frozen=True)
class Session:
    """`value` and `sid` are None before sign-in: the cookie then only carries the sign-in form's
    CSRF token (no server-side record: it grants nothing)."""

    csrf: str
    value: str | None = None
    sid: str | None = None

    @classmethod
    def anonymous(cls) -> Session:
        return cls(csrf=secrets.token_urlsafe(32))


class SessionCodec:
    def __init__(self, server_key: bytes) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_AAD).derive(server_key)
        self._aead = AESGCM(derived)

    def dump(self, session: Session) -> str:
        plain = json.dumps({"c": session.csrf, "v": session.value, "s": session.sid}, separators=(",", ":"))
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, plain.encode(), _AAD)
        return base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def load(self, text: str | None) -> Session | None:
        """The session in a cookie, or None for a missing, forged or corrupt one (whether a
        signed-in session is still live is the server-side record's to say)."""
        if not text or len(text) > 4096:
            return None
        try:
            sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            data = json.loads(self._aead.decrypt(sealed[:12], sealed[12:], _AAD))
        except (ValueError, binascii.Error, InvalidTag, UnicodeDecodeError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        value, sid = data.get("v"), data.get("s")
        if value is None and sid is None:
            return Session(csrf=data["c"])
        if not isinstance(value, str) or not isinstance(sid, str):
            return None
        return Session(csrf=data["c"], value=value, sid=sid)


def codec(request: Request) -> SessionCodec:
    """One codec per app, keyed from the same server key that signs token values."""
    state = request.app.state
    if getattr(state, "ui_sessions", None) is None:
        service: Service = state.service
        state.ui_sessions = SessionCodec(keys.server_key(service.data_dir, service.environ))
    return state.ui_sessions


def store(request: Request) -> ConsoleSessions:
    state = request.app.state
    if getattr(state, "console_sessions", None) is None:
        service: Service = state.service
        state.console_sessions = ConsoleSessions(
            service.write_engine, service.read_engine, SessionSettings.from_environ(service.environ)
        )
    return state.console_sessions


def _signing_token(service: Service, value: str, caller: Caller) -> tuple[str, str] | None:
    """(token id, generation) of the token whose refresh or deletion must end a session opened
    with this value: the token itself, or for a JWT the workspace admin token that signs it.
    None when the value is a grace-window value of a token already refreshed, or a JWT signed
    with such a value."""
    if caller.in_grace:
        return None
    if caller.is_jwt:
        workspace = service.auth.workspace(caller.workspace_id)
        admin = service.auth.tokens.get(workspace.admin_token_id) if workspace else None
        return (admin.id, admin.generation) if admin is not None and not admin.deleted else None
    claims = service.signer.read(value)
    row = service.auth.tokens.get(caller.token_id) if caller.token_id else None
    if claims is None or row is None or row.deleted or claims.generation != row.generation:
        return None
    return row.id, row.generation


def sign_in(request: Request, value: str, caller: Caller) -> Session:
    """Open a server-side session for a value that just authenticated. A fresh session id and
    CSRF token every time: nothing planted before sign-in is worth anything after it."""
    service: Service = request.app.state.service
    signing = _signing_token(service, value, caller)
    if signing is None:
        raise Unauthenticated("this value has been replaced by a refresh: sign in with the new value")
    sid = store(request).open(signing[0], signing[1], caller.workspace_id)
    return Session(csrf=secrets.token_urlsafe(32), value=value, sid=sid)


def sign_out(request: Request, session: Session | None) -> None:
    if session is not None:
        store(request).end(session.sid)


def authenticate(request: Request, session: Session) -> Caller:
    """The caller a signed-in session acts as, or Unauthenticated when the session has ended:
    signed out, idle or old, or its signing token refreshed or deleted since sign-in."""
    service: Service = request.app.state.service
    if not session.value or not session.sid:
        raise Unauthenticated("not signed in")
    record = store(request).check(session.sid)
    if record is None:
        raise Unauthenticated("the session has ended")
    service.sync()
    try:
        caller = service.auth.authenticate(session.value, **audit_context(request, origin="ui"))
    except Unauthenticated:
        store(request).end(session.sid)
        raise
    signing = service.auth.tokens.get(record.token_id)
    if (
        signing is None
        or signing.deleted
        or not record.opened_with(signing.generation)
        or caller.workspace_id != record.workspace_id
        or (not caller.is_jwt and caller.token_id != record.token_id)
    ):
        store(request).end(session.sid)
        raise Unauthenticated("the session has ended")
    return caller


def read(request: Request) -> Session | None:
    return codec(request).load(request.cookies.get(COOKIE))


def write(request: Request, response: Response, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        codec(request).dump(session),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=proxies(request).scheme(request) == "https",
    )


def clear(request: Request, response: Response) -> None:
    response.delete_cookie(
        COOKIE,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=proxies(request).scheme(request) == "https",
    )


def csrf_matches(session: Session | None, submitted: str | None) -> bool:
    if session is None or not submitted:
        return False
    return hmac.compare_digest(session.csrf.encode(), submitted.encode())


def same_origin(request: Request) -> bool:
    """Does the request come from one of our own pages? Browsers send Origin on every POST; older
    ones may send only a Referer. Neither (a non-browser client) is left to the CSRF token.

    Our host is the Host header, or the X-Forwarded-Host of a trusted proxy (anyone else's
    X-Forwarded-Host is ignored: a forged one must not make another site's Origin look like ours)."""
    hosts = {request.headers.get("host", ""), proxies(request).host(request)}
    origin = request.headers.get("origin")
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc in hosts
    referer = request.headers.get("referer")
    if referer is not None:
        return urlsplit(referer).netloc in hosts
    return True
