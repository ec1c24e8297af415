"""Wiring of the SQLite store into a running service: restore on start, flush on stop.

On start the database is opened (a corrupt, locked or unwritable one stops the start
with :class:`~cco_cost_monitor.errors.StoreError`, never a silent reset), the engine's
counters, buckets and recent events and every source's reconciler state are restored,
and a :class:`~cco_cost_monitor.writer.StoreWriter` is attached so that each accounting
result is committed together with the state that produced it. On stop everything
submitted is flushed before the database is closed.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from cco_cost_monitor import sdnotify
from cco_cost_monitor.budgets import BUDGET_STATE, Alert
from cco_cost_monitor.errors import StoreError
from cco_cost_monitor.logs import get_logger
from cco_cost_monitor.reconciler import SourceState
from cco_cost_monitor.service_parts import ServiceParts
from cco_cost_monitor.storage import Ledger
from cco_cost_monitor.store import SCHEMA_VERSION, Store, finish_rescue
from cco_cost_monitor.writer import StoreWriter

log = get_logger("cco_cost_monitor.persistence")

# Time asked of the service manager for a migration: generous against the ~5 us per event
# row measured here (slow disks, busy machines).
MIGRATION_FLOOR_SECONDS = 30.0
MIGRATION_SECONDS_PER_ROW = 50e-6
# Larger than any sum the wire's bounds let through in a lifetime: a saved number past it
# (or not finite) was written by a version without those bounds.
SANE_SAVED_NUMBER = 1e15


async def attach(service: ServiceParts) -> None:
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
    store = await anyio.to_thread.run_sync(lambda: Store.open_settings(settings, exclusive=True))
    try:
        restored = await anyio.to_thread.run_sync(
            lambda: store.load(recent_events=settings.recent_events)
        )
    except BaseException:
        store.close()
        raise
    repaired = restored.restore_engine(service.engine)
    for spec in settings.sources:
        state = restored.source_states.get(spec.name)
        if state is not None:
            state, fixed = _repair_source_state(state)
            repaired += fixed
            service.restore_source(spec, state)
    if repaired:
        # Saved by a version without the wire's bounds: those values cannot be trusted,
        # and refusing to start would lose everything else that was counted.
        log.error(
            "saved state held values outside the bounds (an absurd cost or count): "
            "left out; the totals exclude them",
            values=repaired,
        )

    tracker_state = restored.component_states.get(BUDGET_STATE)
    if tracker_state is not None:
        service.tracker.load_dict(tracker_state)
    # store.load gives the alerts oldest first, the order restore_history expects.
    service.dispatcher.restore_history(
        [Alert.from_dict(record.as_dict()) for record in restored.alerts]
    )
    service.store = store
    service.writer = StoreWriter(store, prune_now=service.prune_clock.now)
    log.info(
        "state restored",
        events=service.engine.events_processed(),
        total_cost_usd=service.engine.total_cost(),
        sources=sorted(restored.source_states),
    )


def _repair_source_state(data: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A reconciler's saved state with unusable numbers set back to their defaults.

    ``null`` where a number belongs (an earlier version summed 1e308s to ``inf``, which
    JSON saves as ``null``), or a number not finite or past 1e15. Returns how many were.
    """
    repaired = dict(data)
    count = 0
    for name, spec in SourceState.__dataclass_fields__.items():
        default = spec.default
        if name not in data or isinstance(default, bool):
            continue
        if not (default is None or isinstance(default, (int, float))):
            continue
        value = data[name]
        if value is None:
            if default is None:
                continue  # "not known yet" is a legitimate saved value
        elif (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (math.isfinite(value) and abs(value) <= SANE_SAVED_NUMBER)
        ):
            continue
        repaired[name] = default
        count += 1
    # The analytics strategy's own number: a huge saved uptime (2**63 - 1 passed the old
    # bounds) would read every later snapshot as a proxy restart. None is "not known".
    uptime = data.get("last_uptime")
    if isinstance(uptime, (int, float)) and not (
        math.isfinite(uptime) and abs(uptime) <= SANE_SAVED_NUMBER
    ):
        repaired["last_uptime"] = None
        count += 1
    return repaired, count


async def detach(service: ServiceParts) -> None:
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
            rescued = _rescue(store)
            store.close()
            if rescued is not None:
                _finish_rescue(store, rescued)


def _rescue(store: Ledger) -> Path | None:
    """A copy of the database whose file was deleted or replaced while we ran, if it was."""
    try:
        copy = store.rescue()
    except StoreError as exc:
        log.error("the deleted database could not be saved", error=str(exc))
        return None
    if copy is not None:
        log.warning("saved the database that was deleted or replaced while running", copy=str(copy))
    return copy


def _finish_rescue(store: Ledger, copy: Path) -> None:
    try:
        restored = finish_rescue(store.path, copy)
    except OSError as exc:
        log.error("could not move the saved database into place", copy=str(copy), error=str(exc))
        return
    if restored:
        log.warning(
            "the saved database is back in place: the next start resumes exactly",
            path=str(store.path),
        )
    else:
        log.warning(
            "another file now holds the database's name: the saved copy was left beside it",
            copy=str(copy),
        )


def writer_status(writer: StoreWriter | None) -> dict[str, Any] | None:
    """The writer's counters as plain data for ``/health``."""
    if writer is None:
        return None
    stats = asdict(writer.stats())
    at = stats.get("last_commit_at")
    stats["last_commit_at"] = at.isoformat() if at is not None else None
    return stats
