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
from tokentrail.projections.system import System
from tokentrail.projections.verify import verify_chain

HERE = Path(__file__).resolve().parent


def _backlog(system: System, admin, n: int) -> int:
    """Write n tokens (plus refreshes) without projecting them; return the log head."""
    for i in range(n):
        system.ledger.create_token(admin, f"t{i}", [f"DATASOURCES:READ:ds{i % 7}:a > {i}"])
        if i % 3 == 0:
            system.ledger.refresh_token(admin, f"t{i}", grace_seconds=i % 5)
        if i % 5 == 0:
            system.ledger.update_token(admin, f"t{i}", scopes=[f"PIPES:READ:p{i}"], name=f"renamed {i}")
        if i % 11 == 0:
            system.ledger.delete_token(admin, f"renamed {i}" if i % 5 == 0 else f"t{i}")
    return system.ledger.recorder.max_notification_id()


def _audit_positions(system: System) -> list[int]:
    with system.read_engine.connect() as conn:
        return [p for (p,) in conn.execute(select(s.audit.c.position).order_by(s.audit.c.position))]


def _all_positions(system: System) -> list[int]:
    notes = system.ledger.recorder.select_notifications(start=1, limit=1_000_000)
    return [n.id for n in notes]


def test_a_command_is_visible_to_reads_when_it_returns(system: System, workspace) -> None:
    setup, admin = workspace
    change = system.command(lambda: system.ledger.create_token(admin, "fresh", ["PIPES:READ:p"]))
    assert system.queries.token_by_name(str(setup.workspace.id), "fresh").id == str(change.token.id)
    assert system.projector.tracked_position() == change.position


def test_a_second_process_sees_writes_after_sync(system: System, workspace, tmp_path: Path) -> None:
    setup, admin = workspace
    other = System(system.database.url, data=tmp_path, environ=system.environ)
    try:
        token = other.command(lambda: other.ledger.create_token(admin, "from other", ["PIPES:READ:p"])).token
        system.sync()
        row = system.queries.token(str(token.id))
        assert row is not None and row.name == "from other"
        # The other process refreshes: this process's cache must drop the old value at once.
        assert caller_for(system, token).token_id == row.id  # warms this process's cache
        other.command(lambda: other.ledger.refresh_token(admin, "from other"))
        system.sync()
        with pytest.raises(Unauthenticated):
            system.auth.authenticate(system.signer.make(row.workspace_id, row.id, row.generation))
    finally:
        other.close()


def test_projection_is_exactly_once_across_kill_9(system: System, workspace, tmp_path: Path) -> None:
    _, admin = workspace
    head = _backlog(system, admin, 120)
    child = subprocess.Popen(
        [sys.executable, str(HERE / "crash_projector.py"), system.database.url, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "CRASH_ENVIRON": json.dumps(system.environ), "CRASH_BATCH": "25", "CRASH_PAUSE": "1"},
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
    partial = system.projector.tracked_position()
    assert 0 < partial < head, "the kill should land mid-way"
    assert _audit_positions(system) == [p for p in _all_positions(system) if p <= partial]
    system.projector.catch_up()
    assert system.projector.tracked_position() == head
    assert _audit_positions(system) == _all_positions(system)
    assert rebuild(system, verify=True).ok
    assert verify_chain(system).ok


def test_concurrent_projectors_apply_each_event_once(system: System, workspace, tmp_path: Path) -> None:
    _, admin = workspace
    head = _backlog(system, admin, 60)
    others = [System(system.database.url, data=tmp_path, environ=system.environ) for _ in range(3)]
    errors: list[BaseException] = []

    def run(sys_: System) -> None:
        try:
            sys_.projector.catch_up()
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(o,)) for o in [system, *others]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for o in others:
        o.close()
    assert not errors
    assert system.projector.tracked_position() == head
    assert _audit_positions(system) == _all_positions(system)
    assert rebuild(system, verify=True).ok


def test_rebuild_equals_live_and_detects_a_drifted_read_model(system: System, workspace) -> None:
    FakeClock()
    _, admin = workspace
    _backlog(system, admin, 40)
    system.sync()
    report = rebuild(system, verify=True)
    assert report.ok and report.rows["tt_tokens"] == 40 + 3 + 1  # ours, the defaults, the user token
    with system.write_engine.begin() as conn:
        conn.execute(text("UPDATE tt_tokens SET name = 'tampered' WHERE name = 't1'"))
    drifted = rebuild(system, verify=True)
    assert not drifted.ok and drifted.differences[0].table == "tt_tokens"
    fixed = rebuild(system)  # rebuild in place repairs it
    assert fixed.ok
    assert rebuild(system, verify=True).ok
    with system.read_engine.connect() as conn:
        assert (
            conn.execute(select(func.count()).select_from(s.tokens).where(s.tokens.c.name == "tampered")).scalar() == 0
        )


def test_rebuild_in_place_keeps_serving_reads_and_writes(system: System, workspace) -> None:
    _, admin = workspace
    _backlog(system, admin, 10)
    system.sync()
    rebuild(system)
    change = system.command(lambda: system.ledger.create_token(admin, "after rebuild", ["PIPES:READ:p"]))
    assert system.queries.token(str(change.token.id)).name == "after rebuild"
    assert rebuild(system, verify=True).ok
