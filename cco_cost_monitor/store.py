"""Persistence: ``monitor.db``, the SQLite file that makes counts survive restarts and ``kill -9``.

This module owns the database: its schema and forward migrations, the one-transaction commit
of a :class:`Batch`, restoring state at start-up (:meth:`Store.load`), retention
(:meth:`Store.prune`), ``db check`` (:meth:`Store.check`), ``db export`` (:meth:`Store.export`)
and the read-only queries of ``report``. It does no scheduling and no async:
:mod:`cco_cost_monitor.writer` runs it off the event loop.

Why nothing is lost and nothing is counted twice
------------------------------------------------
A :class:`Batch` carries accounted results together with the reconciler state of every source
*as of the last of those results*, and they are written in ONE transaction. A crash at any instant
therefore leaves the file at the end of some batch, with every source's de-duplication memory
matching exactly the events stored with it. On restart the proxy replays its last window; the
restored reconciler recognises what it already counted and accounts the rest (as events, or as
unattributed growth of the proxy's totals). ``events`` has primary key ``(occurred_at, source,
key)`` (time first, so that inserts append) and is written with ``ON CONFLICT DO NOTHING``: a
replayed event can never be stored twice (if one is ignored, :class:`CommitResult` counts it and
:meth:`Store.check` reports the disagreement).

The engine's counters (``Engine.to_dict()``, ~80 kB once its buckets fill) are not rewritten in
every batch: that would write gigabytes a day. A batch may carry them (``Batch.engine``); every
event and unattributed row records the batch it was committed in, and :meth:`Store.load` returns
the results committed *after* the stored engine state as ``Restored.engine_replay``.
:meth:`Restored.restore_engine` loads the counters and replays those results, so the restored
engine is exactly the one of the last committed batch. Pruning never deletes a row that is not
yet covered by the stored engine state.

Durability: ``journal_mode=WAL`` with ``synchronous=NORMAL``
------------------------------------------------------------
In WAL mode ``NORMAL`` never corrupts the file and loses nothing when the *process* dies (``kill
-9``, OOM, crash): a commit is in the OS page cache when ``COMMIT`` returns. Only a power loss or
kernel panic may roll back the last commits (those since the last checkpoint's ``fsync``), and
then the file is still at the end of some earlier batch, with its reconciler state consistent: the
proxy's cumulative totals, compared with that older state, account what the lost batches held
(as events still in the proxy's window, the rest as unattributed). So ``FULL``'s extra ``fsync``
per commit (a disk flush every 0.2 s while busy: battery and SSD wear on a laptop) would buy
nothing the accounting invariant needs. ``synchronous="FULL"`` can still be chosen.

Files are created ``0600`` in a directory created ``0700``: spend data is private.
A corrupt, foreign, newer, locked or unwritable database raises :class:`StoreError` with a
clear message. It is never reset, recreated or repaired silently.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import math
import operator
import os
import secrets
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from itertools import chain, repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TextIO, cast

import orjson

from cco_cost_monitor.engine import (
    MAX_CLOCK_SKEW,
    UNATTRIBUTED,
    BucketKind,
    BucketStarts,
    bucket_start,
    spread,
)
from cco_cost_monitor.errors import StoreError
from cco_cost_monitor.pricing import Tier
from cco_cost_monitor.reconciler import AccountedEvent, Accounting, CostBasis, Unattributed
from cco_cost_monitor.rounding import tidy
from cco_cost_monitor.wire import MAX_COST_USD, MAX_COUNT, MAX_TOKENS

if TYPE_CHECKING:
    from cco_cost_monitor.config import Settings
    from cco_cost_monitor.engine import Engine

__all__ = [
    "APPLICATION_ID",
    "CHECK_FAIL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "AggregateRow",
    "AlertRecord",
    "Batch",
    "CommitResult",
    "ExportFormat",
    "ExportKind",
    "PruneResult",
    "Restored",
    "Retention",
    "Store",
    "UnattributedRow",
]

#: ``PRAGMA application_id`` of a cco-monitor database ("CCOM").
APPLICATION_ID = 0x43434F4D
#: Prefix of a failed line of :meth:`Store.check`.
CHECK_FAIL = "FAIL"
ExportKind = Literal["events", "unattributed", "hourly", "daily"]
ExportFormat = Literal["jsonl", "csv"]
Synchronous = Literal["NORMAL", "FULL"]
StateBlob = Mapping[str, Any] | bytes
"""A JSON object, either as data or already encoded (the writer encodes on the event loop)."""

_JOURNAL_SIZE_LIMIT = 32 * 1024 * 1024
_COST_TOLERANCE = 1e-6


# -- schema ----------------------------------------------------------------------------


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated statements inside the caller's transaction.

    (``Connection.executescript`` would COMMIT first, breaking the migration's atomicity.)
    """
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement: {statement.strip()[:80]}")


def _migrate_0_to_1(conn: sqlite3.Connection) -> None:
    """The first schema."""
    _run_script(
        conn,
        """
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID;

        -- One row per accounted event, stored once: (source, key) is its identity.
        CREATE TABLE events (
            source              TEXT    NOT NULL,
            key                 TEXT    NOT NULL,
            occurred_at         REAL    NOT NULL,  -- epoch seconds
            occurred_at_iso     TEXT    NOT NULL,  -- as accounted, with its offset
            observed_at_iso     TEXT    NOT NULL,  -- when the monitor saw the frame
            event_type          TEXT    NOT NULL,
            model               TEXT,
            tier                TEXT    NOT NULL,
            requests            INTEGER NOT NULL,
            cache_hits          INTEGER NOT NULL,
            tokens              INTEGER,
            input_tokens        INTEGER,
            output_tokens       INTEGER,
            latency_ms          INTEGER,
            status              TEXT,
            cost_usd            REAL    NOT NULL,
            recorded_cost_usd   REAL,
            calculated_cost_usd REAL,
            cost_basis          TEXT    NOT NULL,
            priced              INTEGER NOT NULL,
            price_version       TEXT    NOT NULL,
            batch               INTEGER NOT NULL,  -- the commit it arrived in
            result              INTEGER NOT NULL,  -- its Accounting's index in that batch
            PRIMARY KEY (source, key)
        );
        CREATE INDEX events_occurred_at ON events (occurred_at);
        CREATE INDEX events_batch ON events (batch);

        -- Growth of the proxy's totals that no visible event explains.
        CREATE TABLE unattributed (
            id              INTEGER PRIMARY KEY,
            source          TEXT    NOT NULL,
            occurred_at     REAL    NOT NULL,
            occurred_at_iso TEXT    NOT NULL,
            since           REAL,
            since_iso       TEXT,
            observed_at_iso TEXT    NOT NULL,
            requests        INTEGER NOT NULL,
            cost_usd        REAL    NOT NULL,
            lost_events     INTEGER NOT NULL,
            reason          TEXT    NOT NULL,
            batch           INTEGER NOT NULL,
            result          INTEGER NOT NULL
        );
        CREATE INDEX unattributed_occurred_at ON unattributed (occurred_at);
        CREATE INDEX unattributed_batch ON unattributed (batch);

        -- Aggregates per local hour / local day of the configured zone. Unattributed spend has
        -- tier 'unattributed' and model ''; an event without a model has model ''.
        CREATE TABLE hourly (
            bucket_start REAL    NOT NULL,  -- epoch seconds of the local hour's start
            label        TEXT    NOT NULL,  -- local time with offset: 2025-11-17T18:00+01:00
            source       TEXT    NOT NULL,
            tier         TEXT    NOT NULL,
            model        TEXT    NOT NULL,
            cost_usd     REAL    NOT NULL DEFAULT 0,
            requests     INTEGER NOT NULL DEFAULT 0,
            tokens       INTEGER NOT NULL DEFAULT 0,
            cache_hits   INTEGER NOT NULL DEFAULT 0,
            events       INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (bucket_start, source, tier, model)
        ) WITHOUT ROWID;
        CREATE TABLE daily (
            bucket_start REAL    NOT NULL,  -- epoch seconds of local midnight
            label        TEXT    NOT NULL,  -- local date, e.g. 2025-11-17
            source       TEXT    NOT NULL,
            tier         TEXT    NOT NULL,
            model        TEXT    NOT NULL,
            cost_usd     REAL    NOT NULL DEFAULT 0,
            requests     INTEGER NOT NULL DEFAULT 0,
            tokens       INTEGER NOT NULL DEFAULT 0,
            cache_hits   INTEGER NOT NULL DEFAULT 0,
            events       INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (bucket_start, source, tier, model)
        ) WITHOUT ROWID;

        -- Reconciler.snapshot_state() per source, always written with the events it produced.
        CREATE TABLE source_state (
            source     TEXT PRIMARY KEY,
            state      TEXT NOT NULL,
            batch      INTEGER NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID;

        -- Engine.to_dict(), as of the end of batch ``batch``.
        CREATE TABLE engine_state (
            id         INTEGER PRIMARY KEY CHECK (id = 1),
            state      TEXT    NOT NULL,
            batch      INTEGER NOT NULL,
            updated_at REAL    NOT NULL
        );

        -- What pruning removed, per source, so that check() can still verify the totals.
        CREATE TABLE retired (
            source                TEXT PRIMARY KEY,
            events                INTEGER NOT NULL DEFAULT 0,
            cost_usd              REAL    NOT NULL DEFAULT 0,
            requests              INTEGER NOT NULL DEFAULT 0,
            unattributed_cost_usd REAL    NOT NULL DEFAULT 0,
            unattributed_requests INTEGER NOT NULL DEFAULT 0
        ) WITHOUT ROWID;

        CREATE TABLE alerts (
            id        INTEGER PRIMARY KEY,
            at        REAL NOT NULL,
            at_iso    TEXT NOT NULL,
            kind      TEXT NOT NULL,
            period    TEXT,
            threshold REAL,
            message   TEXT NOT NULL,
            payload   TEXT NOT NULL
        );
        CREATE INDEX alerts_at ON alerts (at);
        """,
    )


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    """Alerts get their budget's tier; other components (budgets) get a state slot."""
    _run_script(
        conn,
        """
        ALTER TABLE alerts ADD COLUMN tier TEXT;

        -- Other components' state (e.g. which budget thresholds fired), by name.
        CREATE TABLE component_state (
            name       TEXT PRIMARY KEY,
            state      TEXT NOT NULL,
            batch      INTEGER NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID;
        """,
    )


