"""Shared plumbing for the benchmarks: scratch databases, services, timing, servers, results.

Every benchmark measures its baseline in the same run, on the same backend kind and the same disk,
and prints ours / baseline as a ratio with PASS/FAIL against its target. Scratch SQLite files live
in a temporary directory (`--tmpdir` picks where: the disk's fsync cost dominates small writes);
scratch PostgreSQL databases are named `tt_bench_<random>` and dropped at exit.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/x.py` puts bench/ first, not the repo root
    sys.path.insert(0, str(REPO_ROOT))

import psycopg  # noqa: E402

from tokentrail.domain.model import Token, TokenName  # noqa: E402
from tokentrail.domain.policy import Caller  # noqa: E402
from tokentrail.domain.values import new_generation  # noqa: E402
from tokentrail.service import Service  # noqa: E402
from tokentrail.storage.database import Database  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdef"
PG_HOST = os.environ.get("TOKENTRAIL_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TOKENTRAIL_BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("TOKENTRAIL_BENCH_PG_USER", "postgres")
BACKENDS = ("sqlite", "postgres")


# -- command line -------------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--quick", action="store_true", help="a ~10 s smoke run with small counts")
    p.add_argument(
        "--tmpdir",
        default=None,
        help="where scratch SQLite files and data dirs go (default: the system temp dir; "
        "/dev/shm takes the disk's fsync out of the figures)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    return p


def backends(choice: str) -> list[str]:
    return list(BACKENDS) if choice == "both" else [choice]


# -- scratch storage ----------------------------------------------------------------------------


class Scratch:
    """Temporary directories and PostgreSQL databases, all removed at exit (even on Ctrl-C)."""

    def __init__(self, tmpdir: str | None = None) -> None:
        self.tmpdir = tmpdir
        self._dirs: list[Path] = []
        self._databases: list[str] = []
        atexit.register(self.cleanup)

    def directory(self) -> Path:
        path = Path(tempfile.mkdtemp(prefix="tt-bench-", dir=self.tmpdir))
        self._dirs.append(path)
        return path

    def pg_database(self) -> str:
        name = f"tt_bench_{uuid.uuid4().hex[:12]}"
        with _pg_admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._databases.append(name)
        return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"

    def database_url(self, backend: str) -> tuple[str, Path]:
        """A fresh database of `backend` and a data directory beside it."""
        data = self.directory()
        if backend == "sqlite":
            return f"sqlite:///{data / 'tokentrail.db'}", data
        return self.pg_database(), data

    def cleanup(self) -> None:
        if self._databases:
            try:
                with _pg_admin() as conn:
                    for name in self._databases:
                        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except psycopg.Error as error:  # report, do not hide, a database left behind
                print(f"warning: could not drop {self._databases}: {error}", file=sys.stderr)
            self._databases = []
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)
        self._dirs = []


def _pg_admin() -> psycopg.Connection:
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True)


def environ(data: Path, url: str | None = None) -> dict[str, str]:
    env = {"TOKENTRAIL_SECRET_KEY": SECRET, "TOKENTRAIL_DATA_DIR": str(data)}
    if url:
        env["TOKENTRAIL_DATABASE_URL"] = url
    return env


def make_service(scratch: Scratch, backend: str) -> Service:
    url, data = scratch.database_url(backend)
    return Service(url, data=data, environ=environ(data))


def eventsourcing_env(scratch: Scratch, backend: str) -> dict[str, str]:
    """Persistence settings for a raw eventsourcing Application: the ledger's own settings, on a
    fresh database of the same kind, so a baseline differs from the ledger only in what it does."""
    url, _ = scratch.database_url(backend)
    return Database(url).eventsourcing_env()


@dataclass
class Workspace:
    service: Service
    workspace_id: str
    admin: Caller
    admin_value: str


def workspace(service: Service, name: str = "bench") -> Workspace:
    """A workspace with its default tokens and an authenticated admin caller (as tests/conftest.py)."""
    setup = service.command(lambda: service.ledger.setup_workspace(name, "owner@example.com", Caller.system()))
    admin = setup.tokens[0]
    value = service.signer.make(admin.workspace_id, str(admin.id), admin.generation)
    return Workspace(service, admin.workspace_id, service.auth.authenticate(value), value)


def seed_tokens(
    ws: Workspace, count: int, scopes: Sequence[str] = ("PIPES:READ:top",), per_save: int = 500, prefix: str = "seed"
) -> list[str]:
    """Add `count` custom tokens fast: the same Token + TokenName aggregates `Ledger.create_token`
    saves, but `per_save` tokens per transaction and without the per-create checks. Not projected."""
    ledger = ws.service.ledger
    actor = ws.admin.actor()
    ids: list[str] = []
    for start in range(0, count, per_save):
        batch = []
        for i in range(start, min(count, start + per_save)):
            name = f"{prefix}-{i}"
            token = Token.create(
                actor=actor,
                workspace_id=ws.workspace_id,
                name=name,
                description="",
                scopes=list(scopes),
                origin={"type": "C"},
                kind="custom",
                generation=new_generation(),
            )
            batch += [token, TokenName.create(ws.workspace_id, name, str(token.id), actor)]
            ids.append(str(token.id))
        ledger.save(*batch)
    return ids


# -- timing -------------------------------------------------------------------------------------


def rate(count: int, action: Callable[[int], Any]) -> float:
    """Operations per second of `action(i)` for i in range(count)."""
    start = time.perf_counter()
    for i in range(count):
        action(i)
    return count / (time.perf_counter() - start)


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


@dataclass
class Samples:
    """Repeated measurements of one figure; the median is the one reported."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def spread(self, fmt: str = "{:,.0f}") -> str:
        if len(self.values) < 2:
            return fmt.format(self.values[0]) if self.values else ""
        return f"{fmt.format(min(self.values))}–{fmt.format(max(self.values))}"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# -- results ------------------------------------------------------------------------------------


