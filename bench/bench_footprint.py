"""Memory and disk footprint of the daemon after 100k and 1M accounted events.

In one run:
  1. the import floor: VmRSS of a bare interpreter, and of one that imports exactly what
     the daemon imports (with its lean measures) and does nothing else;
  2. the daemon (temp state dir, SQLite writer on) consuming ``simulate --flood`` until
     ``/health`` ``events_processed`` passes each mark: VmRSS from /proc/PID/status at each
     mark (the flood still running), monitor.db + monitor.db-wal sizes;
  3. the flood stopped: VmRSS once the daemon has settled (it gives freed heap back within
     ~30 s of activity).
Time is capped (``--cap`` seconds for the flood); if the 1M mark is not reached the rate
and an extrapolation are printed. The target is 60 MB = 57.2 MiB.

Usage: python bench/bench_footprint.py [--cap 150] [--marks 100000,1000000]
"""

from __future__ import annotations

import argparse
import subprocess
import time

from common import (
    FAST_ENV,
    PYTHON,
    Monitor,
    Simulator,
    banner,
    db_bytes,
    rss_mb,
    temp_dir,
    verdict,
)

TARGET_RSS_MIB = 60e6 / 2**20
TARGET_GROWTH = 0.05
SETTLE_SECONDS = 40.0

_MEASURE = "print(int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024)"
_DAEMON_IMPORTS = (
    "from cco_cost_monitor import lean; lean.skip_unused_optional_imports(); "
    "import cco_cost_monitor.cli, cco_cost_monitor.daemon, cco_cost_monitor.server, "
    "cco_cost_monitor.persistence, cco_cost_monitor.extensions; "
    "lean.freeze_startup_objects(); lean.release_free_memory(); "
)


def interpreter_rss(code: str) -> float:
    """VmRSS (MiB) of a fresh interpreter after running ``code``."""
    output = subprocess.run(
        [PYTHON, "-c", code + _MEASURE], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return float(output)


def settled_rss(pid: int, seconds: float) -> float:
    """The lowest VmRSS seen while polling for ``seconds`` (the flood stopped)."""
    lowest = rss_mb(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(1.0)
        lowest = min(lowest, rss_mb(pid))
    return lowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, default=150.0, help="seconds of flood at most")
    parser.add_argument("--marks", default="100000,1000000")
    args = parser.parse_args()
    marks = [int(m) for m in args.marks.split(",")]
    banner("footprint: RSS and database size under simulate --flood")
    bare = interpreter_rss("")
    floor = interpreter_rss(_DAEMON_IMPORTS)
    print(f"   import floor: bare python {bare:.1f} MiB; the daemon's imports {floor:.1f} MiB")
    readings: list[tuple[int, float, float, int, int]] = []  # events, t, rss, db, wal
    final_rss = settled = 0.0
    events = 0
    with temp_dir("footprint") as work:
        sim = Simulator(work, "--flood", "--seed", "11")
        monitor: Monitor | None = None
        try:
            state = work / "state"
            monitor = Monitor(state, [sim.stream_url], env=FAST_ENV)
            print(f"   RSS after start: {rss_mb(monitor.pid):.1f} MiB")
            t0 = time.monotonic()
            deadline = t0 + args.cap
            pending = list(marks)
            while pending and time.monotonic() < deadline:
                time.sleep(0.5)
                events = monitor.health()["events_processed"]
                if events >= pending[0]:
                    db, wal = db_bytes(state)
                    reading = (events, time.monotonic() - t0, rss_mb(monitor.pid), db, wal)
                    readings.append(reading)
                    pending.pop(0)
                    print(
                        f"   {events:>9,} events at {reading[1]:6.1f} s: RSS {reading[2]:.1f} MiB,"
                        f" monitor.db {db / 1e6:.1f} MB + wal {wal / 1e6:.1f} MB"
                    )
            elapsed = time.monotonic() - t0
            rate = events / elapsed
            final_rss = rss_mb(monitor.pid)
            sim.stop()
            settled = settled_rss(monitor.pid, SETTLE_SECONDS)
            events = monitor.health()["events_processed"]
            print(f"   flood stopped: RSS {settled:.1f} MiB after {SETTLE_SECONDS:.0f} s")
            code = monitor.stop()
            monitor = None
            db, wal = db_bytes(state)
            print(
                f"   stopped (exit {code}) after {events:,} events ({rate:,.0f} events/s while "
                f"flooded); on disk: monitor.db {db / 1e6:.1f} MB + wal {wal / 1e6:.1f} MB"
            )
            print(f"   database per million events: {(db + wal) / 1e6 / events * 1e6:.1f} MB")
            if pending:
                left = pending[0] - events
                print(
                    f"   mark {pending[0]:,} NOT reached within {args.cap:.0f} s; at "
                    f"{rate:,.0f} events/s it needs ~{pending[0] / rate:.0f} s "
                    f"({left / rate:.0f} s more)"
                )
        finally:
            if monitor is not None:
                monitor.stop()
            sim.stop()
    if readings:
        last = readings[-1][2]
        print(
            f"   target RSS <= 60 MB ({TARGET_RSS_MIB:.1f} MiB) at the last mark: "
            f"{verdict(last <= TARGET_RSS_MIB)} ({last:.1f} MiB = {last * 2**20 / 1e6:.1f} MB; "
            f"settled {settled:.1f} MiB; the imports alone take {floor:.1f} MiB)"
        )
    if len(readings) >= 2:
        growth = (readings[-1][2] - readings[0][2]) / readings[0][2]
        print(
            f"   RSS growth {readings[0][0]:,} -> {readings[-1][0]:,} events: {100 * growth:+.1f} %"
            f" ({readings[-1][2] - readings[0][2]:+.1f} MiB): "
            f"{verdict(growth < TARGET_GROWTH)} (target < 5 %)"
        )
    elif len(readings) == 1 and final_rss:
        growth = (final_rss - readings[0][2]) / readings[0][2]
        print(
            f"   RSS growth {readings[0][0]:,} -> {events:,} events (last mark not reached): "
            f"{100 * growth:+.1f} %"
        )


if __name__ == "__main__":
    main()
