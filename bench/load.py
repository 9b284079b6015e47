"""Bounded loopback load test: a mix of reads, writes and introspection through `tokentrail serve`.

Per backend: a fresh store is initialised and seeded with `--tokens` custom tokens (in-process,
through the ledger), then `tokentrail serve` (uvicorn, 1 worker, 127.0.0.1) is started on it and
`--threads` client threads, each with one keep-alive httpx connection, send requests for
`--seconds` seconds, each drawing its next request from this mix:

    list    GET  /v0/tokens                          10 %
    get     GET  /v0/tokens/{id}                     20 %   any token ever created (some deleted)
    auth    GET  /v0/auth?permission=PIPES:READ:top  35 %   with a seeded token's value
    create  POST /v0/tokens?name=…&scope=…           12 %
    update  PUT  /v0/tokens/{id}?scope=…&description 10 %   a token this thread created
    refresh POST /v0/tokens/{id}/refresh              8 %   a token this thread created
    delete  DELETE /v0/tokens/{id}                    5 %   a token this thread created

It reports throughput, p50/p99 per kind, and errors: anything not 2xx, except the one answer that
is right by design (`404` for a `get` of a token another thread deleted), counted separately.
Errors must be 0 (exit status 1 otherwise). After the run the read models must equal a rebuild and
the hash chain must verify (exit status 1 otherwise).

    python -m bench.load [--backend sqlite|postgres|both] [--seconds 60] [--threads 8] [--json PATH]
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench import common  # noqa: E402
from tokentrail.api.setup import initialise  # noqa: E402
from tokentrail.projections.rebuild import rebuild  # noqa: E402
from tokentrail.service import Service  # noqa: E402
from tokentrail.verify import verify_chain  # noqa: E402

MIX = {"list": 10, "get": 20, "auth": 35, "create": 12, "update": 10, "refresh": 8, "delete": 5}
SCOPE = "PIPES:READ:top"


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in MIX})
    expected: dict[str, int] = field(default_factory=lambda: {k: 0 for k in MIX})
    errors: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in MIX})

    def merge(self, other: Stats) -> None:
        for k in MIX:
            self.latencies[k] += other.latencies[k]
            self.expected[k] += other.expected[k]
            self.errors[k] += other.errors[k]


class Shared:
    """Ids every thread may read, and the ids whose delete has been sent (a 404 for those is
    expected: the delete may commit before its own thread reads the answer)."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = list(ids)
        self.deleting: set[str] = set()
        self.lock = threading.Lock()

    def pick(self, rng: random.Random) -> str:
        with self.lock:
            return rng.choice(self.ids)


def _serve(url: str, data: Path) -> tuple[subprocess.Popen, str, Path]:
    port = common.free_port()
    log = data / "serve.log"
    env = {**os.environ, **common.environ(data, url), "PYTHONPATH": str(common.REPO_ROOT)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tokentrail.api.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=common.REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"tokentrail serve exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/v0/regions", timeout=1).status_code == 200:
                return process, base, log
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"tokentrail serve did not answer in 60 s: {log.read_text()[-3000:]}")
        time.sleep(0.05)


def _worker(
    n: int, base: str, admin: str, readers: list[str], shared: Shared, stop: threading.Event, stats: Stats
) -> None:
    rng = random.Random(n)
    kinds, weights = list(MIX), list(MIX.values())
    mine: list[str] = []
    made = 0
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin}"}, timeout=60) as http:
        while not stop.is_set():
            kind = rng.choices(kinds, weights)[0]
            if kind in ("update", "refresh", "delete") and not mine:
                kind = "create"
            target = None
            if kind == "list":
                request = ("GET", "/v0/tokens", {}, None)
            elif kind == "get":
                target = shared.pick(rng)
                request = ("GET", f"/v0/tokens/{target}", {}, None)
            elif kind == "auth":
                request = ("GET", "/v0/auth", {"permission": SCOPE}, {"Authorization": f"Bearer {rng.choice(readers)}"})
            elif kind == "create":
                made += 1
                request = ("POST", "/v0/tokens", {"name": f"load {n}-{made}", "scope": SCOPE}, None)
            elif kind == "update":
                target = rng.choice(mine)
                request = (
                    "PUT",
                    f"/v0/tokens/{target}",
                    {"scope": f"DATASOURCES:READ:ds_{rng.randrange(50)}", "description": f"d{made}"},
                    None,
                )
            elif kind == "refresh":
                target = rng.choice(mine)
                request = ("POST", f"/v0/tokens/{target}/refresh", {}, None)
            else:
                target = mine.pop(rng.randrange(len(mine)))
                with shared.lock:
                    shared.deleting.add(target)
                request = ("DELETE", f"/v0/tokens/{target}", {}, None)
            method, path, params, headers = request
            started = time.perf_counter()
            try:
                response = http.request(method, path, params=params, headers=headers)
            except httpx.HTTPError as error:
                stats.errors[kind].append(f"{type(error).__name__}: {error}")
                continue
            stats.latencies[kind].append((time.perf_counter() - started) * 1000)
            status = response.status_code
            if 200 <= status < 300:
                if kind == "create":
                    token_id = response.json()["id"]
                    mine.append(token_id)
                    with shared.lock:
                        shared.ids.append(token_id)
                elif kind == "auth" and not response.json().get("valid"):
                    stats.errors[kind].append(f"a live token was introspected as invalid: {response.text[:200]}")
                continue
            with shared.lock:
                deleted = target in shared.deleting
            if kind == "get" and status == 404 and deleted:
                stats.expected[kind] += 1
            else:
                stats.errors[kind].append(f"{method} {path} -> {status}: {response.text[:200]}")