def _epoch_of_iso(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _migrate_2_to_3(conn: sqlite3.Connection) -> None:
    """Events keyed by (occurred_at, source, key): inserts append instead of landing at random.

    Copies every event row, in one transaction (about 200k rows/s here, so a few seconds
    for a large history; :meth:`Store.migration_pending` lets the caller say so first).

    The old primary key (source, key) put every new row at a random place in a B-tree (keys
    are digests); events arrive in time order, so a key that starts with the time appends
    at the B-tree's edge (with multi-row inserts, 65k -> 187k events/s in
    bench/bench_store.py at 100k stored rows, and the gap grows with the table).
    ``occurred_at`` comes from the event's own timestamp, so an event stored twice still
    collides; the same key range also serves every time-range query, which makes the
    separate ``events_occurred_at`` index redundant.

    ``occurred_at_iso`` goes and ``observed_at_iso`` becomes ``observed_at`` (epoch seconds):
    formatting them took a tenth of the writer's time, epoch seconds give the instant back
    to the microsecond (a double's spacing there is below half a microsecond until the
    year 2242), read back in UTC, and SQLite can group by them (``hourly``/``daily``).
    """
    # Exact to the microsecond, unlike julianday() (milliseconds, then float noise).
    conn.create_function("epoch_of_iso", 1, _epoch_of_iso, deterministic=True)
    _run_script(
        conn,
        """
        CREATE TABLE events_v3 (
            source              TEXT    NOT NULL,
            key                 TEXT    NOT NULL,
            occurred_at         REAL    NOT NULL,  -- epoch seconds, exact to the microsecond
            observed_at         REAL    NOT NULL,  -- when the monitor saw the frame, likewise
            event_type          TEXT    NOT NULL,
            model               TEXT,
            tier                TEXT    NOT NULL,
            requests            INTEGER NOT NULL,
            cache_hits          INTEGER NOT NULL,
            tokens              INTEGER,
            input_tokens        INTEGER,
            output_tokens       INTEGER,
            latency_ms          INTEGER,
            status              TEXT,
            cost_usd            REAL    NOT NULL,
            recorded_cost_usd   REAL,
            calculated_cost_usd REAL,
            cost_basis          TEXT    NOT NULL,
            priced              INTEGER NOT NULL,
            price_version       TEXT    NOT NULL,
            batch               INTEGER NOT NULL,  -- the commit it arrived in
            result              INTEGER NOT NULL,  -- its Accounting's index in that batch
            PRIMARY KEY (occurred_at, source, key)
        );
        INSERT INTO events_v3
            SELECT source, key, occurred_at, epoch_of_iso(observed_at_iso), event_type,
                model, tier, requests, cache_hits, tokens, input_tokens, output_tokens,
                latency_ms, status, cost_usd, recorded_cost_usd, calculated_cost_usd,
                cost_basis, priced, price_version, batch, result
            FROM events ORDER BY rowid;
        DROP TABLE events;
        ALTER TABLE events_v3 RENAME TO events;
        CREATE INDEX events_batch ON events (batch);
        -- Events without a time of their own (gateway requests, unreadable timestamps) are
        -- stamped with the time they were seen, which differs between two copies: for
        -- them (source, key) alone must be unique.
        CREATE UNIQUE INDEX events_untimed ON events (source, key)
            WHERE occurred_at = observed_at;
        """,
    )


#: ``MIGRATIONS[n]`` takes the schema from version ``n`` to ``n + 1``, inside the transaction
#: that also sets ``PRAGMA user_version``. Append only; never edit a released migration.
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _migrate_0_to_1,
    _migrate_1_to_2,
    _migrate_2_to_3,
]
SCHEMA_VERSION = len(MIGRATIONS)


# -- data ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each kind of row is kept, in days."""

    events_days: int = 90
    hourly_days: int = 35
    daily_days: int = 400
    alerts_days: int = 400

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        return cls(
            events_days=settings.retention_days,
            daily_days=settings.aggregate_retention_days,
            alerts_days=settings.aggregate_retention_days,
        )


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert that fired (budget threshold, prediction...), for the alert history.

    :meth:`as_dict`/:meth:`from_dict` use the shape of ``budgets.Alert.to_dict()``.
    """

    kind: str
    message: str
    at: datetime
    period: str | None = None
    threshold: float | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    tier: str | None = None
    id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "period": self.period,
            "tier": self.tier,
            "threshold": self.threshold,
            "message": self.message,
            "at": self.at.isoformat(),
            "payload": dict(self.payload),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AlertRecord:
        at = data["at"]
        return cls(
            kind=str(data["kind"]),
            message=str(data["message"]),
            at=at if isinstance(at, datetime) else datetime.fromisoformat(at),
            period=data.get("period"),
            threshold=data.get("threshold"),
            payload=dict(data.get("payload") or {}),
            tier=data.get("tier"),
        )


@dataclass
class Batch:
    """What one transaction writes.

    ``source_states`` must be each source's reconciler state *after* the last of ``results``
    from that source (the latest one). ``engine`` is ``Engine.to_dict()`` after all of
    ``results``, or ``None`` to leave the stored engine state as it is (the results are then
    replayed on load). ``component_states`` replace other components' saved state by name.
    """

    results: list[Accounting] = field(default_factory=list)
    source_states: dict[str, StateBlob] = field(default_factory=dict)
    engine: StateBlob | None = None
    alerts: list[AlertRecord] = field(default_factory=list)
    component_states: dict[str, StateBlob] = field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        return not (
            self.results
            or self.source_states
            or self.engine is not None
            or self.alerts
            or self.component_states
        )


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What :meth:`Store.commit_batch` wrote."""

    batch: int
    events_inserted: int
    events_ignored: int
    unattributed: int
    alerts: int
    engine_saved: bool
    duration_ms: float


@dataclass(frozen=True, slots=True)
class PruneResult:
    """Rows :meth:`Store.prune` deleted and pages it gave back to the file system."""

    events: int
    unattributed: int
    hourly: int
    daily: int
    alerts: int
    freed_pages: int
    duration_ms: float


@dataclass(frozen=True, slots=True)
class AggregateRow:
    """One row of ``hourly`` or ``daily``."""

    start: datetime  # in the store's zone
    label: str
    source: str
    tier: str  # a Tier or "unattributed"
    model: str
    cost_usd: float
    requests: int
    tokens: int
    cache_hits: int
    events: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "label": self.label,
            "source": self.source,
            "tier": self.tier,
            "model": self.model,
            "cost_usd": self.cost_usd,
            "requests": self.requests,
            "tokens": self.tokens,
            "cache_hits": self.cache_hits,
            "events": self.events,
        }


@dataclass(frozen=True, slots=True)
class UnattributedRow:
    """One stored :class:`Unattributed` remainder and when it was observed."""

    remainder: Unattributed
    observed_at: datetime

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "source",
        "occurred_at",
        "since",
        "observed_at",
        "requests",
        "cost_usd",
        "lost_events",
        "reason",
    )

    def as_dict(self) -> dict[str, Any]:
        item = self.remainder
        return {
            "source": item.source,
            "occurred_at": item.occurred_at.isoformat(),
            "since": item.since.isoformat() if item.since else None,
            "observed_at": self.observed_at.isoformat(),
            "requests": item.requests,
            "cost_usd": item.cost_usd,
            "lost_events": item.lost_events,
            "reason": item.reason,
        }


