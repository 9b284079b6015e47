"""Audit export at scale: `GET /v0/audit?format=ndjson` of one big workspace, over uvicorn.

Builds a ledger of `--events` events (default 100,000) in one workspace with `bench.compliance`'s
generator (real aggregates and events, projected once), starts `uvicorn tokentrail.api.app:
app_from_env` on it and streams the whole trail as ndjson with an httpx client, to the end.

Measures:
- events/s and MB of the export, wall time from the request to the last byte. Target >= 50,000
  events/s.
- the server's peak RSS (VmHWM of the uvicorn process) over the export. Target <= 200 MB.
- baseline in the same run: a raw DBAPI `SELECT` of the same audit rows (the workspace's and its
  owner's visible rows, each keyset-paged in position order, 5,000 a page) with no encoding at
  all; printed as ours / baseline (the share of the bare read's speed that the export keeps).
- the server's CPU time over the export (events per CPU-second): on a busy shared machine the wall
  rate is the CPU we were given, this is what the work costs.

    python -m bench.export [--events N] [--backend sqlite|postgres|both] [--repeats K] [--quick]
                           [--keep | --db FILE] [--profile]

`--events 1000000` is possible (generation and projection take minutes). `--keep` keeps a
generated SQLite ledger and prints its path; `--db FILE` re-measures it (SQLite only). `--profile`
also runs the export's encoder in this process under cProfile.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import psycopg  # noqa: E402

from bench import common  # noqa: E402
from bench.compliance import generate  # noqa: E402
from tokentrail.projections.history import AUDIT_COLUMNS  # noqa: E402
from tokentrail.service import Service  # noqa: E402

TARGET_EVENTS_PER_S = 50_000
TARGET_PEAK_MB = 200.0
PAGE = 5_000


def build(url: str, data: Path, events: int) -> dict[str, Any]:
    """A ledger of `events` events, all but a handful in one workspace; projected."""
    service = Service(url, data=data, environ=common.environ(data))
    try:
        seconds, meta = common.timed(
            lambda: generate(service, max(1, events // 10), events, per_workspace=500, big_share=1.0)
        )
        print(f"  written {meta['events']:,} events in {seconds:.0f} s", flush=True)
        seconds, _ = common.timed(service.sync)
        print(f"  projected in {seconds:.0f} s", flush=True)
        owner = service.queries.workspace(meta["big"]["id"])
        return {
            "workspace_id": meta["big"]["id"],
            "owner": owner.owner_user_id if owner is not None else None,
            "admin_value": meta["big"]["admin_value"],
            "events": meta["events"],
        }
    finally:
        service.close()


def raw_select(url: str, realms: list[str]) -> tuple[int, float]:
    """The baseline: the same rows through the bare driver, each realm (the workspace, its owner)
    keyset-paged down its index, nothing merged or encoded. Returns (rows, seconds)."""
    columns = ", ".join(AUDIT_COLUMNS)
    started = time.perf_counter()
    rows = 0
    if url.startswith("sqlite"):
        conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"))
        sql = (
            f"SELECT {columns} FROM tt_audit WHERE workspace_id = ? AND visible = 1 AND position > ? "
            f"ORDER BY position LIMIT {PAGE}"
        )
    else:
        conn = psycopg.connect(url)
        sql = (
            f"SELECT {columns} FROM tt_audit WHERE workspace_id = %s AND visible AND position > %s "
            f"ORDER BY position LIMIT {PAGE}"
        )
    try:
        for realm in realms:
            after = 0
            while True:
                page = conn.execute(sql, (realm, after)).fetchall()
                rows += len(page)
                if len(page) < PAGE:
                    break
                after = page[-1][0]
    finally:
        conn.close()
    return rows, time.perf_counter() - started


def export(server: common.Uvicorn, admin_value: str) -> tuple[int, int, float]:
    """One full ndjson export through HTTP: (events, bytes, seconds)."""
    lines = size = 0
    with httpx.Client(timeout=600) as client:
        started = time.perf_counter()
        with client.stream("GET", f"{server.base}/v0/audit?format=ndjson&token={admin_value}") as r:
            r.raise_for_status()
            for chunk in r.iter_bytes():
                lines += chunk.count(b"\n")
                size += len(chunk)
        return lines, size, time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def measure(backend: str, url: str, data: Path, meta: dict[str, Any], repeats: int, results: common.Results) -> None:
    realms = [meta["workspace_id"]] + ([meta["owner"]] if meta["owner"] else [])
    env = common.environ(data, url)
    ours: list[float] = []
    bases: list[float] = []
    per_cpu: list[float] = []
    with common.Uvicorn("tokentrail.api.app:app_from_env", env=env, factory=True) as server:
        assert server.process is not None
        pid = server.process.pid
        with httpx.Client(timeout=60) as client:  # warm: migrations checked, caches loaded
            client.get(f"{server.base}/v0/audit?limit=1&token={meta['admin_value']}").raise_for_status()
        idle = vm(pid, "VmRSS")
        for _ in range(repeats):  # interleaved, so that drift on a shared machine hits both
            rows, seconds = raw_select(url, realms)
            bases.append(rows / seconds)
            print(f"  baseline raw SELECT: {rows:,} rows in {seconds:.2f} s ({rows / seconds:,.0f} rows/s)", flush=True)
            cpu = cpu_seconds(pid)
            lines, size, seconds = export(server, meta["admin_value"])
            cpu = cpu_seconds(pid) - cpu
            ours.append(lines / seconds)
            per_cpu.append(lines / cpu)
            print(
                f"  ndjson export: {lines:,} events, {size / 1e6:,.1f} MB in {seconds:.2f} s "
                f"({lines / seconds:,.0f} events/s); server CPU {cpu:.2f} s ({lines / cpu:,.0f} events per CPU-second)",
                flush=True,
            )
            if lines != rows:
                raise SystemExit(f"the export has {lines:,} events, the raw SELECT {rows:,} rows")
        peak = vm(pid, "VmHWM")
    print(f"  server RSS idle {idle:.0f} MB, peak {peak:.0f} MB", flush=True)
    median_ours, median_base = sorted(ours)[len(ours) // 2], sorted(bases)[len(bases) // 2]
    results.add(
        "ndjson export, events/s",
        backend,
        median_ours,
        "events/s",
        "raw DBAPI SELECT, rows/s",
        median_base,
        min_value=TARGET_EVENTS_PER_S,
    )
    results.add(
        "ndjson export, server peak RSS",
        backend,
        peak,
        "MB",
        "server RSS before",
        idle,
        max_value=TARGET_PEAK_MB,
        higher_is_better=False,
    )
    results.note(
        f"{backend}: {lines:,} events, {size / 1e6:,.1f} MB of ndjson; ours/baseline "
        f"{median_ours / median_base:.2f}; export min-max {min(ours):,.0f}-{max(ours):,.0f} events/s; "
        f"server CPU: {sorted(per_cpu)[len(per_cpu) // 2]:,.0f} events per CPU-second (what a quiet machine's wall "
        "rate would approach)"
    )


def profile(url: str, data: Path, meta: dict[str, Any]) -> None:
    """The export's whole server-side work (read and encode) in this process, under cProfile."""
    from tokentrail.api.export import audit_body
    from tokentrail.api.routes.ledger import audit_query
    from tokentrail.api.wire import Params

    service = Service(url, data=data, environ=common.environ(data))
    try:
        who = service.auth.authenticate(meta["admin_value"])
        query = audit_query(who, Params([("format", "ndjson")]))

        def drain() -> None:
            for _ in audit_body(service.reads.audit_rows(who, query), "ndjson"):
                pass

        common.profile("the ndjson encoder", drain)
    finally:
        service.close()


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3, help="exports (and baselines) per backend")
    p.add_argument("--db", help="reuse this SQLite file (generated earlier with --keep)")
    p.add_argument("--keep", action="store_true", help="keep the generated SQLite file and print its path")
    p.add_argument("--profile", action="store_true", help="also profile the encoder in this process")
    args = p.parse_args()
    if args.quick:
        args.events, args.repeats = 10_000, 1
    common.print_machine()
    scratch = common.Scratch(args.tmpdir)
    results = common.Results(f"audit export: {args.events:,} events in one workspace")
    for backend in ["sqlite"] if args.db else common.backends(args.backend):
        if args.db:
            data = Path(args.db).parent
            url = f"sqlite:///{args.db}"
            meta = json.loads((data / "bench-export.json").read_text())
        else:
            if args.keep and backend == "sqlite":
                data = Path(tempfile.mkdtemp(prefix="tt-export-", dir=args.tmpdir))
                url = f"sqlite:///{data / 'tokentrail.db'}"
            else:
                url, data = scratch.database_url(backend)
            print(f"{backend}: generating {args.events:,} events", flush=True)
            meta = build(url, data, args.events)
            (data / "bench-export.json").write_text(json.dumps(meta))
            if args.keep and backend == "sqlite":
                print(f"  kept: --db {data / 'tokentrail.db'}", flush=True)
        print(f"{backend}: measuring", flush=True)
        measure(backend, url, data, meta, args.repeats, results)
        if args.profile:
            profile(url, data, meta)
    results.print()
    results.write_json(args.json)


if __name__ == "__main__":
    main()
