"""A token's exposure drawn as a timeline: one lane per (kind, resource, permission, scope, filter),
its intervals as bars on one time axis from the token's creation to now (or to its deletion).

The read door (`Reads.exposure`) answers what the token could reach and when; this module only
places those intervals on the axis (as percentages, drawn as SVG so that the page's strict
Content-Security-Policy, which forbids inline styles, still holds) and words their exact times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tokentrail.api.ui.pages import format_time
from tokentrail.domain.clock import from_micros, now, parse_instant, to_micros
from tokentrail.domain.exposure import WILDCARD, Interval, Reach
from tokentrail.reads import Exposure

MIN_WIDTH = 0.4  # percent: an interval of a moment stays visible
# The token's events that can open or close an interval: marked on the axis.
CHANGES = frozenset({"Refreshed", "ScopeAdded", "ScopeRemoved", "Deleted"})
TICKS = 5
_DAY = 86_400_000_000


@dataclass(frozen=True)
class Bar:
    """One interval: where it sits on the axis (percent) and its exact bounds."""

    start: int
    end: int | None  # None: still open
    left: float
    width: float
    beyond: bool  # it goes on past the axis's end (still open, or ends in the future)
    text: str  # "from … to …", exact to the microsecond


@dataclass(frozen=True)
class Lane:
    kind: str
    resource: str
    permission: str
    via: str
    filter: str
    bars: list[Bar]

    @property
    def wildcard(self) -> bool:
        return WILDCARD in (self.kind, self.resource, self.permission)

    @property
    def what(self) -> str:
        """The lane in words, for its accessible name."""
        kind = {"datasource": "Data Source", "pipe": "Pipe"}.get(self.kind, "Data Source and Pipe")
        what = f"every {kind}" if self.resource == WILDCARD else f"{kind} {self.resource}"
        permission = "every permission" if self.permission == WILDCARD else self.permission
        return f"{permission} on {what} through {self.via}"


@dataclass(frozen=True)
class Tick:
    left: float
    anchor: str  # SVG text-anchor: start, middle, end
    label: str
    title: str
    minor: bool  # left out on narrow screens, where the labels would overlap


@dataclass(frozen=True)
class Marker:
    """A change of the token (refresh, new scopes, deletion) where intervals may open or close."""

    left: float
    title: str


@dataclass(frozen=True)
class JwtLanes:
    id: str
    name: str
    issued_at: int
    expires_at: int
    invalidated_at: int | None
    lanes: list[Lane]


@dataclass
class ExposureView:
    token_id: str
    start: int
    end: int
    open_ended: bool  # the axis ends now, the token still lives
    valid: list[Bar]
    lanes: list[Lane]
    escalations: list[Lane]
    jwts: list[JwtLanes]
    ticks: list[Tick] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)

    @property
    def start_text(self) -> str:
        return format_time(self.start, precise=True)

    @property
    def end_text(self) -> str:
        return format_time(self.end, precise=True)


class _Axis:
    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = max(end, start + 1_000_000)  # a token a moment old still gets a second of axis

    def at(self, micros: int) -> float:
        span = self.end - self.start
        return min(100.0, max(0.0, (micros - self.start) * 100.0 / span))

    def bar(self, interval: Interval) -> Bar:
        start, end = interval
        left = self.at(start)
        right = self.at(end) if end is not None else 100.0
        width = max(right - left, MIN_WIDTH)
        left = min(left, 100.0 - width)
        until = f"to {format_time(end, precise=True)}" if end is not None else "to now (still open)"
        return Bar(
            start=start,
            end=end,
            left=round(left, 3),
            width=round(width, 3),
            beyond=end is None or end > self.end,
            text=f"from {format_time(start, precise=True)} {until}",
        )

    def ticks(self) -> list[Tick]:
        span = self.end - self.start
        out = []
        for i in range(TICKS):
            micros = self.start + span * i // (TICKS - 1)
            moment = from_micros(micros)
            if span < 60_000_000:
                label = moment.strftime("%H:%M:%S.%f")[:-3]
            elif span < _DAY:
                label = moment.strftime("%H:%M:%S")
            elif span < 300 * _DAY:
                label = moment.strftime("%b %d %H:%M")
            else:
                label = moment.strftime("%Y-%m-%d")
            anchor = "start" if i == 0 else ("end" if i == TICKS - 1 else "middle")
            left = round(i * 100.0 / (TICKS - 1), 3)
            out.append(Tick(left, anchor, label, format_time(micros, precise=True), minor=i % 2 == 1))
        return out


def _lanes(axis: _Axis, entries: list[tuple[Reach, list[Interval]]]) -> list[Lane]:
    return [
        Lane(item.kind, item.resource, item.permission, item.via, item.filter, [axis.bar(i) for i in intervals])
        for item, intervals in entries
    ]


def exposure_view(found: Exposure, history: list[dict[str, Any]] | None = None) -> ExposureView:
    """The token's whole exposure on one axis: from its creation to its deletion, or to now."""
    row = found.token
    current = to_micros(now())
    start = min([row.created_at, *(lo for lo, _ in found.lives)])
    end = row.deleted_at if row.deleted_at is not None else current
    axis = _Axis(start, end)
    jwts = [
        JwtLanes(
            id=jwt["id"],
            name=jwt["name"],
            issued_at=jwt["issued_at"],
            expires_at=jwt["expires_at"],
            invalidated_at=jwt["invalidated_at"],
            lanes=_lanes(axis, jwt["exposure"]),
        )
        for jwt in found.jwts
    ]
    changes: dict[int, list[str]] = {}
    for event in history or []:
        at = parse_instant(event["at"])
        kinds = changes.setdefault(at, [])
        if event["type"] in CHANGES and event["type"] not in kinds:
            kinds.append(event["type"])
    markers = [
        Marker(round(axis.at(at), 3), f"{', '.join(kinds)} at {format_time(at, precise=True)}")
        for at, kinds in sorted(changes.items())
        if kinds and axis.start <= at <= axis.end
    ]
    return ExposureView(
        token_id=row.id,
        start=axis.start,
        end=axis.end,
        open_ended=row.deleted_at is None,
        valid=[axis.bar(i) for i in found.lives],
        lanes=_lanes(axis, found.exposure),
        escalations=[
            Lane("", "", "", via, "", [axis.bar(i) for i in spans]) for via, spans in found.escalation.items()
        ],
        jwts=jwts,
        ticks=axis.ticks(),
        markers=markers,
    )
