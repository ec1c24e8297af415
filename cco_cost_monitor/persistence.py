"""Wiring of the SQLite store into a running service: restore on start, flush on stop.

On start the database is opened (a corrupt, locked or unwritable one stops the start
with :class:`~cco_cost_monitor.errors.StoreError`, never a silent reset), the engine's
counters, buckets and recent events and every source's reconciler state are restored,
and a :class:`~cco_cost_monitor.writer.StoreWriter` is attached so that each accounting
result is committed together with the state that produced it. On stop everything
submitted is flushed before the database is closed.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from cco_cost_monitor import sdnotify
from cco_cost_monitor.budgets import Alert
from cco_cost_monitor.errors import StoreError
from cco_cost_monitor.logs import get_logger
from cco_cost_monitor.store import SCHEMA_VERSION, Store
from cco_cost_monitor.writer import StoreWriter

if TYPE_CHECKING:
    from cco_cost_monitor.server import Service

log = get_logger("cco_cost_monitor.persistence")

# Time asked of the service manager for a migration: generous against the ~5 us per event
# row measured here (slow disks, busy machines).
MIGRATION_FLOOR_SECONDS = 30.0
MIGRATION_SECONDS_PER_ROW = 50e-6


async def attach(service: Service) -> None:
    """Open the database, restore what was counted, and start saving what comes."""
    settings = service.settings
    pending = await anyio.to_thread.run_sync(Store.migration_pending, settings.db_path)
    if pending is not None:
        version, rows = pending
        seconds = MIGRATION_FLOOR_SECONDS + rows * MIGRATION_SECONDS_PER_ROW
        log.info(
            "migrating the database before serving",
            from_schema=version,
            to_schema=SCHEMA_VERSION,
            events=rows,
            allowed_seconds=round(seconds),
        )
        # A large history takes longer than systemd's start timeout: ask for more.
        sdnotify.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")
    store = await anyio.to_thread.run_sync(lambda: Store.open_settings(settings))
    try:
        restored = await anyio.to_thread.run_sync(
            lambda: store.load(recent_events=settings.recent_events)
        )
    except BaseException:
        store.close()
        raise
    restored.restore_engine(service.engine)
    for spec in settings.sources:
        state = restored.source_states.get(spec.name)
        if state is not None:
            service.restore_source(spec, state)
    from cco_cost_monitor.server import BUDGET_STATE  # noqa: PLC0415  (server imports us)

    tracker_state = restored.component_states.get(BUDGET_STATE)
    if tracker_state is not None:
        service.tracker.load_dict(tracker_state)
    # store.load gives the alerts oldest first, the order restore_history expects.
    service.dispatcher.restore_history(
        [Alert.from_dict(record.as_dict()) for record in restored.alerts]
    )
    service.store = store
    service.writer = StoreWriter(store)
    log.info(
        "state restored",
        events=service.engine.events_processed(),
        total_cost_usd=service.engine.total_cost(),
        sources=sorted(restored.source_states),
    )


async def detach(service: Service) -> None:
    """Flush pending writes and close the database."""
    writer, store = service.writer, service.store
    try:
        if writer is not None and not writer.closed:
            await writer.aclose()
    except StoreError as exc:
        # The unsaved tail is not lost: the proxy's totals account for it at the next start.
        log.error("could not save the last results before exiting", error=str(exc))
    finally:
        if store is not None:
            store.close()


def writer_status(writer: StoreWriter | None) -> dict[str, Any] | None:
    """The writer's counters as plain data for ``/health``."""
    if writer is None:
        return None
    stats = asdict(writer.stats())
    at = stats.get("last_commit_at")
    stats["last_commit_at"] = at.isoformat() if at is not None else None
    return stats
