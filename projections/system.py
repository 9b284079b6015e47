"""The assembled ledger: write side, projector, queries and authentication over one database.

`System.command` runs a use case and catches the read models up to exactly the position it wrote
before returning (read-your-writes). `System.sync` is called before serving a read: one cheap
"what is the log's head" query, and when other processes have written, their events are projected
and the affected tokens evicted from the authentication cache.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, TypeVar

from domain.ledger import Change, Ledger
from domain.values import TokenSigner
from projections import keys
from projections.auth import Authenticator
from projections.database import Database, data_dir, database_url
from projections.migrate import upgrade
from projections.projector import Projector
from projections.queries import Queries

T = TypeVar("T")


class System:
    def __init__(
        self,
        url: str | None = None,
        *,
        data: Path | None = None,
        environ: dict[str, str] | None = None,
        migrate: bool = True,
        host: str | None = None,
    ) -> None:
        env = dict(os.environ if environ is None else environ)
        self.data_dir = Path(data) if data is not None else data_dir(env)
        self.database = Database(url or database_url(env))
        self.environ = env
        self.signer = TokenSigner(keys.server_key(self.data_dir, env), host=host)
        self.ledger = Ledger(env=self.database.eventsourcing_env(), signer=self.signer)
        self.write_engine = self.database.engine(writer=True)
        self.read_engine = self.database.engine(writer=False)
        if migrate:
            upgrade(self.write_engine)
        self.projector = Projector(self.ledger, self.write_engine, self.database.backend)
        self.queries = Queries(self.read_engine)
        self.auth = Authenticator(self.queries, self.signer)
        self._seen = 0
        self._seen_lock = threading.Lock()
        # SQLite has one writer at a time: queue this process's writers here, not on the file lock.
        self._write_lock = threading.Lock() if self.backend == "sqlite" else None

    @property
    def backend(self) -> str:
        return self.database.backend

    def command(self, use_case: Callable[[], T]) -> T:
        """Run a write; when it returns, this process's read models include its events."""
        if self._write_lock is not None:
            with self._write_lock:
                result = use_case()
        else:
            result = use_case()
        position = getattr(result, "position", None)
        if position:
            self.sync(until=position)
        return result

    def sync(self, until: int | None = None) -> int:
        head = until if until is not None else (self.ledger.recorder.max_notification_id() or 0)
        if head <= self._seen:
            return self._seen
        self.projector.catch_up(until=head)
        self._evict_through(head)
        return head

    def _evict_through(self, head: int) -> None:
        with self._seen_lock:
            while self._seen < head:
                notes = self.ledger.recorder.select_notifications(
                    start=self._seen + 1, limit=1000, stop=head
                )
                if not notes:
                    break
                self.auth.tokens.evict({str(n.originator_id) for n in notes})
                self._seen = notes[-1].id

    def close(self) -> None:
        self.ledger.close()
        self.write_engine.dispose()
        self.read_engine.dispose()

    def checkpoint_key(self):  # noqa: ANN201 - cryptography's Ed25519PrivateKey
        return keys.checkpoint_key(self.data_dir, self.environ)


__all__ = ["System", "Change"]
