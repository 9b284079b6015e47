"""Authentication: a token value or a JWT in, a `Caller` out.

Static values are checked with the server key (HMAC, constant-time) and then against the token's
current generation, from a per-process cache that the service evicts whenever the log shows an event
of that token, so a refreshed-out or deleted value stops working at once.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import jwt as pyjwt

from tokentrail.domain import clock
from tokentrail.domain.errors import LedgerError, Unauthenticated
from tokentrail.domain.policy import Caller
from tokentrail.domain.scopes import Scope, scope_from_parts
from tokentrail.domain.values import TokenSigner, ValueClaims
from tokentrail.jwts import MAX_JWT_LENGTH
from tokentrail.projections.queries import Queries, TokenRow, WorkspaceRow

CACHE_SIZE = 100_000


class TokenCache:
    """A bounded LRU of token rows by id; `None` entries remember unknown ids."""

    def __init__(self, load: Callable[[str], TokenRow | None], size: int = CACHE_SIZE) -> None:
        self._load = load
        self._size = size
        self._rows: OrderedDict[str, TokenRow | None] = OrderedDict()
        self._lock = threading.Lock()
        self._evictions = 0  # how many evictions so far: a load keeps its row only if none ran meanwhile
        # Plain ints for /metrics, read at scrape time: no lock on the hot path, so concurrent
        # threads may very rarely lose an increment (a count, not an account).
        self.hits = 0
        self.misses = 0

    def get(self, token_id: str) -> TokenRow | None:
        try:
            row = self._rows[token_id]
            self.hits += 1
            return row
        except KeyError:
            pass
        with self._lock:
            evictions = self._evictions
        self.misses += 1
        row = self._load(token_id)
        with self._lock:
            # A row read before an event was projected, whose eviction ran while we read, is
            # older than that event: cached, it would accept a deleted or refreshed-out value
            # until the token's next event. It answers this request only.
            if self._evictions == evictions:
                self._rows[token_id] = row
                if len(self._rows) > self._size:
                    self._rows.popitem(last=False)
        return row

    def evict(self, token_ids: Any) -> None:
        with self._lock:
            self._evictions += 1
            for token_id in token_ids:
                self._rows.pop(token_id, None)

    def clear(self) -> None:
        with self._lock:
            self._evictions += 1
            self._rows.clear()


class Authenticator:
    def __init__(self, queries: Queries, signer: TokenSigner, on_use: Callable[[str, int], None] | None = None) -> None:
        self.queries = queries
        self.signer = signer
        self.tokens = TokenCache(queries.token)
        self._workspaces: dict[str, WorkspaceRow | None] = {}
        # Told (token id, instant) each time a static value authenticates: the last-use recorder.
        self._on_use = on_use or (lambda token_id, at: None)

    def authenticate(self, value: str, **context: Any) -> Caller:
        if not isinstance(value, str) or not value:
            raise Unauthenticated("a token is required: pass ?token= or Authorization: Bearer")
        if value.startswith("p."):
            return self._static(value, context)
        if value.count(".") == 2 and len(value) <= MAX_JWT_LENGTH:
            return self._jwt(value, context)
        raise Unauthenticated("invalid authentication token")

    def token_row(self, value: str) -> TokenRow | None:
        """The token a static value designates, if the value is currently valid."""
        found = self._valid(value)
        return found[0] if found else None

    def _valid(self, value: str) -> tuple[TokenRow, ValueClaims] | None:
        claims = self.signer.read(value)
        if claims is None:
            return None
        row = self.tokens.get(claims.token_id)
        if row is None or row.workspace_id != claims.workspace_id:
            return None
        now = clock.to_micros(clock.now())
        if not row.accepts(claims.generation, now):  # refreshed out, deleted, or expired by now
            return None
        self._on_use(row.id, now)
        return row, claims

    def _static(self, value: str, context: dict[str, Any]) -> Caller:
        found = self._valid(value)
        if found is None:
            raise Unauthenticated("invalid authentication token")
        row, claims = found
        return Caller(
            workspace_id=row.workspace_id,
            token_id=row.id,
            name=row.name,
            scopes=row.parsed_scopes,
            generation=claims.generation,
            in_grace=claims.generation != row.generation,
            **context,
        )

    def _jwt(self, value: str, context: dict[str, Any]) -> Caller:
        invalid = Unauthenticated("invalid authentication token")
        try:
            header = pyjwt.get_unverified_header(value)
            unverified = pyjwt.decode(value, options={"verify_signature": False})
        except pyjwt.PyJWTError:
            raise invalid from None
        if header.get("alg") != "HS256" or not isinstance(unverified, dict):
            raise invalid
        workspace_id = unverified.get("workspace_id")
        if not _is_uuid(workspace_id):  # unverified input: never let it reach SQL as it came
            raise invalid
        workspace = self.workspace(workspace_id)
        if workspace is None:
            raise invalid
        admin = self.tokens.get(workspace.admin_token_id)
        if admin is None or admin.deleted:
            raise invalid
        now = clock.to_micros(clock.now())
        # A JWT is signed with the admin value of one generation and lives exactly as long as that
        # generation is accepted: current, or inside its own grace window.
        claims = None
        jwt_generation = None
        for generation in admin.accepted_generations(now):
            secret = self.signer.make(workspace_id, admin.id, generation)
            try:
                claims = pyjwt.decode(
                    value,
                    secret,
                    algorithms=["HS256"],
                    # `exp` is checked below against the ledger's clock, not PyJWT's wall clock.
                    # `iat` is informational, as on Tinybird: one in the future is not refused.
                    options={"require": ["exp"], "verify_exp": False, "verify_iat": False},
                )
                jwt_generation = generation
                break
            except pyjwt.PyJWTError:
                continue
        if claims is None:
            raise invalid
        exp = claims.get("exp")
        # A NumericDate, strictly: no booleans, numeric strings (which PyJWT would accept), NaN or
        # Infinity (which Python's JSON decoder reads).
        if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
            raise invalid
        if now >= exp * 1_000_000:
            raise invalid
        return Caller(
            workspace_id=workspace_id,
            token_id=claims.get("jti") if isinstance(claims.get("jti"), str) else None,
            name=str(claims.get("name", "jwt"))[:256],
            scopes=_jwt_scopes(claims.get("scopes")),
            is_jwt=True,
            generation=jwt_generation,
            in_grace=jwt_generation != admin.generation,
            extra={"exp": claims.get("exp"), "limits": claims.get("limits")},
            **context,
        )

    def workspace(self, workspace_id: str) -> WorkspaceRow | None:
        if workspace_id not in self._workspaces:
            row = self.queries.workspace(workspace_id)
            if row is None:
                return None  # not cached: it may exist once the log catches up
            self._workspaces[workspace_id] = row
        return self._workspaces[workspace_id]


def _is_uuid(value: Any) -> bool:
    """A workspace id as we write them: a canonical UUID string."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _jwt_scopes(raw: Any) -> tuple[Scope, ...]:
    out: list[Scope] = []
    if not isinstance(raw, list):
        return ()
    for item in raw:
        if not isinstance(item, dict):
            continue
        try:
            scope = scope_from_parts(str(item.get("type")), item.get("resource"), item.get("filter"))
        except LedgerError:  # a JWT we signed holds valid scopes; skip anything else
            continue
        if scope.type in ("DATASOURCES:READ", "PIPES:READ"):
            out.append(scope)
    return tuple(out)