@dataclass(frozen=True)
class Restored:
    """Everything :meth:`Store.load` found: what the service needs to resume counting."""

    engine: dict[str, Any] | None
    engine_batch: int
    engine_replay: list[Accounting]
    source_states: dict[str, dict[str, Any]]
    events: list[AccountedEvent]
    alerts: list[AlertRecord]
    first_contact: dict[str, datetime]
    last_batch: int
    component_states: dict[str, dict[str, Any]] = field(default_factory=dict)

    def restore_engine(self, engine: Engine) -> int:
        """Load counters, replay what was committed after them, and refill the recent ring.

        Call on a fresh engine, before any new result is recorded. What an earlier version
        saved outside the wire's bounds (``null`` or huge counters, events with a cost of
        1e308 or 2**63 tokens) is left out rather than stopping the start; returns how many
        values and events were, so that the caller can say so.
        """
        repaired = 0
        if self.engine is not None:
            repaired += engine.load_dict(self.engine)
        replayed = {(event.source, event.key) for acc in self.engine_replay for event in acc.events}
        recent = [event for event in self.events if (event.source, event.key) not in replayed]
        sane_recent = [event for event in recent if _sane(event)]
        repaired += len(recent) - len(sane_recent)
        engine.restore_events(sane_recent)
        for accounting in self.engine_replay:
            events = tuple(event for event in accounting.events if _sane(event))
            repaired += len(accounting.events) - len(events)
            remainder = accounting.unattributed
            if remainder is not None and not (
                _bounded(remainder.cost_usd, MAX_COST_USD)
                and _bounded(remainder.requests, MAX_COUNT)
            ):
                remainder = None
                repaired += 1
            engine.record(dataclasses.replace(accounting, events=events, unattributed=remainder))
        return repaired


def _bounded(value: float | None, limit: float) -> bool:
    return value is None or (math.isfinite(value) and abs(value) <= limit)


def _sane(event: AccountedEvent) -> bool:
    """Whether a stored event is inside the bounds the wire enforces today."""
    return (
        _bounded(event.cost_usd, MAX_COST_USD)
        and _bounded(event.recorded_cost_usd, MAX_COST_USD)
        and _bounded(event.calculated_cost_usd, MAX_COST_USD)
        and _bounded(event.requests, MAX_COUNT)
        and _bounded(event.cache_hits, MAX_COUNT)
        and _bounded(event.latency_ms, MAX_COUNT)
        and _bounded(event.tokens, MAX_TOKENS)
        and _bounded(event.input_tokens, MAX_TOKENS)
        and _bounded(event.output_tokens, MAX_TOKENS)
    )


# -- helpers ---------------------------------------------------------------------------


def _dumps(value: StateBlob) -> str:
    if isinstance(value, bytes):
        return value.decode()
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _local_label(start: float, kind: BucketKind, zone: tzinfo) -> str:
    here = datetime.fromtimestamp(start, UTC).astimezone(zone)
    if kind == "day":
        return here.date().isoformat()
    return here.isoformat(timespec="minutes")


def _classify(path: Path, exc: BaseException, doing: str) -> StoreError:
    """A :class:`StoreError` that says what is wrong with ``path`` and what to do about it."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    detail = str(exc) or type(exc).__name__
    lowered = detail.lower()
    where = f"database {path}"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in lowered:
        message = (
            f"{where} is locked by another process ({detail}) while {doing}; "
            "stop the other cco-monitor or sqlite3 session that holds it"
        )
    elif (
        name == "SQLITE_NOTADB"
        or name.startswith("SQLITE_CORRUPT")
        or "not a database" in lowered
        or "malformed" in lowered
    ):
        message = (
            f"{where} is corrupt or not a SQLite database ({detail}) while {doing}; it is "
            "left untouched: move it aside (or restore a backup) to start a new one"
        )
    elif (
        name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH"))
        or "readonly" in lowered
        or "unable to open" in lowered
    ):
        message = (
            f"{where} cannot be opened for writing ({detail}) while {doing}; check that the "
            "file and its directory exist and are writable by this user"
        )
    elif name == "SQLITE_FULL" or "disk is full" in lowered:
        message = f"{where}: the disk is full ({detail}) while {doing}"
    elif name.startswith("SQLITE_IOERR") or "disk i/o" in lowered:
        message = f"{where}: I/O error ({detail}) while {doing}; check the disk"
    else:
        message = f"{where}: {detail} (while {doing})"
    return StoreError(message)


# The AccountedEvent fields stored as they are, read in one C call per event (writer hot path).
_EVENT_FIELDS = (
    "source",
    "key",
    "event_type",
    "model",
    "tier",
    "requests",
    "cache_hits",
    "tokens",
    "input_tokens",
    "output_tokens",
    "latency_ms",
    "status",
    "cost_usd",
    "recorded_cost_usd",
    "calculated_cost_usd",
    "cost_basis",
    "priced",
    "price_version",
)
_EVENT_COLUMNS = ", ".join((*_EVENT_FIELDS, "occurred_at", "observed_at", "batch", "result"))
_event_values = operator.attrgetter(*_EVENT_FIELDS)
_occurred_at = operator.attrgetter("occurred_at")
_EVENT_SELECT = (
    "source, key, occurred_at, event_type, model, tier, requests, cache_hits, tokens, "
    "input_tokens, output_tokens, latency_ms, status, cost_usd, recorded_cost_usd, "
    "calculated_cost_usd, cost_basis, priced, price_version"
)
_UNATTRIBUTED_SELECT = (
    "source, occurred_at_iso, since_iso, observed_at_iso, requests, cost_usd, lost_events, reason"
)
_AGGREGATE_COLUMNS = (
    "bucket_start, label, source, tier, model, cost_usd, requests, tokens, cache_hits, events"
)


_EVENT_ARITY = _EVENT_COLUMNS.count(",") + 1
#: A batch's new events summed per (UTC minute of the clamped time, source, tier, model),
#: returned as ONE JSON row: every row fetched is a step that gives the GIL away and waits
#: to get it back. The cost goes as 17 significant digits (json_array alone writes 15);
#: the minute is floored for times before 1970 too, as ``BucketStarts`` does; tokens are
#: summed with total(), which cannot overflow (sum() would fail the batch for good).
_MINUTE_SUMS = f"""
    SELECT json_group_array(json_array(minute, source, tier, model, printf('%!.17g', cost),
        requests, tokens, cache_hits, events))
    FROM (
    SELECT minute, source, tier, model, sum(cost_usd) AS cost, sum(requests) AS requests,
        CAST(total(tokens) AS INTEGER) AS tokens, sum(cache_hits) AS cache_hits,
        count(*) AS events
    FROM (
        SELECT CAST(at / 60 AS INTEGER) * 60 - (at < CAST(at / 60 AS INTEGER) * 60) * 60
                AS minute,
            source, tier, coalesce(model, '') AS model, cost_usd, requests,
            coalesce(tokens, 0) AS tokens, cache_hits
        FROM (
            SELECT *, min(occurred_at, observed_at + {MAX_CLOCK_SKEW.total_seconds()}) AS at
            FROM events WHERE batch = ?
        )
    )
    GROUP BY minute, source, tier, model
    )
