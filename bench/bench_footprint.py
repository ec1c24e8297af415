"""Memory and disk footprint of the daemon after 100k and 1M accounted events.

The daemon (temp state dir, SQLite writer on) consumes ``simulate --flood`` until
``/health`` ``events_processed`` passes each mark; VmRSS from /proc/PID/status at each
mark, and monitor.db + monitor.db-wal sizes. Time is capped (``--cap`` seconds for the
whole run); if the 1M mark is not reached the rate and an extrapolation are printed.

Usage: python bench/bench_footprint.py [--cap 150] [--marks 100000,1000000]
"""

from __future__ import annotations

import argparse
import time

from common import FAST_ENV, Monitor, Simulator, banner, db_bytes, rss_mb, temp_dir, verdict

TARGET_RSS_MB = 60.0
TARGET_GROWTH = 0.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=float, default=150.0, help="seconds for the whole run")
    parser.add_argument("--marks", default="100000,1000000")
    args = parser.parse_args()
    marks = [int(m) for m in args.marks.split(",")]
    banner("footprint: RSS and database size under simulate --flood")
    readings: list[tuple[int, float, float, int, int]] = []  # events, t, rss, db, wal
    with temp_dir("footprint") as work:
        sim = Simulator(work, "--flood", "--seed", "11")
        monitor: Monitor | None = None
        try:
            state = work / "state"
            monitor = Monitor(state, [sim.stream_url], env=FAST_ENV)
            print(f"   RSS after start (no events yet): {rss_mb(monitor.pid):.1f} MiB")
            t0 = time.monotonic()
            deadline = t0 + args.cap
            pending = list(marks)
            events = 0
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
            code = monitor.stop()
            monitor = None
            db, wal = db_bytes(state)
            print(
                f"   stopped (exit {code}) after {events:,} events in {elapsed:.0f} s "
                f"({rate:,.0f} events/s); RSS just before {final_rss:.1f} MiB; on disk: "
                f"monitor.db {db / 1e6:.1f} MB + wal {wal / 1e6:.1f} MB"
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
        last = readings[-1]
        print(
            f"   target RSS <= {TARGET_RSS_MB:.0f} MiB at the last mark: "
            f"{verdict(last[2] <= TARGET_RSS_MB)} ({last[2]:.1f})"
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
