"""Write throughput of the ledger's use cases against raw eventsourcing saves, same run, same disk.

Ours: `Ledger.create_token` (one name-index read, then Token + TokenName saved in one transaction:
2 events), `refresh_token` (one token read, 1 event) and `update_token(scopes=...)` replacing one
scope by another (one read, 2 events), each alone and through `Service.command` (which also projects
the events and evicts the authentication cache before returning).
Baselines: a fresh eventsourcing `Application` on a fresh database of the same kind, with the
ledger's own persistence settings, saving a trivial aggregate: one new aggregate (1 event) per
save for creates, and `repository.get` + one event + save for updates.
Target: ledger create and `service.command(create_token)` >= 0.5x the raw create-save rate. Before
each timed run of commands the service is synced (untimed): the direct ledger writes before it are
caught up, as a running server's would have been, so a command pays only for itself (one
transaction: its events and their projection).

    python -m bench.ledger_writes [--backend sqlite|postgres|both] [--quick] [--profile]
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eventsourcing.application import Application  # noqa: E402
from eventsourcing.domain import Aggregate, event  # noqa: E402

from bench import common  # noqa: E402

TARGET_CREATE_RATIO = 0.5
SCOPE_SETS = (["PIPES:READ:top"], ["DATASOURCES:READ:events"])


class Counter(Aggregate):
    """The trivial aggregate of the baseline: one small event per change."""

    @event("Created")
    def __init__(self, name: str) -> None:
        self.name = name

    @event("Renamed")
    def rename(self, name: str) -> None:
        self.name = name


def run_backend(
    backend: str, scratch: common.Scratch, results: common.Results, counts: dict[str, int], rounds: int, profile: bool
) -> None:
    raw = Application(env=common.eventsourcing_env(scratch, backend))
    service = common.make_service(scratch, backend)
    ws = common.workspace(service)
    ledger, admin = service.ledger, ws.admin
    n_create, n_update, n_command = counts["create"], counts["update"], counts["command"]

    # Tokens to refresh and re-scope: seeded in bulk, projected once, so `command` finds them.
    refresh_pool = common.seed_tokens(ws, n_update + n_command, prefix="refresh")
    scope_pool = common.seed_tokens(ws, n_update + n_command, prefix="scopes")
    service.sync()
    raw_ids = []
    for i in range(n_update):
        counter = Counter(f"seed-{i}")
        raw.save(counter)
        raw_ids.append(counter.id)

    samples = {
        k: common.Samples()
        for k in (
            "raw_create",
            "raw_update",
            "create",
            "command_create",
            "refresh",
            "command_refresh",
            "replace",
            "command_replace",
        )
    }
    for r in range(rounds):
        # Interleaved, so drift (cache, disk, other load) hits baseline and ours alike.
        samples["raw_create"].add(common.rate(n_create, lambda i: raw.save(Counter(f"r{r}-{i}"))))

        def raw_update(i: int) -> None:
            counter = raw.repository.get(raw_ids[i])
            counter.rename(f"r{r}-{i}")
            raw.save(counter)

        samples["raw_update"].add(common.rate(n_update, raw_update))
        samples["create"].add(common.rate(n_create, lambda i: ledger.create_token(admin, f"w{r}-{i}", SCOPE_SETS[0])))
        service.sync()  # untimed: the direct ledger writes above, caught up as a server would have
        samples["command_create"].add(
            common.rate(
                n_command, lambda i: service.command(lambda: ledger.create_token(admin, f"c{r}-{i}", SCOPE_SETS[0]))
            )
        )
        samples["refresh"].add(common.rate(n_update, lambda i: ledger.refresh_token(admin, refresh_pool[i])))
        service.sync()  # untimed: the direct ledger writes above, caught up as a server would have
        samples["command_refresh"].add(
            common.rate(
                n_command, lambda i: service.command(lambda: ledger.refresh_token(admin, refresh_pool[n_update + i]))
            )
        )
        scopes = SCOPE_SETS[(r + 1) % 2]
        samples["replace"].add(
            common.rate(n_update, lambda i: ledger.update_token(admin, scope_pool[i], scopes=scopes))
        )
        service.sync()  # untimed: the direct ledger writes above, caught up as a server would have
        samples["command_replace"].add(
            common.rate(
                n_command,
                lambda i: service.command(lambda: ledger.update_token(admin, scope_pool[n_update + i], scopes=scopes)),
            )
        )

    raw_create, raw_update = samples["raw_create"].median, samples["raw_update"].median
    rows = [
        ("create: ledger.create_token", "create", "raw save, new aggregate", raw_create, TARGET_CREATE_RATIO),
        (
            "create: service.command(create_token)",
            "command_create",
            "raw save, new aggregate",
            raw_create,
            TARGET_CREATE_RATIO,
        ),
        ("refresh: ledger.refresh_token", "refresh", "raw get + 1 event + save", raw_update, None),
        ("refresh: service.command(refresh_token)", "command_refresh", "raw get + 1 event + save", raw_update, None),
        ("replace scopes: ledger.update_token", "replace", "raw get + 1 event + save", raw_update, None),
        (
            "replace scopes: service.command(update_token)",
            "command_replace",
            "raw get + 1 event + save",
            raw_update,
            None,
        ),
    ]
    for label, key, base_name, base, min_ratio in rows:
        results.add(
            label,
            backend,
            samples[key].median,
            "ops/s",
            base_name,
            base,
            min_ratio=min_ratio,
            spread=samples[key].spread(),
        )
    results.note(
        f"{backend}: raw create-save {samples['raw_create'].spread()} ops/s, raw get+save "
        f"{samples['raw_update'].spread()} ops/s over {rounds} round(s)"
    )

    if profile:
        base = rounds
        common.profile(
            f"ledger.create_token x{n_create} on {backend}",
            lambda: [ledger.create_token(admin, f"p{base}-{i}", SCOPE_SETS[0]) for i in range(n_create)],
        )
        common.profile(
            f"service.command(create_token) x{n_command} on {backend}",
            lambda: [
                service.command(lambda: ledger.create_token(admin, f"pc{base}-{i}", SCOPE_SETS[0]))
                for i in range(n_command)
            ],
        )
    service.close()
    raw.close()


def main() -> None:
    args_parser = common.parser(__doc__.split("\n\n")[0])
    args_parser.add_argument("--profile", action="store_true", help="cProfile one more pass of create / command")
    args = args_parser.parse_args()
    if args.quick:
        counts, rounds = {"create": 60, "update": 40, "command": 30}, 1
    else:
        counts, rounds = {"create": 500, "update": 300, "command": 200}, 3
    common.print_machine()
    scratch = common.Scratch(args.tmpdir)
    results = common.Results("ledger writes (single writer, in-process; median of rounds)")
    for backend in common.backends(args.backend):
        print(f"[{backend}] {rounds} round(s) of {counts} ...", flush=True)
        run_backend(backend, scratch, results, counts, rounds, args.profile)
    results.note(
        "events per op: create 2 (Token.Created + TokenName.Created), refresh 1, replace scopes 2 "
        "(ScopeRemoved + ScopeAdded); every op is one transaction, as is every baseline op"
    )
    results.print()
    results.write_json(args.json)
    scratch.cleanup()


if __name__ == "__main__":
    main()
