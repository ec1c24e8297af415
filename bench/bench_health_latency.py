"""Latency of GET /health and /api/summary while the daemon ingests simulate --flood.

500 sequential requests to each (one httpx client, keep-alive), after a warm-up, while the
daemon consumes the flood stream; p50/p99/max per endpoint, and the ingest rate over the
same window (to compare with bench_ingest.py: the flood must run at full speed meanwhile).
At most ``--cap`` seconds per endpoint: if the loop stops early, n says how many were
measured.

Usage: python bench/bench_health_latency.py [--count 500]
"""

from __future__ import annotations

import argparse
import time

from common import (
    FAST_ENV,
    Monitor,
    Simulator,
    banner,
    median,
    percentile,
    temp_dir,
    verdict,
    wait_until,
)

TARGET_P99_MS = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--cap", type=float, default=40.0, help="seconds per endpoint at most")
    args = parser.parse_args()
    banner("health/summary latency under flood ingest")
    with temp_dir("latency") as work:
        sim = Simulator(work, "--flood", "--seed", "13")
        monitor: Monitor | None = None
        try:
            monitor = Monitor(work / "state", [sim.stream_url], env=FAST_ENV)
            wait_until(lambda: monitor.health()["events_processed"] > 5000, timeout=30)
            start_events = monitor.health()["events_processed"]
            window_started = time.monotonic()
            for path in ("/health", "/api/summary"):
                for _ in range(10):
                    monitor.client.get(path)
                times: list[float] = []
                codes: set[int] = set()
                deadline = time.monotonic() + args.cap
                for _ in range(args.count):
                    if time.monotonic() > deadline:
                        break
                    started = time.perf_counter()
                    response = monitor.client.get(path)
                    response.read()
                    times.append(1000 * (time.perf_counter() - started))
                    codes.add(response.status_code)
                p99 = percentile(times, 99)
                print(
                    f"   {path:<13} n={len(times)} p50 {median(times):.2f} ms  "
                    f"p99 {p99:.2f} ms  max {max(times):.2f} ms  status {sorted(codes)}  "
                    f"target p99 <= {TARGET_P99_MS:.0f} ms: {verdict(p99 <= TARGET_P99_MS)}"
                )
            ingested = monitor.health()["events_processed"] - start_events
            window = time.monotonic() - window_started
            print(
                f"   ingested meanwhile: {ingested:,} events in {window:.1f} s = "
                f"{ingested / window:,.0f} events/s (the flood kept running)"
            )
        finally:
            if monitor is not None:
                monitor.stop()
            sim.stop()


if __name__ == "__main__":
    main()
