"""Projection speed at several ledger sizes: catch-up and rebuild from an empty start, in events/s.

For each size (`--sizes`, default 10,000 and 100,000 events) a fresh database gets a mixed history
written by a fast path: real `Token`, `TokenName`, `Workspace` and `Jwt` aggregates and events,
many aggregates per `ledger.save(...)` (one transaction each), nothing projected. A tenth of the
events are token creations; the rest are scope adds and removals, refreshes (with and without
grace), descriptions, renames, expiries and deletes of tokens picked at random among the live ones,
so a token's events are spread over the whole log (as in a long-lived ledger), plus a JWT per 100
tokens. Workspaces hold ~500 tokens each.

Then, on the same database:
- decode-only replay (baseline, same run): read the notification log in pages of 1,000 and
  `ledger.mapper.to_domain_event` every notification, nothing else (the floor of any projection);
- `service.projector.catch_up()` from position zero (the read models emptied first), events/s;
- `projections.rebuild.rebuild(service, verify=True)`, events/s (its projection into a scratch
  SQLite file plus the comparison with the live tables, which must find no difference).

Each rate is also given per CPU second of this process (steadier on a shared machine; on PostgreSQL
it leaves out the server's work, so there it is informational). Targets, for each of catch-up and
rebuild: >= 0.25x the decode-only replay at every size, and at
the largest size >= 0.8x its own rate at the smallest size (10,000 events): the cost per event must
not grow with the ledger.

    python -m bench.projection [--sizes 10000,100000,1000000] [--backend sqlite|postgres|both]
                               [--repeats N] [--profile] [--tmpdir DIR] [--json PATH]

A size of 1,000,000 writes for ~2 min and projects for minutes on the 2-core team machine.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import delete  # noqa: E402

from bench import common  # noqa: E402
from bench.compliance import TickingClock, random_scope  # noqa: E402
from tokentrail.domain import clock  # noqa: E402
from tokentrail.domain.model import Jwt, Token, TokenName  # noqa: E402
from tokentrail.domain.policy import Caller  # noqa: E402
from tokentrail.domain.scopes import parse_scope  # noqa: E402
from tokentrail.domain.values import new_generation  # noqa: E402
from tokentrail.projections.rebuild import TABLES, rebuild  # noqa: E402
from tokentrail.service import Service  # noqa: E402

MIN_DECODE_RATIO = 0.25  # of the decode-only replay, at every size
MIN_SIZE_RATIO = 0.8  # of the rate at the smallest size, at the largest
PER_WORKSPACE = 500
PER_SAVE = 200  # aggregates per ledger.save


def write_history(service: Service, events: int, seed: int = 11) -> int:
    """Write about `events` events (see the module's docstring); return the log's head."""
    rng = random.Random(seed)
    ticking = TickingClock()
    clock.set_clock(ticking)
    ledger = service.ledger
    tokens_wanted = max(10, events // 10)
    workspaces = []
    for w in range(max(1, tokens_wanted // PER_WORKSPACE)):
        admin = ledger.setup_workspace(f"ws{w}", f"owner{w}@example.com", Caller.system()).tokens[0]
        caller = Caller(
            workspace_id=admin.workspace_id,
            token_id=str(admin.id),
            name=admin.name,
            scopes=(parse_scope("ADMIN"),),
            origin="cli",
        )
        workspaces.append((admin.workspace_id, caller.actor(), str(admin.id), admin.generation))
    count = ledger.recorder.max_notification_id() or 0
    live: list[tuple[Token, TokenName]] = []
    pending: dict[Any, Any] = {}
    created = 0
    try:
        while count < events:
            if created < tokens_wanted and (not live or rng.random() < 0.1 or len(live) < 50):
                ws_id, actor, admin_id, admin_generation = workspaces[created % len(workspaces)]
                name = f"t{created}"
                token = Token.create(
                    actor=actor,
                    workspace_id=ws_id,
                    name=name,
                    description="",
                    scopes=list(dict.fromkeys(random_scope(rng) for _ in range(rng.randint(1, 2)))),
                    origin={"type": "C"},
                    kind="custom",
                    generation=new_generation(),
                )
                index = TokenName.create(ws_id, name, str(token.id), actor)
                live.append((token, index))
                pending[token.id], pending[index.id] = token, index
                created += 1
                if created % 100 == 0:
                    jwt = Jwt.issue(
                        actor=actor,
                        workspace_id=ws_id,
                        name=f"jwt{created}",
                        scopes=[{"type": "PIPES:READ", "resource": "p1"}],
                        expires_at=int(ticking.now.timestamp()) + 3600,
                        limits={},
                        admin_token_id=admin_id,
                        admin_generation=admin_generation,
                    )
                    pending[jwt.id] = jwt
            else:
                slot = rng.randrange(len(live))
                token, index = live[slot]
                actor = workspaces[0][1]
                roll = rng.random()
                if roll < 0.3:
                    token.add_scope(random_scope(rng), actor)
                elif roll < 0.45 and len(token.scopes) > 1:
                    token.remove_scope(rng.choice(token.scopes), actor)
                elif roll < 0.7:
                    token.refresh(new_generation(), rng.choice([0, 0, 60]), actor)
                elif roll < 0.8:
                    token.describe(f"description {rng.random():.6f}", actor)
                elif roll < 0.87:
                    token.set_expiry(int(ticking.now.timestamp()) + rng.choice([3600, 86400]), actor)
                elif roll < 0.95:
                    new_name = f"{token.name}-r"
                    token.rename(new_name, actor)
                    index.release(actor)
                    pending[index.id] = index
                    index = TokenName.create(token.workspace_id, new_name, str(token.id), actor)
                    live[slot] = (token, index)
                elif len(live) > 100:
                    token.delete(actor)
                    index.release(actor)
                    pending[index.id] = index
                    live[slot] = live[-1]
                    live.pop()
                pending[token.id] = token
                pending[index.id] = index
            if len(pending) >= PER_SAVE:
                count += sum(len(a.pending_events) for a in pending.values())
                ledger.save(*pending.values())
                pending.clear()
        if pending:
            ledger.save(*pending.values())
    finally:
        clock.set_clock(None)
    return ledger.recorder.max_notification_id() or 0


def reset_read_models(service: Service) -> None:
    with service.write_engine.begin() as conn:
        for table in reversed(TABLES):
            conn.execute(delete(table))
    service.projector.position = 0
    service.auth.tokens.clear()


def decode_only(service: Service) -> int:
    """Read and decode every stored event; nothing else."""
    recorder, mapper = service.ledger.recorder, service.ledger.mapper
    start, count = 1, 0
    while True:
        notes = recorder.select_notifications(start=start, limit=1000)
        if not notes:
            return count
        for n in notes:
            mapper.to_domain_event(n)
        count += len(notes)
        start = notes[-1].id + 1


def timed(action: Any) -> tuple[float, float, Any]:
    """Wall seconds, this process's CPU seconds, and the result of `action()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = action()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def measure(
    backend: str, size: int, scratch: common.Scratch, repeats: int, profile: bool, results: common.Results
) -> dict[str, float]:
    service = common.make_service(scratch, backend)
    try:
        seconds, head = common.timed(lambda: write_history(service, size))
        print(f"[{backend} {size:,}] wrote {head:,} events in {seconds:.1f} s", flush=True)
        floor, catch_up, rebuilt = common.Samples(), common.Samples(), common.Samples()
        cpu = {"decode": common.Samples(), "catch_up": common.Samples(), "rebuild": common.Samples()}
        for _ in range(repeats):
            seconds, cpu_seconds, count = timed(lambda: decode_only(service))
            floor.add(count / seconds)
            cpu["decode"].add(count / cpu_seconds)
            reset_read_models(service)
            seconds, cpu_seconds, position = timed(service.projector.catch_up)
            assert position == head, (position, head)
            catch_up.add(head / seconds)
            cpu["catch_up"].add(head / cpu_seconds)
            seconds, cpu_seconds, report = timed(lambda: rebuild(service, verify=True))
            if not report.ok:
                results.note(f"{backend} {size:,}: rebuild(verify=True) found differences: {report.differences[:3]}")
            rebuilt.add(report.events / seconds)
            cpu["rebuild"].add(report.events / cpu_seconds)
            print(
                f"[{backend} {size:,}] events/s (per CPU second of this process): decode-only "
                f"{floor.values[-1]:,.0f} ({cpu['decode'].values[-1]:,.0f}), catch-up {catch_up.values[-1]:,.0f} "
                f"({cpu['catch_up'].values[-1]:,.0f}), rebuild {rebuilt.values[-1]:,.0f} "
                f"({cpu['rebuild'].values[-1]:,.0f}){'' if report.ok else ' (DIFFERENCES)'}",
                flush=True,
            )
        if profile:
            reset_read_models(service)
            common.profile(f"projector.catch_up() of {head:,} events on {backend}", service.projector.catch_up)
        return {
            "events": head,
            "decode": floor.median,
            "catch_up": catch_up.median,
            "rebuild": rebuilt.median,
            "decode_cpu": cpu["decode"].median,
            "catch_up_cpu": cpu["catch_up"].median,
            "rebuild_cpu": cpu["rebuild"].median,
            "catch_up_spread": catch_up.spread(),  # type: ignore[dict-item]
            "rebuild_spread": rebuilt.spread(),  # type: ignore[dict-item]
        }
    finally:
        service.close()