@dataclass
class Row:
    benchmark: str
    backend: str
    baseline_name: str
    baseline: float | None
    ours: float
    unit: str
    target: str = ""  # e.g. ">= 0.5x baseline", ">= 20000"
    verdict: str = ""  # PASS / FAIL / "" (no target)
    spread: str = ""  # min–max of ours over the repeats
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        if not self.baseline:
            return None
        return self.ours / self.baseline


class Results:
    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def add(
        self,
        benchmark: str,
        backend: str,
        ours: float,
        unit: str,
        baseline_name: str = "",
        baseline: float | None = None,
        *,
        min_ratio: float | None = None,
        min_value: float | None = None,
        max_value: float | None = None,
        spread: str = "",
        higher_is_better: bool = True,
    ) -> Row:
        row = Row(
            benchmark, backend, baseline_name, baseline, ours, unit, spread=spread, higher_is_better=higher_is_better
        )
        checks: list[bool] = []
        targets: list[str] = []
        if min_ratio is not None:
            targets.append(f">= {min_ratio:g}x baseline")
            checks.append(row.ratio is not None and row.ratio >= min_ratio)
        if min_value is not None:
            targets.append(f">= {min_value:,.0f} {unit}")
            checks.append(ours >= min_value)
        if max_value is not None:
            targets.append(f"<= {max_value:,.0f} {unit}")
            checks.append(ours <= max_value)
        row.target = "; ".join(targets)
        row.verdict = ("PASS" if all(checks) else "FAIL") if checks else ""
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)

    def print(self) -> None:
        print_machine()  # again at the end: the load average tells how busy the machine was
        headers = [
            "benchmark",
            "backend",
            "baseline",
            "baseline value",
            "ours",
            "ours min–max",
            "ratio",
            "target",
            "verdict",
        ]
        table = [headers]
        for r in self.rows:
            table.append(
                [
                    r.benchmark,
                    r.backend,
                    r.baseline_name or "—",
                    _num(r.baseline, r.unit) if r.baseline is not None else "—",
                    _num(r.ours, r.unit),
                    r.spread or "—",
                    f"{r.ratio:.2f}x" if r.ratio is not None else "—",
                    r.target or "(none)",
                    r.verdict or "info",
                ]
            )
        widths = [max(len(str(row[i])) for row in table) for i in range(len(headers))]
        print()
        print(f"== {self.title} ==")
        for n, row in enumerate(table):
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
            if n == 0:
                print("  ".join("-" * w for w in widths))
        for text in self.notes:
            print(f"note: {text}")
        failed = [r for r in self.rows if r.verdict == "FAIL"]
        passed = [r for r in self.rows if r.verdict == "PASS"]
        print(f"{len(passed)} passed, {len(failed)} failed (against targets)")

    def write_json(self, path: str | None) -> None:
        if not path:
            return
        payload = {
            "title": self.title,
            "machine": machine(),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "rows": [{**asdict(r), "ratio": r.ratio} for r in self.rows],
            "notes": self.notes,
        }
        Path(path).write_text(json.dumps(payload, indent=2))


