"""Store throughput: events committed per second, alone and against a busy event-loop thread.

The daemon's writer thread shares the GIL with the event loop, which is busy whenever
events flood in. This measures ``Store.commit_batch`` on batches like the writer's under flood (its
``max_batch`` results of 20 events) into a database that already holds PREFILL events, twice:
  1. alone: the thread has the interpreter to itself;
  2. contended: another thread runs Python without pause meanwhile (an event loop at
     full load), and how much of its own speed that thread keeps is printed too.
Usage: python bench/bench_store.py [--prefill 300000] [--events 100000]
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import banner, temp_dir

from cco_cost_monitor.reconciler import AccountedEvent, Accounting
from cco_cost_monitor.store import Batch, Store
from cco_cost_monitor.writer import StoreWriter

SOURCE = "http://127.0.0.1:3000/api/stream"
EVENTS_PER_RESULT = 20
RESULTS_PER_BATCH: int = inspect.signature(StoreWriter).parameters["max_batch"].default


def batches(first: int, count: int) -> list[Batch]:
    """Time-ordered events with digest keys (in random order, like real ones), in writer batches."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    results = []
    for base in range(first, first + count, EVENTS_PER_RESULT):
        events = tuple(
            AccountedEvent(
                SOURCE,
                hashlib.blake2b(str(index).encode(), digest_size=12).hexdigest(),
                start + timedelta(milliseconds=index),
                "api_call",
                "claude-sonnet-4-5-20250929",
                "sonnet",
                1,
                0,
                1234,
                None,
                None,
                456,
                "success",
                0.0123,
                0.0123,
                0.0125,
                "recorded",
                True,
                "bench",
            )
            for index in range(base, base + EVENTS_PER_RESULT)
        )
        results.append(Accounting(SOURCE, events[-1].occurred_at, events))
    return [
        Batch(results[index : index + RESULTS_PER_BATCH])
        for index in range(0, len(results), RESULTS_PER_BATCH)
    ]


def spin(stop: threading.Event, rates: list[float]) -> None:
    """Plain Python in a loop until ``stop`` (the stand-in for a busy event loop)."""
    count = 0
    started = time.perf_counter()
    while not stop.is_set():
        count += 1
    rates.append(count / (time.perf_counter() - started))


def spinning(stop: threading.Event, rates: list[float]) -> threading.Thread:
    thread = threading.Thread(target=spin, args=(stop, rates))
    thread.start()
    return thread


def commit_all(store: Store, work: list[Batch]) -> float:
    started = time.perf_counter()
    for batch in work:
        store.commit_batch(batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefill", type=int, default=300_000)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    banner("store: commit_batch events/s, alone and contended")
    with temp_dir("store") as work:
        store = Store.open(Path(work) / "monitor.db")
        try:
            commit_all(store, batches(0, args.prefill))
            alone = commit_all(store, batches(args.prefill, args.events))
            stop, solo = threading.Event(), []
            thread = spinning(stop, solo)
            time.sleep(1.0)
            stop.set()
            thread.join()
            stop, rates = threading.Event(), []
            thread = spinning(stop, rates)
            contended = commit_all(store, batches(args.prefill + args.events, args.events))
            stop.set()
            thread.join()
        finally:
            store.close()
    print(
        f"   prefilled {args.prefill:,} events; then {args.events:,} events per run, "
        f"{RESULTS_PER_BATCH * EVENTS_PER_RESULT:,} per commit"
    )
    print(f"   alone:     {args.events / alone:10,.0f} events/s")
    print(
        f"   contended: {args.events / contended:10,.0f} events/s "
        f"(ratio to alone {alone / contended:.2f}); the busy thread kept "
        f"{rates[0] / solo[0]:.0%} of its solo speed"
    )


if __name__ == "__main__":
    main()
