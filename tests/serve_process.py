"""`tokentrail serve` as a child process, for the crash, scale-out and load tests (and bench/load.py).

The store is initialised by the calling process first (so it knows the admin token's value); the
server is configured only through TOKENTRAIL_DATABASE_URL, TOKENTRAIL_DATA_DIR and
TOKENTRAIL_SECRET_KEY, as in production.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(database_url: str, data_dir: Path, secret: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENTRAIL_")}
    env.update(
        {
            "TOKENTRAIL_DATABASE_URL": database_url,
            "TOKENTRAIL_DATA_DIR": str(data_dir),
            "TOKENTRAIL_SECRET_KEY": secret,
            "PYTHONPATH": str(ROOT),
        }
    )
    return env


def initialise_store(database_url: str, data_dir: Path, secret: str) -> dict[str, Any]:
    """Create the store and workspace `main`; answers {"admin", "admin_id", "workspace_id"}."""
    from tokentrail.api.setup import initialise
    from tokentrail.service import Service

    service = Service(database_url, data=data_dir, environ=server_env(database_url, data_dir, secret))
    try:
        info = initialise(service, "main", "owner@example.com")
    finally:
        service.close()
    admin = next(t for t in info["tokens"] if t["name"] == "admin token")
    return {"admin": admin["token"], "admin_id": admin["id"], "workspace_id": info["workspace"]["id"]}


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    log: Path

    def kill9(self) -> None:
        """SIGKILL: no shutdown handler, no flush, no rollback other than the database's own."""
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def serve(
    database_url: str,
    data_dir: Path,
    secret: str,
    log: Path,
    *,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> Served:
    """Start `tokentrail serve` on a free port; return when it answers GET /v0/regions.
    `env`: more variables for the server (say TOKENTRAIL_LISTEN_URL)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tokentrail.api.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                *(extra or []),
            ],
            cwd=ROOT,
            env={**server_env(database_url, data_dir, secret), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    served = Served(url, process, log)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"tokentrail serve exited with {process.returncode}:\n{served.output()}")
        try:
            if httpx.get(f"{url}/v0/regions", timeout=1).status_code == 200:
                return served
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            served.stop()
            raise RuntimeError(f"tokentrail serve did not answer within {START_TIMEOUT} s:\n{served.output()}")
        time.sleep(0.05)
