"""``cco-monitor db``: check, export and prune the database, with or without a daemon.

``check`` and ``export`` open ``monitor.db`` read-only (safe while the daemon writes, WAL
readers do not block it). ``prune`` applies the retention policy now instead of waiting
for the daemon's hourly pass. A corrupt, locked or missing database is reported with a
clear message and exit status 1; nothing here ever resets or recreates it.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from cco_cost_monitor.cli import _load, location_options
from cco_cost_monitor.errors import EXIT_FAILURE, StoreError
from cco_cost_monitor.moments import FORMS, parse_moment


def _open(settings: Any, *, readonly: bool) -> Any:
    from cco_cost_monitor.store import Store  # noqa: PLC0415

    path: Path = settings.db_path
    if not path.exists():
        click.echo(f"cco-monitor: no database at {path} (has the daemon run yet?)", err=True)
        sys.exit(EXIT_FAILURE)
    try:
        return Store.open_settings(settings, readonly=readonly)
    except StoreError as exc:
        click.echo(f"cco-monitor: {exc}", err=True)
        sys.exit(EXIT_FAILURE)


@click.group("db")
def db_group() -> None:
    """Check, export or prune the monitor's database (monitor.db in the state dir)."""


@db_group.command("check")
@location_options
def check(**options: Any) -> None:
    """Integrity, schema version, and that stored events balance the accounting state."""
    from cco_cost_monitor.store import CHECK_FAIL  # noqa: PLC0415

    loaded, _ = _load(options)
    store = _open(loaded.settings, readonly=True)
    try:
        lines = store.check()
    except StoreError as exc:
        click.echo(f"{CHECK_FAIL} {exc}")
        sys.exit(EXIT_FAILURE)
    finally:
        store.close()
    for line in lines:
        click.echo(line)
    sys.exit(EXIT_FAILURE if any(line.startswith(CHECK_FAIL) for line in lines) else 0)


@db_group.command("export")
@location_options
@click.option(
    "--kind",
    type=click.Choice(["events", "unattributed", "hourly", "daily"]),
    default="events",
    show_default=True,
)
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True
)
@click.option("--since", default=None, help=f"Start: {FORMS}.")
@click.option("--until", default=None, help="End (exclusive), same forms; default now.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write here instead of standard output.",
)
def export(
    kind: str, fmt: str, since: str | None, until: str | None, output: Path | None, **options: Any
) -> None:
    """Write stored rows as JSON lines or CSV."""
    loaded, _ = _load(options)
    settings = loaded.settings
    now = datetime.now(UTC)
    try:
        start = parse_moment(since, now, settings.zone) if since else None
        end = parse_moment(until, now, settings.zone) if until else None
    except ValueError:
        raise click.BadParameter(f"use {FORMS}", param_hint="--since/--until") from None
    store = _open(settings, readonly=True)
    try:
        if output is None:
            count = store.export(kind, fmt, sys.stdout, start, end)
        else:
            with output.open("w", encoding="utf-8", newline="") as handle:
                count = store.export(kind, fmt, handle, start, end)
    except StoreError as exc:
        click.echo(f"cco-monitor: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    finally:
        store.close()
    click.echo(f"{count} {kind} rows exported", err=True)


@db_group.command("prune")
@location_options
def prune(**options: Any) -> None:
    """Apply the retention policy now (events, hourly and daily aggregates, alerts)."""
    from cco_cost_monitor.store import Retention  # noqa: PLC0415

    loaded, _ = _load(options)
    store = _open(loaded.settings, readonly=False)
    try:
        result = store.prune(datetime.now(UTC))
    except StoreError as exc:
        click.echo(f"cco-monitor: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    finally:
        store.close()
    click.echo(prune_sentence(result, Retention.from_settings(loaded.settings)))


def _plural(number: int, one: str, many: str | None = None) -> str:
    return f"{number:,} {one if number == 1 else (many or one + 's')}"


def prune_sentence(result: Any, retention: Any) -> str:
    """What ``db prune`` did, as a sentence (``result`` a ``PruneResult``)."""
    keep = (
        f"kept: events {retention.events_days} d, hourly aggregates {retention.hourly_days} d, "
        f"daily aggregates {retention.daily_days} d, alerts {retention.alerts_days} d"
    )
    counts = (
        (result.events, "event"),
        (result.unattributed, "unattributed remainder"),
        (result.hourly, "hourly aggregate row"),
        (result.daily, "daily aggregate row"),
        (result.alerts, "alert"),
    )
    parts = [_plural(number, name) for number, name in counts if number]
    if not parts:
        return f"Nothing was older than the retention ({keep}); {result.duration_ms:.0f} ms."
    listed = parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"
    return (
        f"Deleted {listed} older than the retention ({keep}); "
        f"{_plural(result.freed_pages, 'database page')} given back, "
        f"in {result.duration_ms:.0f} ms."
    )
