"""What the /metrics request middleware costs on the hot path, `GET /v0/auth`.

The same app with and without `MetricsMiddleware`, measured in the same run, interleaved:
- the middleware alone: its cost in microseconds per request, around an ASGI app that only
  answers 200 (the floor: what every request pays);
- in-process: the ASGI app called directly (no server, no sockets), one request after another,
  so the middleware's own cost is not diluted by HTTP parsing;
- HTTP: `uvicorn --factory` (1 worker, loopback, no access log), keep-alive load on
  `/v0/auth?permission=PIPES:READ:top&token=<value>` (wrk when installed, else an asyncio client).
Target: with metrics >= 0.9x without, on both.

    python -m bench.metrics_overhead [--backend sqlite|postgres|both] [--quick]
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench import common  # noqa: E402
from tokentrail.api.app import SWITCH_INTERVAL, create_app  # noqa: E402
from tokentrail.api.metrics import MetricsMiddleware  # noqa: E402
from tokentrail.service import Service  # noqa: E402

PERMISSION = "PIPES:READ:top"
TARGET_RATIO = 0.9


def without_metrics(app: Any) -> Any:
    """The app as it would be without the request middleware (everything else unchanged)."""
    app.user_middleware = [m for m in app.user_middleware if m.cls is not MetricsMiddleware]
    app.middleware_stack = None
    return app


def app_without_metrics() -> Any:
    """Uvicorn factory: `tokentrail.api.app:app_from_env` minus the metrics middleware."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    return without_metrics(create_app(Service()))


def middleware_cost_us(count: int, service: Service) -> float:
    """Microseconds the middleware adds to one request, around an app that does nothing."""
    metrics = create_app(service).state.metrics
    route = create_app(service).router.routes[0]  # /v0/auth, a plain Starlette route

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        scope["endpoint"] = route.endpoint
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = MetricsMiddleware(bare, metrics, [route])

    async def run(app: Any) -> float:
        async def send(message: Any) -> None:
            return None

        started = time.perf_counter()
        for _ in range(count):
            await app({"type": "http", "method": "GET", "path": "/v0/auth"}, None, send)
        return time.perf_counter() - started

    samples = [asyncio.run(run(wrapped)) - asyncio.run(run(bare)) for _ in range(5)]
    return sorted(samples)[2] / count * 1e6


def in_process_rate(app: Any, value: str, count: int) -> float:
    query = f"permission={PERMISSION}&token={value}".encode()

    async def run() -> float:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        statuses: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        started = time.perf_counter()
        for _ in range(count):
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": "/v0/auth",
                "raw_path": b"/v0/auth",
                "root_path": "",
                "query_string": query,
                "headers": [(b"host", b"bench")],
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 80),
                "state": {},
            }
            await app(scope, receive, send)
        elapsed = time.perf_counter() - started
        assert statuses and set(statuses) == {200}, set(statuses)
        return count / elapsed

    return asyncio.run(run())


def main() -> None:
    args = common.parser(__doc__.split("\n\n")[0]).parse_args()
    count, rounds, seconds = (2_000, 3, 1.0) if args.quick else (10_000, 7, 3.0)
    common.print_machine()
    scratch = common.Scratch(args.tmpdir)
    results = common.Results("metrics middleware overhead on GET /v0/auth")
    for backend in common.backends(args.backend):
        url, data = scratch.database_url(backend)
        service = Service(url, data=data, environ=common.environ(data))
        ws = common.workspace(service)
        token = service.command(lambda: service.ledger.create_token(ws.admin, "reader", [PERMISSION])).token
        row = service.queries.token(str(token.id))
        value = service.signer.make(row.workspace_id, row.id, row.generation)
        cost = middleware_cost_us(count * 10, service)
        results.add("metrics middleware alone, per request", backend, cost, "µs", higher_is_better=False)
        with_app, without_app = create_app(service), without_metrics(create_app(service))
        on, off = common.Samples(), common.Samples()
        print(f"[{backend}] in-process: {rounds} x {count:,} requests per app ...", flush=True)
        for app in (with_app, without_app):
            in_process_rate(app, value, count // 4)  # warm-up
        for _ in range(rounds):
            off.add(in_process_rate(without_app, value, count))
            on.add(in_process_rate(with_app, value, count))
        results.add(
            "GET /v0/auth in-process, with metrics",
            backend,
            on.median,
            "req/s",
            "without metrics",
            off.median,
            min_ratio=TARGET_RATIO,
            spread=on.spread(),
        )
        results.note(f"{backend}: in-process without metrics {off.spread()} req/s")
        service.close()
        print(f"[{backend}] HTTP: {rounds} round(s) of {seconds:g} s per app ...", flush=True)
        env = common.environ(data, url)
        path = f"/v0/auth?permission={PERMISSION}&token={value}"
        with (
            common.Uvicorn("tokentrail.api.app:app_from_env", env=env, factory=True) as with_server,
            common.Uvicorn("bench.metrics_overhead:app_without_metrics", env=env, factory=True) as without_server,
        ):
            targets = {"with": with_server.base + path, "without": without_server.base + path}
            for target in targets.values():
                assert httpx.get(target).json().get("allowed") is True
                common.load(target, seconds=1, connections=8)
            samples = {name: common.Samples() for name in targets}
            for _ in range(rounds):
                for name, target in targets.items():
                    samples[name].add(common.load(target, seconds=seconds, connections=8).rps)
        results.add(
            "GET /v0/auth over uvicorn, with metrics",
            backend,
            samples["with"].median,
            "req/s",
            "without metrics",
            samples["without"].median,
            min_ratio=TARGET_RATIO,
            spread=samples["with"].spread(),
        )
        results.note(
            f"{backend}: over uvicorn without metrics {samples['without'].spread()} req/s, "
            f"{rounds} round(s) of {seconds:g} s per app, interleaved"
        )
    results.print()
    results.write_json(args.json)
    scratch.cleanup()


if __name__ == "__main__":
    main()
