"""Rebuild the read models from the event store, and check that the live ones equal a rebuild.

A rebuild projects every event into a scratch SQLite database (the read models are plain tables,
so a scratch file serves any backend), then either compares it with the live tables or swaps its
rows into them in one transaction, so readers see the old state or the new, never a mix.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, delete, event, insert, select, text

from tokentrail.projections import schema as s
from tokentrail.projections.projector import Projector
from tokentrail.service import Service
from tokentrail.storage.database import Database
from tokentrail.storage.migrate import upgrade

TABLES: tuple[Table, ...] = (s.tracking, *s.READ_MODEL_TABLES)
# The scratch file is thrown away after the rebuild (a crash just means rebuilding again): no
# fsync, a bigger page cache, and bigger transactions, whose commits amortise their dirty pages
# (the token-keyed B-trees take writes all over) over ten times more events.
SCRATCH_BATCH_SIZE = 10_000
_PROJECTOR_INDEXES = frozenset({"ix_tt_jwts_admin"})  # a refreshed admin token's JWTs
SCRATCH_PRAGMAS = ("PRAGMA synchronous=OFF", "PRAGMA cache_size=-262144")


@dataclass
class Difference:
    table: str
    key: tuple[Any, ...]
    live: tuple[Any, ...] | None
    rebuilt: tuple[Any, ...] | None


@dataclass
class RebuildReport:
    position: int
    events: int
    rows: dict[str, int] = field(default_factory=dict)
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences


def rebuild(
    service: Service,
    *,
    verify: bool = False,
    progress: Callable[[int, int], None] | None = None,
    max_differences: int = 20,
) -> RebuildReport:
    """Rebuild from zero. With `verify`, compare with the live tables and change nothing."""
    with tempfile.TemporaryDirectory(prefix="tokentrail-rebuild-") as scratch_dir:
        scratch_db = Database(f"sqlite:///{Path(scratch_dir) / 'rebuild.db'}")
        scratch = scratch_db.engine(writer=True)
        event.listen(scratch, "connect", _scratch_pragmas)
        try:
            upgrade(scratch)
            _drop_secondary_indexes(scratch)
            projector = Projector(service.ledger, scratch, "sqlite")
            projector.batch_size = SCRATCH_BATCH_SIZE
            head = service.ledger.recorder.max_notification_id() or 0
            done = 0

            def step(n: int) -> None:
                nonlocal done
                done += n
                if progress:
                    progress(done, head)

            projector.catch_up(until=head, progress=step)
            with service.write_engine.begin() as live:
                _lock(live, service.backend)
                live_position = _tracked(live)
                if live_position > projector.position:
                    projector.catch_up(until=live_position, progress=step)
                report = RebuildReport(position=projector.position, events=done)
                with scratch.connect() as rebuilt:
                    if verify:
                        if live_position < projector.position:
                            # The live side is behind the log: catching up is not a difference.
                            service.projector.position = 0
                        for table in TABLES:
                            report.rows[table.name] = _compare(
                                table, live, rebuilt, report.differences, max_differences
                            )
                    else:
                        for table in reversed(TABLES):
                            live.execute(delete(table))
                        for table in TABLES:
                            report.rows[table.name] = _copy(table, rebuilt, live)
            if not verify:
                service.projector.position = 0
                service.auth.tokens.clear()
            return report
        finally:
            scratch.dispose()


def _drop_secondary_indexes(scratch: Engine) -> None:
    """The scratch tables are only compared or copied in key order: the indexes that serve reads
    (a third of the B-trees each event writes, several keyed by random token ids) only slow the
    projection down there. Kept: the keys, the unique indexes, and the one the projector itself
    looks rows up with."""
    with scratch.begin() as conn:
        for table in TABLES:
            for index in table.indexes:
                if not index.unique and index.name not in _PROJECTOR_INDEXES:
                    conn.execute(text(f"DROP INDEX IF EXISTS {index.name}"))


def _scratch_pragmas(dbapi_connection: Any, _record: Any) -> None:
    for pragma in SCRATCH_PRAGMAS:
        dbapi_connection.execute(pragma)


def _lock(conn: Any, backend: str) -> None:
    if backend == "postgres":
        # Replacing every read model of a big store is one long transaction: the connections'
        # statement_timeout (meant for requests) does not apply to it.
        conn.execute(text("SET LOCAL statement_timeout = 0"))
        conn.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": 0x746F6B656E})


def _tracked(conn: Any) -> int:
    row = conn.execute(select(s.tracking.c.position)).first()
    return row[0] if row else 0


def _ordered(table: Table, conn: Any) -> Iterator[tuple[Any, ...]]:
    keys = list(table.primary_key.columns)
    result = conn.execution_options(stream_results=True, yield_per=2000).execute(select(table).order_by(*keys))
    for row in result:
        yield tuple(row)


def _compare(table: Table, live: Any, rebuilt: Any, out: list[Difference], limit: int) -> int:
    key_index = [i for i, c in enumerate(table.columns) if c.primary_key]
    key_of = itemgetter(*key_index)  # (a scalar for a one-column key: compared alike on both sides)

    def key(row: tuple[Any, ...]) -> tuple[Any, ...]:
        found = key_of(row)
        return found if len(key_index) > 1 else (found,)

    live_rows = _ordered(table, live)
    new_rows = _ordered(table, rebuilt)
    a, b = next(live_rows, None), next(new_rows, None)
    count = 0
    while a is not None or b is not None:
        ka = key_of(a) if a is not None else None
        kb = key_of(b) if b is not None else None
        if ka == kb:
            count += 1
            if a != b and _normal(a) != _normal(b) and len(out) < limit:
                out.append(Difference(table.name, key(a), a, b))  # type: ignore[arg-type]
            a, b = next(live_rows, None), next(new_rows, None)
        elif kb is None or (ka is not None and ka < kb):
            if len(out) < limit:
                out.append(Difference(table.name, key(a), a, None))  # type: ignore[arg-type]
            a = next(live_rows, None)
        else:
            if len(out) < limit:
                out.append(Difference(table.name, key(b), None, b))  # type: ignore[arg-type]
            b = next(new_rows, None)
    return count


def _normal(row: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    return None if row is None else tuple(bool(v) if isinstance(v, bool) else v for v in row)


def _copy(table: Table, source: Any, target: Any) -> int:
    count = 0
    batch: list[dict[str, Any]] = []
    names = [c.name for c in table.columns]
    for row in _ordered(table, source):
        batch.append(dict(zip(names, row)))
        if len(batch) >= 2000:
            target.execute(insert(table), batch)
            count += len(batch)
            batch = []
    if batch:
        target.execute(insert(table), batch)
        count += len(batch)
    return count


def engine_rows(engine: Engine, table: Table) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return list(_ordered(table, conn))
