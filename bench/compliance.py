"""Compliance at scale: point-in-time answers, chain verification and a full export on a big ledger.

Generates a ledger of `--tokens` tokens and `--events` events (default 100,000 and 1,000,000) on
each `--backend` (a SQLite file; a throwaway PostgreSQL database `tt_bench_compliance_<pid>`,
dropped at the end unless `--keep`): real `Token`, `TokenName`, `Workspace` and `Jwt` aggregates
and events, written many aggregates per `ledger.save(...)` (one transaction each: 200 aggregates on
SQLite, 2,000 on PostgreSQL, where each save is a round trip and a table lock; the ledger is the
same either way), with a clock that moves 50 ms per event, then projected once, and prints each
table's rows, data and index bytes. Tokens get scope adds and removals (some filtered, some ADMIN,
WORKSPACE:READ_ALL or DATASOURCES:CREATE), refreshes, descriptions, renames and deletes; a JWT is
issued for every 100 tokens. Workspaces hold `--per-workspace` tokens each (default 500), except one
big workspace that holds `--big-share` of all tokens (default 25%), so the export is large.

Then measures, on the same file:
- p50/p99 of `GET /v0/access` and `GET /v0/tokens?as_of=` through the app in-process (TestClient),
  at random instants, workspaces and resources; baseline in the same run: a brute-force replay
  (decode every stored event up to T, fold the workspace's tokens and JWTs, apply `grant_for`),
  whose answers must equal the route's. Target: p99 <= 50 ms in a typical workspace (the big
  workspace's rows are informational: `/v0/tokens?as_of=` there answers thousands of tokens).
- `verify_chain` over the whole log, events/s. Target >= 100,000/s.
- peak RSS (VmHWM) of a uvicorn process serving `GET /v0/audit?format=ndjson` of the big workspace,
  streamed to the end by an httpx client. Target <= 200 MB.

    python -m bench.compliance [--backend sqlite|postgres|both] [--tokens N --events M] [--quick]
                               [--tmpdir DIR] [--json PATH] [--keep] [--per-save N]

At full size, on SQLite, writing takes ~1.5 min and projecting ~4.5 min on the 2-core team machine
when it is quiet, the whole run ~15 min (the brute-force replays are ~15 s each); PostgreSQL takes
longer (under load: writing 10 min, projecting 11 min). `--quick` (2,000 tokens, 20,000 events)
takes ~10 s a backend. `--keep` keeps the ledger and prints `--db FILE_OR_URL --data DIR`, which
re-measures it later without generating (see docs/benchmarks.md, "Compliance at scale", and
docs/scaling.md).
"""

from __future__ import annotations

import atexit
import json
import os
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from bench import common  # noqa: E402
from tokentrail.api.app import create_app  # noqa: E402
from tokentrail.domain import clock  # noqa: E402
from tokentrail.domain.model import Jwt, Token, TokenName, Workspace  # noqa: E402
from tokentrail.domain.policy import Caller  # noqa: E402
from tokentrail.domain.scopes import grant_for, parse_scope  # noqa: E402
from tokentrail.domain.values import new_generation  # noqa: E402
from tokentrail.service import Service  # noqa: E402
from tokentrail.verify import verify_chain  # noqa: E402

TARGET_P99_MS = 50.0
TARGET_VERIFY_PER_S = 100_000
TARGET_EXPORT_MB = 200.0
PG_PER_SAVE = 2000  # aggregates per save on PostgreSQL: one round trip and one table lock per ~10k events
START = datetime(2026, 1, 1, tzinfo=UTC)
STEP = timedelta(milliseconds=50)
DATASOURCES = [f"ds{i}" for i in range(20)]
PIPES = [f"p{i}" for i in range(10)]


def canonical(scope: str) -> str:
    return str(parse_scope(scope))


