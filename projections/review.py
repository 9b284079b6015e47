"""The access review: every token alive at an instant, with what an auditor asks of each (scopes and
filters, origin, who created it and when, its last refresh, last use, expiry and age), and a
summary. It answers questions; who may ask them is the read door's job (`Reads.access_review`).

Last use is a read-model fact kept as one latest instant per token (`tt_token_usage`), not a
history: for a review as of a past instant T, a token last used at or before T shows that use; one
used since T shows none (`last_used_at` null, `last_used_after` true) and is not counted as unused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, select

from tokentrail.domain.scopes import is_admin, read_scope
from tokentrail.projections import schema as s
from tokentrail.projections.history import History
from tokentrail.projections.queries import TokenRow

DAY = 86_400 * 1_000_000
UNUSED_DAYS = 90
OLD_DAYS = 365


@dataclass(frozen=True)
class ReviewRow:
    token_id: str
    name: str
    kind: str
    scopes: tuple[str, ...]  # canonical scope strings, as held at the instant
    origin: dict[str, Any]
    created_at: int
    created_by: dict[str, Any]  # {"token_id", "name"} of the creator (None for the system)
    last_refresh_at: int | None
    last_used_at: int | None  # at or before the instant
    used_after: bool  # used since the instant (the store keeps only the latest use)
    expires_at: int | None
    age_seconds: int

    @property
    def filters(self) -> list[str]:
        return [f"{sc}" for sc in (read_scope(x) for x in self.scopes) if sc.filter]

    @property
    def admin(self) -> bool:
        return is_admin(read_scope(x) for x in self.scopes)

    def unused(self, at: int, days: int = UNUSED_DAYS) -> bool:
        """Not used (never-used ones: since creation) for `days` days before `at`."""
        if self.used_after:
            return False
        since = self.last_used_at if self.last_used_at is not None else self.created_at
        return at - since >= days * DAY


@dataclass(frozen=True)
class Review:
    at: int
    rows: list[ReviewRow] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        by_type: dict[str, int] = {}
        for row in self.rows:
            for scope_type in sorted({read_scope(x).type for x in row.scopes}):
                by_type[scope_type] = by_type.get(scope_type, 0) + 1
        return {
            "tokens": len(self.rows),
            "by_scope_type": dict(sorted(by_type.items())),
            "with_admin": sum(1 for r in self.rows if r.admin),
            f"unused_{UNUSED_DAYS}_days": sum(1 for r in self.rows if r.unused(self.at)),
            "older_than_a_year": sum(1 for r in self.rows if self.at - r.created_at > OLD_DAYS * DAY),
            "without_expiry": sum(1 for r in self.rows if r.expires_at is None),
        }


def review(engine: Engine, history: History, workspace_id: str, at: int, last_used: dict[str, int]) -> Review:
    """The review of `workspace_id` as of `at`; `last_used` is every token's latest use."""
    alive = history.tokens_as_of(workspace_id, at)
    facts = _lifecycle(engine, workspace_id, at)
    rows = []
    for token in alive:
        created_at, created_by, refreshed = facts.get(token.id, (token.created_at, {}, None))
        rows.append(_row(token, at, created_at, created_by, refreshed, last_used.get(token.id)))
    rows.sort(key=lambda r: (r.created_at, r.token_id))
    return Review(at, rows)


def _row(
    token: TokenRow,
    at: int,
    created_at: int,
    created_by: dict[str, Any],
    refreshed: int | None,
    used: int | None,
) -> ReviewRow:
    return ReviewRow(
        token_id=token.id,
        name=token.name,
        kind=token.kind,
        scopes=token.scopes,
        origin=token.origin,
        created_at=created_at,
        created_by=created_by,
        last_refresh_at=refreshed,
        last_used_at=used if used is not None and used <= at else None,
        used_after=used is not None and used > at,
        expires_at=token.expires_at,
        age_seconds=max(0, (at - created_at) // 1_000_000),
    )


def _lifecycle(engine: Engine, workspace_id: str, at: int) -> dict[str, tuple[int, dict[str, Any], int | None]]:
    """token id -> (created at, created by, last refresh at or before `at`), from the audit rows."""
    a = s.audit
    out: dict[str, tuple[int, dict[str, Any], int | None]] = {}
    with engine.connect() as conn:
        rows = conn.execute(
            select(a.c.token_id, a.c.type, a.c.at, a.c.actor_token_id, a.c.actor_name)
            .where(
                and_(
                    a.c.workspace_id == workspace_id,
                    a.c.aggregate == "token",
                    a.c.type.in_(("Created", "Refreshed")),
                    a.c.at <= at,
                )
            )
            .order_by(a.c.position)
        ).all()
    for token_id, type_, when, actor_id, actor_name in rows:
        if type_ == "Created":
            out[token_id] = (when, {"token_id": actor_id, "name": actor_name}, None)
        elif token_id in out:
            created_at, created_by, _ = out[token_id]
            out[token_id] = (created_at, created_by, when)
    return out
