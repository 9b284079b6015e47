"""Small helpers shared by the tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tokentrail.domain import clock
from tokentrail.domain.policy import Caller
from tokentrail.projections.system import System


class FakeClock:
    """A controllable clock for the domain: starts at a fixed instant, moves only when told."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        clock.set_clock(lambda: self.now)

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def value_of(system: System, token: Any) -> str:
    """The current value of a token aggregate or row."""
    token_id = str(token.id)
    row = system.queries.token(token_id)
    assert row is not None
    return system.signer.make(row.workspace_id, row.id, row.generation)


def caller_for(system: System, token: Any, **context: Any) -> Caller:
    system.sync()
    return system.auth.authenticate(value_of(system, token), **context)
