"""A command's events and their projection are one transaction: one commit for the events, the
read models and the tracking row, on the event store's own connection.

The proof uses the database itself: a trigger that refuses one read-model row. Projected after
the commit (the old design) the event would be stored and the read models would lack it; in one
transaction neither is written.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from tests.helpers import caller_for
from tokentrail.domain.errors import ProjectionFailed, Unauthenticated
from tokentrail.projections.rebuild import rebuild
from tokentrail.service import Service

POISON_SQLITE = """
CREATE TRIGGER tt_test_poison BEFORE INSERT ON tt_tokens WHEN NEW.name = 'poison'
BEGIN SELECT RAISE(ABORT, 'poisoned'); END
"""
POISON_PG = (
    """
CREATE FUNCTION tt_test_poison() RETURNS trigger AS $$
BEGIN IF NEW.name = 'poison' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql
""",
    "CREATE TRIGGER tt_test_poison BEFORE INSERT ON tt_tokens FOR EACH ROW EXECUTE FUNCTION tt_test_poison()",
)


def _poison(service: Service) -> None:
    with service.write_engine.begin() as conn:
        for statement in (POISON_SQLITE,) if service.backend == "sqlite" else POISON_PG:
            conn.execute(text(statement))


def _count_catch_ups(service: Service) -> list[int | None]:
    """Record every later call of the projector's catch-up (it still runs)."""
    calls: list[int | None] = []
    catch_up = service.projector.catch_up

    def counted(until: int | None = None, progress: Any = None) -> int:
        calls.append(until)
        return catch_up(until, progress)

    service.projector.catch_up = counted  # type: ignore[method-assign]
    return calls


def _head(service: Service) -> int:
    return service.ledger.recorder.max_notification_id() or 0


def test_a_command_is_projected_in_the_transaction_that_stores_it(service: Service, workspace) -> None:
    _, admin = workspace
    _poison(service)
    head, tracked = _head(service), service.projector.tracked_position()
    assert head == tracked
    with pytest.raises(ProjectionFailed, match="not written"):
        service.command(lambda: service.ledger.create_token(admin, "poison", ["PIPES:READ:top"]))
    # Neither the events nor any read-model row: the insert rolled back with the projection.
    assert _head(service) == head
    assert service.projector.tracked_position() == tracked
    assert service.ledger.token_by_name(admin.workspace_id, "poison") is None
    # The ledger did not take the failure for a lost race and retry it: one attempt, one refusal.
    # (PostgreSQL's ids come from a sequence: the rolled-back insert left a gap, projected over.)
    calls = _count_catch_ups(service)
    change = service.command(lambda: service.ledger.create_token(admin, "fine", ["PIPES:READ:top"]))
    assert calls == []
    assert service.projector.tracked_position() == change.position
    assert service.queries.token_by_name(admin.workspace_id, "fine") is not None
    assert rebuild(service, verify=True).differences == []


def test_a_command_after_unprojected_writes_catches_them_up(service: Service, workspace) -> None:
    """Events written outside a command (tools, another server mid-way) are not yet projected:
    the next command's insert does not project over the gap; it is caught up after its commit."""
    _, admin = workspace
    direct = service.ledger.create_token(admin, "direct", ["PIPES:READ:top"])  # not projected
    assert service.projector.tracked_position() < direct.position
    change = service.command(lambda: service.ledger.create_token(admin, "after", ["PIPES:READ:top"]))
    assert service.projector.tracked_position() == change.position
    for name in ("direct", "after"):
        assert service.queries.token_by_name(admin.workspace_id, name) is not None
    assert rebuild(service, verify=True).differences == []


def test_own_commands_need_no_catch_up(service: Service, workspace) -> None:
    """Read-your-writes without reading back: the command's projection committed with it, and
    the caller's authentication cache no longer holds the refreshed token's old state."""
    _, admin = workspace
    token = service.command(lambda: service.ledger.create_token(admin, "mine", ["PIPES:READ:top"])).aggregates[0]
    value = service.signer.make(token.workspace_id, str(token.id), token.generation)
    assert service.auth.authenticate(value).token_id == str(token.id)  # cached now
    calls = _count_catch_ups(service)
    change = service.command(lambda: service.ledger.refresh_token(admin, str(token.id)))
    assert calls == []  # nothing left to catch up after the command
    assert service.projector.tracked_position() == change.position
    with pytest.raises(Unauthenticated):
        service.auth.authenticate(value)  # refreshed without grace: the old value is refused at once
    assert caller_for(service, change.aggregates[0]).token_id == str(token.id)  # the new value is accepted
