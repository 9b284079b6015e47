"""Audit sinks: every audit event streamed to a file, syslog or an HTTP(S) endpoint.

`TOKENTRAIL_AUDIT_SINK` names one sink:

- `file:PATH`: appends one JSON object per line (NDJSON), flushed and fsync'ed per batch;
- `syslog:HOST:PORT` (UDP) or `syslog+tcp:HOST:PORT`: one RFC 5424 message per event (facility
  13, log audit; severity 6, informational; MSGID the event type; MSG the JSON object); over TCP
  framed by octet counting (RFC 6587);
- `http://…` or `https://…`: batched `POST`s of NDJSON (`Content-Type: application/x-ndjson`),
  each answered 2xx before the next; `TOKENTRAIL_AUDIT_SINK_AUTHORIZATION` sets an
  `Authorization` header, credentials in the URL are sent as basic auth.

Each object is the audit event of `GET /v0/audit` (the events the audit API lists, of every
workspace), in log order. Delivery is at least once: a batch is sent, then the sink's position in
`tt_audit_sinks` moves past it, so a crash in between sends that batch again after the restart, and
nothing else twice. A sink that fails is retried with exponential backoff (capped at
`TOKENTRAIL_AUDIT_SINK_BACKOFF_MAX` seconds, default 30) from the same position, for as long as it
takes.

Delivery runs in one background thread per server, never in a request: a sink that is slow or down
delays delivery and shows in `/readyz` and `/metrics`, nothing else. With several servers on one
database exactly one delivers: the one holding the sink's lock (PostgreSQL: a session advisory lock
on a connection of its own, released by the database when that server dies; SQLite: an exclusive
`flock` on a file beside the database, released by the OS). The others stand by and take over.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import and_, func, insert, select, update

from tokentrail.domain import clock
from tokentrail.projections import schema as s
from tokentrail.projections.history import audit_event
from tokentrail.redact import redact

log = logging.getLogger("tokentrail.sink")

ENV = "TOKENTRAIL_AUDIT_SINK"
DEFAULT_BATCH = 500
DEFAULT_BACKOFF_MAX = 30.0
BACKOFF_MIN = 0.5
POLL_SECONDS = 0.5  # how often an idle deliverer (or a stand-by) looks again
SEND_TIMEOUT = 10.0  # seconds: one HTTP POST, one syslog TCP connection
SYSLOG_FACILITY = 13  # log audit (RFC 5424 §6.2.1)
SYSLOG_SEVERITY = 6  # informational
MAX_ERROR = 300


class SinkError(Exception):
    """A sink that did not take a batch: retried with backoff."""


class Transport(Protocol):
    def send(self, events: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


# -- targets ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SinkTarget:
    kind: str  # file, syslog, http
    spec: str  # as configured (may hold credentials: never stored or logged)
    path: Path | None = None
    host: str = ""
    port: int = 0
    protocol: str = "udp"

    @property
    def description(self) -> str:
        """The target without credentials or query: what the database and the logs may show."""
        if self.kind == "file":
            return f"file:{self.path}"
        if self.kind == "syslog":
            return f"syslog+{self.protocol}:{self.host}:{self.port}"
        parts = urlsplit(self.spec)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    @property
    def name(self) -> str:
        """The key of this sink's position: one per target, whatever its credentials."""
        return hashlib.sha256(self.description.encode()).hexdigest()[:32]


