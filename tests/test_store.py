"""Tests for the SQLite store (``cco_cost_monitor.store``): schema, atomicity, restore, pruning."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cco_cost_monitor import store as store_module
from cco_cost_monitor.engine import Engine, bucket_start
from cco_cost_monitor.errors import StoreError
from cco_cost_monitor.pricing import PriceTable
from cco_cost_monitor.reconciler import AccountedEvent, Accounting, Reconciler, Unattributed
from cco_cost_monitor.rounding import tidy
from cco_cost_monitor.store import (
    APPLICATION_ID,
    CHECK_FAIL,
    SCHEMA_VERSION,
    AlertRecord,
    Batch,
    ExportKind,
    Retention,
    Store,
)
from cco_cost_monitor.wire import parse_frame
from tests.builders import schema_2_database

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2025, 11, 17, 12, 0, tzinfo=UTC)


def make_event(
    index: int,
    at: datetime = T0,
    *,
    source: str = "default",
    cost: float = 0.01,
    model: str | None = "claude-sonnet-4-5",
    event_type: str = "api_call",
) -> AccountedEvent:
    return AccountedEvent(
        source=source,
        key=f"key-{index}",
        occurred_at=at,
        event_type=event_type,
        model=model,
        tier="sonnet" if model else "other",
        requests=1 if event_type in ("api_call", "cache_hit") else 0,
        cache_hits=1 if event_type == "cache_hit" else 0,
        tokens=100 + index,
        input_tokens=None,
        output_tokens=None,
        latency_ms=250,
        status="success",
        cost_usd=cost,
        recorded_cost_usd=cost,
        calculated_cost_usd=cost * 1.1,
        cost_basis="recorded",
        priced=True,
        price_version="builtin-2025-11",
    )


def make_accounting(
    events: list[AccountedEvent],
    observed_at: datetime = T0,
    *,
    source: str = "default",
    unattributed: Unattributed | None = None,
    first_contact: bool = False,
) -> Accounting:
    return Accounting(source, observed_at, tuple(events), unattributed, first_contact=first_contact)


def totals_state(results: list[Accounting]) -> dict[str, Any]:
    """A minimal reconciler-like state whose totals are those of ``results``."""
    attributed = sum(event.cost_usd for acc in results for event in acc.events)
    requests = sum(event.requests for acc in results for event in acc.events)
    u_cost = sum(acc.unattributed.cost_usd for acc in results if acc.unattributed)
    u_requests = sum(acc.unattributed.requests for acc in results if acc.unattributed)
    return {
        "attributed_cost": attributed,
        "attributed_requests": requests,
        "unattributed_cost": u_cost,
        "unattributed_requests": u_requests,
        "seen": [event.key for acc in results for event in acc.events][-512:],
    }


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "monitor.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    with Store.open(db_path, busy_timeout=0.2) as opened:
        yield opened


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def conn_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with closing(raw(path)) as conn:
        return conn.execute(sql).fetchall()


# -- schema and migrations --------------------------------------------------------------


def test_new_database_gets_current_schema_wal_and_private_file(db_path: Path) -> None:
    """Opening a missing file creates a 0600 WAL database at the current schema version."""
    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION
    assert db_path.stat().st_mode & 0o777 == 0o600
    with closing(raw(db_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {
        "events",
        "unattributed",
        "hourly",
        "daily",
        "source_state",
        "engine_state",
        "alerts",
        "meta",
    } <= tables


def test_empty_file_is_migrated_from_version_zero(db_path: Path) -> None:
    """A zero-byte file (schema version 0) is migrated to the current version."""
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"")
    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert "created_at" in store.meta()


def test_version_1_database_is_migrated_to_the_current_schema(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database from schema 1 keeps its alerts and gains the alert tier and component states."""
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:1])
        patch.setattr(store_module, "SCHEMA_VERSION", 1)
        Store.open(db_path).close()
    with closing(raw(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        conn.execute(
            "INSERT INTO alerts (at, at_iso, kind, period, threshold, message, payload) "
            "VALUES (?, ?, 'threshold', 'daily', 0.5, 'half', '{}')",
            (T0.timestamp(), T0.isoformat()),
        )
    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        store.commit_batch(Batch(component_states={"budgets": {"fired": [0.5]}}))
        restored = store.load()
    assert [(alert.message, alert.tier) for alert in restored.alerts] == [("half", None)]
    assert restored.component_states == {"budgets": {"fired": [0.5]}}


def test_version_2_events_are_rekeyed_by_time_and_keep_their_order(db_path: Path) -> None:
    """Schema 3 re-keys events by (occurred_at, source, key); rows, order and dedupe survive."""
    later, earlier = make_event(1, T0 + timedelta(minutes=5)), make_event(2, T0)
    observed = T0 + timedelta(seconds=7, microseconds=999_999)
    # Arrival order: later first.
    schema_2_database(db_path, [later, earlier], observed)
    assert Store.migration_pending(db_path) == (2, 2)
    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert [event.key for event in store.events(newest_first=False)] == ["key-2", "key-1"]
        again = store.commit_batch(Batch([make_accounting([later, make_event(3)])]))
        restored = store.load()
    assert (again.events_inserted, again.events_ignored) == (1, 1)
    assert [event.key for event in restored.events] == ["key-1", "key-2", "key-3"]  # arrival
    with closing(raw(db_path)) as conn:
        columns = conn.execute("PRAGMA table_info(events)").fetchall()
        primary_key = [row[1] for row in sorted(columns, key=lambda row: row[5]) if row[5]]
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(events)")}
    assert primary_key == ["occurred_at", "source", "key"]
    assert "events_batch" in indexes
    assert "events_occurred_at" not in indexes
    assert {"occurred_at_iso", "observed_at_iso"}.isdisjoint(row[1] for row in columns)
    (observed_at,) = conn_rows(db_path, "SELECT DISTINCT observed_at FROM events WHERE batch <= 2")
    assert observed_at[0] == observed.timestamp()  # to the microsecond
    assert Store.migration_pending(db_path) is None
    assert [event.occurred_at for event in restored.events[:2]] == [later.occurred_at, T0]


def test_forward_migration_keeps_existing_rows(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A later migration runs once on reopen and the rows written before it survive."""
    with Store.open(db_path) as store:
        store.commit_batch(Batch([make_accounting([make_event(1)])]))

    def add_note(conn: sqlite3.Connection) -> None:
        conn.execute("ALTER TABLE events ADD COLUMN note TEXT")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, add_note])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with Store.open(db_path) as store:
        assert store.schema_version == SCHEMA_VERSION + 1
        assert [event.key for event in store.events()] == ["key-1"]
    with closing(raw(db_path)) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(events)")]
    assert "note" in columns


def test_failed_migration_leaves_the_old_version_untouched(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that fails half-way is rolled back entirely and reported as StoreError."""
    Store.open(db_path).close()

    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        conn.execute("SELECT * FROM no_such_table")

    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, broken])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="no_such_table"):
        Store.open(db_path)
    with closing(raw(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "half_done" not in names


def test_newer_schema_is_refused(db_path: Path) -> None:
    """A database written by a newer cco-monitor is refused, not downgraded."""
    Store.open(db_path).close()
    with closing(raw(db_path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="schema version 99, newer"):
        Store.open(db_path)
    with pytest.raises(StoreError, match="schema version 99, newer"):
        Store.open(db_path, readonly=True)


def test_foreign_sqlite_database_is_refused(db_path: Path) -> None:
    """Some other program's SQLite file is never adopted or modified."""
    db_path.parent.mkdir(parents=True)
    with closing(raw(db_path)) as conn:
        conn.execute("CREATE TABLE notes (text)")
    before = db_path.read_bytes()
    with pytest.raises(StoreError, match="not a cco-monitor one"):
        Store.open(db_path)
    assert db_path.read_bytes() == before


# -- commit and load ------------------------------------------------------------------


def test_commit_and_load_round_trip(store: Store, db_path: Path) -> None:
    """Everything a batch holds comes back from load() in a fresh Store."""
    gap = Unattributed("default", T0, 3, 0.75, 0, "gap", T0 - timedelta(minutes=30))
    first = make_accounting([], T0 - timedelta(hours=1), first_contact=True)
    second = make_accounting(
        [make_event(1, T0), make_event(2, T0, event_type="cache_hit", cost=0.0)],
        T0 + timedelta(seconds=5),
        unattributed=gap,
    )
    fired = {
        "kind": "threshold",
        "period": "daily",
        "tier": "opus",
        "threshold": 0.5,
        "message": "daily opus budget 50% used",
        "at": T0.isoformat(),
        "payload": {"spent_usd": 5.0},
    }
    alert = AlertRecord.from_dict(fired)
    state = {"attributed_cost": 0.01, "seen": ["key-1", "key-2"], "pending": {"r": ["m", None]}}
    budgets = {"tracks": [["daily", None, {"fired": [0.5]}]]}
    result = store.commit_batch(
        Batch(
            [first, second],
            {"default": state},
            {"version": 1, "x": [1, 2]},
            [alert],
            {"budgets": budgets},
        )
    )
    assert (result.batch, result.events_inserted, result.unattributed) == (1, 2, 1)

    with Store.open(db_path) as fresh:
        restored = fresh.load()
    assert restored.engine == {"version": 1, "x": [1, 2]}
    assert restored.engine_replay == []
    assert restored.source_states == {"default": state}
    assert restored.events == [*second.events]
    assert restored.first_contact == {"default": first.observed_at}
    assert restored.last_batch == 1
    assert restored.component_states == {"budgets": budgets}
    assert [item.as_dict() for item in restored.alerts] == [fired]
    assert restored.alerts[0].id is not None
    assert [row.remainder for row in fresh_unattributed(db_path)] == [gap]


def fresh_unattributed(path: Path) -> list[store_module.UnattributedRow]:
    with Store.open(path, readonly=True) as reader:
        return reader.unattributed_rows()


def test_recent_events_are_the_newest_accounted_oldest_first(store: Store) -> None:
    """load() returns the last N events in the order they were accounted."""
    for index in range(10):
        store.commit_batch(Batch([make_accounting([make_event(index, T0)])]))
    restored = store.load(recent_events=4)
    assert [event.key for event in restored.events] == ["key-6", "key-7", "key-8", "key-9"]


def test_replayed_event_is_stored_once(store: Store) -> None:
    """An event committed twice is one row and counted once in the aggregates."""
    event = make_event(1)
    first = store.commit_batch(Batch([make_accounting([event])]))
    again = store.commit_batch(Batch([make_accounting([event, make_event(2)])]))
    assert (first.events_inserted, first.events_ignored) == (1, 0)
    assert (again.events_inserted, again.events_ignored) == (1, 1)
    twice = store.commit_batch(Batch([make_accounting([make_event(3)] * 2)]))
    assert (twice.events_inserted, twice.events_ignored) == (1, 1)
    assert len(store.events()) == 3
    (hour,) = store.hourly_rows()
    assert (hour.requests, hour.events) == (3, 3)
    assert hour.cost_usd == pytest.approx(0.03)


def test_failed_batch_writes_nothing(store: Store) -> None:
    """A batch that fails half-way (unserialisable state) leaves no trace: all or nothing."""
    store.commit_batch(Batch([make_accounting([make_event(1)])], {"default": {"n": 1}}))
    bad = Batch([make_accounting([make_event(2)])], {"default": {"n": object()}})
    with pytest.raises(TypeError):
        store.commit_batch(bad)
    assert [event.key for event in store.events()] == ["key-1"]
    assert store.load().source_states == {"default": {"n": 1}}
    assert store.last_batch == 1
    assert store.commit_batch(Batch([make_accounting([make_event(2)])])).batch == 2


def test_engine_state_is_replayed_from_later_batches(store: Store) -> None:
    """Results committed after the last engine snapshot are replayed: the engine is exact."""
    engine = Engine(zone=ZoneInfo("Europe/Paris"))
    batches: list[list[Accounting]] = [
        [make_accounting([make_event(1, T0)], T0, first_contact=False)],
        [make_accounting([make_event(2, T0 + timedelta(minutes=1))], T0 + timedelta(minutes=1))],
        [
            make_accounting(
                [make_event(3, T0 + timedelta(minutes=2), model=None)],
                T0 + timedelta(minutes=2),
                unattributed=Unattributed(
                    "default", T0 + timedelta(minutes=2), 2, 0.5, 0, "gap", T0
                ),
            )
        ],
    ]
    for number, results in enumerate(batches):
        for accounting in results:
            engine.record(accounting)
        snapshot = engine.to_dict() if number == 0 else None
        store.commit_batch(Batch(results, {}, snapshot))
    restored = store.load()
    assert restored.engine_batch == 1
    assert len(restored.engine_replay) == 2
    copy = Engine(zone=ZoneInfo("Europe/Paris"))
    restored.restore_engine(copy)
    assert copy.to_dict() == engine.to_dict()
    assert [event.key for event in copy.recent] == ["key-1", "key-2", "key-3"]


# -- the atomicity property: a crash leaves state and events in agreement --------------


PROXY_SCRIPT = '''
import json
from datetime import UTC, datetime, timedelta

T0 = datetime(2025, 11, 17, 12, 0, tzinfo=UTC)


def new_calls(n):
    """Calls made during interval n: a burst beyond the 20-event window every 10th."""
    return 27 if n % 10 == 0 else (n * 7) % 4


def call_cost(i):
    return round(0.0011 * (i % 13 + 1), 6)


def calls_until(n):
    return sum(new_calls(k) for k in range(1, n + 1))


def snapshot(n):
    """The proxy's analytics snapshot number n (one every 5 s)."""
    calls = calls_until(n)
    first = max(1, calls - 19)
    activity = [
        {
            "timestamp": (T0 + timedelta(microseconds=i * 1_700_001)).isoformat()[:-6]
            + "123+00:00",
            "event_type": "api_call",
            "agent_name": None,
            "model": "claude-sonnet-4-5" if i % 3 else "claude-haiku-4-5",
            "tokens": 100 + i,
            "latency_ms": 900,
            "status": "success",
            "cost": call_cost(i),
        }
        for i in range(first, calls + 1)
    ]
    return json.dumps(
        {
            "project": {
                "name": "p",
                "cost": sum(call_cost(i) for i in range(1, calls + 1)),
                "tokens": 0,
                "calls": calls,
                "last_updated": (T0 + timedelta(seconds=5 * n)).isoformat(),
            },
            "machine": {"cpu": "N/A", "memory": "N/A", "uptime": 5 * n, "process_count": 1},
            "activity": activity,
        }
    )


def observed(n):
    return T0 + timedelta(seconds=5 * n, milliseconds=3)


def quiet(n, k):
    """Snapshot n sent again k intervals later: no traffic since (a quiet proxy)."""
    body = json.loads(snapshot(n))
    body["project"]["last_updated"] = (T0 + timedelta(seconds=5 * (n + k))).isoformat()
    return json.dumps(body)


def number_of(state):
    """Which snapshot a restored reconciler state saw last."""
    at = datetime.fromisoformat(state["last_snapshot_at"])
    return round((at - T0).total_seconds() / 5)
'''


def proxy_module(tmp_path: Path) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(compile(PROXY_SCRIPT, "proxy", "exec"), namespace)
    return namespace


def test_crash_between_batches_restores_consistent_state(tmp_path: Path) -> None:
    """After committing some batches and abandoning the Store, a fresh one restores the
    reconciler to exactly what was stored, and replaying the proxy's window adds nothing."""
    proxy = proxy_module(tmp_path)
    path = tmp_path / "monitor.db"
    prices = PriceTable.default()
    reconciler = Reconciler("default", prices)
    crashed = Store.open(path)
    for n in range(1, 25):
        accounting = reconciler.apply(parse_frame("analytics", proxy["snapshot"](n)), T0)
        crashed.commit_batch(Batch([accounting], {"default": reconciler.snapshot_state()}))
    # The "crashed" process never closes cleanly before the next one opens the file.
    with Store.open(path) as store:
        restored = store.load()
        lines = store.check()
    crashed.close()
    assert not [line for line in lines if line.startswith(CHECK_FAIL)], lines
    again = Reconciler("default", prices, state=restored.source_states["default"])
    assert again.snapshot_state() == reconciler.snapshot_state()
    replay = again.apply(parse_frame("analytics", proxy["snapshot"](24)), T0)
    assert replay.events == ()
    assert replay.unattributed is None


CHILD = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from cco_cost_monitor.pricing import PriceTable
from cco_cost_monitor.reconciler import Reconciler
from cco_cost_monitor.store import Batch, Store
from cco_cost_monitor.wire import parse_frame
exec(Path(sys.argv[2]).read_text())
store = Store.open(sys.argv[1])
restored = store.load()
state = restored.source_states.get("default")
reconciler = Reconciler("default", PriceTable.default(), state=state)
# Resume where the stored state ended, as after a monitor restart with some downtime.
n = 1 if state is None else number_of(state) + int(sys.argv[3])
while True:
    accounting = reconciler.apply(parse_frame("analytics", snapshot(n)), observed(n))
    store.commit_batch(Batch([accounting], {"default": reconciler.snapshot_state()}))
    print(n, flush=True)
    n += 1
"""


@pytest.mark.slow
def test_kill_9_during_commits_never_breaks_the_accounting_invariant(tmp_path: Path) -> None:
    """kill -9 at arbitrary instants of a commit loop, three times over the same file: the
    database stays intact, the stored state always equals the stored events, and in the end
    attributed + unattributed == the proxy's cost growth since first contact."""
    proxy = proxy_module(tmp_path)
    script = tmp_path / "proxy.py"
    script.write_text(PROXY_SCRIPT)
    path = tmp_path / "monitor.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for round_number, skip in enumerate((0, 0, 7)):
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHILD), str(path), str(script), str(skip)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        started = None
        for line in child.stdout:
            started = int(line) if started is None else started
            if int(line) >= started + 40 + 13 * round_number:
                break
        time.sleep(0.003 * round_number)  # land somewhere inside a later commit
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        with Store.open(path) as store:
            lines = store.check()
            restored = store.load(recent_events=100_000)
        assert lines[0] == "ok   integrity_check"
        assert not [line for line in lines if line.startswith(CHECK_FAIL)], lines
        state = restored.source_states["default"]
        assert state["attributed_cost"] == pytest.approx(
            sum(event.cost_usd for event in restored.events)
        )
        assert state["attributed_requests"] == len(restored.events)
    last = proxy["number_of"](state)
    # Unattributed spend is counted once settled: let the proxy be quiet for two snapshots.
    reconciler = Reconciler("default", PriceTable.default(), state=state)
    for k in (1, 2):
        frame = parse_frame("analytics", proxy["quiet"](last, k))
        reconciler.apply(frame, proxy["observed"](last) + timedelta(seconds=5 * k))
    state = reconciler.snapshot_state()
    growth = (
        json.loads(proxy["snapshot"](last))["project"]["cost"]
        - json.loads(proxy["snapshot"](1))["project"]["cost"]
    )
    assert state["attributed_cost"] + state["unattributed_cost"] == pytest.approx(growth)
    calls = proxy["calls_until"](last) - proxy["calls_until"](1)
    assert state["attributed_requests"] + state["unattributed_requests"] == calls
    assert state["unattributed_requests"] > 0  # the bursts and the downtime were seen as gaps
    keys = [(event.source, event.key) for event in restored.events]
    assert len(keys) == len(set(keys))


# -- bad storage ----------------------------------------------------------------------


def test_corrupt_file_raises_and_is_left_untouched(db_path: Path) -> None:
    """Random bytes are reported as corrupt; the file is never reset or recreated."""
    db_path.parent.mkdir(parents=True)
    garbage = os.urandom(8192)
    db_path.write_bytes(garbage)
    with pytest.raises(StoreError, match=r"corrupt or not a SQLite database.*move it aside"):
        Store.open(db_path)
    with pytest.raises(StoreError, match="corrupt or not a SQLite database"):
        Store.open(db_path, readonly=True)
    assert db_path.read_bytes() == garbage
    assert sorted(p.name for p in db_path.parent.iterdir()) == ["monitor.db"]


def test_damaged_pages_are_reported_by_check(db_path: Path) -> None:
    """Overwritten index pages are reported by `db check`: as a failed line or a clear error."""
    with Store.open(db_path) as store:
        for index in range(300):
            store.commit_batch(Batch([make_accounting([make_event(index)])]))
    with closing(raw(db_path)) as conn:
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'events_batch'"
        ).fetchone()
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    with db_path.open("r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(b"\xff" * page_size)
    with Store.open(db_path, readonly=True) as store:
        try:
            lines = store.check()
        except StoreError as exc:
            assert "corrupt" in str(exc)  # noqa: PT017
            return
    assert any(line.startswith(f"{CHECK_FAIL} integrity") for line in lines), lines


def test_locked_database_raises_clearly(db_path: Path) -> None:
    """Another connection holding an exclusive lock makes open() fail with 'locked'."""
    Store.open(db_path).close()
    with closing(raw(db_path)) as holder:
        holder.execute("PRAGMA locking_mode = EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("INSERT INTO meta (key, value) VALUES ('x', 'y')")
        started = time.monotonic()
        with pytest.raises(StoreError, match="is locked by another process"):
            Store.open(db_path, busy_timeout=0.2)
        with pytest.raises(StoreError, match="is locked by another process"):
            Store.open(db_path, readonly=True, busy_timeout=0.2)
        assert time.monotonic() - started < 3
        holder.execute("ROLLBACK")


def test_writer_lock_held_elsewhere_blocks_open(db_path: Path) -> None:
    """A second writer holding the write lock makes open() fail instead of waiting forever."""
    Store.open(db_path).close()
    with closing(raw(db_path)) as holder:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="locked"):
            Store.open(db_path, busy_timeout=0.1)
        holder.execute("ROLLBACK")


def test_readonly_reader_works_while_the_daemon_writes(store: Store, db_path: Path) -> None:
    """A report's read-only Store sees committed rows while a write transaction is open."""
    store.commit_batch(Batch([make_accounting([make_event(1)])]))
    with closing(raw(db_path)) as other_writer:
        other_writer.execute("BEGIN IMMEDIATE")
        other_writer.execute("DELETE FROM events")
        with Store.open(db_path, readonly=True, busy_timeout=0.2) as reader:
            assert [event.key for event in reader.events()] == ["key-1"]
            with pytest.raises(StoreError, match="read-only"):
                reader.commit_batch(Batch())
        other_writer.execute("ROLLBACK")


def test_readonly_open_of_missing_file_says_so(tmp_path: Path) -> None:
    """report against a state dir without a database gets a clear message, no file created."""
    with pytest.raises(StoreError, match="no database at"):
        Store.open(tmp_path / "monitor.db", readonly=True)
    assert not (tmp_path / "monitor.db").exists()


def test_unusable_paths_raise_store_error(tmp_path: Path) -> None:
    """A path under a regular file, or a directory in the file's place, is a StoreError."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the directory"):
        Store.open(blocker / "monitor.db")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="is a directory"):
        Store.open(tmp_path / "dir.db")


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_directory_nobody_can_write_raises_store_error() -> None:
    """Even root cannot create files in /proc: the error names the database and the cause."""
    with pytest.raises(StoreError, match=r"cannot create database /proc/monitor\.db: "):
        Store.open("/proc/monitor.db")
    with pytest.raises(StoreError, match="cannot create the directory of database"):
        Store.open("/proc/cco-monitor-test/monitor.db")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_directory_or_file_raises_store_error(tmp_path: Path) -> None:
    """A read-only state dir or database file is reported, not silently opened read-only."""
    locked_dir = tmp_path / "ro"
    locked_dir.mkdir()
    locked_dir.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="cannot create database"):
            Store.open(locked_dir / "monitor.db")
    finally:
        locked_dir.chmod(0o700)
    path = tmp_path / "monitor.db"
    Store.open(path).close()
    path.chmod(0o400)
    try:
        with pytest.raises(StoreError, match="cannot be opened for writing"):
            Store.open(path)
    finally:
        path.chmod(0o600)


# -- retention ------------------------------------------------------------------------


def test_pruning_keeps_a_long_run_bounded(db_path: Path) -> None:
    """400 simulated days with daily pruning: rows stay within retention, the file stops
    growing, and check() still balances state against rows through the retired totals."""
    retention = Retention(events_days=30, hourly_days=10, daily_days=60, alerts_days=60)
    sizes: dict[int, int] = {}
    state = totals_state([])
    with Store.open(db_path, retention=retention) as store:
        for day in range(400):
            start = T0 + timedelta(days=day)
            results = [
                make_accounting(
                    [
                        make_event(day * 100 + i, start + timedelta(hours=i))
                        for i in range(index * 12, index * 12 + 12, 3)
                    ],
                    start + timedelta(hours=index * 12 + 12),
                    unattributed=Unattributed(
                        "default", start + timedelta(hours=index * 12 + 12), 1, 0.02, 0, "gap"
                    ),
                )
                for index in range(2)
            ]
            day_totals = totals_state(results)
            for name in ("attributed_cost", "attributed_requests"):
                state[name] += day_totals[name]
            for name in ("unattributed_cost", "unattributed_requests"):
                state[name] += day_totals[name]
            alert = AlertRecord("budget", "x", start, "today", 0.5)
            store.commit_batch(Batch(results, {"default": dict(state)}, {"day": day}, [alert]))
            if day % 5 == 4:  # the writer prunes hourly; every 5th day keeps the test fast
                store.prune(start + timedelta(days=1))
            if day in (154, 399):
                sizes[day] = db_path.stat().st_size + Path(f"{db_path}-wal").stat().st_size
        now = T0 + timedelta(days=400)
        oldest_event = min(event.occurred_at for event in store.events(limit=None))
        assert now - oldest_event <= timedelta(days=35)
        assert len(store.events(limit=None)) <= 35 * 8
        assert len(store.hourly_rows()) <= 15 * 8 * 2
        assert len(store.daily_rows()) <= 65 * 2
        assert len(store.alerts(limit=10_000)) <= 65
        lines = store.check()
    assert not [line for line in lines if line.startswith(CHECK_FAIL)], lines
    assert sizes[399] <= sizes[154] * 1.25, sizes


def test_prune_keeps_rows_not_yet_covered_by_the_engine_state(store: Store) -> None:
    """Old rows committed after the last engine snapshot survive pruning (they are replayed)."""
    old = T0 - timedelta(days=200)
    store.commit_batch(Batch([make_accounting([make_event(1, old)], old)], {}, {"e": 1}))
    store.commit_batch(Batch([make_accounting([make_event(2, old)], old)], {}, None))
    result = store.prune(T0)
    assert result.events == 1
    assert [event.key for event in store.events()] == ["key-2"]
    assert len(store.load().engine_replay) == 1


# -- queries, export, check -----------------------------------------------------------


def test_aggregates_use_local_buckets_and_spread_unattributed(db_path: Path) -> None:
    """hourly/daily rows are local-time buckets with labels; unattributed cost is spread
    over [since, occurred_at] like the engine does, its requests at the end."""
    zone = ZoneInfo("America/New_York")
    at = datetime(2025, 11, 18, 4, 30, tzinfo=UTC)  # 23:30 local on the 17th
    remainder = Unattributed("default", at, 4, 1.0, 0, "gap", at - timedelta(hours=1))
    with Store.open(db_path, zone=zone) as store:
        store.commit_batch(
            Batch([make_accounting([make_event(1, at)], at, unattributed=remainder)])
        )
        daily = store.daily_rows()
        hourly = store.hourly_rows(since=at - timedelta(minutes=30))
    assert {(row.label, row.tier) for row in daily} == {
        ("2025-11-17", "sonnet"),
        ("2025-11-17", "unattributed"),
    }
    spread = [row for row in store_module_rows(hourly) if row[1] == "unattributed"]
    assert spread == [("2025-11-17T23:00-05:00", "unattributed", 0.5, 4)]
    all_hours = [row for row in hourly if row.tier == "unattributed"]
    assert all_hours[0].start.tzinfo == zone


def store_module_rows(rows: list[store_module.AggregateRow]) -> list[tuple[str, str, float, int]]:
    return [(row.label, row.tier, round(row.cost_usd, 9), row.requests) for row in rows]


def test_events_query_filters_by_time_and_source(store: Store) -> None:
    """events(since, until, limit) returns the range, newest first by default."""
    events = [make_event(i, T0 + timedelta(minutes=i)) for i in range(10)]
    events.append(make_event(99, T0 + timedelta(minutes=5), source="other"))
    store.commit_batch(
        Batch(
            [
                make_accounting(events[:10]),
                make_accounting(events[10:], source="other"),
            ]
        )
    )
    chosen = store.events(T0 + timedelta(minutes=2), T0 + timedelta(minutes=6), limit=3)
    assert [event.key for event in chosen] == [
        "key-99",
        "key-5",
        "key-4",
    ]  # ties: last stored first
    only = store.events(source="default", newest_first=False, limit=2)
    assert [event.key for event in only] == ["key-0", "key-1"]


def test_export_jsonl_and_csv_parse_back(store: Store) -> None:
    """db export writes events that load back (jsonl; money to 10 decimals, like the API)
    and a CSV with a header."""
    events = [
        make_event(i, T0 + timedelta(minutes=i), model=None if i == 2 else "m") for i in range(4)
    ]
    store.commit_batch(Batch([make_accounting(events)]))
    out = io.StringIO()
    assert store.export("events", "jsonl", out) == 4
    parsed = [AccountedEvent.from_dict(json.loads(line)) for line in out.getvalue().splitlines()]
    assert parsed == [AccountedEvent.from_dict(tidy(event.as_dict())) for event in events]
    assert parsed[0].calculated_cost_usd == 0.011  # not 0.011000000000000001

    out = io.StringIO()
    count = store.export("events", "csv", out, since=T0 + timedelta(minutes=1))
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert count == len(rows) == 3
    assert rows[1]["model"] == ""
    assert rows[0]["priced"] == "true"
    assert float(rows[0]["cost_usd"]) == 0.01

    kinds: tuple[ExportKind, ...] = ("daily", "hourly", "unattributed")
    for kind in kinds:
        out = io.StringIO()
        store.export(kind, "csv", out)
        assert out.getvalue().splitlines()[0].startswith(("start,", "source,"))
    out = io.StringIO()
    assert store.export("daily", "jsonl", out) == 2  # model "m" and no model
    assert sum(json.loads(line)["requests"] for line in out.getvalue().splitlines()) == 4


def test_check_reports_state_that_disagrees_with_rows(store: Store) -> None:
    """db check flags a source whose stored state totals differ from its stored events."""
    result = make_accounting([make_event(1)])
    store.commit_batch(Batch([result], {"default": totals_state([result])}))
    assert not [line for line in store.check() if line.startswith(CHECK_FAIL)]
    store.commit_batch(Batch([], {"default": {**totals_state([result]), "attributed_cost": 9}}))
    failed = [line for line in store.check() if line.startswith(CHECK_FAIL)]
    assert len(failed) == 1
    assert "attributed cost 9.000000 in state != 0.010000 stored" in failed[0]


@given(count=st.integers(0, 700), most=st.sampled_from([1, 2, 8, 256]))
@settings(max_examples=60, deadline=None)
def test_multi_row_inserts_write_every_row_once_in_order(count: int, most: int) -> None:
    """Rows go in by statements of up to ``most`` rows: each row once, in the given order."""
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("CREATE TABLE t (a INTEGER, b TEXT)")
        rows = [(index, f"row-{index}") for index in range(count)]
        flat = [value for row in rows for value in row]
        store_module._insert_rows(conn, "INSERT INTO t (a, b) VALUES ", 2, flat, most)
        assert conn.execute("SELECT a, b FROM t ORDER BY rowid").fetchall() == rows


@pytest.mark.parametrize(
    ("variable_limit", "arity", "rows"),
    [(999, 22, 32), (32766, 22, 256), (32766, 10, 256), (999, 10, 64)],
)
def test_rows_per_insert_stay_within_the_parameter_limit(
    variable_limit: int, arity: int, rows: int
) -> None:
    """Statements bind at most SQLite's parameter limit, in power-of-two row counts."""
    assert store_module._rows_per_insert(variable_limit, arity) == rows


def test_multi_row_upserts_add_rows_that_repeat_a_key() -> None:
    """An upsert tail applies per row: a key repeated in one statement adds up."""
    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, n INTEGER)")
        rows = [(index % 3, 1) for index in range(10)]
        tail = " ON CONFLICT (k) DO UPDATE SET n = n + excluded.n"
        flat = [value for row in rows for value in row]
        store_module._insert_rows(conn, "INSERT INTO t (k, n) VALUES ", 2, flat, 4, tail)
        assert conn.execute("SELECT k, n FROM t ORDER BY k").fetchall() == [(0, 4), (1, 3), (2, 3)]


@given(
    moment=st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(2240, 1, 1),
        # Event times are parsed with fixed offsets (RFC 3339) or taken in UTC.
        timezones=st.sampled_from(
            [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
        ),
    )
)
def test_event_times_come_back_to_the_microsecond(moment: datetime) -> None:
    """Events keep their time as epoch seconds: read back in UTC, it is the same instant."""
    stored = moment.timestamp()
    restored = datetime.fromtimestamp(stored, UTC)
    assert restored == moment
    assert restored.microsecond == moment.astimezone(UTC).microsecond


@given(
    zone=st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]),
    batches=st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 40),  # event index: repeats are events stored before
                st.integers(-3 * 86400, 3 * 86400),  # seconds from the observation
                st.integers(0, 999_999),  # microseconds
                st.sampled_from(["a", "b"]),
                st.sampled_from([None, "claude-sonnet-4-5", "gpt-4o"]),
                st.sampled_from(["api_call", "cache_hit", "model_override"]),
            ),
            min_size=1,
            max_size=8,
        ),
        min_size=1,
        max_size=5,
    ),
    observed_days=st.integers(-30_000, 30_000),
)
@settings(max_examples=40, deadline=None)
def test_hourly_and_daily_rows_sum_each_stored_event_once_in_its_local_bucket(
    zone: str,
    batches: list[list[tuple[int, int, int, str, str | None, str]]],
    observed_days: int,
) -> None:
    """SQLite's per-minute sums of a batch's new rows give the same hourly/daily rows as
    bucketing every stored event (its time capped at observed + 5 min) in Python."""
    local = ZoneInfo(zone)
    observed = T0 + timedelta(days=observed_days)
    expected: dict[tuple[str, float, str, str, str], list[float]] = {}
    stored: set[tuple[str, str]] = set()
    with (
        tempfile.TemporaryDirectory() as directory,
        Store.open(Path(directory) / "m.db", zone=local) as store,
    ):
        for batch in batches:
            events = []
            for index, offset, micros, source, model, event_type in batch:
                at = observed + timedelta(seconds=offset, microseconds=micros)
                event = make_event(index, at, source=source, model=model, event_type=event_type)
                event.key = f"key-{index}-{offset}-{micros}"
                events.append(event)
            store.commit_batch(Batch([make_accounting(events, observed, source=events[0].source)]))
            for event in events:
                if (event.source, event.key) in stored:
                    continue
                stored.add((event.source, event.key))
                moment = min(event.occurred_at, observed + timedelta(minutes=5))
                for kind in ("hour", "day"):
                    start = bucket_start(moment, kind, local)
                    key = (kind, start, event.source, event.tier, event.model or "")
                    sums = expected.setdefault(key, [0.0, 0, 0, 0, 0])
                    sums[0] += event.cost_usd
                    sums[1] += event.requests
                    sums[2] += event.tokens or 0
                    sums[3] += event.cache_hits
                    sums[4] += 1
        rows = [("hour", row) for row in store.hourly_rows()]
        rows += [("day", row) for row in store.daily_rows()]
    actual = {
        (kind, row.start.timestamp(), row.source, row.tier, row.model): [
            row.cost_usd,
            row.requests,
            row.tokens,
            row.cache_hits,
            row.events,
        ]
        for kind, row in rows
    }
    assert actual.keys() == expected.keys()
    for key, sums in expected.items():
        assert actual[key][0] == pytest.approx(sums[0], abs=1e-9)
        assert actual[key][1:] == sums[1:]


