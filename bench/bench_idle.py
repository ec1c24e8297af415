"""Idle cost of the daemon at the real cadence: CPU seconds per hour, % of a core.

Runs two pairs at once (each daemon has its own simulator and state dir) with product
defaults (no fast test settings): ``simulate --interval 5 --rate 0`` and ``--rate 0.5``.
After both are connected and have settled, CPU (utime+stime from /proc/PID/stat) is read
at the start and end of a ``--duration`` window.

Usage: python bench/bench_idle.py [--duration 60]
"""

from __future__ import annotations

import argparse
import time

from common import Monitor, Simulator, banner, cpu_seconds, rss_mb, temp_dir, verdict

TARGET_PERCENT = 0.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=6.0)
    args = parser.parse_args()
    banner("idle cost: simulate --interval 5, product defaults")
    rates = ["0", "0.5"]
    with temp_dir("idle") as work:
        sims: list[Simulator] = []
        monitors: list[Monitor] = []
        try:
            for rate in rates:
                sim = Simulator(work, "--interval", "5", "--rate", rate, "--seed", "5")
                sims.append(sim)
                state = work / f"state-{rate}"
                monitors.append(Monitor(state, [sim.stream_url]))
            for monitor in monitors:
                monitor.wait_connected(timeout=30)
            time.sleep(args.settle)
            starts = [(time.monotonic(), cpu_seconds(m.pid), m.health()) for m in monitors]
            time.sleep(args.duration)
            for rate, monitor, (t0, cpu0, h0) in zip(rates, monitors, starts, strict=True):
                elapsed = time.monotonic() - t0
                cpu = cpu_seconds(monitor.pid) - cpu0
                h1 = monitor.health()
                per_hour = cpu / elapsed * 3600
                percent = 100 * cpu / elapsed
                print(
                    f"   --rate {rate:<3}: {cpu:.2f} CPU s in {elapsed:.0f} s = {per_hour:.1f} "
                    f"CPU s/h = {percent:.3f} % of a core; "
                    f"{h1['snapshots_processed'] - h0['snapshots_processed']} snapshots, "
                    f"{h1['events_processed'] - h0['events_processed']} events; "
                    f"RSS {rss_mb(monitor.pid):.1f} MiB; "
                    f"target <= {TARGET_PERCENT} %: {verdict(percent <= TARGET_PERCENT)}"
                )
        finally:
            for monitor in monitors:
                monitor.stop()
            for sim in sims:
                sim.stop()


if __name__ == "__main__":
    main()