"""  # noqa: S608
_AGGREGATE_ARITY = _AGGREGATE_COLUMNS.count(",") + 1
#: Largest multi-row INSERT (rows); smaller ones halve down to 1 (few distinct statements).
#: Every shape stays prepared in the statement cache with its parameters: at 1024 rows the
#: shapes held 6.6 MiB of RSS, at 256 3.2 MiB, for no measurable gain at the writer's batch
#: size (bench/README.md).
_MAX_ROWS_PER_INSERT = 256
_AGGREGATE_UPSERT = (
    " ON CONFLICT (bucket_start, source, tier, model) DO UPDATE SET "
    "cost_usd = cost_usd + excluded.cost_usd, "
    "requests = requests + excluded.requests, "
    "tokens = tokens + excluded.tokens, "
    "cache_hits = cache_hits + excluded.cache_hits, "
    "events = events + excluded.events"
)


def _rows_per_insert(variable_limit: int, arity: int) -> int:
    """The largest power of two of rows of ``arity`` values that one statement may bind.

    SQLite builds before 3.32 allow 999 parameters per statement, later ones 32766.
    """
    most = max(1, min(variable_limit // arity, _MAX_ROWS_PER_INSERT))
    return 1 << (most.bit_length() - 1)


def _insert_rows(
    conn: sqlite3.Connection,
    head: str,
    arity: int,
    values: Sequence[Any],
    most: int,
    tail: str = "",
) -> None:
    """``head (..),(..),.. tail`` for ``values``, rows of ``arity`` in one flat sequence.

    Up to ``most`` rows per statement. Why not ``executemany`` of one row: it steps once per
    row, releasing and re-taking the GIL around every step. While the event loop thread is
    busy, each re-take can wait a whole switch interval, which throttled the writer to a few
    thousand rows/s under load; one step per hundreds of rows keeps SQLite's work outside
    the GIL (bench/README.md). Statement sizes are powers of two, so the statement cache
    holds a handful of shapes.
    """
    one = "(" + ",".join("?" * arity) + ")"
    rows = len(values) // arity
    start = 0
    size = most
    while start < rows and size >= 1:
        count = (rows - start) // size
        if count:
            sql = head + ",".join([one] * size) + tail
            end = start + count * size
            width = size * arity
            conn.executemany(
                sql,
                [
                    values[first : first + width]
                    for first in range(start * arity, end * arity, width)
                ],
            )
            start = end
        size //= 2


def _event_rows(
    events: Sequence[AccountedEvent], observed_at: float, batch_id: int, index: int
) -> Iterator[tuple[Any, ...]]:
    """The rows of one result's events, in ``_EVENT_COLUMNS`` order.

    Built by map/zip/repeat, which run in C: the writer shares the GIL with the event loop,
    and a Python loop here cost ~0.5 us per event of the loop's time under flood.
    """
    suffixes = zip(
        map(datetime.timestamp, map(_occurred_at, events)),
        repeat(observed_at),
        repeat(batch_id),
        repeat(index),
    )
    return map(operator.add, map(_event_values, events), suffixes)


def _instant(seconds: float) -> datetime:
    """Epoch seconds as an aware UTC datetime, pinned to datetime's range.

    Times are range-checked when parsed (``wire.EARLIEST``/``LATEST``); a row from before
    that check must still never stop a restore.
    """
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return (datetime.max if seconds > 0 else datetime.min).replace(tzinfo=UTC)


def _event_from_row(row: Sequence[Any]) -> AccountedEvent:
    return AccountedEvent(
        source=row[0],
        key=row[1],
        occurred_at=_instant(row[2]),
        event_type=row[3],
        model=row[4],
        tier=cast(Tier, row[5]),
        requests=row[6],
        cache_hits=row[7],
        tokens=row[8],
        input_tokens=row[9],
        output_tokens=row[10],
        latency_ms=row[11],
        status=row[12],
        cost_usd=row[13],
        recorded_cost_usd=row[14],
        calculated_cost_usd=row[15],
        cost_basis=cast(CostBasis, row[16]),
        priced=bool(row[17]),
        price_version=row[18],
    )


def _unattributed_from_row(row: Sequence[Any]) -> UnattributedRow:
    remainder = Unattributed(
        source=row[0],
        occurred_at=datetime.fromisoformat(row[1]),
        requests=row[4],
        cost_usd=row[5],
        lost_events=row[6],
        reason=row[7],
        since=datetime.fromisoformat(row[2]) if row[2] else None,
    )
    return UnattributedRow(remainder, datetime.fromisoformat(row[3]))


def _time_filter(
    column: str, since: datetime | None, until: datetime | None
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if since is not None:
        clauses.append(f"{column} >= ?")
        params.append(since.timestamp())
    if until is not None:
        clauses.append(f"{column} < ?")
        params.append(until.timestamp())
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


class _Aggregates:
    """Per-batch sums for ``hourly`` and ``daily``, upserted once per key."""

    KINDS: tuple[BucketKind, ...] = ("hour", "day")

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self.rows: dict[tuple[BucketKind, float, str, str, str], list[float]] = {}
        self._starts = BucketStarts(zone)

    def _add(
        self,
        kind: BucketKind,
        moment: datetime,
        key: tuple[str, str, str],
        values: Sequence[float],
    ) -> None:
        start = bucket_start(moment, kind, self.zone)
        self._add_at(kind, start, key, values)

    def _add_at(
        self, kind: BucketKind, start: float, key: tuple[str, str, str], values: Sequence[float]
    ) -> None:
        row_key = (kind, start, *key)
        row = self.rows.get(row_key)
        if row is None:
            self.rows[row_key] = list(values)
        else:
            row[0] += values[0]
            row[1] += values[1]
            row[2] += values[2]
            row[3] += values[3]
            row[4] += values[4]

    def stored_events(self, conn: sqlite3.Connection, batch_id: int) -> None:
        """Add the events this batch stored, summed per UTC minute by SQLite.

        ``batch = ?`` selects exactly the rows inserted now (an event stored before keeps
        its old batch): those, once each, go into the aggregates. Times later than
        ``observed_at + MAX_CLOCK_SKEW`` count at that bound, as in the engine.
        """
        starts_of = self._starts.of
        (groups,) = conn.execute(_MINUTE_SUMS, (batch_id,)).fetchone()
        for minute, source, tier, model, cost, *counts in orjson.loads(groups):
            _, hour, day = starts_of(minute)
            sums = (float(cost), *counts)
            self._add_at("hour", hour, (source, tier, model), sums)
            self._add_at("day", day, (source, tier, model), sums)

    def unattributed(self, remainder: Unattributed, observed_at: datetime) -> None:
        """Spread like the engine does: cost over [since, occurred_at], requests at the end."""
        end = min(remainder.occurred_at, observed_at + MAX_CLOCK_SKEW)
        since = remainder.since
        start = since if since is not None and since < end else end
        key = (remainder.source, UNATTRIBUTED, "")
        for kind in self.KINDS:
            for moment, share in spread(start, end, kind, self.zone):
                self._add(kind, moment, key, (remainder.cost_usd * share, 0, 0, 0, 0))
            self._add(kind, end, key, (0.0, remainder.requests, 0, 0, 0))

    def write(self, conn: sqlite3.Connection, most: int) -> None:
        """Upsert the rows, up to ``most`` per statement (see :func:`_insert_rows`)."""
        for kind, table in (("hour", "hourly"), ("day", "daily")):
            params: list[Any] = []
            for (row_kind, start, source, tier, model), values in self.rows.items():
                if row_kind == kind:
                    label = _local_label(start, kind, self.zone)
                    params.extend((start, label, source, tier, model, *values))
            head = f"INSERT INTO {table} ({_AGGREGATE_COLUMNS}) VALUES "  # noqa: S608
            _insert_rows(conn, head, _AGGREGATE_ARITY, params, most, _AGGREGATE_UPSERT)


# -- the single writer -----------------------------------------------------------------


class WriterLock:
    """An exclusive ``flock`` on ``<database>.lock``, held by the daemon that writes it.

    Two daemons on one database store every unattributed row twice, and the PID lock
    cannot prevent it alone: it lives on ``daemon.pid``, which can be deleted (or another
    state dir can name the same database). This lock belongs to the database: whoever
    opens it to write through :meth:`Store.open` with ``exclusive=True`` takes it first,
    without waiting, and keeps it until :meth:`Store.close`; the kernel drops it when the
    process dies in any way. ``db prune`` does not take it: its one transaction is safe
    next to a running daemon under SQLite's own locks, and it counts nothing.
    """

    SUFFIX = ".lock"

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        self.identity = _identity(os.fstat(fd))

    @classmethod
    def acquire(cls, database: Path) -> WriterLock:
        """Take the lock of ``database`` or raise :class:`StoreError` naming the holder."""
        path = database.with_name(database.name + cls.SUFFIX)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise StoreError(
                f"cannot open the writer lock {path} of database {database}: {exc.strerror or exc}"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f"pid {holder}" if holder.isdigit() else "another process"
            raise StoreError(
                f"database {database} is already being written by {who} (it holds "
                f"{path.name}); a second writer would store rows twice. Stop that one first "
                "(if its daemon.pid was deleted, `kill` the pid), or use another state dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(path, fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


#: The ``meta`` key of the database's random id, also written to ``<database>.id``.
DATABASE_ID_KEY = "database_id"
MARKER_SUFFIX = ".id"
RESCUED_SUFFIX = ".rescued"


def _marker_path(database: Path) -> Path:
    return database.with_name(database.name + MARKER_SUFFIX)


def _write_marker(path: Path, database_id: str) -> None:
    """``<database>.id``: this state dir has held that database (atomic, 0600, no symlink)."""
    try:
        if path.read_text(encoding="ascii").strip() == database_id:
            return
    except (OSError, UnicodeDecodeError):
        pass
    temporary = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temporary, flags, 0o600)
    try:
        os.write(fd, f"{database_id}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _refuse_lost_history(database: Path) -> None:
    """Refuse to create an empty database where the marker says one with history was.

    The marker ``<database>.id`` is written once a database is open; it outlives a
    ``monitor.db`` deleted (or emptied) under a running or stopped daemon. Starting over
    then must be a decision: remove the marker too.
    """
    marker = _marker_path(database)
    if not marker.is_file():
        return
    wal = database.with_name(database.name + "-wal")
    try:
        size = database.stat().st_size
    except FileNotFoundError:
        size = None
    try:
        wal_size = wal.stat().st_size
    except FileNotFoundError:
        wal_size = 0
    if size is None:
        what = "is missing"
    elif size == 0 and wal_size == 0:
        what = "is empty"
    else:
        return
    raise StoreError(
        f"database {database} {what}, but this state dir has held one ({marker.name} says "
        "so): refusing to start from zero silently. Put the database back (a backup, or a "
        f"{database.name}{RESCUED_SUFFIX}-* copy the daemon saved), or, to start over on "
        f"purpose, remove {marker} and start again"
    )


def finish_rescue(database: Path, copy: Path) -> bool:
    """Move a rescued copy to ``database`` if that name is free (after the store closed)."""
    if database.exists():
        return False
    for suffix in ("-wal", "-shm"):
        # The deleted file's WAL and index, if the closing connection left them.
        with contextlib.suppress(FileNotFoundError):
            database.with_name(database.name + suffix).unlink()
    os.replace(copy, database)
    return True


# -- the store -------------------------------------------------------------------------


class Store:
    """One connection to ``monitor.db``; thread-safe (one operation at a time).

    Open with :meth:`open` (or :meth:`open_settings`); close with :meth:`close` or ``with``.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        readonly: bool,
        zone: tzinfo,
        retention: Retention,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._conn = conn
        self.path = path
        self.readonly = readonly
        self.zone = zone
        self.retention = retention
        self._clock = clock
        self._lock = threading.RLock()
        self._closed = False
        #: Held by the daemon's store for its whole life (``open(exclusive=True)``).
        self.writer_lock: WriterLock | None = None
        #: (device, inode) of ``path`` when the daemon's store opened it.
        self.file_identity: tuple[int, int] | None = None
        self._last_batch = 0
        variable_limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._event_rows_per_insert = _rows_per_insert(variable_limit, _EVENT_ARITY)
        self._aggregate_rows_per_insert = _rows_per_insert(variable_limit, _AGGREGATE_ARITY)
        if not readonly:
            self._last_batch = self._read_last_batch()

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        zone: tzinfo = UTC,
        retention: Retention | None = None,
        busy_timeout: float = 5.0,
        synchronous: Synchronous = "NORMAL",
        exclusive: bool = False,
    ) -> Store:
        """Open (creating and migrating when writable) the database at ``path``.

        Raises :class:`StoreError` when it is corrupt, foreign, of a newer schema, locked for
        longer than ``busy_timeout`` seconds, or not writable (unless ``readonly``).
        ``readonly`` opens with ``mode=ro``: safe while the daemon writes (WAL readers do not
        block the writer), never creates or migrates anything.
        """
        target = Path(path).expanduser().absolute()
        writer_lock = None
        if exclusive and not readonly:
            writer_lock = WriterLock.acquire(target)
        if not readonly:
            # Every writer, `db prune` too: none may create an empty database in its place.
            try:
                _refuse_lost_history(target)
            except BaseException:
                if writer_lock is not None:
                    writer_lock.release()
                raise
        try:
            conn = (
                cls._connect_readonly(target, busy_timeout)
                if readonly
                else cls._connect(target, busy_timeout)
            )
        except BaseException:
            if writer_lock is not None:
                writer_lock.release()
            raise
        try:
            cls._prepare(conn, target, readonly=readonly, synchronous=synchronous)
            store = cls(
                conn,
                target,
                readonly=readonly,
                zone=zone,
                retention=retention or Retention(),
            )
        except sqlite3.Error as exc:
            conn.close()
            if writer_lock is not None:
                writer_lock.release()
            raise _classify(target, exc, "opening it") from exc
        except BaseException:
            conn.close()
            if writer_lock is not None:
                writer_lock.release()
            raise
        store.writer_lock = writer_lock
        if writer_lock is not None:
            try:
                store._adopt(target)
            except BaseException:
                store.close()
                raise
        return store

    def _adopt(self, target: Path) -> None:
        """Give the database an id, record it beside it, and note which file we write."""
        try:
            database_id = self.meta().get(DATABASE_ID_KEY)
            if database_id is None:
                database_id = secrets.token_hex(16)
                self.set_meta(DATABASE_ID_KEY, database_id)
            _write_marker(_marker_path(target), database_id)
            self.file_identity = _identity(os.stat(target))
        except OSError as exc:
            raise StoreError(f"cannot record the identity of {target}: {exc}") from exc

    def file_problem(self) -> str | None:
        """Why the file this store writes is no longer ``monitor.db`` (None while it is).

        Deleted or replaced under a running daemon (``rm``, a restore by copy), the open
        connection keeps writing a file nobody will read again; /health fails with this.
        """
        if self.file_identity is None:
            return None
        name = self.path.name
        try:
            current = _identity(os.stat(self.path))
        except FileNotFoundError:
            return (
                f"{name} was deleted while the daemon runs: counts go on into the deleted "
                "file, which a clean stop saves back in its place"
            )
        except OSError as exc:
            return f"{name} cannot be checked: {exc.strerror or exc}"
        if current != self.file_identity:
            return (
                f"{name} was replaced by another file while the daemon runs: counts go on "
                f"into the old one, which a clean stop saves as {name}{RESCUED_SUFFIX}-<time>"
            )
        lock = self.writer_lock
        if lock is not None:
            try:
                held = _identity(os.stat(lock.path)) == lock.identity
            except OSError:
                held = False
            if not held:
                return (
                    f"{lock.path.name} was deleted or replaced while the daemon runs: "
                    "a second daemon could now start on this database"
                )
        return None

    def rescue(self) -> Path | None:
        """Save the database this connection holds when its file was deleted or replaced.

        Copies it (SQLite's online backup) to ``monitor.db.rescued-<time>``, which
        :func:`finish_rescue` moves into place after :meth:`close` when the name is free.
        Returns the copy's path, or None when nothing needed saving.
        """
        if self.file_identity is None or self.readonly:
            return None
        try:
            current: tuple[int, int] | None = _identity(os.stat(self.path))
        except FileNotFoundError:
            current = None
        if current == self.file_identity:
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        copy = self.path.with_name(f"{self.path.name}{RESCUED_SUFFIX}-{stamp}")
        with self._lock:
            try:
                destination = sqlite3.connect(copy)
                try:
                    self._conn.backup(destination)
                finally:
                    destination.close()
                os.chmod(copy, 0o600)
            except (sqlite3.Error, OSError) as exc:
                raise StoreError(f"could not save the deleted database to {copy}: {exc}") from exc
        return copy

    @staticmethod
    def migration_pending(path: str | os.PathLike[str]) -> tuple[int, int] | None:
        """``(schema version, event rows)`` when opening ``path`` will migrate it, else None.

        Read-only and cheap; anything unusual (no file, not ours, unreadable) is left for
        :meth:`open` to report.
        """
        target = Path(path).expanduser().absolute()
        if not target.is_file():
            return None
        uri = "file:" + urllib.parse.quote(str(target)) + "?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as conn:
                version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                if not 0 < version < SCHEMA_VERSION:
                    return None
                rows = int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        except sqlite3.Error:
            return None
        return version, rows

    @classmethod
    def open_settings(
        cls, settings: Settings, *, readonly: bool = False, exclusive: bool = False
    ) -> Store:
        """:meth:`open` ``settings.db_path`` with the configured zone and retention."""
        return cls.open(
            settings.db_path,
            readonly=readonly,
            zone=settings.zone,
            retention=Retention.from_settings(settings),
            exclusive=exclusive,
        )

    @staticmethod
    def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the directory of database {path}: {exc.strerror or exc}"
            ) from exc
        if path.is_dir():
            raise StoreError(f"database {path} is a directory, not a file")
        if not path.exists():
            try:
                # An empty file is an empty database; create it private.
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                pass
            except OSError as exc:
                raise StoreError(
                    f"cannot create database {path}: {exc.strerror or exc}; check that its "
                    "directory is writable by this user"
                ) from exc
        try:
            return sqlite3.connect(
                path,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise _classify(path, exc, "opening it") from exc

    @staticmethod
    def _connect_readonly(path: Path, busy_timeout: float) -> sqlite3.Connection:
        if not path.is_file():
            raise StoreError(f"no database at {path} (has the daemon run with this state dir?)")
        uri = "file:" + urllib.parse.quote(str(path)) + "?mode=ro"
        try:
            return sqlite3.connect(
                uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise _classify(path, exc, "opening it read-only") from exc

    @staticmethod
    def _prepare(
        conn: sqlite3.Connection, path: Path, *, readonly: bool, synchronous: Synchronous
    ) -> None:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        tables = int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {path} has schema version {version}, newer than this cco-monitor "
                f"knows ({SCHEMA_VERSION}); upgrade cco-monitor or use another state dir"
            )
        fresh = version == 0 and tables == 0 and app_id in (0, APPLICATION_ID)
        if not fresh and app_id != APPLICATION_ID:
            raise StoreError(
                f"database {path} is a SQLite database but not a cco-monitor one "
                f"(application_id {app_id:#x}, {tables} schema objects); refusing to touch it"
            )
        conn.execute("PRAGMA foreign_keys = OFF")
        if readonly:
            if version < SCHEMA_VERSION:
                raise StoreError(
                    f"database {path} has schema version {version} (this cco-monitor needs "
                    f"{SCHEMA_VERSION}); start the daemon once to migrate it"
                )
            return
        if fresh:
            # Only possible before the first table exists: lets prune() give pages back.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if mode.lower() != "wal":
            raise StoreError(f"database {path}: cannot use WAL journal mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")
        # Take the write lock now: a locked or read-only file fails here, clearly, at start-up.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](conn)
            if version < SCHEMA_VERSION:
                now = datetime.now(UTC).isoformat()
                if version == 0:
                    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    conn.execute("INSERT INTO meta (key, value) VALUES ('created_at', ?)", (now,))
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (f"migrated_to_{SCHEMA_VERSION}_at", now),
                )
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection (idempotent). The last writer checkpoints the WAL."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if not self.readonly:
                    self._conn.execute("PRAGMA optimize")
            except sqlite3.Error:
                pass
            finally:
                self._conn.close()
                if self.writer_lock is not None:
                    self.writer_lock.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_batch(self) -> int:
        """Id of the last committed batch (0 before the first)."""
        return self._last_batch

    def _read_last_batch(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'last_batch'").fetchone()
        return int(row[0]) if row else 0

    def _writable(self) -> None:
        if self._closed:
            raise StoreError(f"database {self.path} is closed")
        if self.readonly:
            raise StoreError(f"database {self.path} is open read-only")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    # -- writing -----------------------------------------------------------------------

    def commit_batch(self, batch: Batch) -> CommitResult:
        """Write ``batch`` in one transaction: all of it, or (on any error) none of it."""
        started = time.perf_counter()
        with self._lock:
            self._writable()
            batch_id = self._last_batch + 1
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    counts = self._write(conn, batch, batch_id)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _classify(self.path, exc, "committing a batch") from exc
            self._last_batch = batch_id
        inserted, ignored, unattributed = counts
        return CommitResult(
            batch=batch_id,
            events_inserted=inserted,
            events_ignored=ignored,
            unattributed=unattributed,
            alerts=len(batch.alerts),
            engine_saved=batch.engine is not None,
            duration_ms=(time.perf_counter() - started) * 1000,
        )

    def _write(self, conn: sqlite3.Connection, batch: Batch, batch_id: int) -> tuple[int, int, int]:
        now = self._clock()
        aggregates = _Aggregates(self.zone)
        unattributed = 0
        event_values: list[Any] = []
        add_values = event_values.extend
        insert_event = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES "  # noqa: S608
        for index, accounting in enumerate(batch.results):
            if accounting.first_contact:
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                    (f"first_contact:{accounting.source}", _iso(accounting.observed_at)),
                )
            if accounting.events:
                observed = accounting.observed_at.timestamp()
                add_values(
                    chain.from_iterable(_event_rows(accounting.events, observed, batch_id, index))
                )
            remainder = accounting.unattributed
            if remainder is not None:
                unattributed += 1
                conn.execute(
                    "INSERT INTO unattributed (source, occurred_at, occurred_at_iso, since, "
                    "since_iso, observed_at_iso, requests, cost_usd, lost_events, reason, batch, "
                    "result) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        remainder.source,
                        remainder.occurred_at.timestamp(),
                        _iso(remainder.occurred_at),
                        remainder.since.timestamp() if remainder.since else None,
                        _iso(remainder.since) if remainder.since else None,
                        _iso(accounting.observed_at),
                        remainder.requests,
                        remainder.cost_usd,
                        remainder.lost_events,
                        remainder.reason,
                        batch_id,
                        index,
                    ),
                )
                aggregates.unattributed(remainder, accounting.observed_at)
        before = conn.total_changes
        # A stored event is skipped, nothing else: a NULL in a NOT NULL column must fail
        # the batch loudly, where INSERT OR IGNORE would drop the row without a word.
        _insert_rows(
            conn,
            insert_event,
            _EVENT_ARITY,
            event_values,
            self._event_rows_per_insert,
            " ON CONFLICT DO NOTHING",
        )
        inserted = conn.total_changes - before
        ignored = len(event_values) // _EVENT_ARITY - inserted
        if inserted:
            aggregates.stored_events(conn, batch_id)
        aggregates.write(conn, self._aggregate_rows_per_insert)
        conn.executemany(
            "INSERT INTO source_state (source, state, batch, updated_at) VALUES (?,?,?,?) "
            "ON CONFLICT (source) DO UPDATE SET state = excluded.state, batch = excluded.batch, "
            "updated_at = excluded.updated_at",
            [(name, _dumps(state), batch_id, now) for name, state in batch.source_states.items()],
        )
        if batch.engine is not None:
            conn.execute(
                "INSERT INTO engine_state (id, state, batch, updated_at) VALUES (1,?,?,?) "
                "ON CONFLICT (id) DO UPDATE SET state = excluded.state, batch = excluded.batch, "
                "updated_at = excluded.updated_at",
                (_dumps(batch.engine), batch_id, now),
            )
        conn.executemany(
            "INSERT INTO component_state (name, state, batch, updated_at) VALUES (?,?,?,?) "
            "ON CONFLICT (name) DO UPDATE SET state = excluded.state, batch = excluded.batch, "
            "updated_at = excluded.updated_at",
            [
                (name, _dumps(state), batch_id, now)
                for name, state in batch.component_states.items()
            ],
        )
        conn.executemany(
            "INSERT INTO alerts (at, at_iso, kind, period, tier, threshold, message, payload) "
            "VALUES (?,?,?,?,?,?,?,?)",
            [
                (
                    alert.at.timestamp(),
                    _iso(alert.at),
                    alert.kind,
                    alert.period,
                    alert.tier,
                    alert.threshold,
                    alert.message,
                    _dumps(alert.payload),
                )
                for alert in batch.alerts
            ],
        )
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('last_batch', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(batch_id),),
        )
        return inserted, ignored, unattributed

    def set_meta(self, key: str, value: str) -> None:
        """Set one ``meta`` value (its own transaction)."""
        with self._lock:
            self._writable()
            try:
                self._conn.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )
            except sqlite3.Error as exc:
                raise _classify(self.path, exc, "writing meta") from exc

    # -- restoring ---------------------------------------------------------------------

    def load(self, *, recent_events: int = 1000, alerts: int = 200) -> Restored:
        """What the service needs at start-up, read in one consistent snapshot."""
        with self._lock, self._read("restoring state") as conn:
            engine_row = conn.execute(
                "SELECT state, batch FROM engine_state WHERE id = 1"
            ).fetchone()
            engine = orjson.loads(engine_row[0]) if engine_row else None
            engine_batch = int(engine_row[1]) if engine_row else 0
            states = {
                source: orjson.loads(state)
                for source, state in conn.execute("SELECT source, state FROM source_state")
            }
            components = {
                name: orjson.loads(state)
                for name, state in conn.execute("SELECT name, state FROM component_state")
            }
            rows = conn.execute(
                f"SELECT {_EVENT_SELECT} FROM events ORDER BY rowid DESC LIMIT ?",  # noqa: S608
                (recent_events,),
            ).fetchall()
            events = [_event_from_row(row) for row in reversed(rows)]
            replay = self._replay(conn, engine_batch)
            first_contact = {
                key.removeprefix("first_contact:"): datetime.fromisoformat(value)
                for key, value in conn.execute(
                    "SELECT key, value FROM meta WHERE key LIKE 'first\\_contact:%' ESCAPE '\\'"
                )
            }
            last = conn.execute("SELECT value FROM meta WHERE key = 'last_batch'").fetchone()
            alert_rows = self._alerts(conn, None, alerts)
        return Restored(
            engine=engine,
            engine_batch=engine_batch,
            engine_replay=replay,
            source_states=states,
            events=events,
            alerts=alert_rows,
            first_contact=first_contact,
            last_batch=int(last[0]) if last else 0,
            component_states=components,
        )

    @staticmethod
    def _replay(conn: sqlite3.Connection, after: int) -> list[Accounting]:
        """Results committed after batch ``after``, rebuilt in commit order."""
        groups: dict[
            tuple[int, int], tuple[str, datetime, list[AccountedEvent], list[Unattributed]]
        ]
        groups = {}
        for row in conn.execute(
            f"SELECT batch, result, observed_at, {_EVENT_SELECT} FROM events "  # noqa: S608
            "WHERE batch > ? ORDER BY rowid",
            (after,),
        ):
            event = _event_from_row(row[3:])
            group = groups.setdefault((row[0], row[1]), (event.source, _instant(row[2]), [], []))
            group[2].append(event)
        for row in conn.execute(
            f"SELECT batch, result, {_UNATTRIBUTED_SELECT} FROM unattributed "  # noqa: S608
            "WHERE batch > ? ORDER BY id",
            (after,),
        ):
            item = _unattributed_from_row(row[2:])
            group = groups.setdefault(
                (row[0], row[1]), (item.remainder.source, item.observed_at, [], [])
            )
            group[3].append(item.remainder)
        result: list[Accounting] = []
        for key in sorted(groups):
            source, observed_at, events, remainders = groups[key]
            result.append(
                Accounting(
                    source, observed_at, tuple(events), remainders[0] if remainders else None
                )
            )
            # One Accounting holds one remainder; more would only come from a hand-edited file.
            result.extend(Accounting(source, observed_at, (), extra) for extra in remainders[1:])
        return result

    class _ReadTransaction:
        def __init__(self, store: Store, doing: str) -> None:
            self.store = store
            self.doing = doing

        def __enter__(self) -> sqlite3.Connection:
            if self.store._closed:
                raise StoreError(f"database {self.store.path} is closed")
            try:
                self.store._conn.execute("BEGIN")
            except sqlite3.Error as exc:
                raise _classify(self.store.path, exc, self.doing) from exc
            return self.store._conn

        def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
            conn = self.store._conn
            # A read transaction: ending it by rollback loses nothing, and it cannot fail in a
            # way that matters for what was read (on a damaged file it may report the damage).
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise _classify(self.store.path, exc, self.doing) from exc

    def _read(self, doing: str) -> Store._ReadTransaction:
        """A consistent read snapshot (WAL: never blocks nor is blocked by the writer)."""
        return Store._ReadTransaction(self, doing)

    # -- queries (report, API) -----------------------------------------------------------

    def events(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = 1000,
        *,
        source: str | None = None,
        newest_first: bool = True,
    ) -> list[AccountedEvent]:
        """Stored events with ``since <= occurred_at < until``."""
        where, params = _time_filter("occurred_at", since, until)
        if source is not None:
            where += (" AND" if where else " WHERE") + " source = ?"
            params.append(source)
        order = "DESC" if newest_first else "ASC"
        sql = (
            f"SELECT {_EVENT_SELECT} FROM events{where} ORDER BY occurred_at {order}, rowid {order}"  # noqa: S608
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        with self._lock, self._read("reading events") as conn:
            return [_event_from_row(row) for row in conn.execute(sql, params)]

    def events_after(self, seq: int, limit: int) -> list[tuple[int, AccountedEvent]]:
        """Up to ``limit`` stored events with a sequence number above ``seq``, in order.

        The sequence number is the ``events`` table's rowid: SQLite gives each new row the
        largest rowid plus one, so it grows in commit order and is kept across restarts
        (and by ``VACUUM``, which keeps rowids; a migration that rebuilds ``events`` must
        copy them). :meth:`prune` never deletes the newest row, so a rowid is never
        handed out twice. ``/api/stream`` uses it for its ``id:`` and ``Last-Event-ID``.
        """
        sql = f"SELECT rowid, {_EVENT_SELECT} FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?"  # noqa: S608
        with self._lock, self._read("reading events by sequence") as conn:
            return [(row[0], _event_from_row(row[1:])) for row in conn.execute(sql, (seq, limit))]

    def last_event_seq(self) -> int:
        """The sequence number of the newest stored event (0 when there is none)."""
        with self._lock, self._read("reading the last event sequence") as conn:
            row = conn.execute("SELECT max(rowid) FROM events").fetchone()
        return int(row[0] or 0)

    def unattributed_rows(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[UnattributedRow]:
        """Stored unattributed remainders with ``since <= occurred_at < until``, oldest first."""
        where, params = _time_filter("occurred_at", since, until)
        sql = f"SELECT {_UNATTRIBUTED_SELECT} FROM unattributed{where} ORDER BY occurred_at, id"  # noqa: S608
        with self._lock, self._read("reading unattributed rows") as conn:
            return [_unattributed_from_row(row) for row in conn.execute(sql, params)]

    def hourly_rows(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[AggregateRow]:
        """``hourly`` rows whose bucket starts in ``[since, until)``, oldest first."""
        return self._aggregate_rows("hourly", since, until)

    def daily_rows(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[AggregateRow]:
        """``daily`` rows whose bucket starts in ``[since, until)``, oldest first."""
        return self._aggregate_rows("daily", since, until)

    def _aggregate_rows(
        self, table: str, since: datetime | None, until: datetime | None
    ) -> list[AggregateRow]:
        where, params = _time_filter("bucket_start", since, until)
        sql = (
            f"SELECT {_AGGREGATE_COLUMNS} FROM {table}{where} "  # noqa: S608
            "ORDER BY bucket_start, source, tier, model"
        )
        with self._lock, self._read(f"reading {table}") as conn:
            return [self._aggregate_from_row(row) for row in conn.execute(sql, params)]

    def _aggregate_from_row(self, row: Sequence[Any]) -> AggregateRow:
        return AggregateRow(
            start=datetime.fromtimestamp(row[0], UTC).astimezone(self.zone),
            label=row[1],
            source=row[2],
            tier=row[3],
            model=row[4],
            cost_usd=row[5],
            requests=row[6],
            tokens=row[7],
            cache_hits=row[8],
            events=row[9],
        )

    def alerts(self, since: datetime | None = None, limit: int = 200) -> list[AlertRecord]:
        """The newest ``limit`` alerts at or after ``since``, oldest first."""
        with self._lock, self._read("reading alerts") as conn:
            return self._alerts(conn, since, limit)

    @staticmethod
    def _alerts(conn: sqlite3.Connection, since: datetime | None, limit: int) -> list[AlertRecord]:
        where, params = _time_filter("at", since, None)
        rows = conn.execute(
            "SELECT id, at_iso, kind, period, threshold, message, payload, tier "  # noqa: S608
            f"FROM alerts{where} ORDER BY at DESC, id DESC LIMIT ?",
            [*params, limit],
        ).fetchall()
        return [
            AlertRecord(
                kind=row[2],
                message=row[5],
                at=datetime.fromisoformat(row[1]),
                period=row[3],
                threshold=row[4],
                payload=orjson.loads(row[6]),
                tier=row[7],
                id=row[0],
            )
            for row in reversed(rows)
        ]

    def meta(self) -> dict[str, str]:
        """Every ``meta`` key and value."""
        with self._lock, self._read("reading meta") as conn:
            return dict(conn.execute("SELECT key, value FROM meta"))

    # -- retention ---------------------------------------------------------------------

    def prune(self, now: datetime) -> PruneResult:
        """Delete rows older than their retention, then give the free pages back.

        Events and unattributed rows are only deleted once the stored engine state covers
        them (their batch is not newer), and their totals move to ``retired`` so that
        :meth:`check` still balances.
        """
        started = time.perf_counter()
        keep = self.retention
        event_cutoff = (now - timedelta(days=keep.events_days)).timestamp()
        hourly_cutoff = (now - timedelta(days=keep.hourly_days)).timestamp()
        daily_cutoff = (now - timedelta(days=keep.daily_days)).timestamp()
        alerts_cutoff = (now - timedelta(days=keep.alerts_days)).timestamp()
        with self._lock:
            self._writable()
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    counts = self._prune(
                        conn, event_cutoff, hourly_cutoff, daily_cutoff, alerts_cutoff
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                freed = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
                conn.execute("PRAGMA incremental_vacuum").fetchall()
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:
                raise _classify(self.path, exc, "pruning old rows") from exc
        return PruneResult(*counts, freed, (time.perf_counter() - started) * 1000)

    @staticmethod
    def _prune(
        conn: sqlite3.Connection,
        event_cutoff: float,
        hourly_cutoff: float,
        daily_cutoff: float,
        alerts_cutoff: float,
    ) -> tuple[int, int, int, int, int]:
        row = conn.execute("SELECT batch FROM engine_state WHERE id = 1").fetchone()
        covered = int(row[0]) if row else 0
        old = "occurred_at < ? AND batch <= ?"
        # The newest event stays, whatever its age: SQLite gives a new row the largest rowid
        # plus one, and that rowid is /api/stream's sequence number (never to be reused).
        old_events = old + " AND rowid < (SELECT max(rowid) FROM events)"  # noqa: S608
        for table, select, where in (
            ("events", "count(*), total(cost_usd), total(requests), 0, 0", old_events),
            ("unattributed", "0, 0, 0, total(cost_usd), total(requests)", old),
        ):
            conn.execute(
                "INSERT INTO retired (source, events, cost_usd, requests, "  # noqa: S608
                "unattributed_cost_usd, unattributed_requests) "
                f"SELECT source, {select} FROM {table} WHERE {where} GROUP BY source "
                "ON CONFLICT (source) DO UPDATE SET events = events + excluded.events, "
                "cost_usd = cost_usd + excluded.cost_usd, "
                "requests = requests + excluded.requests, "
                "unattributed_cost_usd = unattributed_cost_usd + excluded.unattributed_cost_usd, "
                "unattributed_requests = unattributed_requests + excluded.unattributed_requests",
                (event_cutoff, covered),
            )
        events = conn.execute(
            f"DELETE FROM events WHERE {old_events}",  # noqa: S608
            (event_cutoff, covered),
        ).rowcount
        unattributed = conn.execute(
            f"DELETE FROM unattributed WHERE {old}",  # noqa: S608
            (event_cutoff, covered),
        ).rowcount
        hourly = conn.execute(
            "DELETE FROM hourly WHERE bucket_start < ?", (hourly_cutoff,)
        ).rowcount
        daily = conn.execute("DELETE FROM daily WHERE bucket_start < ?", (daily_cutoff,)).rowcount
        alerts = conn.execute("DELETE FROM alerts WHERE at < ?", (alerts_cutoff,)).rowcount
        return events, unattributed, hourly, daily, alerts

    # -- db check / db export ----------------------------------------------------------

    def check(self) -> list[str]:
        """Lines for ``cco-monitor db check``; a problem's line starts with :data:`CHECK_FAIL`.

        Checks the file's integrity, the schema version, and per source that the reconciler
        state's attributed/unattributed totals equal what is stored (plus what was pruned).
        """
        lines: list[str] = []
        with self._lock, self._read("checking it") as conn:
            try:
                problems = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            except sqlite3.DatabaseError as exc:
                problems = [f"integrity_check stopped: {exc}"]
            if problems == ["ok"]:
                lines.append("ok   integrity_check")
            else:
                lines.extend(f"{CHECK_FAIL} integrity: {problem}" for problem in problems[:50])
            # What follows may hit damaged pages too: report each failure, never stop.
            for step in (self._check_schema, self._check_counts, self._check_sources):
                try:
                    lines.extend(step(conn))
                except sqlite3.DatabaseError as exc:
                    lines.append(f"{CHECK_FAIL} {step.__name__.removeprefix('_check_')}: {exc}")
        return lines

    @staticmethod
    def _check_schema(conn: sqlite3.Connection) -> list[str]:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        status = "ok  " if version == SCHEMA_VERSION else CHECK_FAIL
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        return [
            f"{status} schema version {version} (this program: {SCHEMA_VERSION})",
            f"info journal_mode {mode}",
        ]

    @staticmethod
    def _check_counts(conn: sqlite3.Connection) -> list[str]:
        lines = []
        for table in ("events", "unattributed", "hourly", "daily", "source_state", "alerts"):
            count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
            lines.append(f"info {table}: {count} rows")
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        lines.append(f"info size: {pages * page_size} bytes ({free} free pages)")
        engine = conn.execute("SELECT batch FROM engine_state WHERE id = 1").fetchone()
        last = conn.execute("SELECT value FROM meta WHERE key = 'last_batch'").fetchone()
        lines.append(
            f"info last batch {last[0] if last else 0}, engine state as of batch "
            f"{engine[0] if engine else 'none'}"
        )
        return lines

    @staticmethod
    def _check_sources(conn: sqlite3.Connection) -> list[str]:
        lines: list[str] = []
        stored: dict[str, list[float]] = {}
        for source, cost, requests in conn.execute(
            "SELECT source, total(cost_usd), total(requests) FROM events GROUP BY source"
        ):
            stored.setdefault(source, [0.0, 0, 0.0, 0])[:2] = [cost, requests]
        for source, cost, requests in conn.execute(
            "SELECT source, total(cost_usd), total(requests) FROM unattributed GROUP BY source"
        ):
            stored.setdefault(source, [0.0, 0, 0.0, 0])[2:] = [cost, requests]
        for source, cost, requests, u_cost, u_requests in conn.execute(
            "SELECT source, cost_usd, requests, unattributed_cost_usd, unattributed_requests "
            "FROM retired"
        ):
            totals = stored.setdefault(source, [0.0, 0, 0.0, 0])
            for index, value in enumerate((cost, requests, u_cost, u_requests)):
                totals[index] += value
        for source, text in conn.execute("SELECT source, state FROM source_state ORDER BY source"):
            try:
                state = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                lines.append(f"{CHECK_FAIL} source {source}: state is not JSON ({exc})")
                continue
            totals = stored.get(source, [0.0, 0, 0.0, 0])
            pairs = (
                ("attributed cost", float(state.get("attributed_cost", 0.0)), totals[0]),
                ("attributed requests", float(state.get("attributed_requests", 0)), totals[1]),
                ("unattributed cost", float(state.get("unattributed_cost", 0.0)), totals[2]),
                ("unattributed requests", float(state.get("unattributed_requests", 0)), totals[3]),
            )
            bad = [
                f"{name} {in_state:.6f} in state != {in_rows:.6f} stored"
                for name, in_state, in_rows in pairs
                if abs(in_state - in_rows) > _COST_TOLERANCE * max(1.0, abs(in_state))
            ]
            if bad:
                lines.append(f"{CHECK_FAIL} source {source}: " + "; ".join(bad))
            else:
                lines.append(
                    f"ok   source {source}: state matches stored rows "
                    f"(${totals[0] + totals[2]:.6f}, {int(totals[1] + totals[3])} requests)"
                )
        return lines

    def export(
        self,
        kind: ExportKind,
        fmt: ExportFormat,
        out: TextIO,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> int:
        """Write ``kind`` rows in ``[since, until)`` to ``out`` as JSON lines or CSV; count them.

        Events are written as ``AccountedEvent.as_dict()`` (they load back with ``from_dict``).
        """
        sql, params, convert, columns = self._export_query(kind, since, until)
        if fmt not in ("jsonl", "csv"):
            raise ValueError(f"unknown export format {fmt!r}")
        writer = (
            csv.DictWriter(out, fieldnames=columns, lineterminator="\n") if fmt == "csv" else None
        )
        if writer is not None:
            writer.writeheader()
        count = 0
        with self._lock, self._read(f"exporting {kind}") as conn:
            cursor = conn.execute(sql, params)
            while rows := cursor.fetchmany(1000):
                for row in rows:
                    record = convert(row)
                    if writer is None:
                        out.write(orjson.dumps(tidy(record)).decode() + "\n")
                    else:
                        writer.writerow({key: _csv_value(value) for key, value in record.items()})
                    count += 1
        return count

    def _export_query(
        self, kind: ExportKind, since: datetime | None, until: datetime | None
    ) -> tuple[str, list[Any], Callable[[Sequence[Any]], dict[str, Any]], list[str]]:
        if kind == "events":
            where, params = _time_filter("occurred_at", since, until)
            sql = f"SELECT {_EVENT_SELECT} FROM events{where} ORDER BY occurred_at, rowid"  # noqa: S608

            def event(row: Sequence[Any]) -> dict[str, Any]:
                return _event_from_row(row).as_dict()

            return sql, params, event, list(AccountedEvent.__dataclass_fields__)
        if kind == "unattributed":
            where, params = _time_filter("occurred_at", since, until)
            sql = (
                f"SELECT {_UNATTRIBUTED_SELECT} FROM unattributed{where} "  # noqa: S608
                "ORDER BY occurred_at, id"
            )

            def remainder(row: Sequence[Any]) -> dict[str, Any]:
                return _unattributed_from_row(row).as_dict()

            return sql, params, remainder, list(UnattributedRow.COLUMNS)
        if kind in ("hourly", "daily"):
            where, params = _time_filter("bucket_start", since, until)
            sql = (
                f"SELECT {_AGGREGATE_COLUMNS} FROM {kind}{where} "  # noqa: S608
                "ORDER BY bucket_start, source, tier, model"
            )

            def aggregate(row: Sequence[Any]) -> dict[str, Any]:
                return self._aggregate_from_row(row).as_dict()

            return sql, params, aggregate, list(AggregateRow.__dataclass_fields__)
        raise ValueError(f"unknown export kind {kind!r}")


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return tidy(value)
