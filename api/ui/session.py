"""The console's session: which token the browser signed in with, and its anti-forgery token.

The session lives in one cookie (`tokentrail_ui`: HttpOnly, SameSite=Strict, Path=/ui, Secure over
HTTPS) whose value is AES-GCM-encrypted with a key derived from the server key. So the browser
never holds the token value in clear (a cookie read off a disk or a proxy log is no token for the
API), and the server keeps nothing: any `tokentrail serve` process sharing the key can read it.
Sessions expire after SESSION_SECONDS whatever the browser does; refreshing or deleting the token
ends them at once, because every request authenticates the value again.

Forms carry the session's CSRF token in a hidden field; a POST is accepted only when that field
matches the session and the Origin (or, lacking it, the Referer) names this host.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fastapi import Request
from starlette.responses import Response

from projections import keys
from projections.system import System

COOKIE = "tokentrail_ui"
COOKIE_PATH = "/ui"
SESSION_SECONDS = 12 * 3600
# Browsers keep about 4 KiB per cookie: a static token value (~150 characters) fits with room to
# spare, a JWT of the largest size the API accepts does not.
MAX_VALUE_LENGTH = 2048
_AAD = b"tokentrail ui session v1"


@dataclass(frozen=True)
class Session:
    """`value` is None before sign-in: the session then only carries the sign-in form's CSRF token."""

    csrf: str
    value: str | None = None
    issued: int = 0

    @classmethod
    def anonymous(cls) -> "Session":
        return cls(csrf=secrets.token_urlsafe(32))

    @classmethod
    def signed_in(cls, value: str) -> "Session":
        # A fresh CSRF token on sign-in: one planted before it is worth nothing after.
        return cls(csrf=secrets.token_urlsafe(32), value=value, issued=int(time.time()))


class SessionCodec:
    def __init__(self, server_key: bytes) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_AAD).derive(server_key)
        self._aead = AESGCM(derived)

    def dump(self, session: Session) -> str:
        plain = json.dumps({"c": session.csrf, "v": session.value, "t": session.issued}, separators=(",", ":"))
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, plain.encode(), _AAD)
        return base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def load(self, text: str | None, now: float | None = None) -> Session | None:
        """The session in a cookie, or None for a missing, forged, corrupt or expired one."""
        if not text or len(text) > 4096:
            return None
        try:
            sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            data = json.loads(self._aead.decrypt(sealed[:12], sealed[12:], _AAD))
        except (ValueError, binascii.Error, InvalidTag, UnicodeDecodeError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("c"), str):
            return None
        value, issued = data.get("v"), data.get("t")
        if value is not None and (not isinstance(value, str) or not isinstance(issued, int)):
            return None
        if value is not None and (now or time.time()) - issued > SESSION_SECONDS:
            return None
        return Session(csrf=data["c"], value=value, issued=issued or 0)


def codec(request: Request) -> SessionCodec:
    """One codec per app, keyed from the same server key that signs token values."""
    state = request.app.state
    if getattr(state, "ui_sessions", None) is None:
        system: System = state.system
        state.ui_sessions = SessionCodec(keys.server_key(system.data_dir, system.environ))
    return state.ui_sessions


def read(request: Request) -> Session | None:
    return codec(request).load(request.cookies.get(COOKIE))


def write(request: Request, response: Response, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        codec(request).dump(session),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear(request: Request, response: Response) -> None:
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


def csrf_matches(session: Session | None, submitted: str | None) -> bool:
    if session is None or not submitted:
        return False
    return hmac.compare_digest(session.csrf.encode(), submitted.encode())


def same_origin(request: Request) -> bool:
    """Does the request come from one of our own pages? Browsers send Origin on every POST; older
    ones may send only a Referer. Neither (a non-browser client) is left to the CSRF token.

    Our host is the Host header, or the X-Forwarded-Host a reverse proxy sets (a page on another
    site cannot make a browser send either header with a value of its choosing)."""
    hosts = {request.headers.get("host", "")}
    forwarded = request.headers.get("x-forwarded-host")
    if forwarded:
        hosts.add(forwarded.split(",")[0].strip())
    origin = request.headers.get("origin")
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc in hosts
    referer = request.headers.get("referer")
    if referer is not None:
        return urlsplit(referer).netloc in hosts
    return True