def run(backend: str, scratch: common.Scratch, seconds: float, threads: int, tokens: int) -> dict[str, Any]:
    url, data = scratch.database_url(backend)
    service = Service(url, data=data, environ=common.environ(data))
    try:
        info = initialise(service, "load", "owner@example.com")
        admin_value = next(t["token"] for t in info["tokens"] if t["name"] == "admin token")
        admin = service.auth.authenticate(admin_value)
        ids, readers = [], []
        for i in range(tokens):
            change = service.command(lambda: service.ledger.create_token(admin, f"seed {i}", [SCOPE]))
            token = change.token
            ids.append(str(token.id))
            if i < 20:
                readers.append(service.signer.make(token.workspace_id, str(token.id), token.generation))
    finally:
        service.close()

    process, base, log = _serve(url, data)
    shared, stop = Shared(ids), threading.Event()
    per_thread = [Stats() for _ in range(threads)]
    workers = [
        threading.Thread(target=_worker, args=(n, base, admin_value, readers, shared, stop, per_thread[n]))
        for n in range(threads)
    ]
    started = time.monotonic()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join(timeout=120)
    elapsed = time.monotonic() - started
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
    stats = Stats()
    for s in per_thread:
        stats.merge(s)
    server_errors = [line for line in log.read_text(errors="replace").splitlines() if "Traceback" in line]

    service = Service(url, data=data, environ=common.environ(data))
    try:
        service.sync()
        report = rebuild(service, verify=True)
        chain = verify_chain(service)
        events = service.ledger.recorder.max_notification_id() or 0
    finally:
        service.close()

    total = sum(len(v) for v in stats.latencies.values())
    result: dict[str, Any] = {
        "backend": backend,
        "seconds": round(elapsed, 1),
        "threads": threads,
        "seed_tokens": tokens,
        "requests": total,
        "throughput_rps": round(total / elapsed, 1),
        "errors": sum(len(v) for v in stats.errors.values()),
        "expected_non_2xx": sum(stats.expected.values()),
        "server_tracebacks": len(server_errors),
        "rebuild_equal": report.ok,
        "chain_ok": chain.ok,
        "events": events,
        "kinds": {},
        "first_errors": [e for k in MIX for e in stats.errors[k]][:10],
    }
    for kind in MIX:
        values = stats.latencies[kind]
        result["kinds"][kind] = {
            "count": len(values),
            "p50_ms": round(common.percentile(values, 50), 2) if values else None,
            "p99_ms": round(common.percentile(values, 99), 2) if values else None,
            "errors": len(stats.errors[kind]),
            "expected_non_2xx": stats.expected[kind],
        }
    return result


def show(result: dict[str, Any]) -> None:
    print(
        f"\n== {result['backend']}: {result['requests']:,} requests in {result['seconds']} s by "
        f"{result['threads']} threads = {result['throughput_rps']:,.1f} req/s "
        f"(store seeded with {result['seed_tokens']} tokens; {result['events']:,} events after)"
    )
    print(f"{'kind':<8} {'count':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'expected non-2xx':>17}")
    for kind, k in result["kinds"].items():
        p50 = f"{k['p50_ms']:.1f}" if k["p50_ms"] is not None else "-"
        p99 = f"{k['p99_ms']:.1f}" if k["p99_ms"] is not None else "-"
        print(f"{kind:<8} {k['count']:>7,} {p50:>8} {p99:>8} {k['errors']:>7} {k['expected_non_2xx']:>17}")
    verdict = "PASS" if ok(result) else "FAIL"
    print(
        f"errors {result['errors']} (must be 0), expected non-2xx {result['expected_non_2xx']} (404 for a get of a "
        f"token deleted by another thread), server tracebacks {result['server_tracebacks']}, read models equal a "
        f"rebuild: {result['rebuild_equal']}, chain verifies: {result['chain_ok']} -> {verdict}"
    )
    for line in result["first_errors"]:
        print(f"  error: {line}")


def ok(result: dict[str, Any]) -> bool:
    return result["errors"] == 0 and result["server_tracebacks"] == 0 and result["rebuild_equal"] and result["chain_ok"]


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="load duration per backend (default 60)")
    p.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    p.add_argument("--tokens", type=int, default=200, help="custom tokens seeded before the run (default 200)")
    args = p.parse_args()
    if args.quick:
        args.seconds = min(args.seconds, 10.0)
    common.print_machine()
    scratch = common.Scratch(args.tmpdir)
    results = []
    try:
        for backend in common.backends(args.backend):
            result = run(backend, scratch, args.seconds, args.threads, args.tokens)
            show(result)
            results.append(result)
    finally:
        scratch.cleanup()
    if args.json:
        import json

        Path(args.json).write_text(
            json.dumps({"machine": common.machine(), "argv": sys.argv, "results": results}, indent=1) + "\n"
        )
    sys.exit(0 if all(ok(r) for r in results) else 1)


if __name__ == "__main__":
    main()
