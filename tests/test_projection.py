"""Projections on both backends: read-your-writes, exactly-once across kill -9 and across
processes, rebuild equal to live."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from tests.helpers import FakeClock, caller_for
from tokentrail.domain.errors import Unauthenticated
from tokentrail.projections import schema as s
from tokentrail.projections.rebuild import rebuild
from tokentrail.service import Service
from tokentrail.verify import verify_chain

HERE = Path(__file__).resolve().parent


def _backlog(service: Service, admin, n: int) -> int:
    """Write n tokens (plus refreshes) without projecting them; return the log head."""
    for i in range(n):
        service.ledger.create_token(admin, f"t{i}", [f"DATASOURCES:READ:ds{i % 7}:a > {i}"])
        if i % 3 == 0:
            service.ledger.refresh_token(admin, f"t{i}", grace_seconds=i % 5)
        if i % 5 == 0:
            service.ledger.update_token(admin, f"t{i}", scopes=[f"PIPES:READ:p{i}"], name=f"renamed {i}")
        if i % 11 == 0:
            service.ledger.delete_token(admin, f"renamed {i}" if i % 5 == 0 else f"t{i}")
    return service.ledger.recorder.max_notification_id()


def _audit_positions(service: Service) -> list[int]:
    with service.read_engine.connect() as conn:
        return [p for (p,) in conn.execute(select(s.audit.c.position).order_by(s.audit.c.position))]


def _all_positions(service: Service) -> list[int]:
    notes = service.ledger.recorder.select_notifications(start=1, limit=1_000_000)
    return [n.id for n in notes]


def test_a_command_is_visible_to_reads_when_it_returns(service: Service, workspace) -> None:
    setup, admin = workspace
    change = service.command(lambda: service.ledger.create_token(admin, "fresh", ["PIPES:READ:p"]))
    assert service.queries.token_by_name(str(setup.workspace.id), "fresh").id == str(change.token.id)
    assert service.projector.tracked_position() == change.position


def test_a_second_process_sees_writes_after_sync(service: Service, workspace, tmp_path: Path) -> None:
    setup, admin = workspace
    other = Service(service.database.url, data=tmp_path, environ=service.environ)
    try:
        token = other.command(lambda: other.ledger.create_token(admin, "from other", ["PIPES:READ:p"])).token
        service.sync()
        row = service.queries.token(str(token.id))
        assert row is not None and row.name == "from other"
        # The other process refreshes: this process's cache must drop the old value at once.
        assert caller_for(service, token).token_id == row.id  # warms this process's cache
        other.command(lambda: other.ledger.refresh_token(admin, "from other"))
        service.sync()
        with pytest.raises(Unauthenticated):
            service.auth.authenticate(service.signer.make(row.workspace_id, row.id, row.generation))
    finally:
        other.close()


def test_projection_is_exactly_once_across_kill_9(service: Service, workspace, tmp_path: Path) -> None:
    _, admin = workspace
    head = _backlog(service, admin, 120)
    child = subprocess.Popen(
        [sys.executable, str(HERE / "crash_projector.py"), service.database.url, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "CRASH_ENVIRON": json.dumps(service.environ), "CRASH_BATCH": "25", "CRASH_PAUSE": "1"},
    )
    try:
        seen = 0
        while seen < 3:  # two batches committed, the third written but not committed
            line = child.stdout.readline()
            assert line, "the child projector exited early"
            seen += line.startswith("flushed-uncommitted")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    partial = service.projector.tracked_position()
    assert 0 < partial < head, "the kill should land mid-way"
    assert _audit_positions(service) == [p for p in _all_positions(service) if p <= partial]
    service.projector.catch_up()
    assert service.projector.tracked_position() == head
    assert _audit_positions(service) == _all_positions(service)
    assert rebuild(service, verify=True).ok
    assert verify_chain(service).ok


def test_concurrent_projectors_apply_each_event_once(service: Service, workspace, tmp_path: Path) -> None:
    _, admin = workspace
    head = _backlog(service, admin, 60)
    others = [Service(service.database.url, data=tmp_path, environ=service.environ) for _ in range(3)]
    errors: list[BaseException] = []

    def run(sys_: Service) -> None:
        try:
            sys_.projector.catch_up()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(o,)) for o in [service, *others]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for o in others:
        o.close()
    assert not errors
    assert service.projector.tracked_position() == head
    assert _audit_positions(service) == _all_positions(service)
    assert rebuild(service, verify=True).ok


def test_rebuild_equals_live_and_detects_a_drifted_read_model(service: Service, workspace) -> None:
    FakeClock()
    _, admin = workspace
    _backlog(service, admin, 40)
    service.sync()
    report = rebuild(service, verify=True)
    assert report.ok and report.rows["tt_tokens"] == 40 + 3 + 1  # ours, the defaults, the user token
    with service.write_engine.begin() as conn:
        conn.execute(text("UPDATE tt_tokens SET name = 'tampered' WHERE name = 't1'"))
    drifted = rebuild(service, verify=True)
    assert not drifted.ok and drifted.differences[0].table == "tt_tokens"
    fixed = rebuild(service)  # rebuild in place repairs it
    assert fixed.ok
    assert rebuild(service, verify=True).ok
    with service.read_engine.connect() as conn:
        assert (
            conn.execute(select(func.count()).select_from(s.tokens).where(s.tokens.c.name == "tampered")).scalar() == 0
        )


def test_rebuild_in_place_keeps_serving_reads_and_writes(service: Service, workspace) -> None:
    _, admin = workspace
    _backlog(service, admin, 10)
    service.sync()
    rebuild(service)
    change = service.command(lambda: service.ledger.create_token(admin, "after rebuild", ["PIPES:READ:p"]))
    assert service.queries.token(str(change.token.id)).name == "after rebuild"
    assert rebuild(service, verify=True).ok
