"""The console's sessions, kept in the database so that every server sharing it agrees on them.

A session is opened at sign-in and is valid while all of these hold: its row exists (sign-out
deletes it), it has been used within the idle timeout, it is younger than the absolute lifetime,
and the token it was opened with still exists with the same generation (a refresh or a deletion
voids it, grace window or not). The browser holds a random session id; the table holds only its
SHA-256, the signing token's id and a hash of that token's generation, never a value.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Engine, delete, or_, select, update

from tokentrail.domain import clock
from tokentrail.projections import schema as s

DEFAULT_IDLE_SECONDS = 30 * 60
DEFAULT_MAX_SECONDS = 12 * 3600
_SECOND = 1_000_000


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SessionSettings:
    idle_seconds: int = DEFAULT_IDLE_SECONDS
    max_seconds: int = DEFAULT_MAX_SECONDS

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SessionSettings:
        """TOKENTRAIL_SESSION_IDLE_SECONDS and TOKENTRAIL_SESSION_MAX_SECONDS (whole seconds above
        0); a malformed value stops the server at start rather than weakening sessions silently."""
        return cls(
            idle_seconds=_seconds(environ, "TOKENTRAIL_SESSION_IDLE_SECONDS", DEFAULT_IDLE_SECONDS),
            max_seconds=_seconds(environ, "TOKENTRAIL_SESSION_MAX_SECONDS", DEFAULT_MAX_SECONDS),
        )


def _seconds(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = (environ.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 0 < int(raw) <= 10 * 365 * 86400:
        raise ValueError(f"{name} must be a whole number of seconds above 0, not {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class SessionRecord:
    token_id: str
    generation_hash: str
    workspace_id: str
    created_at: int
    last_seen_at: int

    def opened_with(self, generation: str) -> bool:
        return secrets.compare_digest(self.generation_hash, _digest(generation))


class ConsoleSessions:
    def __init__(self, write_engine: Engine, read_engine: Engine, settings: SessionSettings) -> None:
        self.write_engine = write_engine
        self.read_engine = read_engine
        self.settings = settings
        # Moving last_seen_at on every page would be a write per request: once per this interval
        # is enough for an idle timeout measured in minutes.
        self.touch_after = min(60, max(1, settings.idle_seconds // 4)) * _SECOND

    def open(self, token_id: str, generation: str, workspace_id: str) -> str:
        """A new session for this token; returns the id the browser keeps (never stored)."""
        sid = secrets.token_urlsafe(32)
        at = clock.to_micros(clock.now())
        with self.write_engine.begin() as conn:
            self._prune(conn, at)
            conn.execute(
                s.console_sessions.insert().values(
                    id_hash=_digest(sid),
                    token_id=token_id,
                    generation_hash=_digest(generation),
                    workspace_id=workspace_id,
                    created_at=at,
                    last_seen_at=at,
                )
            )
        return sid

    def check(self, sid: str) -> SessionRecord | None:
        """The live session this id names (and mark it used), or None: unknown, ended, idle too
        long or too old. Whether its token still stands is the caller's check (`opened_with`)."""
        if not sid or len(sid) > 128:
            return None
        key = _digest(sid)
        at = clock.to_micros(clock.now())
        t = s.console_sessions
        with self.read_engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.id_hash == key)).mappings().first()
        if row is None:
            return None
        record = SessionRecord(
            row["token_id"], row["generation_hash"], row["workspace_id"], row["created_at"], row["last_seen_at"]
        )
        if (
            at - record.last_seen_at > self.settings.idle_seconds * _SECOND
            or at - record.created_at > self.settings.max_seconds * _SECOND
        ):
            self.end(sid)
            return None
        if at - record.last_seen_at >= self.touch_after:
            with self.write_engine.begin() as conn:
                conn.execute(update(t).where(t.c.id_hash == key).values(last_seen_at=at))
        return record

    def end(self, sid: str | None) -> None:
        if not sid:
            return
        key = _digest(sid)  # a lookup by the hash of a 256-bit random id: nothing to learn from its timing
        with self.write_engine.begin() as conn:
            conn.execute(delete(s.console_sessions).where(s.console_sessions.c.id_hash == key))

    def _prune(self, conn, at: int) -> None:  # noqa: ANN001 - a SQLAlchemy connection
        """Forget sessions that can no longer be used (done at sign-in: no background job)."""
        t = s.console_sessions
        conn.execute(
            delete(t).where(
                or_(
                    t.c.last_seen_at < at - self.settings.idle_seconds * _SECOND,
                    t.c.created_at < at - self.settings.max_seconds * _SECOND,
                )
            )
        )
