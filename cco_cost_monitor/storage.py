"""The storage seam: what the rest of the monitor asks of a ledger, as protocols.

The writer, the service, ``report`` and ``db`` ask these protocols, not a backend. SQLite
(:class:`cco_cost_monitor.store.Store`) is the one backend that counts; a second one (the
team database, a test double) implements the protocol it serves. The records that cross
the seam (``Batch``, ``CommitResult``, ``AggregateRow``...) are defined with the SQLite
store and re-exported here, so a caller imports the seam, never the backend.

mypy checks that the SQLite store conforms (``_sqlite_conforms`` below), so a method
renamed on one side is a type error, not a failure at run time.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO

from cco_cost_monitor.facts import AccountedEvent
from cco_cost_monitor.store import (
    AggregateRow,
    AlertRecord,
    Batch,
    CommitResult,
    ExportFormat,
    ExportKind,
    PruneResult,
    Restored,
    UnattributedRow,
)

__all__ = [
    "AggregateRow",
    "AlertRecord",
    "Batch",
    "CommitResult",
    "Ledger",
    "LedgerReader",
    "LedgerWriter",
    "PruneResult",
    "Restored",
    "UnattributedRow",
]


class LedgerWriter(Protocol):
    """What the batching writer needs: commit a batch atomically, prune, close."""

    @property
    def path(self) -> Path: ...

    def commit_batch(self, batch: Batch) -> CommitResult: ...

    def prune(self, now: datetime) -> PruneResult: ...

    def close(self) -> None: ...


class LedgerReader(Protocol):
    """What ``report``, ``db`` and the service's views read back."""

    def events(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = 1000,
        *,
        source: str | None = None,
        newest_first: bool = True,
    ) -> list[AccountedEvent]: ...

    def events_after(self, seq: int, limit: int) -> list[tuple[int, AccountedEvent]]: ...

    def last_event_seq(self) -> int: ...

    def unattributed_rows(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[UnattributedRow]: ...

    def hourly_rows(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[AggregateRow]: ...

    def daily_rows(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[AggregateRow]: ...

    def alerts(self, since: datetime | None = None, limit: int = 200) -> list[AlertRecord]: ...

    def meta(self) -> dict[str, str]: ...

    def check(self) -> list[str]: ...

    def export(
        self,
        kind: ExportKind,
        fmt: ExportFormat,
        out: TextIO,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int: ...


class Ledger(LedgerWriter, LedgerReader, Protocol):
    """A whole backend, as the running service holds it: restore at start-up, report a
    file that went bad, rescue a database that cannot be opened."""

    def load(self, *, recent_events: int = 1000, alerts: int = 200) -> Restored: ...

    def file_problem(self) -> str | None: ...

    def rescue(self) -> Path | None: ...


if TYPE_CHECKING:
    from cco_cost_monitor.store import Store

    def _sqlite_conforms(store: Store) -> Ledger:
        return store
