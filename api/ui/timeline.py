"""A token's history as a timeline: audit events grouped by the change that made them.

One Save on the console or one PUT replaces scopes with several ScopeAdded/ScopeRemoved events of
one instant and one request; a reader wants that as one entry, with the scopes before the first
event and after the last one shown as a diff.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokentrail.api.ui.pages import format_time


@dataclass
class ScopeDiff:
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @classmethod
    def between(cls, before: list[str] | None, after: list[str] | None) -> ScopeDiff:
        old, new = list(before or []), list(after or [])
        return cls(
            removed=[s for s in old if s not in new],
            added=[s for s in new if s not in old],
            kept=[s for s in new if s in old],
        )

    @property
    def changed(self) -> bool:
        return bool(self.removed or self.added)


@dataclass
class TimelineEntry:
    at: str
    actor_name: str | None
    actor_token_id: str | None
    origin: str | None
    request_id: str | None
    deployment_id: str | None
    types: list[str]
    positions: list[int]
    diff: ScopeDiff
    notes: list[str]


def _key(event: dict[str, Any]) -> tuple[Any, ...]:
    return (event["at"], event["request_id"], event["deployment_id"], event["actor"]["token_id"])


def timeline(events: list[dict[str, Any]]) -> list[TimelineEntry]:
    """Newest first; consecutive events of one instant, request and actor make one entry."""
    groups: list[list[dict[str, Any]]] = []
    for event in events:
        if groups and _key(groups[-1][-1]) == _key(event):
            groups[-1].append(event)
        else:
            groups.append([event])
    entries = []
    for group in groups:
        first, last = group[0], group[-1]
        types: list[str] = []
        for event in group:
            if event["type"] not in types:
                types.append(event["type"])
        before = first["scopes_before"] if first["type"] != "Created" else []
        entries.append(
            TimelineEntry(
                at=first["at"],
                actor_name=first["actor"]["name"],
                actor_token_id=first["actor"]["token_id"],
                origin=first["origin"],
                request_id=first["request_id"],
                deployment_id=first["deployment_id"],
                types=types,
                positions=[e["position"] for e in group],
                diff=ScopeDiff.between(before, last["scopes_after"]),
                notes=[note for e in group for note in _notes(e)],
            )
        )
    entries.reverse()
    return entries


def _notes(event: dict[str, Any]) -> list[str]:
    details = event.get("details") or {}
    kind = event["type"]
    if kind == "Created":
        return [f"Created as \u201c{event['token_name']}\u201d"] if event.get("token_name") else ["Created"]
    if kind == "Renamed":
        return [f"Renamed from \u201c{details.get('from', '')}\u201d to \u201c{details.get('to', '')}\u201d"]
    if kind == "DescriptionChanged":
        return [
            f"Description set to \u201c{details.get('to', '')}\u201d" if details.get("to") else "Description cleared"
        ]
    if kind == "Refreshed":
        grace = int(details.get("grace_seconds") or 0)
        return [
            "New value; "
            + (
                f"a grace period of {grace} s for the previous one"
                if grace
                else "the previous one stopped working at once"
            )
        ]
    if kind == "ExpirySet":
        to = details.get("to")
        return [f"Expiry set to {format_time(int(to) * 1_000_000)}" if to is not None else "Expiry removed"]
    if kind == "Deleted" and details.get("revocation_id"):
        reason = f": \u201c{details['reason']}\u201d" if details.get("reason") else ""
        return [f"Revoked in bulk (revocation {details['revocation_id']}){reason}"]
    if kind == "TokenLookedUp":
        return [f"Looked up by value ({details.get('outcome', '')})"]
    return []