def main() -> None:
    args_parser = common.parser(__doc__.split("\n\n")[0])
    args_parser.add_argument("--sizes", default="10000,100000", help="comma-separated event counts")
    args_parser.add_argument("--repeats", type=int, default=0, help="repeats per size (default 3 at <=10k, else 1)")
    args_parser.add_argument("--profile", action="store_true", help="cProfile one more catch-up at each size")
    args = args_parser.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    if args.quick:
        sizes = [2_000, 10_000]
    common.print_machine()
    scratch = common.Scratch(args.tmpdir)
    results = common.Results("projection at several sizes (one process, from position 0)")
    started = time.perf_counter()
    for backend in common.backends(args.backend):
        first: dict[str, float] | None = None
        for size in sizes:
            repeats = args.repeats or (3 if size <= 10_000 else 1)
            m = measure(backend, size, scratch, repeats, args.profile, results)
            first = first or m
            label = f"{int(m['events']):,} events"
            for what, name in (("catch_up", "catch_up from zero"), ("rebuild", "rebuild(verify=True)")):
                for clock_, suffix in (("", ""), ("_cpu", " [per CPU s]")):
                    # Per CPU second of this process: steadier than wall time on a shared
                    # machine, but blind to the PostgreSQL server's own work (informational).
                    targets = clock_ == "" or backend == "sqlite"
                    results.add(
                        f"{name}{suffix}, {label}",
                        backend,
                        m[what + clock_],
                        "events/s",
                        "decode-only replay",
                        m["decode" + clock_],
                        min_ratio=MIN_DECODE_RATIO if targets else None,
                        spread=m[f"{what}_spread"] if not clock_ else "",  # type: ignore[arg-type]
                    )
                    if m is not first:
                        last = size == sizes[-1]
                        results.add(
                            f"{name}{suffix}, {label}",
                            backend,
                            m[what + clock_],
                            "events/s",
                            f"own rate at {int(first['events']):,} events",
                            first[what + clock_],
                            min_ratio=MIN_SIZE_RATIO if last and targets else None,
                        )
    results.note(f"whole run {time.perf_counter() - started:,.0f} s; sizes {sizes}; median of the repeats")
    results.print()
    results.write_json(args.json)
    scratch.cleanup()


if __name__ == "__main__":
    main()
