"""The writers' clock. Events take their timestamps from `now()`; tests may `set_clock` a fake."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

_clock: Callable[[], datetime] = lambda: datetime.now(UTC)  # noqa: E731
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
    _clock = clock or (lambda: datetime.now(UTC))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The instants the ledger can name: 0001-01-01T00:00:00Z up to 9999-12-31T23:59:59.999999Z, in
# microseconds since the epoch (well inside a signed 64-bit column).
MIN_MICROS = -62_135_596_800_000_000
MAX_MICROS = 253_402_300_799_999_999


def to_micros(moment: datetime) -> int:
    """Microseconds since the Unix epoch: the ledger's exact, integer notion of time."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(micros: int) -> datetime:
    """Exact integer arithmetic (no float timestamp, no platform limits before 1970); raises
    OverflowError only outside years 1..9999, which `parse_instant` never lets in."""
    return _EPOCH + timedelta(microseconds=micros)


def parse_instant(text: str) -> int:
    """An instant from the API: ISO 8601 with an offset, or Unix seconds (fractions allowed).

    Total: whatever the text, the answer is micros in [MIN_MICROS, MAX_MICROS] or InvalidInput.
    Unix seconds must be finite and from 0 (no NaN, Infinity or 1e400); an ISO instant whose UTC
    form leaves years 1..9999 (`9999-12-31T23:59:59-14:00`, `0001-01-01T00:00:00+14:00`) is
    refused here rather than failing later when a page or an answer formats it."""
    from tokentrail.domain.errors import InvalidInput

    raw = (text or "").strip() if isinstance(text, str) else ""
    if not raw:
        raise InvalidInput("a time is required: ISO 8601 with an offset, or Unix seconds")
    if len(raw) > 64:
        raise InvalidInput("time value is too long")
    if raw.isascii() and raw[:1] in "+-.0123456789":
        try:
            seconds = float(raw)
        except ValueError:
            pass
        else:
            if not math.isfinite(seconds) or not 0 <= seconds <= MAX_MICROS / 1_000_000:
                raise InvalidInput(f"time out of range: {raw}")
            whole = int(seconds)
            micros = whole * 1_000_000 + round((seconds - whole) * 1_000_000)
            if micros > MAX_MICROS:
                raise InvalidInput(f"time out of range: {raw}")
            return micros
    if not raw.isascii():
        # fromisoformat reads some non-ASCII digits; an instant is plain ASCII.
        raise InvalidInput(f"not a time: {raw!r} (use ISO 8601 with an offset, or Unix seconds)")
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"not a time: {raw!r} (use ISO 8601 with an offset, or Unix seconds)") from None
    if moment.tzinfo is None:
        raise InvalidInput(f"time {raw!r} needs an offset, e.g. 2026-03-01T12:00:00+00:00")
    try:
        moment = moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise InvalidInput(f"time out of range: {raw} (in UTC it falls outside years 1 to 9999)") from None
    micros = to_micros(moment)
    if not MIN_MICROS <= micros <= MAX_MICROS:
        raise InvalidInput(f"time out of range: {raw}")
    return micros


def format_instant(micros: int) -> str:
    """ISO 8601 in UTC with microseconds and an explicit offset."""
    return from_micros(micros).isoformat(timespec="microseconds")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
MAX_DURATION_SECONDS = 100 * 366 * 86_400


def parse_duration(text: str) -> int:
    """A length of time from the API, in whole seconds: `90d`, `12h`, `1h30m`, `2w`, or plain
    seconds (`3600`). Total: anything else, or more than a hundred years, is InvalidInput."""
    import re

    from tokentrail.domain.errors import InvalidInput

    raw = (text or "").strip().lower() if isinstance(text, str) else ""
    invalid = InvalidInput(f"not a duration: {text!r} (use 90d, 12h, 30m, 2w, or seconds)")
    if not raw or len(raw) > 32 or not raw.isascii():
        raise invalid
    if raw.isdigit():
        seconds = int(raw)
    elif re.fullmatch(r"(?:\d{1,9}[smhdw])+", raw):
        seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in re.findall(r"(\d+)([smhdw])", raw))
    else:
        raise invalid
    if seconds > MAX_DURATION_SECONDS:
        raise InvalidInput("duration out of range: at most a hundred years")
    return seconds