def _num(value: float, unit: str) -> str:
    if value >= 100:
        text = f"{value:,.0f}"
    elif value >= 10:
        text = f"{value:,.1f}"
    else:
        text = f"{value:,.2f}"
    return f"{text} {unit}"


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        with _pg_admin() as conn:
            pg = conn.execute("SHOW server_version").fetchone()[0]
    except psycopg.Error:
        pg = "unreachable"
    from importlib.metadata import version

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "domain", "projections", "api")
    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = ""
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgres": pg,
        "eventsourcing": version("eventsourcing"),
        "uvicorn": version("uvicorn"),
        "fastapi": version("fastapi"),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git("rev-parse", "--short", "HEAD") + ("+uncommitted product changes" if dirty else ""),
        "loadavg": load,  # other processes on a shared machine move every absolute figure
    }


def print_machine() -> None:
    m = machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in m.items()))


# -- HTTP servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Uvicorn:
    """One uvicorn process (1 worker, loopback, no access log) for the life of a `with` block."""

    def __init__(self, app: str, env: dict[str, str] | None = None, factory: bool = False) -> None:
        self.app = app
        self.factory = factory
        self.port = free_port()
        self.env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Uvicorn:
        args = [
            sys.executable,
            "-m",
            "uvicorn",
            self.app,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
        if self.factory:
            args.insert(3, "--factory")
        self.process = subprocess.Popen(args, cwd=REPO_ROOT, env=self.env, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uvicorn {self.app} exited: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"uvicorn {self.app} did not listen within 60 s: {self.log()}")

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]


# -- load generation ----------------------------------------------------------------------------


@dataclass
class Load:
    requests: int
    seconds: float
    non_2xx: int
    errors: int
    tool: str
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def load(url: str, *, seconds: float, connections: int = 8, max_requests: int = 200_000) -> Load:
    """GET `url` over keep-alive connections for `seconds` (and at most `max_requests`):
    with wrk when it is installed (`apt-get install -y wrk`), else a small asyncio client."""
    if shutil.which("wrk"):
        return _wrk(url, seconds, connections)
    return _asyncio_load(url, seconds, connections, max_requests)


def _wrk(url: str, seconds: float, connections: int) -> Load:
    duration = max(1, round(seconds))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "5s", url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
    ).stdout
    requests, elapsed, non_2xx, errors = 0, float(duration), 0, 0
    p50 = p99 = None
    for line in out.splitlines():
        words = line.split()
        if " requests in " in line:
            requests = int(words[0])
            elapsed = _seconds(words[3].rstrip(","))
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            non_2xx = int(words[-1])
        elif line.strip().startswith("Socket errors:"):
            errors = sum(int(w.rstrip(",")) for w in words if w.rstrip(",").isdigit())
        elif len(words) == 2 and words[0] == "50%":
            p50 = _ms(words[1])
        elif len(words) == 2 and words[0] == "99%":
            p99 = _ms(words[1])
    if not requests:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    return Load(requests, elapsed, non_2xx, errors, f"wrk -t1 -c{connections} -d{duration}s", p50, p99)


def _seconds(text: str) -> float:
    for suffix, factor in (("ms", 1e-3), ("us", 1e-6), ("m", 60.0), ("s", 1.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def _ms(text: str) -> float:
    return _seconds(text) * 1000


def _asyncio_load(url: str, seconds: float, connections: int, max_requests: int) -> Load:
    import asyncio
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode()
    counts = {"ok": 0, "non_2xx": 0, "errors": 0, "sent": 0}
    latencies: list[float] = []

    async def worker(deadline: float) -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while time.perf_counter() < deadline and counts["sent"] < max_requests:
                counts["sent"] += 1
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                counts["ok" if 200 <= status < 300 else "non_2xx"] += 1
        except (OSError, asyncio.IncompleteReadError):
            counts["errors"] += 1
        finally:
            writer.close()

    async def main() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(worker(start + seconds) for _ in range(connections)))
        return time.perf_counter() - start

    elapsed = asyncio.run(main())
    done = counts["ok"] + counts["non_2xx"]
    return Load(
        done,
        elapsed,
        counts["non_2xx"],
        counts["errors"],
        f"asyncio client, {connections} connections",
        percentile(latencies, 50) * 1000,
        percentile(latencies, 99) * 1000,
    )


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def profile(label: str, action: Callable[[], Any], top: int = 25) -> None:
    """Run `action` under cProfile and print where the time goes (cumulative, then own time)."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    action()
    profiler.disable()
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order).print_stats(top)
        print(f"\n-- profile of {label}, by {order} --")
        print("\n".join(out.getvalue().splitlines()[4:]))
