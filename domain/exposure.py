"""A token's exposure: what it could reach, through which scope and filter, over which intervals.

Pure rules over intervals of effective time (integer microseconds, half-open `[start, end)`, `end`
None while still open). The read side supplies the rows (when each scope was held, when each value
was accepted); these functions say what those rows mean:

- `reach(scope)`: the datasources and pipes one scope reaches, with the permission. The wildcard
  scopes appear once, with resource `*` (ADMIN: every permission on every kind; WORKSPACE:READ_ALL:
  READ on both kinds; DATASOURCES:CREATE: APPEND on every datasource), exactly as `grant_for`
  answers for any named resource; a READ on a datasource also reaches its `_quarantine` companion.
- `escalation(scope)`: scopes that reach nothing themselves but let their holder create tokens that
  do (TOKENS, WORKSPACE:DEPLOY): reported apart, since they are a path, not a grant.
- `intersect`, `merge`, `clip`: interval arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tokentrail.domain.scopes import ADMIN, ADMIN_USER, TOKENS, Scope

Interval = tuple[int, int | None]  # [start, end): end None while open

WILDCARD = "*"
_ESCALATING = frozenset({TOKENS, "WORKSPACE:DEPLOY"})


@dataclass(frozen=True, order=True)
class Reach:
    """One kind of access a scope gives: `permission` on the `kind` named `resource`, through `via`
    (the scope as written) under `filter` (empty: every row). `*` stands for every kind, resource or
    permission."""

    kind: str
    resource: str
    permission: str
    via: str
    filter: str


def reach(scope: Scope) -> list[Reach]:
    via = str(scope)
    if scope.type in (ADMIN, ADMIN_USER):
        return [Reach(WILDCARD, WILDCARD, WILDCARD, via, "")]
    if scope.type == "WORKSPACE:READ_ALL":
        return [Reach(WILDCARD, WILDCARD, "READ", via, "")]
    if scope.type == "DATASOURCES:CREATE":
        return [Reach("datasource", WILDCARD, "APPEND", via, "")]
    kind, permission, resource = scope.kind, scope.permission, scope.resource
    if kind not in ("datasource", "pipe") or permission is None or resource is None:
        return []
    out = [Reach(kind, resource, permission, via, scope.filter)]
    if kind == "datasource" and permission == "READ":
        out.append(Reach(kind, f"{resource}_quarantine", permission, via, scope.filter))
    return out


def escalation(scope: Scope) -> bool:
    """Does holding `scope` let its holder create tokens that reach what it cannot itself?"""
    return scope.type in _ESCALATING


def clip(interval: Interval, window: Interval) -> Interval | None:
    """The part of `interval` inside `window`, or None when they do not overlap."""
    return intersect(interval, window)


def intersect(a: Interval, b: Interval) -> Interval | None:
    start = max(a[0], b[0])
    ends = [e for e in (a[1], b[1]) if e is not None]
    end = min(ends) if ends else None
    if end is not None and end <= start:
        return None
    return (start, end)


def intersect_all(intervals: Iterable[Interval], windows: Iterable[Interval]) -> list[Interval]:
    """Every overlap of one of `intervals` with one of `windows`, merged."""
    windows = list(windows)
    out = []
    for interval in intervals:
        for window in windows:
            part = intersect(interval, window)
            if part is not None:
                out.append(part)
    return merge(out)


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted, with overlapping and touching intervals joined."""
    ordered = sorted(intervals, key=lambda i: i[0])
    out: list[Interval] = []
    for start, end in ordered:
        if out:
            last_start, last_end = out[-1]
            if last_end is None:
                continue
            if start <= last_end:
                out[-1] = (last_start, None if end is None else max(last_end, end))
                continue
        out.append((start, end))
    return out


def contains(interval: Interval, at: int) -> bool:
    return interval[0] <= at and (interval[1] is None or at < interval[1])