def parse_target(spec: str) -> SinkTarget:
    """`file:PATH`, `syslog[+udp|+tcp]:HOST:PORT`, `http(s)://…`; a ValueError names what is wrong."""
    spec = spec.strip()
    if spec.startswith("file:"):
        path = spec[len("file:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError(f"{ENV}: file: needs a path (file:/var/log/tokentrail/audit.ndjson)")
        return SinkTarget("file", spec, path=Path(path))
    for prefix, protocol in (("syslog+tcp:", "tcp"), ("syslog+udp:", "udp"), ("syslog:", "udp")):
        if spec.startswith(prefix):
            rest = spec[len(prefix) :].lstrip("/")
            host, _, port = rest.rpartition(":")
            host = host.strip("[]")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{ENV}: {prefix} needs HOST:PORT (syslog:logs.internal:514)")
            return SinkTarget("syslog", spec, host=host, port=int(port), protocol=protocol)
    if spec.startswith(("http://", "https://")):
        parts = urlsplit(spec)
        if not parts.hostname:
            raise ValueError(f"{ENV}: {parts.scheme}:// needs a host")
        return SinkTarget("http", spec)
    raise ValueError(f"{ENV}: use file:PATH, syslog:HOST:PORT, syslog+tcp:HOST:PORT or http(s)://URL")


# -- transports ---------------------------------------------------------------------------------------


def _line(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class FileTransport:
    def __init__(self, path: Path) -> None:
        self.path = path

    def send(self, events: list[dict[str, Any]]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                data = b"".join(_line(e) for e in events)
                while data:
                    written = os.write(fd, data)
                    data = data[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            raise SinkError(f"cannot append to {self.path}: {error.strerror or error}") from None

    def close(self) -> None:
        pass


def syslog_message(event: dict[str, Any], hostname: str, procid: int) -> bytes:
    """One RFC 5424 message: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`."""
    pri = SYSLOG_FACILITY * 8 + SYSLOG_SEVERITY
    msgid = "".join(c for c in str(event.get("type") or "-") if 33 <= ord(c) <= 126)[:32] or "-"
    stamp = event.get("at") or datetime.now(UTC).isoformat()
    header = f"<{pri}>1 {stamp} {hostname} tokentrail {procid} {msgid} - "
    return header.encode() + _line(event).rstrip(b"\n")


class SyslogTransport:
    def __init__(self, host: str, port: int, protocol: str) -> None:
        self.address = (host, port)
        self.protocol = protocol
        self.hostname = (socket.gethostname() or "-")[:255]
        self._tcp: socket.socket | None = None

    def send(self, events: list[dict[str, Any]]) -> None:
        messages = [syslog_message(e, self.hostname, os.getpid()) for e in events]
        try:
            if self.protocol == "udp":
                with socket.socket(_family(self.address[0]), socket.SOCK_DGRAM) as udp:
                    for message in messages:
                        udp.sendto(message, self.address)
                return
            if self._tcp is None:
                self._tcp = socket.create_connection(self.address, timeout=SEND_TIMEOUT)
            self._tcp.sendall(b"".join(b"%d %s" % (len(m), m) for m in messages))
        except OSError as error:
            self.close()
            raise SinkError(f"syslog {self.protocol} {self.address[0]}:{self.address[1]}: {error}") from None

    def close(self) -> None:
        if self._tcp is not None:
            with contextlib.suppress(OSError):
                self._tcp.close()
            self._tcp = None


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][0]
    except OSError:
        return socket.AF_INET


class HttpTransport:
    def __init__(self, url: str, authorization: str | None) -> None:
        headers = {"Content-Type": "application/x-ndjson", "User-Agent": "tokentrail-audit-sink"}
        if authorization:
            headers["Authorization"] = authorization
        self.url = url
        self.client = httpx.Client(timeout=SEND_TIMEOUT, headers=headers, follow_redirects=False)

    def send(self, events: list[dict[str, Any]]) -> None:
        first, last = events[0]["position"], events[-1]["position"]
        try:
            answer = self.client.post(
                self.url,
                content=b"".join(_line(e) for e in events),
                # Lets the receiver drop a batch it already has (a redelivery after a restart).
                headers={"X-Tokentrail-Positions": f"{first}-{last}"},
            )
        except httpx.HTTPError as error:
            raise SinkError(f"POST failed: {type(error).__name__}: {redact(str(error))[:MAX_ERROR]}") from None
        if not 200 <= answer.status_code < 300:
            raise SinkError(f"POST answered {answer.status_code}")

    def close(self) -> None:
        self.client.close()


def transport_for(target: SinkTarget, environ: dict[str, str]) -> Transport:
    if target.kind == "file":
        assert target.path is not None
        return FileTransport(target.path)
    if target.kind == "syslog":
        return SyslogTransport(target.host, target.port, target.protocol)
    return HttpTransport(target.spec, environ.get("TOKENTRAIL_AUDIT_SINK_AUTHORIZATION"))


# -- who delivers -------------------------------------------------------------------------------------


class _FileLock:
    """SQLite: one deliverer per host, through an exclusive flock the OS releases with the process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class _AdvisoryLock:
    """PostgreSQL: a session advisory lock on a connection of its own; the database releases it
    when that connection ends (the server died, or the network dropped it)."""

    def __init__(self, env: dict[str, str], key: int) -> None:
        self.env = env
        self.key = key
        self._conn: Any = None

    def acquire(self) -> bool:
        import psycopg

        from tokentrail.storage import pgstore

        if self._conn is not None:
            return self.held()
        env = self.env
        try:
            conn = psycopg.connect(
                host=env["POSTGRES_HOST"],
                port=env["POSTGRES_PORT"],
                dbname=env["POSTGRES_DBNAME"],
                user=env["POSTGRES_USER"],
                password=env["POSTGRES_PASSWORD"] or None,
                autocommit=True,
                application_name="tokentrail-audit-sink",
                **pgstore.connection_options(),
            )
        except psycopg.Error:
            return False
        try:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        except psycopg.Error:
            conn.close()
            return False
        if not row or not row[0]:
            conn.close()
            return False
        self._conn = conn
        return True

    def held(self) -> bool:
        """Still ours: the connection that holds the lock still answers."""
        if self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
            return True
        except Exception:  # noqa: BLE001 - any failure: the lock may be gone
            self.release()
            return False

    def release(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None


# -- the deliverer ------------------------------------------------------------------------------------


@dataclass
class SinkCounts:
    delivered: int = 0  # events this process delivered
    batches: int = 0
    failures: int = 0  # failed attempts in this process


class AuditSink:
    """Streams the audit trail to one target from a background thread (see the module's text)."""

    def __init__(self, service: Any, target: SinkTarget, *, environ: dict[str, str] | None = None) -> None:
        env = dict(service.environ if environ is None else environ)
        self.service = service
        self.target = target
        self.batch = _positive_int(env, "TOKENTRAIL_AUDIT_SINK_BATCH", DEFAULT_BATCH)
        self.backoff_max = _positive_float(env, "TOKENTRAIL_AUDIT_SINK_BACKOFF_MAX", DEFAULT_BACKOFF_MAX)
        self.transport = transport_for(target, env)
        self.counts = SinkCounts()
        self.identity = f"{socket.gethostname()}:{os.getpid()}"
        key = int.from_bytes(hashlib.sha256(b"tokentrail-audit-sink:" + target.name.encode()).digest()[:8], "big")
        if service.backend == "sqlite":
            lock_path = Path(f"{service.database.sqlite_path}.audit-sink-{target.name[:12]}.lock")
            self._lock: _FileLock | _AdvisoryLock = _FileLock(lock_path)
        else:
            self._lock = _AdvisoryLock(service.database.eventsourcing_env(), key - (1 << 63))
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.delivering = False  # this process holds the lock
        self.failing_since: float | None = None  # wall clock, this process's last failure streak
        self.last_error: str | None = None

    @classmethod
    def from_environ(cls, service: Any) -> AuditSink | None:
        spec = service.environ.get(ENV, "").strip()
        if not spec:
            return None
        return cls(service, parse_target(spec))

    # -- lifecycle --

    def start(self) -> None:
        if self._thread is not None:
            return
        self.service.projector.listeners.append(self._projected)
        self._thread = threading.Thread(target=self._run, name="tokentrail-audit-sink", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with contextlib.suppress(ValueError):
            self.service.projector.listeners.remove(self._projected)
        self._lock.release()
        self.transport.close()
        self.delivering = False

    def _projected(self, notifications: Any, after: int) -> None:
        self._wake.set()  # new audit rows: deliver now rather than at the next poll

    # -- the loop --

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                if not self._lock.acquire():
                    self.delivering = False
                    self._stop.wait(POLL_SECONDS * 2)
                    continue
                if not self.delivering:
                    log.info("audit sink %s: this server delivers", self.target.description)
                self.delivering = True
                moved = self.deliver_once()
            except SinkError as error:
                attempt += 1
                self._failed(str(error))
                self._stop.wait(self._backoff(attempt))
                continue
            except Exception as error:  # noqa: BLE001 - the store down, a bug: retried, never fatal
                attempt += 1
                self._failed(f"{type(error).__name__}: {redact(str(error).splitlines()[0] if str(error) else '')}")
                self._stop.wait(self._backoff(attempt))
                continue
            attempt = 0
            if not moved:
                self._wake.wait(POLL_SECONDS)
                self._wake.clear()

    def _backoff(self, attempt: int) -> float:
        delay = min(self.backoff_max, BACKOFF_MIN * 2 ** min(attempt - 1, 20))
        return delay * random.uniform(0.8, 1.0)

    def deliver_once(self) -> int:
        """Send the next batch after the sink's position and move the position past it; answers
        how many events were sent (0: nothing new)."""
        position = self._position()
        a = s.audit
        with self.service.read_engine.connect() as conn:
            rows = list(
                conn.execute(
                    select(a)
                    .where(and_(a.c.position > position, a.c.visible.is_(True)))
                    .order_by(a.c.position)
                    .limit(self.batch)
                ).mappings()
            )
        if not rows:
            self._recovered()
            return 0
        if not self._lock.held():
            self.delivering = False
            return 0
        events = [audit_event(r) for r in rows]
        self.transport.send(events)
        self._advance(position, rows[-1]["position"])
        self.counts.delivered += len(events)
        self.counts.batches += 1
        self._recovered()
        return len(events)

    def _position(self) -> int:
        t = s.audit_sinks
        with self.service.write_engine.begin() as conn:
            found = conn.execute(select(t.c.position).where(t.c.name == self.target.name)).scalar()
            if found is not None:
                return int(found)
            conn.execute(
                insert(t).values(
                    name=self.target.name,
                    target=self.target.description,
                    position=0,
                    updated_at=clock.to_micros(clock.now()),
                )
            )
            return 0

    def _advance(self, old: int, new: int) -> None:
        t = s.audit_sinks
        now = clock.to_micros(clock.now())
        with self.service.write_engine.begin() as conn:
            moved = conn.execute(
                update(t)
                .where(and_(t.c.name == self.target.name, t.c.position == old))
                .values(
                    position=new,
                    updated_at=now,
                    delivered_at=now,
                    deliverer=self.identity,
                    failing_since=None,
                    last_error=None,
                )
            ).rowcount
        if moved != 1:  # another deliverer moved it (a lock lost and taken over): start again from there
            raise SinkError("the sink's position moved under this server; resuming from the stored position")

    def _failed(self, message: str) -> None:
        message = message[:MAX_ERROR]
        self.counts.failures += 1
        first = self.failing_since is None
        if first:
            self.failing_since = time.time()
        if first or message != self.last_error:
            log.warning("audit sink %s: delivery failed, retrying with backoff: %s", self.target.description, message)
        self.last_error = message
        t = s.audit_sinks
        with contextlib.suppress(Exception):  # the store may be what is down
            with self.service.write_engine.begin() as conn:
                conn.execute(
                    update(t)
                    .where(t.c.name == self.target.name)
                    .values(
                        failing_since=func.coalesce(t.c.failing_since, clock.to_micros(clock.now())),
                        last_error=message,
                        deliverer=self.identity,
                        updated_at=clock.to_micros(clock.now()),
                    )
                )

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.info("audit sink %s: delivering again", self.target.description)
        self.failing_since = None
        self.last_error = None

    # -- what /readyz and /metrics show --

    def status(self) -> dict[str, Any]:
        """The sink as the database records it (whichever server delivers), read now."""
        t, a = s.audit_sinks, s.audit
        with self.service.read_engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.name == self.target.name)).mappings().first()
            position = int(row["position"]) if row else 0
            behind = conn.execute(
                select(func.count()).select_from(
                    select(a.c.position)
                    .where(and_(a.c.position > position, a.c.visible.is_(True)))
                    .limit(1_000_000)
                    .subquery()
                )
            ).scalar_one()
            oldest = conn.execute(
                select(a.c.recorded_at)
                .where(and_(a.c.position > position, a.c.visible.is_(True)))
                .order_by(a.c.position)
                .limit(1)
            ).scalar()
        now = clock.to_micros(clock.now())
        failing_since = row["failing_since"] if row else None
        return {
            "target": self.target.description,
            "ok": failing_since is None,
            "position": position,
            "behind": int(behind),
            "lag_seconds": round(max(0, now - oldest) / 1e6, 3) if oldest is not None else 0.0,
            "delivering_here": self.delivering,
            "deliverer": row["deliverer"] if row else None,
            "delivered_at": clock.format_instant(row["delivered_at"]) if row and row["delivered_at"] else None,
            "failing_since": clock.format_instant(failing_since) if failing_since else None,
            "error": row["last_error"] if row else None,
        }


def _positive_int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a whole number above 0")
    return int(raw)


def _positive_float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e6:
        raise ValueError(f"{name} must be a number of seconds above 0")
    return value
