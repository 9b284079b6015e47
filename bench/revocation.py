"""Revocation visibility across servers on one PostgreSQL database, under load.

Three `tokentrail serve` processes (A, B, C) share one scratch database; three busy readers per
server keep every one loaded (thousand-row audit pages, access diffs, token listings). Each trial creates a token through A, makes sure B
and C accept it, deletes it (or refreshes it without grace) through A and, from the instant A's
2xx arrives, polls `/v0/auth` on B and C until they refuse the old value. The figure is how long
after that 2xx a server still *accepted* the value (0 when the first poll was already refused).
C's LISTEN connection goes through a TCP proxy that the `stalled` phase freezes (socket open, no
traffic) for the whole phase, as a NAT idle timeout would.

    python bench/revocation.py            # ~40 s
    python bench/revocation.py --quick    # ~15 s

Target (PASS): no server accepts a revoked value more than 1 s after the revocation's 2xx.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import SECRET, Scratch, parser  # noqa: E402
from tests.pg_proxy import FreezableProxy  # noqa: E402
from tests.serve_process import initialise_store, serve  # noqa: E402

BOUND_S = 1.0


def _busy(url: str, admin: str, stop: threading.Event, counter: list[int]) -> None:
    paths = ["/v0/audit?limit=1000", "/v0/access/diff?from=2000-01-01T00:00:00Z", "/v0/tokens"]
    with httpx.Client(base_url=url, timeout=30) as client:
        i = 0
        while not stop.is_set():
            client.get(paths[i % len(paths)], params={"token": admin})
            counter[0] += 1
            i += 1


def _accepted(client: httpx.Client, value: str) -> bool | None:
    response = client.get("/v0/auth", params={"token": value})
    if response.status_code == 503:
        return None  # refused: cannot prove freshness
    return bool(response.json().get("valid"))


def _trial(servers: dict[str, str], admin: str, n: int, how: str) -> dict[str, float]:
    a = servers["A"]
    with httpx.Client(base_url=a, timeout=30) as client:
        created = client.post("/v0/tokens", params={"token": admin, "name": f"t{n}-{how}", "scope": "PIPES:READ:p"})
        created.raise_for_status()
        value = created.json()["token"]
    pollers = {name: httpx.Client(base_url=url, timeout=30) for name, url in servers.items() if name != "A"}
    try:
        for poller in pollers.values():  # every server knows the token before it is revoked
            deadline = time.monotonic() + 5
            while not _accepted(poller, value):
                assert time.monotonic() < deadline
        with httpx.Client(base_url=a, timeout=30) as client:
            if how == "delete":
                done = client.delete(f"/v0/tokens/t{n}-{how}", params={"token": admin})
            else:
                done = client.post(f"/v0/tokens/t{n}-{how}/refresh", params={"token": admin})
            acknowledged = time.monotonic()
            done.raise_for_status()
        windows: dict[str, float] = {}

        def poll(name: str, poller: httpx.Client) -> None:
            last_accepted = None
            while True:
                started = time.monotonic()
                if not _accepted(poller, value):
                    break
                last_accepted = started
                if started - acknowledged > 10:
                    break
            windows[name] = 0.0 if last_accepted is None else max(0.0, last_accepted - acknowledged)

        threads = [threading.Thread(target=poll, args=item) for item in pollers.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return windows
    finally:
        for poller in pollers.values():
            poller.close()


def main() -> int:
    args = parser(__doc__.splitlines()[0]).parse_args()
    trials = 6 if args.quick else 20
    scratch = Scratch(args.tmpdir)
    proxy = None
    served = []
    stop = threading.Event()
    try:
        url, data = scratch.database_url("postgres")
        store = initialise_store(url, data, SECRET)
        pg = make_url(url)
        proxy = FreezableProxy((pg.host or "127.0.0.1", pg.port or 5432))
        listen = pg.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        for name in "ABC":
            env = {"TOKENTRAIL_LISTEN_URL": listen} if name == "C" else None
            served.append(serve(url, data, SECRET, data / f"serve-{name}.log", env=env))
        servers = dict(zip("ABC", (s.url for s in served)))
        counter = [0]
        readers = [
            threading.Thread(target=_busy, args=(u, store["admin"], stop, counter), daemon=True)
            for u in servers.values()
            for _ in range(3)
        ]
        for r in readers:
            r.start()
        time.sleep(1)
        results: dict[str, list[float]] = {}
        for phase in ("healthy", "stalled"):
            if phase == "stalled":
                proxy.flowing.clear()
                time.sleep(0.6)  # C's listener misses its heartbeats
            for n in range(trials):
                how = "delete" if n % 2 == 0 else "refresh"
                for server, window in _trial(
                    servers, store["admin"], n + (1000 if phase == "stalled" else 0), how
                ).items():
                    results.setdefault(f"{phase} {server}", []).append(window)
        proxy.flowing.set()
        stop.set()
        worst = 0.0
        print(f"{'phase/server':<14} {'trials':>6} {'p50 ms':>8} {'max ms':>8}")
        for key, windows in results.items():
            worst = max(worst, max(windows))
            print(f"{key:<14} {len(windows):>6} {statistics.median(windows) * 1000:>8.1f} {max(windows) * 1000:>8.1f}")
        print(f"busy reads served meanwhile: {counter[0]}")
        verdict = "PASS" if worst <= BOUND_S else "FAIL"
        print(
            f"{verdict}: a revoked value was accepted at most {worst * 1000:.1f} ms after the 2xx (bound {BOUND_S * 1000:.0f} ms)"
        )
        return 0 if verdict == "PASS" else 1
    finally:
        stop.set()
        for s in served:
            s.stop()
        if proxy is not None:
            proxy.close()
        scratch.cleanup()


if __name__ == "__main__":
    sys.exit(main())
