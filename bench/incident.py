"""Incident response at scale: exposure of a token with a long life, and bulk revocation.

For each ledger size (`--sizes`, default 10,000 / 100,000 / 1,000,000 events; `--quick`: 10,000 and
30,000), on SQLite:

1. Writes a ledger as bench/compliance.py does (real aggregates, many per save, a ticking clock),
   plus one "hot" token in a typical workspace with `--hot-events` events (default 1,000: scope adds
   and removals, refreshes with and without grace), then projects it.
2. Measures `GET /v0/tokens/{hot}/exposure` through the app in-process (TestClient), p50/p99 over
   `--samples` requests (whole life, and a random window). Baseline in the same run: a brute-force
   replay of the hot token's own events from the event store (decode, fold scopes and values,
   intervals by hand), whose answer must equal the route's. Target: p99 <= 50 ms at every size,
   and the cost flat in the size of the ledger.
3. Bulk revocation of `--revoke` tokens (default 10,000) holding a scope on one datasource, in a
   workspace of their own: the plan (`dry_run=true`) and the revocation itself through
   `POST /v0/tokens/revoke`. Baseline in the same run: eventsourcing's own `save` of the same
   deletions (get every aggregate, delete, one save). Target: the revocation <= 30 s.

    python -m bench.incident [--sizes 10000,100000,1000000] [--quick] [--tmpdir DIR] [--json PATH]
"""

from __future__ import annotations

import gc
import random
import sys
import time
from pathlib import Path
from typing import Any
from uuid import UUID

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fastapi.testclient import TestClient  # noqa: E402

from bench import common  # noqa: E402
from bench.compliance import generate, random_scope  # noqa: E402
from tokentrail.api.app import create_app  # noqa: E402
from tokentrail.domain import clock  # noqa: E402
from tokentrail.domain.exposure import intersect_all, merge, reach  # noqa: E402
from tokentrail.domain.model import Token, TokenName, token_name_id  # noqa: E402
from tokentrail.domain.policy import Caller  # noqa: E402
from tokentrail.domain.scopes import parse_scope, read_scope  # noqa: E402
from tokentrail.domain.values import new_generation  # noqa: E402
from tokentrail.service import Service  # noqa: E402

TARGET_P99_MS = 50.0
TARGET_REVOKE_S = 30.0


def hot_token(service: Service, workspace: dict[str, Any], events: int, seed: int = 11) -> str:
    """A token with `events` events: scope churn and refreshes, saved in slices."""
    rng = random.Random(seed)
    ticking = common_clock()
    clock.set_clock(ticking)
    actor = workspace["actor"]
    token = Token.create(
        actor=actor,
        workspace_id=workspace["id"],
        name="hot",
        description="",
        scopes=["DATASOURCES:READ:ds0"],
        origin={"type": "C"},
        kind="custom",
        generation=new_generation(),
    )
    service.ledger.save(token, TokenName.create(workspace["id"], "hot", str(token.id), actor))
    written = 2
    while written < events:
        roll = rng.random()
        if roll < 0.4:
            token.add_scope(random_scope(rng), actor)
        elif roll < 0.7 and len(token.scopes) > 1:
            token.remove_scope(rng.choice(token.scopes), actor)
        else:
            token.refresh(new_generation(), rng.choice([0, 0, 30, 300]), actor)
        if len(token.pending_events) >= 100:
            written += len(token.pending_events)
            service.ledger.save(token)
    service.ledger.save(token)
    clock.set_clock(None)
    return str(token.id)


def common_clock() -> Any:
    from bench.compliance import TickingClock

    ticking = TickingClock()
    ticking.now = clock.now()  # after whatever the ledger already holds
    return ticking


def replay_exposure(service: Service, token_id: str) -> dict[tuple[str, str, str, str], list[tuple[int, Any]]]:
    """The baseline: the token's own events from the event store, folded by hand."""
    opened: dict[str, int] = {}
    spans: dict[str, list[tuple[int, Any]]] = {}
    at = 0
    deleted_at = None
    for event in service.ledger.events.get(UUID(token_id)):
        at = max(at, clock.to_micros(event.timestamp))  # the token's own order: a lower bound of effective time
        if isinstance(event, Token.Created):
            for scope in event.scopes:
                opened[scope] = at
        elif isinstance(event, Token.ScopeAdded):
            opened[event.scope] = at
        elif isinstance(event, Token.ScopeRemoved):
            spans.setdefault(event.scope, []).append((opened.pop(event.scope), at))
        elif isinstance(event, Token.Deleted):
            deleted_at = at
            for scope, start in opened.items():
                spans.setdefault(scope, []).append((start, at))
            opened = {}
    for scope, start in opened.items():
        spans.setdefault(scope, []).append((start, None))
    out: dict[tuple[str, str, str, str], list[tuple[int, Any]]] = {}
    for scope, intervals in spans.items():
        for item in reach(read_scope(scope)):
            out.setdefault((item.kind, item.resource, item.permission, item.via), []).extend(intervals)
    life = [(0, deleted_at)]
    return {k: intersect_all(merge(v), life) for k, v in out.items()}


