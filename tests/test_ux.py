"""Issue 18's rough edges, against the real daemon and the real simulator on loopback."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cco_cost_monitor.store import AlertRecord, Batch, Store
from tests.conftest import Monitor


def test_alert_history_is_newest_first_after_a_restart(
    make_monitor: Callable[..., Monitor], tmp_path: Path
) -> None:
    """Alerts saved by an earlier run come back newest first; ?limit=2 keeps the newest two."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    fired = [
        AlertRecord(
            kind="threshold",
            message=f"daily budget at {share:.0%}",
            at=start + timedelta(minutes=index),
            period="daily",
            threshold=share,
        )
        for index, share in enumerate((0.5, 0.75, 0.9))
    ]
    with Store.open(state / "monitor.db") as store:
        store.commit_batch(Batch(alerts=fired))
    monitor = make_monitor(["http://127.0.0.1:9/api/stream"], state_dir=state)
    alerts = monitor.get("/api/alerts")["alerts"]
    assert [alert["threshold"] for alert in alerts] == [0.9, 0.75, 0.5]
    newest = monitor.get("/api/alerts?limit=2")["alerts"]
    assert [alert["threshold"] for alert in newest] == [0.9, 0.75]
