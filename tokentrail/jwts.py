"""Issuing a JWT: what a request for one must hold, its claims, and its signature.

A JWT is recorded by the ledger (`Ledger.issue_jwt`: a `Jwt.Issued` event naming the admin token's
generation that signs it) and then signed here with that generation's value (HS256), so it is
accepted exactly while that value is (see `auth.py`). Nothing of the signed JWT is stored.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jwt as pyjwt

from tokentrail.domain.errors import InvalidInput
from tokentrail.domain.policy import Caller, Op, authorize
from tokentrail.domain.scopes import scope_from_parts

if TYPE_CHECKING:
    from tokentrail.service import Service

MAX_JWT_LENGTH = 16_384  # authentication reads no longer JWT: none longer is issued
MAX_JWT_TTL = 10 * 365 * 86_400


def issue(
    service: Service,
    who: Caller,
    name: str,
    expires: int | None,
    items: Sequence[Mapping[str, Any]],
    limits: dict[str, Any] | None,
) -> dict[str, Any]:
    """Check a JWT request, record the issuance, and answer the signed JWT with what it grants
    (Tinybird's answer: id, token, name, expiration_time, scopes, limits)."""
    authorize(who, Op.ISSUE_JWT)
    now = int(time.time())
    if expires is None or expires <= now:
        raise InvalidInput("expiration_time must be a Unix time (whole seconds) in the future")
    if expires > now + MAX_JWT_TTL:
        raise InvalidInput("expiration_time must be within ten years")
    scopes = [_scope(item) for item in items]
    _check_length(who, name, expires, scopes, limits)
    issued = service.command(lambda: service.ledger.issue_jwt(who, name, expires, scopes, limits))
    jwt_, admin = issued.jwt, issued.admin
    claims = _claims(who.workspace_id, jwt_.name, expires, scopes, limits, str(jwt_.id))
    secret = service.signer.make(admin.workspace_id, str(admin.id), admin.generation)
    return {
        "id": str(jwt_.id),
        "token": pyjwt.encode(claims, secret, algorithm="HS256"),
        "name": jwt_.name,
        "expiration_time": expires,
        "scopes": scopes,
        **({"limits": limits} if limits else {}),
    }


def _scope(item: Mapping[str, Any]) -> dict[str, Any]:
    """One scope of the request as the JWT carries it, validated as a static token's would be."""
    scope = scope_from_parts(item["type"], item["resource"], item.get("filter"))
    out: dict[str, Any] = {"type": scope.type, "resource": scope.resource}
    if item.get("fixed_params"):
        out["fixed_params"] = item["fixed_params"]
    if scope.filter:
        out["filter"] = scope.filter
    return out


def _claims(
    workspace_id: str, name: str, expires: int, scopes: list[dict[str, Any]], limits: dict[str, Any] | None, jti: str
) -> dict[str, Any]:
    claims: dict[str, Any] = {"workspace_id": workspace_id, "name": name, "exp": expires, "scopes": scopes, "jti": jti}
    if limits:
        claims["limits"] = limits
    return claims


def _check_length(
    who: Caller, name: str, expires: int, scopes: list[dict[str, Any]], limits: dict[str, Any] | None
) -> None:
    """Refuse, before anything is recorded, a JWT too long for authentication ever to accept."""
    claims = _claims(who.workspace_id, name, expires, scopes, limits, str(uuid.UUID(int=0)))
    length = len(pyjwt.encode(claims, "k" * 32, algorithm="HS256"))  # the key does not change the length
    if length > MAX_JWT_LENGTH:
        raise InvalidInput(f"the JWT would be {length} characters long; at most {MAX_JWT_LENGTH} are accepted")
