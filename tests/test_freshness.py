"""The cheap read-side checks stay correct: `Service.fresh()` / `sync()` see another process's
writes (SQLite at once through `PRAGMA data_version`, PostgreSQL through LISTEN/NOTIFY within a
bounded wait), a refresh or delete made elsewhere stops the old value here, and a command's own
events are projected from what it wrote, equal to a rebuild from the log."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers import value_of
from tokentrail.domain.errors import Unauthenticated
from tokentrail.projections.rebuild import rebuild
from tokentrail.service import Service


def _fresh_within(service: Service, seconds: float) -> bool:
    """True once `fresh()` holds; PostgreSQL needs the listener's notification first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if service.fresh():
            return True
        service.sync()
        time.sleep(0.02)
    return service.fresh()


def test_fresh_turns_false_on_another_writer_and_sync_catches_up(service: Service, workspace, tmp_path: Path) -> None:
    setup, admin = workspace
    other = Service(service.database.url, data=tmp_path, environ=service.environ)
    try:
        service.sync()
        assert _fresh_within(service, 10)
        created = other.command(lambda: other.ledger.create_token(admin, "elsewhere", ["PIPES:READ:p"]))
        if service.backend == "sqlite":
            assert not service.fresh()  # exact: the commit is seen by the next check
        else:
            deadline = time.monotonic() + 10
            while service.fresh() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not service.fresh(), "the listener never reported the other process's write"
        service.sync()
        assert service.fresh() or service.backend == "postgres"
        row = service.queries.token_by_name(str(setup.workspace.id), "elsewhere")
        assert row is not None and row.id == str(created.token.id)
    finally:
        other.close()


def test_a_refresh_elsewhere_stops_the_old_value_here(service: Service, workspace, tmp_path: Path) -> None:
    setup, admin = workspace
    token = service.command(lambda: service.ledger.create_token(admin, "victim", ["PIPES:READ:p"])).token
    row = service.queries.token(str(token.id))
    old_value = value_of(service, row)
    assert service.auth.authenticate(old_value).token_id == str(token.id)  # now cached here
    other = Service(service.database.url, data=tmp_path, environ=service.environ)
    try:
        other.command(lambda: other.ledger.refresh_token(admin, str(token.id)))
        other.command(lambda: other.ledger.delete_token(admin, str(token.id)))
    finally:
        other.close()
    service.sync()
    with pytest.raises(Unauthenticated):
        service.auth.authenticate(old_value)


def test_commands_projected_from_their_own_recordings_equal_a_rebuild(service: Service, workspace) -> None:
    setup, admin = workspace
    for i in range(12):
        service.command(lambda: service.ledger.create_token(admin, f"t{i}", [f"DATASOURCES:READ:ds{i % 3}:a > {i}"]))
        if i % 2:
            service.command(lambda: service.ledger.refresh_token(admin, f"t{i}", grace_seconds=i))
        if i % 3 == 0:
            service.command(lambda: service.ledger.update_token(admin, f"t{i}", scopes=["PIPES:READ:p"]))
        if i % 4 == 0:
            service.command(lambda: service.ledger.delete_token(admin, f"t{i}"))
    assert service.projector.tracked_position() == service.ledger.recorder.max_notification_id()
    report = rebuild(service, verify=True)
    assert report.ok, report.differences[:3]
