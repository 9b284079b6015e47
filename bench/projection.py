"""Projection catch-up speed: every read model from an empty start, in events per second.

Writes a mixed history through `service.ledger.*` directly (creates, refreshes, scope replacements,
deletes; nothing projected), then times `service.projector.catch_up()` from position zero (the read
models are emptied before each repeat). Baselines, same run: a brute-force replay that reads the
notification log in pages of 1,000 and decodes every notification with
`ledger.mapper.to_domain_event` and does nothing else (the floor of any projection), and the figure
in the eventsourcing library's published baselines for eventsourcing's own projection at 500 events per
commit (quoted, not re-measured). Also times `projections.rebuild.rebuild(service, verify=True)`.
Target: catch-up >= 20,000 events/s on SQLite.

    python -m bench.projection [--backend sqlite|postgres|both] [--quick] [--profile]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import delete  # noqa: E402

from bench import common  # noqa: E402
from tokentrail.projections.rebuild import TABLES, rebuild  # noqa: E402
from tokentrail.service import Service  # noqa: E402

TARGET_EVENTS_PER_SECOND = {"sqlite": 20_000}
# eventsourcing's baseline, "projection, 500 events per commit", upper end of the min–max range.
NOTES_PROJECTION = {"sqlite": 8_600, "postgres": 8_800}
SCOPE_SETS = (["PIPES:READ:top"], ["DATASOURCES:READ:events", "PIPES:READ:top"])


def write_history(service: Service, ws: common.Workspace, creates: int) -> int:
    """Creates (2 events each), then refresh half, re-scope a third, delete a tenth of them."""
    ledger, admin = service.ledger, ws.admin
    ids = [str(ledger.create_token(admin, f"t-{i}", SCOPE_SETS[0]).token.id) for i in range(creates)]
    for token_id in ids[::2]:
        ledger.refresh_token(admin, token_id, grace_seconds=60)
    for token_id in ids[::3]:
        ledger.update_token(admin, token_id, scopes=SCOPE_SETS[1])
    for token_id in ids[::10]:
        ledger.delete_token(admin, token_id)
    return service.ledger.recorder.max_notification_id() or 0


def reset_read_models(service: Service) -> None:
    with service.write_engine.begin() as conn:
        for table in reversed(TABLES):
            conn.execute(delete(table))
    service.projector.position = 0
    service.auth.tokens.clear()


def brute_force(service: Service) -> int:
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


def run_backend(
    backend: str, scratch: common.Scratch, results: common.Results, creates: int, repeats: int, profile: bool
) -> None:
    service = common.make_service(scratch, backend)
    ws = common.workspace(service)
    service.sync()
    seconds, head = common.timed(lambda: write_history(service, ws, creates))
    print(f"[{backend}] wrote {head:,} events through ledger.* in {seconds:.1f} s", flush=True)

    catch_up, floor, rebuilt = common.Samples(), common.Samples(), common.Samples()
    for _ in range(repeats):
        seconds, count = common.timed(lambda: brute_force(service))
        floor.add(count / seconds)
        reset_read_models(service)
        seconds, position = common.timed(service.projector.catch_up)
        assert position == head, (position, head)
        catch_up.add(head / seconds)
        seconds, report = common.timed(lambda: rebuild(service, verify=True))
        if not report.ok:
            results.note(f"{backend}: rebuild(verify=True) found differences: {report.differences[:3]}")
        rebuilt.add(report.events / seconds)

    results.add(
        "catch_up from zero",
        backend,
        catch_up.median,
        "events/s",
        "decode-only replay",
        floor.median,
        min_value=TARGET_EVENTS_PER_SECOND.get(backend),
        spread=catch_up.spread(),
    )
    results.add(
        "catch_up from zero",
        backend,
        catch_up.median,
        "events/s",
        "notes: eventsourcing projection, 500/commit",
        NOTES_PROJECTION[backend],
    )
    results.add(
        "rebuild(verify=True)",
        backend,
        rebuilt.median,
        "events/s",
        "decode-only replay",
        floor.median,
        spread=rebuilt.spread(),
    )
    results.note(
        f"{backend}: {head:,} events; decode-only replay {floor.spread()} events/s; median of {repeats} repeat(s)"
    )
    if profile:
        reset_read_models(service)
        common.profile(f"projector.catch_up() of {head:,} events on {backend}", service.projector.catch_up)
    service.close()


def main() -> None:
    args_parser = common.parser(__doc__.split("\n\n")[0])
    args_parser.add_argument("--profile", action="store_true", help="cProfile one more catch-up")
    args = args_parser.parse_args()
    creates, repeats = (200, 1) if args.quick else (3000, 3)
    common.print_machine()
    scratch = common.Scratch(args.tmpdir)
    results = common.Results("projection catch-up (one process, from position 0)")
    for backend in common.backends(args.backend):
        run_backend(backend, scratch, results, creates, repeats, args.profile)
    results.note(
        "history: N creates (2 events each), refresh of every 2nd token, scope replacement of every "
        "3rd (2 events), delete of every 10th (2 events: Token.Deleted + TokenName.Released)"
    )
    results.print()
    results.write_json(args.json)
    scratch.cleanup()


if __name__ == "__main__":
    main()
