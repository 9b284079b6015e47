"""Token verification speed: in-process, and `GET /v0/auth` through a real uvicorn process.

In-process: `service.auth.authenticate(value)` on one thread (one core) with a warm token cache,
against a bare HMAC-SHA256 check + JSON decode of the same value (the least any verifier does).
Target: >= 50,000 verifications/s.
HTTP: `GET /v0/auth?permission=PIPES:READ:top&token=<value>` on `uvicorn --factory
tokentrail.api.app:app_from_env` (1 worker, 127.0.0.1, no access log) against a bare FastAPI app with one
route returning a constant (`bench/bare_app.py`, same uvicorn settings), same run, interleaved.
Load: `wrk -t1 -c8` when installed (`apt-get install -y wrk`), else a small asyncio client; both
keep-alive, loopback only, bounded in time. Target: >= 0.7x the bare app's requests/s.
Last use: the same `GET /v0/auth` on two tokentrail processes over one store, one recording last use
(the default) and one with `TOKENTRAIL_LAST_USE_SECONDS=0` (no recording: the code before last use
existed), interleaved round by round; and in-process, `authenticate` with the recorder on and off.
Target: recording keeps >= 0.9x the throughput without it.

    python -m bench.auth [--backend sqlite|postgres|both] [--quick] [--profile]
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench import common  # noqa: E402
from tokentrail.domain.scopes import check_permission, parse_scope  # noqa: E402

TARGET_VERIFY_PER_SECOND = 50_000
TARGET_HTTP_RATIO = 0.7
TARGET_LAST_USE_RATIO = 0.9
PERMISSION = "PIPES:READ:top"
CONNECTIONS = 8


def bare_check(key: bytes, value: str) -> dict:
    """Verify a `p.<payload>.<signature>` value and decode its payload: nothing more."""
    _, encoded, signature = value.split(".")
    expected = base64.urlsafe_b64encode(hmac.new(key, encoded.encode(), hashlib.sha256).digest()).rstrip(b"=")
    if not hmac.compare_digest(expected.decode(), signature):
        raise ValueError("bad signature")
    return json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))


def in_process(
    backend: str, ws: common.Workspace, value: str, results: common.Results, count: int, repeats: int, profile: bool
) -> None:
    auth = ws.service.auth
    key = common.SECRET.encode()
    requested = parse_scope(PERMISSION)
    auth.authenticate(value)  # warm the cache
    ours, floor, with_check = common.Samples(), common.Samples(), common.Samples()
    for _ in range(repeats):
        floor.add(common.rate(count, lambda i: bare_check(key, value)))
        ours.add(common.rate(count, lambda i: auth.authenticate(value)))
        with_check.add(common.rate(count, lambda i: check_permission(auth.authenticate(value).scopes, requested)))
    results.add(
        "authenticate(value), warm cache",
        backend,
        ours.median,
        "verif/s",
        "HMAC check + JSON decode",
        floor.median,
        min_value=TARGET_VERIFY_PER_SECOND,
        spread=ours.spread(),
    )
    results.add(
        "authenticate + check_permission",
        backend,
        with_check.median,
        "verif/s",
        "HMAC check + JSON decode",
        floor.median,
        spread=with_check.spread(),
    )
    if profile:
        common.profile(f"authenticate x{count} on {backend}", lambda: [auth.authenticate(value) for _ in range(count)])


def over_http(
    backend: str, url: str, data: Path, value: str, results: common.Results, seconds: float, rounds: int
) -> None:
    env = common.environ(data, url)
    path = f"/v0/auth?permission={PERMISSION}&token={value}"
    with (
        common.Uvicorn("tokentrail.api.app:app_from_env", env=env, factory=True) as product,
        common.Uvicorn("bench.bare_app:app") as bare,
    ):
        answer = httpx.get(product.base + path).json()
        assert answer.get("valid") is True and answer.get("allowed") is True, answer
        assert httpx.get(bare.base + "/sync").status_code == 200
        targets = {
            "bare_sync": bare.base + "/sync",
            "bare_async": bare.base + "/async",
            "ours": product.base + path,
        }
        for target in targets.values():  # warm-up: imports, prepared statements, pools, thread pool
            for _ in range(20):
                httpx.get(target)
            if seconds > 1:
                common.load(target, seconds=1, connections=CONNECTIONS)
        samples = {name: common.Samples() for name in targets}
        loads: dict[str, common.Load] = {}
        for _ in range(rounds):
            for name, target in targets.items():
                result = common.load(target, seconds=seconds, connections=CONNECTIONS)
                if result.non_2xx or result.errors:
                    results.note(f"{backend}: {name}: {result.non_2xx} non-2xx, {result.errors} socket errors")
                samples[name].add(result.rps)
                loads[name] = result
    base_sync, base_async = samples["bare_sync"].median, samples["bare_async"].median
    for base_name, base in (("bare FastAPI, def route", base_sync), ("bare FastAPI, async def route", base_async)):
        results.add(
            "GET /v0/auth over uvicorn",
            backend,
            samples["ours"].median,
            "req/s",
            base_name,
            base,
            min_ratio=TARGET_HTTP_RATIO,
            spread=samples["ours"].spread(),
        )
    tool = loads["ours"].tool
    lat = ", ".join(
        f"{name} p50 {load.latency_p50_ms:.1f} ms / p99 {load.latency_p99_ms:.1f} ms"
        for name, load in loads.items()
        if load.latency_p50_ms is not None
    )
    results.note(
        f"{backend}: load by {tool}, {rounds} round(s) of {seconds:g} s per app; bare def "
        f"{samples['bare_sync'].spread()}, bare async {samples['bare_async'].spread()} req/s; "
        f"last round latencies under load: {lat}"
    )


def last_use_in_process(
    backend: str, ws: common.Workspace, value: str, results: common.Results, count: int, repeats: int
) -> None:
    """`authenticate` with the last-use recorder on (as served) and off, interleaved."""
    auth, usage = ws.service.auth, ws.service.usage
    auth.authenticate(value)
    on, off = common.Samples(), common.Samples()
    for _ in range(repeats):
        usage.enabled = False
        off.add(common.rate(count, lambda i: auth.authenticate(value)))
        usage.enabled = True
        on.add(common.rate(count, lambda i: auth.authenticate(value)))
    results.add(
        "authenticate, last use recorded",
        backend,
        on.median,
        "verif/s",
        "last use not recorded",
        off.median,
        min_ratio=TARGET_LAST_USE_RATIO,
        spread=on.spread(),
    )


def last_use_over_http(
    backend: str, url: str, data: Path, value: str, results: common.Results, seconds: float, rounds: int
) -> None:
    """`GET /v0/auth` on a server recording last use against one that does not, same store, same run."""
    path = f"/v0/auth?permission={PERMISSION}&token={value}"
    recording = common.environ(data, url)
    silent = {**recording, "TOKENTRAIL_LAST_USE_SECONDS": "0"}
    with (
        common.Uvicorn("tokentrail.api.app:app_from_env", env=recording, factory=True) as after,
        common.Uvicorn("tokentrail.api.app:app_from_env", env=silent, factory=True) as before,
    ):
        targets = {"after": after.base + path, "before": before.base + path}
        for target in targets.values():
            assert httpx.get(target).json().get("valid") is True
            for _ in range(20):
                httpx.get(target)
            if seconds > 1:
                common.load(target, seconds=1, connections=CONNECTIONS)
        samples = {name: common.Samples() for name in targets}
        for _ in range(rounds):
            for name, target in targets.items():
                result = common.load(target, seconds=seconds, connections=CONNECTIONS)
                if result.non_2xx or result.errors:
                    results.note(f"{backend}: last use {name}: {result.non_2xx} non-2xx, {result.errors} errors")
                samples[name].add(result.rps)
    results.add(
        "GET /v0/auth, last use recorded",
        backend,
        samples["after"].median,
        "req/s",
        "last use not recorded",
        samples["before"].median,
        min_ratio=TARGET_LAST_USE_RATIO,
        spread=samples["after"].spread(),
    )


def main() -> None:
    args_parser = common.parser(__doc__.split("\n\n")[0])
    args_parser.add_argument("--profile", action="store_true", help="cProfile one more in-process pass")
    args = args_parser.parse_args()
    count, repeats, seconds, rounds = (20_000, 1, 1, 1) if args.quick else (100_000, 3, 3, 3)
    common.print_machine()
    scratch = common.Scratch(args.tmpdir)
    results = common.Results("token verification")
    for backend in common.backends(args.backend):
        url, data = scratch.database_url(backend)
        service = common.Service(url, data=data, environ=common.environ(data))
        ws = common.workspace(service)
        token = service.command(lambda: service.ledger.create_token(ws.admin, "reader", [PERMISSION])).token
        row = service.queries.token(str(token.id))
        value = service.signer.make(row.workspace_id, row.id, row.generation)
        print(f"[{backend}] in-process: {repeats} x {count:,} verifications ...", flush=True)
        in_process(backend, ws, value, results, count, repeats, args.profile)
        last_use_in_process(backend, ws, value, results, count, repeats)
        service.close()
        print(f"[{backend}] HTTP: {rounds} round(s) of {seconds:g} s per app ...", flush=True)
        over_http(backend, url, data, value, results, seconds, rounds)
        print(f"[{backend}] last use over HTTP: {rounds} round(s) of {seconds:g} s per server ...", flush=True)
        last_use_over_http(backend, url, data, value, results, seconds, rounds)
    results.print()
    results.write_json(args.json)
    scratch.cleanup()


if __name__ == "__main__":
    main()