def measure_exposure(
    service: Service, client: TestClient, admin: str, token_id: str, size: int, samples: int, results: common.Results
) -> None:
    # Equal answers first: the baseline is a check as well as a yardstick.
    answer = client.get(f"/v0/tokens/{token_id}/exposure", params={"token": admin}).json()
    got = {
        (e["kind"], e["resource"], e["permission"], e["via"]): [
            (clock.parse_instant(i["from"]), i["to"]) for i in e["intervals"]
        ]
        for e in answer["exposure"]
    }
    want = replay_exposure(service, token_id)
    assert set(got) == set(want), "exposure and replay disagree on what was reached"
    for key, intervals in want.items():
        assert [start for start, _ in got[key]] == [start for start, _ in intervals], key
    rng = random.Random(size)
    whole, windowed = [], []
    for _ in range(samples):
        started = time.perf_counter()
        response = client.get(f"/v0/tokens/{token_id}/exposure", params={"token": admin})
        whole.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
        start = rng.randint(0, 10**6)
        started = time.perf_counter()
        client.get(f"/v0/tokens/{token_id}/exposure", params={"token": admin, "from": str(start)})
        windowed.append((time.perf_counter() - started) * 1000)
    replays = []
    for _ in range(3):
        started = time.perf_counter()
        replay_exposure(service, token_id)
        replays.append((time.perf_counter() - started) * 1000)
    base = sorted(replays)[1]
    for name, values in (("whole life", whole), ("from a random instant", windowed)):
        p99 = common.percentile(values, 99)
        results.add(
            f"exposure p99, {name}, {size:,} events",
            "sqlite",
            p99,
            "ms",
            "replay of the token's events (ms)",
            base,
            max_value=TARGET_P99_MS,
            spread=f"p50 {common.percentile(values, 50):.1f}",
            higher_is_better=False,
        )


def measure_revocation(service: Service, client: TestClient, count: int, results: common.Results) -> None:
    setup = service.command(
        lambda: service.ledger.setup_workspace(f"leak{time.time_ns()}", "sec@example.com", Caller.system())
    )
    service.sync()
    admin = setup.tokens[0]
    admin_value = service.signer.make(admin.workspace_id, str(admin.id), admin.generation)
    actor = Caller(
        workspace_id=admin.workspace_id, token_id=str(admin.id), name=admin.name, scopes=(parse_scope("ADMIN"),)
    ).actor()

    def write(n: int, resource: str) -> list[UUID]:
        ids, batch = [], []
        for i in range(n):
            token = Token.create(
                actor=actor,
                workspace_id=admin.workspace_id,
                name=f"{resource}-{i}",
                description="",
                scopes=[f"DATASOURCES:READ:{resource}"],
                origin={"type": "C"},
                kind="custom",
                generation=new_generation(),
            )
            batch += [token, TokenName.create(admin.workspace_id, token.name, str(token.id), actor)]
            ids.append(token.id)
            if len(batch) >= 1000:
                service.ledger.save(*batch)
                batch = []
        if batch:
            service.ledger.save(*batch)
        return ids

    write(count, "leaked")
    baseline_ids = write(count, "baseline")
    service.sync()
    plan_s, plan = common.timed(
        lambda: client.post(
            "/v0/tokens/revoke", params={"token": admin_value, "resource": "leaked", "dry_run": "true"}
        ).json()
    )
    assert len(plan["tokens"]) == count, len(plan["tokens"])
    revoke_s, done = common.timed(
        lambda: client.post(
            "/v0/tokens/revoke", params={"token": admin_value, "resource": "leaked", "reason": "bench"}
        ).json()
    )
    assert len(done["tokens"]) == count and done["revocation_id"], done.get("error")

    def raw() -> None:  # eventsourcing alone: get every aggregate, delete it and its name, one save
        touched = []
        for token_id in baseline_ids:
            token = service.ledger.repository.get(token_id)
            token.delete(actor)
            index = service.ledger.repository.get(token_name_id(admin.workspace_id, token.name))
            index.release(actor)
            touched += [token, index]
        service.ledger.save(*touched)

    raw_s, _ = common.timed(raw)
    results.add(
        f"revocation of {count:,} tokens (API, plan + one change + projection)",
        "sqlite",
        revoke_s,
        "s",
        "raw get + delete + one save (s)",
        raw_s,
        max_value=TARGET_REVOKE_S,
        higher_is_better=False,
    )
    results.add(f"revocation plan of {count:,} tokens (dry run)", "sqlite", plan_s, "s", higher_is_better=False)


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="ledger sizes in events, comma-separated")
    p.add_argument("--hot-events", type=int, default=1000)
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--revoke", type=int, default=10_000)
    args = p.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    if args.quick:
        sizes, args.samples, args.revoke = [10_000, 30_000], 50, 2_000
    common.print_machine()
    results = common.Results("incident response: exposure and bulk revocation")
    scratch = common.Scratch(args.tmpdir)
    for size in sizes:
        data = Path(scratch.directory()) / f"ledger-{size}"
        data.mkdir(parents=True)
        service = Service(f"sqlite:///{data / 'tokentrail.db'}", data=data, environ=common.environ(data))
        print(f"generating {size:,} events", flush=True)
        meta = generate(service, max(200, size // 10), size, 500, 0.0)
        workspace = meta["workspaces"][0]
        token_id = hot_token(service, workspace, args.hot_events)
        proj_s, _ = common.timed(service.sync)
        results.note(f"{size:,}-event ledger ({meta['events']:,} written) projected in {proj_s:.0f} s")
        # Writing the ledger leaves this process's heap full of the generator's objects, which a
        # server never holds: freeze them out of the collector's way, so that its full passes (100 ms
        # and more over millions of objects) do not land in the measured requests.
        del meta["workspaces"][1:]
        gc.collect()
        gc.freeze()
        with TestClient(create_app(service)) as client:
            measure_exposure(service, client, workspace["admin_value"], token_id, size, args.samples, results)
            if size == sizes[-1]:
                print(f"revoking {args.revoke:,} tokens", flush=True)
                measure_revocation(service, client, args.revoke, results)
        service.close()
    scratch.cleanup()
    results.print()
    results.write_json(args.json)


if __name__ == "__main__":
    main()