def random_scope(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.01:
        return "ADMIN"
    if roll < 0.03:
        return "WORKSPACE:READ_ALL"
    if roll < 0.05:
        return "DATASOURCES:CREATE"
    ds, pipe = rng.choice(DATASOURCES), rng.choice(PIPES)
    return canonical(
        rng.choice(
            [
                f"DATASOURCES:READ:{ds}",
                f"DATASOURCES:READ:{ds}:country = 'ES'",
                f"DATASOURCES:READ:{ds}:org_id = {rng.randint(1, 9)}",
                f"DATASOURCES:APPEND:{ds}",
                f"DATASOURCES:DROP:{ds}",
                f"PIPES:READ:{pipe}",
                f"PIPES:READ:{pipe}:x > 1",
                f"PIPES:DROP:{pipe}",
            ]
        )
    )


class TickingClock:
    """Every reading is STEP later than the one before: log order is time order."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += STEP
        return self.now


# -- generation ---------------------------------------------------------------------------------


def generate(
    service: Service, tokens: int, events: int, per_workspace: int, big_share: float, per_save: int = 200, seed: int = 7
) -> dict[str, Any]:
    """Write the ledger; returns the workspaces with their admin values and the time span."""
    rng = random.Random(seed)
    ticking = TickingClock()
    clock.set_clock(ticking)
    ledger = service.ledger
    big_tokens = int(tokens * big_share)
    typical = max(1, (tokens - big_tokens) // per_workspace)
    workspaces = []
    for w in range(typical + (1 if big_tokens else 0)):
        setup = ledger.setup_workspace(f"ws{w}", f"owner{w}@example.com", Caller.system())
        admin = setup.tokens[0]
        caller = Caller(
            workspace_id=admin.workspace_id,
            token_id=str(admin.id),
            name=admin.name,
            scopes=(parse_scope("ADMIN"),),
            origin="cli",
        )
        value = service.signer.make(admin.workspace_id, str(admin.id), admin.generation)
        workspaces.append(
            {
                "id": admin.workspace_id,
                "admin_value": value,
                "actor": caller.actor(),
                "admin_id": str(admin.id),
                "admin_generation": admin.generation,
                "tokens": 0,
            }
        )
    big = workspaces[-1] if big_tokens else None
    fixed = ledger.recorder.max_notification_id() or 0
    jwt_count = tokens // 100
    per_token = max(2.0, (events - fixed) / tokens)  # JWTs included
    written, count, batch, jwts_left = fixed, fixed, [], jwt_count
    started = time.perf_counter()
    for i in range(tokens):
        ws = big if big is not None and rng.random() < big_share else workspaces[i % typical]
        ws["tokens"] += 1
        actor = ws["actor"]
        name = f"t{i}"
        scopes = list(dict.fromkeys(random_scope(rng) for _ in range(rng.randint(1, 2))))
        token = Token.create(
            actor=actor,
            workspace_id=ws["id"],
            name=name,
            description="",
            scopes=scopes,
            origin={"type": "C"},
            kind="custom",
            generation=new_generation(),
        )
        index = TokenName.create(ws["id"], name, str(token.id), actor)
        touched: list[Any] = [token, index]
        budget = round(fixed + per_token * (i + 1)) - count - 2
        n = 2
        while n < budget + 2:
            roll = rng.random()
            if roll < 0.35:
                before = len(token.pending_events)
                token.add_scope(random_scope(rng), actor)
                n += len(token.pending_events) - before
            elif roll < 0.55 and len(token.scopes) > 1:
                token.remove_scope(rng.choice(token.scopes), actor)
                n += 1
            elif roll < 0.75:
                token.refresh(new_generation(), rng.choice([0, 0, 60]), actor)
                n += 1
            elif roll < 0.85:
                token.describe(f"description {n}", actor)
                n += 1
            elif roll < 0.95 and budget + 2 - n >= 3:
                new_name = f"t{i}-r{n}"
                token.rename(new_name, actor)
                index.release(actor)
                index = TokenName.create(ws["id"], new_name, str(token.id), actor)
                touched.append(index)
                n += 3
            elif budget + 2 - n >= 2 and rng.random() < 0.5:
                token.delete(actor)
                index.release(actor)
                n += 2
                break
        batch += touched
        count += n
        if jwts_left and i % 100 == 99:
            jwts_left -= 1
            count += 1
            batch.append(
                Jwt.issue(
                    actor=actor,
                    workspace_id=ws["id"],
                    name=f"jwt{i}",
                    scopes=[{"type": "PIPES:READ", "resource": rng.choice(PIPES)}],
                    expires_at=int((ticking.now + timedelta(hours=rng.choice([1, 6, 48]))).timestamp()),
                    limits={},
                    admin_token_id=ws["admin_id"],
                    admin_generation=ws["admin_generation"],
                )
            )
        if len(batch) >= per_save or i == tokens - 1:
            ledger.save(*batch)
            written = ledger.recorder.max_notification_id() or 0
            batch = []
            if i % 10_000 < per_save // 2:
                rate = (written - fixed) / (time.perf_counter() - started)
                print(f"  generated {i + 1:,} tokens, {written:,} events ({rate:,.0f} events/s)", flush=True)
    clock.set_clock(None)
    return {"workspaces": workspaces, "big": big, "start": START, "end": ticking.now, "events": written}


# -- brute force --------------------------------------------------------------------------------


def replay(service: Service, workspace_id: str, until: int) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Decode every stored event with effective time <= until; fold one workspace's tokens and JWTs."""
    recorder, mapper = service.ledger.recorder, service.ledger.mapper
    tokens: dict[str, dict[str, Any]] = {}
    admin_of: dict[str, str] = {}
    jwts: list[dict[str, Any]] = []
    start, at = 1, 0
    while True:
        notes = recorder.select_notifications(start=start, limit=2000)
        if not notes:
            break
        for n in notes:
            event = mapper.to_domain_event(n)
            at = max(at, clock.to_micros(event.timestamp))
            if at > until:
                return tokens, jwts
            oid = str(event.originator_id)
            if isinstance(event, Workspace.Created):
                admin_of[oid] = event.admin_token_id
            elif isinstance(event, Token.Created):
                if event.workspace_id == workspace_id:
                    tokens[oid] = {"id": oid, "name": event.name, "scopes": list(event.scopes), "deleted": False}
            elif oid in tokens:
                t = tokens[oid]
                if isinstance(event, Token.ScopeAdded):
                    t["scopes"].append(event.scope)
                elif isinstance(event, Token.ScopeRemoved):
                    t["scopes"].remove(event.scope)
                elif isinstance(event, Token.Renamed):
                    t["name"] = event.name
                elif isinstance(event, Token.Deleted):
                    t["deleted"] = True
                elif isinstance(event, Token.Refreshed):
                    for jwt in jwts:
                        if jwt["admin_token_id"] == oid and jwt["invalid_from"] is None:
                            jwt["invalid_from"] = at + event.grace_seconds * 1_000_000
            elif isinstance(event, Jwt.Issued) and event.workspace_id == workspace_id:
                jwts.append(
                    {
                        "id": oid,
                        "name": event.name,
                        "scopes": event.scopes,
                        "issued_at": at,
                        "expires_at": event.expires_at * 1_000_000,
                        "admin_token_id": event.admin_token_id,
                        "invalid_from": None,
                    }
                )
        start = notes[-1].id + 1
    return tokens, jwts


def replay_tokens(service: Service, workspace_id: str, at: int) -> list[tuple[str, str]]:
    tokens, _ = replay(service, workspace_id, at)
    return sorted((t["id"], t["name"]) for t in tokens.values() if not t["deleted"])


def replay_access(
    service: Service, workspace_id: str, resource: str, kind: str, permission: str, at: int
) -> list[tuple]:
    tokens, jwts = replay(service, workspace_id, at)
    out = []
    for t in tokens.values():
        if not t["deleted"]:
            grant = grant_for([parse_scope(x) for x in t["scopes"]], kind, permission, resource)
            if grant:
                out.append((False, t["id"], t["name"], grant.via, grant.filter))
    for j in jwts:
        alive = j["issued_at"] <= at < j["expires_at"] and (j["invalid_from"] is None or at < j["invalid_from"])
        if alive:
            scopes = [
                parse_scope(f"{s['type']}:{s['resource']}" + (f":{s['filter']}" if s.get("filter") else ""))
                for s in j["scopes"]
            ]
            grant = grant_for(scopes, kind, permission, resource)
            if grant:
                out.append((True, j["id"], j["name"], grant.via, grant.filter))
    return sorted(out)


# -- measurements -------------------------------------------------------------------------------


CPU_MS: list[float] = []  # process CPU time of each timed request: what other processes' load cannot inflate


def latency_ms(client: TestClient, path: str) -> tuple[float, dict[str, Any]]:
    started, cpu = time.perf_counter(), time.process_time()
    response = client.get(path)
    elapsed = (time.perf_counter() - started) * 1000
    CPU_MS.append((time.process_time() - cpu) * 1000)
    if response.status_code != 200:
        raise RuntimeError(f"GET {path} -> {response.status_code}: {response.text[:300]}")
    return elapsed, response.json()


def instant(rng: random.Random, span: dict[str, Any]) -> int:
    lo, hi = clock.to_micros(span["start"]), clock.to_micros(span["end"])
    return rng.randint(lo, hi)


def access_query(rng: random.Random) -> tuple[str, str, str]:
    if rng.random() < 0.7:
        resource = rng.choice(DATASOURCES + [f"{d}_quarantine" for d in DATASOURCES[:3]])
        return resource, "datasource", rng.choice(["READ", "READ", "APPEND", "DROP"])
    return rng.choice(PIPES), "pipe", rng.choice(["READ", "DROP"])


def measure_routes(
    service: Service,
    span: dict[str, Any],
    results: common.Results,
    samples: int,
    baseline_samples: int,
    label: str,
    pick: Any,
) -> None:
    rng = random.Random(11)
    app = create_app(service)
    with TestClient(app, raise_server_exceptions=True) as client:
        for _ in range(5):  # warm-up: imports, caches, first connections
            ws = pick(rng)
            latency_ms(client, f"/v0/tokens?as_of={instant(rng, span) / 1e6:.6f}&token={ws['admin_value']}")
        access, as_of, sizes = common.Samples(), common.Samples(), []
        access_cpu, as_of_cpu = [], []
        for _ in range(samples):
            ws, at = pick(rng), instant(rng, span)
            resource, kind, permission = access_query(rng)
            ms, body = latency_ms(
                client,
                f"/v0/access?resource={resource}&kind={kind}&permission={permission}"
                f"&as_of={at / 1e6:.6f}&token={ws['admin_value']}",
            )
            access.add(ms)
            access_cpu.append(CPU_MS[-1])
            ms, body = latency_ms(client, f"/v0/tokens?as_of={at / 1e6:.6f}&token={ws['admin_value']}")
            as_of.add(ms)
            as_of_cpu.append(CPU_MS[-1])
            sizes.append(len(body["tokens"]))
        for name, cpu in (("/v0/access", access_cpu), ("/v0/tokens?as_of=", as_of_cpu)):
            results.note(
                f"{service.backend}, {label} workspace {name}: CPU time per request p50 {common.percentile(cpu, 50):.1f} ms, "
                f"p99 {common.percentile(cpu, 99):.1f} ms (wall-clock figures include waiting for a core)"
            )
        brute_access, brute_as_of = common.Samples(), common.Samples()
        mismatches = 0
        for _ in range(baseline_samples):
            ws, at = pick(rng), instant(rng, span)
            at = at - at % 1_000_000  # whole seconds: the route's instant is exactly this one
            resource, kind, permission = access_query(rng)
            ms, body = latency_ms(
                client,
                f"/v0/access?resource={resource}&kind={kind}&permission={permission}"
                f"&as_of={at // 1_000_000}&token={ws['admin_value']}",
            )
            ours = sorted(
                (g.get("jwt", False), g["token_id"], g["name"], g["via"], g["filter"]) for g in body["grants"]
            )
            started = time.perf_counter()
            expected = replay_access(service, ws["id"], resource, kind, permission, at)
            brute_access.add((time.perf_counter() - started) * 1000)
            mismatches += ours != expected
            ms, body = latency_ms(client, f"/v0/tokens?as_of={at // 1_000_000}&token={ws['admin_value']}")
            ours_tokens = sorted((t["id"], t["name"]) for t in body["tokens"])
            started = time.perf_counter()
            expected_tokens = replay_tokens(service, ws["id"], at)
            brute_as_of.add((time.perf_counter() - started) * 1000)
            mismatches += ours_tokens != expected_tokens
    for name, ours, brute in (("GET /v0/access", access, brute_access), ("GET /v0/tokens?as_of=", as_of, brute_as_of)):
        p50, p99 = common.percentile(ours.values, 50), common.percentile(ours.values, 99)
        bp50 = brute.median
        target = TARGET_P99_MS if label == "typical" else None
        results.add(
            f"{name} p99, {label} workspace",
            service.backend,
            p99,
            "ms",
            "brute-force replay p50",
            bp50,
            max_value=target,
            higher_is_better=False,
            spread=f"p50 {p50:.1f} ms",
        )
        print(
            f"  {service.backend} {name} [{label}]: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(ours.values)}; brute-force replay "
            f"p50 {bp50:,.0f} ms over {len(brute.values)} -> replay/ours(p50) = {bp50 / p50:,.0f}x",
            flush=True,
        )
    results.note(
        f"{service.backend}, {label} workspace: /v0/tokens?as_of= answered {min(sizes)}-{max(sizes)} tokens "
        f"(median {sorted(sizes)[len(sizes) // 2]}); {baseline_samples * 2} answers compared with the "
        f"replay, {mismatches} differed"
    )
    if mismatches:
        print(f"  !! {mismatches} answers differ from the brute-force replay", flush=True)


def measure_verify(service: Service, results: common.Results, repeats: int) -> None:
    rates, cpu_rates = common.Samples(), common.Samples()
    for _ in range(repeats):
        cpu = time.process_time()
        seconds, report = common.timed(lambda: verify_chain(service))
        cpu = time.process_time() - cpu
        assert report.ok, report
        rates.add(report.events_checked / seconds)
        cpu_rates.add(report.events_checked / cpu)
        print(
            f"  verify_chain: {report.events_checked:,} events in {seconds:.1f} s "
            f"({report.events_checked / seconds:,.0f}/s; {report.events_checked / cpu:,.0f} per CPU-second)",
            flush=True,
        )
    results.note(f"{service.backend}, verify_chain: {cpu_rates.median:,.0f} events per CPU-second (load-independent)")
    results.add(
        "verify_chain, whole log",
        service.backend,
        rates.median,
        "events/s",
        min_value=TARGET_VERIFY_PER_S,
        spread=rates.spread(),
    )


def measure_export(backend: str, url: str, data: Path, workspace: dict[str, Any], results: common.Results) -> None:
    env = common.environ(data, url)
    with common.Uvicorn("tokentrail.api.app:app_from_env", env=env, factory=True) as server:
        assert server.process is not None
        pid = server.process.pid
        with httpx.Client(timeout=600) as client:
            client.get(f"{server.base}/v0/audit?limit=1&token={workspace['admin_value']}").raise_for_status()
            idle = _vm(pid, "VmRSS")
            lines = size = 0
            started = time.perf_counter()
            with client.stream("GET", f"{server.base}/v0/audit?format=ndjson&token={workspace['admin_value']}") as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if line:
                        lines += 1
                        size += len(line) + 1
            seconds = time.perf_counter() - started
        peak = _vm(pid, "VmHWM")
    print(
        f"  ndjson export: {lines:,} events, {size / 1e6:,.0f} MB in {seconds:.1f} s "
        f"({lines / seconds:,.0f} events/s); server RSS idle {idle:.0f} MB, peak {peak:.0f} MB",
        flush=True,
    )
    results.add(
        "ndjson export, server peak RSS",
        backend,
        peak,
        "MB",
        "server RSS before",
        idle,
        max_value=TARGET_EXPORT_MB,
        higher_is_better=False,
    )
    results.add("ndjson export", backend, lines / seconds, "events/s")
    results.note(f"{backend}, export: {lines:,} events, {size / 1e6:,.0f} MB of ndjson in {seconds:.1f} s")


def _vm(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def pg_url(name: str) -> str:
    return f"postgresql://{common.PG_USER}@{common.PG_HOST}:{common.PG_PORT}/{name}"


def table_sizes(service: Service) -> list[tuple[str, int, int, int]]:
    """(table, rows, table+TOAST bytes, index bytes) of every table of the ledger's database.

    PostgreSQL: pg_table_size / pg_indexes_size. SQLite: the dbstat virtual table (pages of each
    table and of each of its indexes), when the library was built with it; else nothing."""
    out = []
    with service.read_engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        cur = raw.cursor()
        if service.backend == "postgres":
            cur.execute(
                "SELECT c.relname, c.reltuples::bigint, pg_table_size(c.oid), pg_indexes_size(c.oid) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "ORDER BY pg_total_relation_size(c.oid) DESC"
            )
            out = [(r[0], int(r[1]), int(r[2]), int(r[3])) for r in cur.fetchall()]
        else:
            try:
                cur.execute(
                    "SELECT m.tbl_name, m.type, sum(d.pgsize) FROM dbstat d JOIN sqlite_master m ON m.name = d.name "
                    "GROUP BY m.tbl_name, m.type"
                )
                stats = cur.fetchall()
            except Exception:  # noqa: BLE001 - dbstat is an optional compile-time feature of SQLite
                stats = []
            tables: dict[str, list[int]] = {}
            for table, kind, size in stats:
                tables.setdefault(table, [0, 0])[0 if kind == "table" else 1] += int(size)
            for table, (data, index) in tables.items():
                cur.execute(f'SELECT count(*) FROM "{table}"')
                out.append((table, int(cur.fetchone()[0]), data, index))
            out.sort(key=lambda r: -(r[2] + r[3]))
        cur.close()
    return out


def report_sizes(service: Service, events: int, results: common.Results) -> None:
    sizes = table_sizes(service)
    if service.backend == "postgres":
        # reltuples is an estimate until ANALYZE: run it so the row counts are the real ones.
        with service.write_engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
        sizes = table_sizes(service)
    print(f"  {service.backend} table sizes ({events:,} events):", flush=True)
    total_data = total_index = 0
    for table, rows, data, index in sizes:
        total_data += data
        total_index += index
        if data + index >= 1 << 20:
            print(
                f"    {table:32} {rows:>11,} rows  {data / 2**20:8,.1f} MB data  {index / 2**20:8,.1f} MB indexes"
                f"  ({(data + index) / max(events, 1):,.0f} B/event)",
                flush=True,
            )
    print(
        f"    total: {total_data / 2**20:,.0f} MB data + {total_index / 2**20:,.0f} MB indexes = "
        f"{(total_data + total_index) / max(events, 1):,.0f} bytes per event",
        flush=True,
    )
    results.add("database size per event", service.backend, (total_data + total_index) / max(events, 1), "B/event")
    results.note(
        f"{service.backend}, sizes: "
        + "; ".join(f"{t} {r:,} rows {d / 2**20:,.0f}+{i / 2**20:,.0f} MB" for t, r, d, i in sizes if d + i >= 1 << 20)
    )


def run(backend: str, args: Any, scratch: common.Scratch, results: common.Results) -> None:
    dropped: list[str] = []
    if args.db:
        if (backend == "postgres") != args.db.startswith("postgresql://"):
            return  # --db names one ledger, of one backend
        print(f"== {backend} ==", flush=True)
        if backend == "postgres":
            url, data = args.db, Path(args.data or ".")
        else:
            url, data = f"sqlite:///{args.db}", Path(args.data or Path(args.db).parent)
        meta = json.loads((data / "bench-meta.json").read_text())
        span = {"start": datetime.fromisoformat(meta["start"]), "end": datetime.fromisoformat(meta["end"])}
        service = Service(url, data=data, environ=common.environ(data))
    else:
        print(f"== {backend} ==", flush=True)
        data = (
            Path(scratch.directory())
            if not args.keep
            else Path(__import__("tempfile").mkdtemp(prefix="tt-compliance-", dir=args.tmpdir))
        )
        if backend == "sqlite":
            url = f"sqlite:///{data / 'tokentrail.db'}"
        else:
            name = f"tt_bench_compliance_{os.getpid()}"
            with common._pg_admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{name}"')
            if not args.keep:
                dropped.append(name)
                atexit.register(_drop, dropped)
            url = pg_url(name)
        service = Service(url, data=data, environ=common.environ(data))
        per_save = args.per_save or (200 if backend == "sqlite" else PG_PER_SAVE)
        print(f"generating {args.tokens:,} tokens / {args.events:,} events in {url} ({per_save} per save)", flush=True)
        gen_s, meta = common.timed(
            lambda: generate(service, args.tokens, args.events, args.per_workspace, args.big_share, per_save=per_save)
        )
        print(f"  written {meta['events']:,} events in {gen_s:.0f} s ({meta['events'] / gen_s:,.0f}/s)", flush=True)
        proj_s, _ = common.timed(lambda: service.sync())
        print(f"  projected in {proj_s:.0f} s ({meta['events'] / proj_s:,.0f} events/s)", flush=True)
        results.note(
            f"{backend}, generation: {meta['events']:,} events written in {gen_s:.0f} s ({per_save} aggregates "
            f"per save), projected in {proj_s:.0f} s; {len(meta['workspaces'])} workspaces, big one "
            f"{meta['big']['tokens'] if meta['big'] else 0:,} tokens"
        )
        results.add("generation (bulk saves)", backend, meta["events"] / gen_s, "events/s")
        results.add("projection catch-up, whole log", backend, meta["events"] / proj_s, "events/s")
        span = {"start": meta["start"], "end": meta["end"]}
        (data / "bench-meta.json").write_text(
            json.dumps(
                {
                    "start": meta["start"].isoformat(),
                    "end": meta["end"].isoformat(),
                    "workspaces": meta["workspaces"],
                    "big": meta["big"],
                    "events": meta["events"],
                }
            )
        )
        if args.keep:
            print(f"  kept: --db {url.removeprefix('sqlite:///')} --data {data}", flush=True)
    report_sizes(service, meta["events"], results)
    typical = [w for w in meta["workspaces"] if w != meta["big"]]
    print("measuring routes", flush=True)
    measure_routes(
        service, span, results, args.samples, args.baseline_samples, "typical", lambda rng: rng.choice(typical)
    )
    if meta["big"]:
        measure_routes(service, span, results, max(20, args.samples // 5), 1, "big", lambda rng: meta["big"])
    print("measuring verify", flush=True)
    measure_verify(service, results, 1 if args.quick else 3)
    service.close()
    if meta["big"]:
        print("measuring export", flush=True)
        measure_export(backend, url, data, meta["big"], results)
    _drop(dropped)


def _drop(names: list[str]) -> None:
    """Drop the throwaway PostgreSQL databases still listed (at the end of a run, or at exit)."""
    while names:
        name = names.pop()
        try:
            with common._pg_admin() as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as error:  # noqa: BLE001 - report, do not hide, a database left behind
            print(f"warning: could not drop {name}: {error}", file=sys.stderr)


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=100_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--per-workspace", type=int, default=500)
    p.add_argument("--big-share", type=float, default=0.25)
    p.add_argument("--samples", type=int, default=300, help="route requests per route and workspace kind")
    p.add_argument("--baseline-samples", type=int, default=3, help="brute-force replays per route")
    p.add_argument(
        "--per-save",
        type=int,
        default=0,
        help=f"aggregates per ledger.save while generating (default 200 on SQLite, {PG_PER_SAVE} on PostgreSQL); "
        "the ledger generated is the same whatever the batching",
    )
    p.add_argument("--db", help="reuse this SQLite file or postgresql:// URL (generated earlier with --keep)")
    p.add_argument("--data", help="with --db: the data directory holding bench-meta.json (printed by --keep)")
    p.add_argument(
        "--keep", action="store_true", help="keep the generated SQLite file / PostgreSQL database and print where"
    )
    args = p.parse_args()
    if args.quick:
        args.tokens, args.events, args.samples, args.per_workspace = 2_000, 20_000, 60, 200
    common.print_machine()
    scratch = common.Scratch(args.tmpdir)
    results = common.Results(f"compliance: {args.tokens:,} tokens, {args.events:,} events")
    for backend in common.backends(args.backend):
        run(backend, args, scratch, results)
    results.print()
    results.write_json(args.json)


if __name__ == "__main__":
    main()