def test_an_event_before_1970_lands_in_its_own_hour(store: Store) -> None:
    """Minutes are floored, not truncated towards zero, for negative epoch times too."""
    at = datetime(1969, 12, 31, 23, 59, 30, 500_000, tzinfo=UTC)
    store.commit_batch(Batch([make_accounting([make_event(1, at)], at)]))
    (hour,) = store.hourly_rows()
    assert hour.start == datetime(1969, 12, 31, 23, 0, tzinfo=UTC)


def test_events_without_a_time_of_their_own_are_stored_once(store: Store) -> None:
    """A gateway request (stamped when seen) accounted twice, seconds apart, is one row."""
    first = make_event(1, T0)
    again = make_event(1, T0 + timedelta(seconds=7))
    store.commit_batch(Batch([make_accounting([first], T0)]))
    result = store.commit_batch(Batch([make_accounting([again], T0 + timedelta(seconds=7))]))
    assert (result.events_inserted, result.events_ignored) == (0, 1)
    (hour,) = store.hourly_rows()
    assert (hour.requests, hour.events) == (1, 1)


def test_a_far_future_row_left_by_an_older_version_does_not_stop_a_restore(
    store: Store, db_path: Path
) -> None:
    """Rows outside datetime's range (stored before times were range-checked) still load."""
    store.commit_batch(Batch([make_accounting([make_event(1)])]))
    with closing(raw(db_path)) as conn:
        conn.execute("UPDATE events SET occurred_at = 253402300800.5")  # year 10000
    (event,) = store.load().events
    assert event.occurred_at == datetime.max.replace(tzinfo=UTC)
    assert len(store.events()) == 1


