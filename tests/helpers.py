"""Small helpers shared by the tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tokentrail.domain import clock
from tokentrail.domain.policy import Caller
from tokentrail.service import Service


class FakeClock:
    """A controllable clock for the domain: starts at a fixed instant, moves only when told."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
        clock.set_clock(lambda: self.now)

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def value_of(service: Service, token: Any) -> str:
    """The current value of a token aggregate or row."""
    token_id = str(token.id)
    row = service.queries.token(token_id)
    assert row is not None
    return service.signer.make(row.workspace_id, row.id, row.generation)


def caller_for(service: Service, token: Any, **context: Any) -> Caller:
    service.sync()
    return service.auth.authenticate(value_of(service, token), **context)
