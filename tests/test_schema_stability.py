"""Schema stability: a ledger written by an earlier version must load, verify and project the same.

tests/fixtures/ledger-v1.db is a small SQLite ledger holding every event type of domain/model.py,
made by tests/fixtures/make_ledger_fixture.py (fixed clock, fixed test key, seeded ids) and
committed; tests/fixtures/ledger-v1.json holds the event topics and the read-model tables it
projects to. Today's code must:

- open a copy of it (migrating the read models if they changed) and verify its hash chain against
  the hashes recorded when it was made;
- project its stored events into fresh read models, on SQLite and on PostgreSQL (the stored events
  are copied into a throwaway PostgreSQL event store), and get the expected tables: every expected
  row and column (a column added later by a migration is allowed; a changed value is not);
- find a fixture event for every event class in domain/model.py, so a new event type fails here
  until a fixture holds it.

Never regenerate a committed fixture to make this pass. Changing an event's shape adds an upcaster
(so the old stored events still load) and a new fixture made by today's code (ledger-v2.db …);
adding an event type adds a fixture that holds it.
"""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import StoredEvent

from tests.fixtures.make_ledger_fixture import SECRET, dump_tables
from tokentrail.domain import model
from tokentrail.projections.rebuild import rebuild
from tokentrail.service import Service
from tokentrail.verify import verify_chain

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LEDGERS = sorted(FIXTURES.glob("ledger-v*.db"))


def _environ(data: Path) -> dict[str, str]:
    return {"TOKENTRAIL_SECRET_KEY": SECRET, "TOKENTRAIL_DATA_DIR": str(data)}


def _expected(ledger: Path) -> dict[str, Any]:
    return json.loads(ledger.with_suffix(".json").read_text())


def _stored_events(service: Service) -> list[Any]:
    notes = service.ledger.recorder.select_notifications(start=1, limit=1_000_000)
    assert [n.id for n in notes] == list(range(1, len(notes) + 1))
    return notes


def _assert_tables(actual: dict[str, list[dict[str, Any]]], expected: dict[str, list[dict[str, Any]]]) -> None:
    for table, rows in expected.items():
        got = actual[table]
        assert len(got) == len(rows), f"{table}: {len(got)} rows, expected {len(rows)}"
        for want, have in zip(rows, got):
            assert {k: have.get(k, "<missing column>") for k in want} == want, table


@pytest.fixture(params=LEDGERS, ids=[p.stem for p in LEDGERS])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A copy of a committed fixture: nothing ever writes to the committed file."""
    copy = tmp_path / "fixture" / "ledger.db"
    copy.parent.mkdir()
    shutil.copyfile(request.param, copy)
    copy.with_suffix(".json").write_text(request.param.with_suffix(".json").read_text())
    yield copy


def test_there_is_a_fixture() -> None:
    assert LEDGERS, "tests/fixtures/ledger-v*.db is missing: run tests/fixtures/make_ledger_fixture.py"


def test_fixture_loads_and_its_chain_verifies(ledger: Path) -> None:
    expected = _expected(ledger)
    service = Service(f"sqlite:///{ledger}", data=ledger.parent, environ=_environ(ledger.parent))
    try:
        events = _stored_events(service)
        chain = verify_chain(service)
        assert chain.ok, chain.reason
        assert chain.events_checked == len(events) == len(expected["tables"]["tt_audit"])
        assert chain.head == expected["tables"]["tt_tracking"][0]["head"]
        assert sorted({n.topic for n in events}) == expected["topics"]
        # Every stored event still maps to a domain event, and every aggregate still replays.
        for n in events:
            service.ledger.mapper.to_domain_event(n)
        for originator in {n.originator_id for n in events}:
            service.ledger.repository.get(originator)
        # The read models recorded in the file equal a projection by today's code.
        report = rebuild(service, verify=True)
        assert report.ok, report.differences
        _assert_tables(dump_tables(service.read_engine), expected["tables"])
    finally:
        service.close()


def test_fixture_projects_to_the_same_tables_on_both_backends(
    ledger: Path, database_url: str, backend: str, tmp_path: Path
) -> None:
    """The fixture's stored events, copied as they are into a fresh event store of `backend`,
    project to the expected tables and chain (positions 1..n are kept: the hashes include them)."""
    expected = _expected(ledger)
    source = Service(f"sqlite:///{ledger}", data=ledger.parent, environ=_environ(ledger.parent))
    try:
        events = [StoredEvent(n.originator_id, n.originator_version, n.topic, n.state) for n in _stored_events(source)]
    finally:
        source.close()
    data = tmp_path / "fresh"
    target = Service(database_url, data=data, environ=_environ(data))
    try:
        assert (target.ledger.recorder.max_notification_id() or 0) == 0
        target.ledger.recorder.insert_events(events)
        assert [n.id for n in _stored_events(target)] == list(range(1, len(events) + 1))
        target.sync()
        _assert_tables(dump_tables(target.read_engine), expected["tables"])
        chain = verify_chain(target)
        assert chain.ok and chain.events_checked == len(events), chain.reason
    finally:
        target.close()


def _event_classes() -> dict[str, type]:
    """Every event class of every aggregate in domain/model.py, by topic."""
    found: dict[str, type] = {}
    for _, aggregate in inspect.getmembers(model, inspect.isclass):
        if not issubclass(aggregate, Aggregate) or aggregate.__module__ != model.__name__:
            continue
        for _, event in inspect.getmembers(aggregate, inspect.isclass):
            if issubclass(event, model.LedgerEvent) and event is not aggregate.Event:
                found[vars(event).get("TOPIC", f"{event.__module__}.{event.__qualname__}")] = event
    return found


def test_fixtures_cover_every_event_class() -> None:
    classes = _event_classes()
    assert len(classes) >= 16, sorted(classes)  # the finder itself works
    covered = set().union(*(_expected(p)["topics"] for p in LEDGERS)) if LEDGERS else set()
    missing = sorted(set(classes) - covered)
    assert not missing, (
        f"no fixture holds these event types: {missing}; add a fixture made by today's code "
        "(see tests/fixtures/make_ledger_fixture.py)"
    )