def test_aggregated_costs_keep_every_digit(store: Store) -> None:
    """Per-minute sums come back from SQLite through JSON without losing the last digit."""
    cost = 0.1 + 0.2  # 0.30000000000000004: 15 significant digits would print 0.3
    store.commit_batch(Batch([make_accounting([make_event(1, cost=cost)])]))
    (hour,) = store.hourly_rows()
    (day,) = store.daily_rows()
    assert hour.cost_usd == cost
    assert day.cost_usd == cost


def test_identical_events_are_two_rows_and_check_agrees(store: Store, db_path: Path) -> None:
    """Two byte-identical proxy events (twins) are two stored requests, and db check agrees."""
    reconciler = Reconciler("default", PriceTable.default())
    twin = {
        "timestamp": "2025-11-17T22:00:01.000001+00:00",
        "event_type": "api_call",
        "agent_name": None,
        "model": "claude-sonnet-4",
        "tokens": 150,
        "latency_ms": 0,
        "status": "success",
        "cost": 0.00105,
    }

    def snapshot(calls: int, activity: list[dict[str, Any]], second: int) -> Accounting:
        body = {
            "project": {
                "cost": 0.00105 * calls,
                "calls": calls,
                "last_updated": f"2025-11-17T22:00:{second:02d}+00:00",
            },
            "machine": {"uptime": 100 + second},
            "activity": activity,
        }
        frame = parse_frame("analytics", json.dumps(body))
        return reconciler.apply(frame, T0 + timedelta(seconds=second))

    results = [
        snapshot(0, [], 0),
        snapshot(2, [twin, twin], 5),
        snapshot(2, [twin, twin], 10),
    ]
    store.commit_batch(Batch(results, {"default": reconciler.snapshot_state()}))
    assert [event.requests for event in store.events()] == [1, 1]
    assert not [line for line in store.check() if line.startswith(CHECK_FAIL)]
