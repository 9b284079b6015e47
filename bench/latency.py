"""Request latency (p50 / p99) of create, refresh and list with 10,000 tokens in the workspace.

Seeds 10,000 custom tokens in-process (the aggregates `create_token` saves, 500 per transaction),
projects them, then starts `uvicorn --factory tokentrail.api.app:app_from_env` (1 worker, 127.0.0.1) on the
same database and sends requests one at a time over one keep-alive httpx connection from this
process: POST /v0/tokens (create), POST /v0/tokens/{id}/refresh, GET /v0/tokens (list, ~10,000
tokens in the answer), and one page of it (`limit=100` from a cursor in the middle of the list).
Baseline, same run, interleaved: GET on a bare FastAPI app returning a constant
(`bench/bare_app.py`, same uvicorn settings, same client): the HTTP round-trip floor.
Target: list p50 <= 100 ms (with 10,000 tokens); the other latencies have none, their ratio says how
many round-trip floors a request costs. In-process, the list's answer is also built both ways,
warm, in the same run: the marshmallow dump of every row (`queries.tokens` + `token_objects` +
JSONResponse rendering: the baseline) and the route's own (`reads.token_page`, the keys, +
`token_list_body`).

    python -m bench.latency [--backend sqlite|postgres|both] [--quick] [--tokens N]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402

from bench import common  # noqa: E402
from tokentrail.api import present  # noqa: E402

SCOPE = "PIPES:READ:top"
LIST_TARGET_MS = 100.0
PAGE = 100


def timed_request(client: httpx.Client, method: str, url: str) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    response = client.request(method, url)
    elapsed = (time.perf_counter() - start) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{method} {url.split('?')[0]} -> {response.status_code}: {response.text[:300]}")
    return elapsed, response


def run_backend(
    backend: str,
    scratch: common.Scratch,
    results: common.Results,
    tokens: int,
    per_round: int,
    lists_per_round: int,
    rounds: int,
) -> None:
    url, data = scratch.database_url(backend)
    service = common.Service(url, data=data, environ=common.environ(data))
    ws = common.workspace(service)
    seconds, ids = common.timed(lambda: common.seed_tokens(ws, tokens, scopes=[SCOPE]))
    seed_seconds, _ = common.timed(service.sync)
    print(f"[{backend}] seeded {tokens:,} tokens in {seconds:.1f} s, projected in {seed_seconds:.1f} s", flush=True)

    # In-process, warm, the same answer both ways: the schema dump of every row (the baseline),
    # then the route's (lean rows, cached fragments, values signed per answer).
    who = ws.admin

    def dumped() -> bytes:
        rows = service.reads.tokens(who)
        return JSONResponse({"tokens": present.token_objects(service, rows, who)}).body

    def rendered() -> bytes:
        keys, _ = service.reads.token_page(who)
        return present.token_list_body(service, keys, who, lambda ids: service.reads.listed_tokens(who, ids))

    rendered()  # fills the fragment cache, as the first listing of a server does
    old_ms, new_ms, query_ms = [], [], []
    for _ in range(3 if tokens >= 10_000 else 5):
        old_ms.append(common.timed(dumped)[0] * 1000)
        new_ms.append(common.timed(rendered)[0] * 1000)
        query_ms.append(common.timed(lambda: service.reads.token_page(who))[0] * 1000)
    if dumped() != rendered():
        raise RuntimeError("the token list's fast answer differs from the schema dump")
    results.add(
        f"list in-process ({tokens:,}+ tokens)",
        backend,
        statistics.median(new_ms),
        "ms",
        "schema dump of every row",
        statistics.median(old_ms),
        higher_is_better=False,
    )
    results.note(
        f"{backend}: list in-process: of the route's {statistics.median(new_ms):.0f} ms, its query "
        f"(reads.token_page) {statistics.median(query_ms):.0f} ms; answers identical byte for byte"
    )
    admin_value = ws.admin_value
    service.close()

    samples: dict[str, list[float]] = {"bare": [], "create": [], "refresh": [], "list": [], "page": []}
    list_bytes = 0
    with (
        common.Uvicorn("tokentrail.api.app:app_from_env", env=common.environ(data, url), factory=True) as product,
        common.Uvicorn("bench.bare_app:app") as bare,
        httpx.Client(base_url=product.base, timeout=60) as client,
        httpx.Client(base_url=bare.base, timeout=60) as bare_client,
    ):
        auth = f"token={admin_value}"

        def create(i: int, label: str) -> float:
            return timed_request(client, "POST", f"/v0/tokens?{auth}&name={label}-{i}&scope={SCOPE}")[0]

        def refresh(i: int) -> float:
            return timed_request(client, "POST", f"/v0/tokens/{ids[i % len(ids)]}/refresh?{auth}")[0]

        for i in range(5):  # warm-up: imports, pools, prepared statements, caches
            timed_request(bare_client, "GET", "/sync")
            create(i, "warm")
            refresh(len(ids) - 1 - i)
        _, response = timed_request(client, "GET", f"/v0/tokens?{auth}")
        assert len(response.json()["tokens"]) >= tokens, "list does not show the seeded tokens"
        _, response = timed_request(client, "GET", f"/v0/tokens?{auth}&limit={tokens // 2}")
        middle = response.json()["next_cursor"]
        page_url = f"/v0/tokens?{auth}&limit={PAGE}&cursor={middle}"
        assert len(timed_request(client, "GET", page_url)[1].json()["tokens"]) == PAGE
        for r in range(rounds):
            samples["bare"] += [timed_request(bare_client, "GET", "/sync")[0] for _ in range(per_round)]
            samples["create"] += [create(i, f"r{r}") for i in range(per_round)]
            samples["refresh"] += [refresh(r * per_round + i) for i in range(per_round)]
            for _ in range(lists_per_round):
                elapsed, response = timed_request(client, "GET", f"/v0/tokens?{auth}")
                samples["list"].append(elapsed)
                list_bytes = len(response.content)
            samples["page"] += [timed_request(client, "GET", page_url)[0] for _ in range(per_round)]

    bare_p50, bare_p99 = common.percentile(samples["bare"], 50), common.percentile(samples["bare"], 99)
    for name, label in (
        ("create", "POST /v0/tokens (create)"),
        ("refresh", "POST /v0/tokens/{id}/refresh"),
        ("list", f"GET /v0/tokens ({tokens:,}+ tokens)"),
        ("page", f"GET /v0/tokens?limit={PAGE}&cursor= (mid-list page)"),
    ):
        values = samples[name]
        for p, base in ((50, bare_p50), (99, bare_p99)):
            results.add(
                f"{label} p{p}",
                backend,
                common.percentile(values, p),
                "ms",
                f"bare GET p{p}",
                base,
                max_value=LIST_TARGET_MS if name == "list" and p == 50 else None,
                higher_is_better=False,
            )
    results.note(
        f"{backend}: {len(samples['create'])} creates, {len(samples['refresh'])} refreshes, "
        f"{len(samples['list'])} lists, {len(samples['page'])} pages, {len(samples['bare'])} bare GETs, one at a time; "
        f"list answer {list_bytes / 1e6:.1f} MB"
    )


def main() -> None:
    args_parser = common.parser(__doc__.split("\n\n")[0])
    args_parser.add_argument(
        "--tokens", type=int, default=None, help="tokens seeded in the workspace (default 10,000; 1,000 with --quick)"
    )
    args = args_parser.parse_args()
    if args.quick:
        per_round, lists, rounds = 20, 2, 1
    else:
        per_round, lists, rounds = 60, 5, 3
    tokens = args.tokens or (1_000 if args.quick else 10_000)
    common.print_machine()
    scratch = common.Scratch(args.tmpdir)
    results = common.Results("request latency through uvicorn (sequential requests; ratio = ours / bare)")
    for backend in common.backends(args.backend):
        run_backend(backend, scratch, results, tokens, per_round, lists, rounds)
    results.print()
    results.write_json(args.json)
    scratch.cleanup()


if __name__ == "__main__":
    main()
