"""One transaction per command: what an event store's recorder needs from whoever projects the
events it inserts (the projector), and the notifications it hands over.

eventsourcing's recorders open the transaction that inserts a save's events. tokentrail's
recorders (`sqlitestore.Recorder`, `pgstore.Recorder`) call `project` inside it, on its
connection, once the events have their log positions, and `committed` after its commit. If
`project` raises, the insert rolls back with it: no event is stored that the read models lack.
If it declines (returns False), the events commit alone and the caller catches up afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from eventsourcing.persistence import Notification, StoredEvent


class Within(Protocol):
    def active(self) -> bool:
        """Whether the save now under way should be projected in its own transaction."""
        ...

    def project(self, dbapi: Any, notifications: Sequence[Notification]) -> bool:
        """Project `notifications` on `dbapi` (the insert's connection, its transaction open)."""
        ...

    def committed(self, notifications: Sequence[Notification]) -> None:
        """The insert, and with it the projection, committed."""
        ...


def notifications_of(stored_events: Sequence[StoredEvent], ids: Sequence[int]) -> list[Notification]:
    return [
        Notification(
            id=i,
            originator_id=e.originator_id,
            originator_version=e.originator_version,
            topic=e.topic,
            state=e.state,
        )
        for e, i in zip(stored_events, ids, strict=True)
    ]
