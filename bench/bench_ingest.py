"""Ingest throughput of the real daemon against ``simulate --flood``, and the parse ceiling.

In one run:
  1. a simulator in flood mode (snapshots as fast as the client reads, 20 new api_call
     events in each) and the daemon (``start --foreground``, temp state dir, so the SQLite
     writer runs) consuming it over HTTP; accounted events per second from ``/health``
     ``events_processed`` deltas over DURATION seconds, plus each process's CPU use;
  2. optionally (``--profile``) ``py-spy record`` on the daemon for PROFILE seconds, then
     the top functions by own and by total samples;
  3. frames recorded from the same flood stream with httpx for a few seconds, then timed
     with ``orjson.loads`` in a tight loop: the parse-only ceiling in events/s (20 new
     events per frame);
  4. the transport floor: the same stream read through httpx + httpx-sse (the daemon's
     client stack) for a few seconds, doing nothing with the events: what receiving alone
     costs per CPU second, against the same ceiling.

Usage: python bench/bench_ingest.py [--duration 20] [--profile 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
from common import (
    FAST_ENV,
    Monitor,
    Simulator,
    banner,
    cpu_seconds,
    temp_dir,
    verdict,
    wait_until,
)
from httpx_sse import aconnect_sse

EVENTS_PER_FRAME = 20
TARGET_RATE = 50_000
TARGET_RATIO = 0.3


def measure_ingest(monitor: Monitor, sim_pid: int, duration: float) -> dict[str, float]:
    """events/s from /health deltas; CPU share of daemon and simulator over the window."""
    wait_until(lambda: monitor.health()["events_processed"] > 2000, timeout=30)
    time.sleep(2.0)  # warm-up
    first = monitor.health()
    t0 = time.monotonic()
    cpu_mon0, cpu_sim0 = cpu_seconds(monitor.pid), cpu_seconds(sim_pid)
    samples: list[float] = []
    last, last_t = first["events_processed"], t0
    deadline = t0 + duration
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = monitor.health()
        now_t = time.monotonic()
        samples.append((now["events_processed"] - last) / (now_t - last_t))
        last, last_t = now["events_processed"], now_t
    elapsed = last_t - t0
    events = last - first["events_processed"]
    cpu_mon = cpu_seconds(monitor.pid) - cpu_mon0
    cpu_sim = cpu_seconds(sim_pid) - cpu_sim0
    final = monitor.health()
    return {
        "elapsed": elapsed,
        "events": events,
        "rate": events / elapsed,
        "rate_min": min(samples),
        "rate_max": max(samples),
        "snapshots": final["snapshots_processed"] - first["snapshots_processed"],
        "mon_cpu": cpu_mon / elapsed,
        "sim_cpu": cpu_sim / elapsed,
        "store_lag": float((final.get("store") or {}).get("lag_seconds") or 0.0),
    }


def record_frames(stream_url: str, seconds: float, limit: int = 20_000) -> list[bytes]:
    """The data: payloads of analytics frames from the flood stream."""
    frames: list[bytes] = []
    deadline = time.monotonic() + seconds
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", stream_url, headers={"Accept": "text/event-stream"}) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data:"):
                frames.append(line[5:].strip().encode())
            if len(frames) >= limit or time.monotonic() > deadline:
                break
    return frames


async def _read_stream(stream_url: str, seconds: float) -> tuple[int, float]:
    frames = 0
    async with (
        httpx.AsyncClient(timeout=10) as client,
        aconnect_sse(client, "GET", stream_url) as source,
    ):
        started = time.process_time()
        deadline = time.monotonic() + seconds
        async for _ in source.aiter_sse():
            frames += 1
            if time.monotonic() > deadline:
                break
        cpu = time.process_time() - started
    return frames, cpu


def transport_floor(stream_url: str, seconds: float = 4.0) -> float:
    """Events per CPU second that httpx + httpx-sse alone deliver from the flood stream."""
    frames, cpu = asyncio.run(_read_stream(stream_url, seconds))
    return frames * EVENTS_PER_FRAME / max(cpu, 1e-9)


def parse_ceiling(frames: list[bytes], rounds: int = 3) -> tuple[float, float, int]:
    """Best-of-rounds events/s (wall, and per CPU second) of orjson.loads over the frames."""
    best = best_cpu = float("inf")
    for _ in range(rounds):
        started, cpu_started = time.perf_counter(), time.process_time()
        for data in frames:
            orjson.loads(data)
        best = min(best, time.perf_counter() - started)
        best_cpu = min(best_cpu, time.process_time() - cpu_started)
    sample = orjson.loads(frames[len(frames) // 2])
    events = sample.get("activity") if isinstance(sample, dict) else None
    window = len(events) if isinstance(events, list) else -1
    new_events = len(frames) * EVENTS_PER_FRAME
    return new_events / best, new_events / max(best_cpu, 1e-9), window


def profile(pid: int, seconds: int, out: Path, idle: bool = False, gil: bool = False) -> None:
    """py-spy record (speedscope) on the daemon; print the top functions.

    Weights are seconds of samples; with ``idle`` the samples where a thread waits (poll,
    locks, fsync) are kept too, which shows what the event loop waits for. With ``gil``
    only samples of the thread holding the GIL count: the daemon runs at most one core of
    Python, so that is the budget both threads share.
    """
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("   py-spy not installed; skipping the profile (pip install py-spy)")
        return
    result = subprocess.run(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(seconds),
            "--rate",
            "200",
            "--format",
            "speedscope",
            "--output",
            str(out),
            "--nonblocking",
            *(["--idle"] if idle else []),
            *(["--gil"] if gil else []),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    if result.returncode != 0 or not out.exists():
        print(f"   py-spy failed ({result.returncode}): {result.stderr.strip()[-500:]}")
        return
    doc = json.loads(out.read_text())
    frames = doc["shared"]["frames"]
    label = "GIL holder only" if gil else "incl. idle" if idle else "on-CPU only"
    print(f"   py-spy ({label}), {seconds} s, {out.name}: top 10 functions by own time per thread")
    for prof in doc["profiles"]:
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        total_weight = sum(prof["weights"])
        for stack, weight in zip(prof["samples"], prof["weights"], strict=True):
            if stack:
                leaf = frames[stack[-1]]
                own[
                    f"{leaf['name']} ({Path(leaf.get('file', '?')).name}:{leaf.get('line', '?')})"
                ] += weight
                for name in {frames[index]["name"] for index in stack}:
                    inclusive[name] += weight
        print(f"     {prof.get('name', '?')}: {total_weight:.1f} s sampled")
        for name, weight in own.most_common(10):
            print(f"       {100 * weight / total_weight:5.1f} %  {name}")
        print("       -- by total (function and what it calls):")
        # The thread's entry frames (in nearly every sample) say nothing: skip them.
        widest = max(inclusive.values(), default=0.0)
        below = [(n, w) for n, w in inclusive.most_common() if w < 0.97 * widest]
        for name, weight in below[:14]:
            print(f"       {100 * weight / total_weight:5.1f} %  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--profile", type=int, default=0, help="py-spy seconds (0 = none)")
    parser.add_argument("--idle-profile", action="store_true", help="also profile with --idle")
    parser.add_argument("--gil-profile", action="store_true", help="also profile with --gil")
    args = parser.parse_args()
    banner("ingest: daemon vs simulate --flood")
    with temp_dir("ingest") as work:
        sim = Simulator(work, "--flood", "--seed", "9")
        monitor: Monitor | None = None
        try:
            state = work / "state"
            monitor = Monitor(state, [sim.stream_url], env=FAST_ENV)
            result = measure_ingest(monitor, sim.proc.pid, args.duration)
            if args.profile:
                profile(monitor.pid, args.profile, work / "ingest.speedscope.json")
                if args.idle_profile:
                    profile(monitor.pid, args.profile, work / "ingest-idle.speedscope.json", True)
                if args.gil_profile:
                    path = work / "ingest-gil.speedscope.json"
                    profile(monitor.pid, args.profile, path, gil=True)
            monitor.stop()
            monitor = None
            frames = record_frames(sim.stream_url, 4.0)
            transport = transport_floor(sim.stream_url)
        finally:
            if monitor is not None:
                monitor.stop()
            sim.stop()
    ceiling, ceiling_cpu, window = parse_ceiling(frames)
    ratio = result["rate"] / ceiling
    per_cpu = result["events"] / max(result["mon_cpu"] * result["elapsed"], 1e-9)
    ratio_cpu = per_cpu / ceiling_cpu
    print(
        f"   daemon: {result['events']:,} events in {result['elapsed']:.1f} s = "
        f"{result['rate']:,.0f} events/s (1-s windows {result['rate_min']:,.0f}"
        f"..{result['rate_max']:,.0f}); {result['snapshots']:,} snapshots; "
        f"store lag at end {result['store_lag']:.2f} s"
    )
    print(
        f"   CPU over the window: daemon {100 * result['mon_cpu']:.0f} % of a core, "
        f"simulator {100 * result['sim_cpu']:.0f} %"
    )
    print(
        f"   parse-only ceiling: orjson.loads of {len(frames):,} recorded flood frames "
        f"({window} events in each snapshot's window, {EVENTS_PER_FRAME} new) = "
        f"{ceiling:,.0f} events/s"
    )
    print(f"   ratio daemon/ceiling (wall clock) = {ratio:.3f}")
    print(
        f"   transport floor: httpx + httpx-sse reading the stream and nothing else = "
        f"{transport:,.0f} events/CPU-s, ratio {transport / ceiling_cpu:.3f} of the ceiling"
    )
    print(
        f"   per CPU second: daemon {per_cpu:,.0f} events/CPU-s, ceiling {ceiling_cpu:,.0f}; "
        f"ratio {ratio_cpu:.3f} (robust to other load on the machine)"
    )
    with open("/proc/loadavg") as handle:
        print(f"   load average at end: {handle.read().split()[0]} on {os.cpu_count()} CPUs")
    print(f"   target >= {TARGET_RATE:,} events/s: {verdict(result['rate'] >= TARGET_RATE)}")
    print(f"   target ratio >= {TARGET_RATIO}: {verdict(ratio >= TARGET_RATIO)}")


if __name__ == "__main__":
    main()
