"""The writers' clock. Events take their timestamps from `now()`; tests may `set_clock` a fake."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable, Iterator

_clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)  # noqa: E731
_instant = threading.local()


def now() -> datetime:
    frozen = getattr(_instant, "value", None)
    return frozen if frozen is not None else _clock()


@contextmanager
def one_instant() -> Iterator[datetime]:
    """Within this block (on this thread) `now()` stands still: every event of one command
    carries the same timestamp, so a point-in-time view sees all of a command or none of it."""
    outer = getattr(_instant, "value", None)
    _instant.value = outer or _clock()
    try:
        yield _instant.value
    finally:
        _instant.value = outer


def set_clock(clock: Callable[[], datetime] | None) -> None:
    """Replace the clock (None restores the system clock)."""
    global _clock
    _clock = clock or (lambda: datetime.now(timezone.utc))


def to_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch: the ledger's exact, integer notion of time."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    return datetime.fromtimestamp(micros // 1_000_000, timezone.utc).replace(
        microsecond=micros % 1_000_000
    )


def parse_instant(text: str) -> int:
    """An instant from the API: ISO 8601 with an offset, or Unix seconds (fractions allowed)."""
    from domain.errors import InvalidInput

    raw = (text or "").strip()
    if not raw:
        raise InvalidInput("a time is required: ISO 8601 with an offset, or Unix seconds")
    if len(raw) > 64:
        raise InvalidInput("time value is too long")
    try:
        seconds = float(raw)
    except ValueError:
        pass
    else:
        if not (0 <= seconds < 253_402_300_800):  # up to year 9999
            raise InvalidInput(f"time out of range: {raw}")
        whole = int(seconds)
        return whole * 1_000_000 + round((seconds - whole) * 1_000_000)
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"not a time: {raw!r} (use ISO 8601 with an offset, or Unix seconds)") from None
    if moment.tzinfo is None:
        raise InvalidInput(f"time {raw!r} needs an offset, e.g. 2026-03-01T12:00:00+00:00")
    return to_micros(moment)


def format_instant(micros: int) -> str:
    """ISO 8601 in UTC with microseconds and an explicit offset."""
    return from_micros(micros).isoformat(timespec="microseconds")
