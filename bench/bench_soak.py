"""Long-run cost of the daemon at the real cadence: CPU-s/h and RSS per window, and the client's.

What a user's machine sees for weeks, compressed into ``--minutes`` of uptime with nothing
compressed in time:

- the proxy (``cco-monitor simulate``) sends one analytics snapshot every 5 s, each carrying
  the proxy's 20 most recent events (a burst of 20 at the start fills the window), with a
  request every ~10 s (Poisson, ``--rate 0.1``);
- a status bar polls the daemon every 10 s: ``GET /health`` and ``GET /statusline``, each on
  a fresh connection (as ``curl -sf`` would);
- and runs the ``cco-monitor statusline`` client every 10 s (a fresh process each time, the
  way a shell prompt or Claude Code runs it): its CPU is read from the child's rusage and
  counted in the same windows.

The daemon runs with product defaults. Per window (``--window`` minutes, default 5) the
daemon's CPU (utime+stime from /proc, also per thread), its VmRSS at the window's end, the
events and snapshots it processed, and the client's CPU and wall time per call are printed.

Targets: <= 3 CPU-s/h in every window (0.083 % of a core), the last window within 20 % of
the first, RSS flat within 5 % (max/min over the window ends after the first).

``--history-days N`` first writes N days of past usage into the state dir, through the
daemon's own store (``Store.commit_batch``: the event rows, and the engine state with their
buckets, as the daemon itself would have saved them), at the same rate (one request per
``1/--rate`` s, Claude Code's models): the daemon then starts with that history, as after
weeks of use (``--history-days 30`` is the issue's "month of history").

``--profile SECONDS`` records the daemon with py-spy (if installed next to this Python) for
that long at the start of the last window and prints the top functions.

Usage: python bench/bench_soak.py --minutes 30 [--window 5] [--history-days 30] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import Monitor, Simulator, banner, cpu_seconds, rss_mb, temp_dir, verdict

from cco_cost_monitor.engine import Engine
from cco_cost_monitor.reconciler import AccountedEvent, Accounting
from cco_cost_monitor.store import Batch, Store

TARGET_CPU_S_PER_H = 3.0
TARGET_DRIFT = 0.20
TARGET_RSS_FLAT = 0.05


@dataclass
class ClientCost:
    """What the status-bar poller spent and saw (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    calls: int = 0
    failures: int = 0
    cpu: float = 0.0
    wall: float = 0.0
    http_polls: int = 0
    http_failures: int = 0
    last_line: str = ""

    def take(self) -> tuple[int, int, float, float, int, int]:
        with self.lock:
            out = (
                self.calls,
                self.failures,
                self.cpu,
                self.wall,
                self.http_polls,
                self.http_failures,
            )
            self.calls = self.failures = self.http_polls = self.http_failures = 0
            self.cpu = self.wall = 0.0
            return out


@dataclass
class Window:
    index: int
    seconds: float
    cpu_s: float
    cpu_s_per_h: float
    threads: dict[str, float]
    rss_mib: float
    events: int
    snapshots: int
    client_calls: int
    client_failures: int
    client_cpu_ms_per_call: float
    client_wall_ms_per_call: float
    client_cpu_s_per_h: float
    http_polls: int
    http_failures: int


HISTORY_MODELS = (
    ("claude-sonnet-4-5-20250929", "sonnet", 0.021),
    ("claude-opus-4-5-20251101", "opus", 0.074),
    ("claude-haiku-4-5-20251001", "haiku", 0.004),
)


def seed_history(state_dir: Path, days: float, rate: float) -> int:
    """``days`` of past requests (one per ``1/rate`` s) saved as the daemon saves them."""
    now = datetime.now(UTC)
    step = timedelta(seconds=1 / rate)
    at = now - timedelta(days=days)
    engine = Engine()
    results: list[Accounting] = []
    events: list[AccountedEvent] = []
    count = 0
    while at < now - timedelta(minutes=5):
        model, tier, cost = HISTORY_MODELS[count % 3]
        key = hashlib.blake2b(f"history-{count}".encode(), digest_size=12).hexdigest()
        events.append(
            AccountedEvent(
                "default", key, at, "api_call", model, tier, 1, 0, 2400, None, None, 900,
                "success", cost, cost, cost, "recorded", True, "history",
            )
        )  # fmt: skip
        count += 1
        at += step
        if len(events) == 20:
            results.append(Accounting("default", at, tuple(events)))
            events = []
    if events:
        results.append(Accounting("default", at, tuple(events)))
    for result in results:
        engine.record(result)
    engine.prune(now)
    store = Store.open(state_dir / "monitor.db")
    try:
        for index in range(0, len(results), 50):
            last = index + 50 >= len(results)
            store.commit_batch(
                Batch(results[index : index + 50], engine=engine.to_dict() if last else None)
            )
    finally:
        store.close()
    return count


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds per thread name (threads of one name summed)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        seconds = (int(fields[11]) + int(fields[12])) / ticks
        out[name] = out.get(name, 0.0) + seconds
    return out


def run_client(script: str, port: int) -> tuple[bool, float, float, str]:
    """One ``cco-monitor statusline`` in a fresh process: (ok, CPU s, wall s, line)."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [script, "statusline", "--health-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    return proc.returncode == 0, usage.ru_utime + usage.ru_stime, wall, out.decode().strip()


def poll(url: str, path: str) -> bool:
    """One GET on a fresh connection, body read; True on HTTP 200."""
    try:
        with urllib.request.urlopen(url + path, timeout=5) as response:
            response.read()
            return bool(response.status == 200)
    except OSError:
        return False


def status_bar(
    monitor: Monitor, script: str, every: float, cost: ClientCost, stop: threading.Event
) -> None:
    while not stop.wait(every):
        ok_health = poll(monitor.url, "/health")
        ok_line = poll(monitor.url, "/statusline")
        ok, cpu, wall, line = run_client(script, monitor.port)
        with cost.lock:
            cost.http_polls += 2
            cost.http_failures += (not ok_health) + (not ok_line)
            cost.calls += 1
            cost.failures += not ok
            cost.cpu += cpu
            cost.wall += wall
            cost.last_line = line


def profile(pid: int, seconds: int, out: Path) -> None:
    """py-spy for ``seconds`` on the daemon; prints the top functions by own samples."""
    spy = Path(sys.executable).parent / "py-spy"
    exe = str(spy) if spy.exists() else shutil.which("py-spy")
    if exe is None:
        print("   (py-spy not installed next to this Python: no profile)")
        return
    command = [exe, "record", "-p", str(pid), "-d", str(seconds), "-r", "100", "--gil"]
    subprocess.run(
        [*command, "-f", "raw", "-o", str(out)],
        capture_output=True,
        check=False,
    )
    if not out.exists():
        print("   (py-spy recorded nothing; it needs ptrace rights)")
        return
    own: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        leaf = stack.split(";")[-1]
        own[leaf] = own.get(leaf, 0) + n
    print(f"   py-spy, {seconds} s at 100 Hz: {total} samples while running, top own time:")
    for leaf, n in sorted(own.items(), key=lambda kv: -kv[1])[:12]:
        print(f"     {n:6d}  {leaf}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="uptime to measure")
    parser.add_argument("--window", type=float, default=5.0, help="minutes per window")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds before window 1")
    parser.add_argument("--interval", default="5", help="seconds between snapshots")
    parser.add_argument("--rate", default="0.1", help="requests per second")
    parser.add_argument("--poll", type=float, default=10.0, help="status-bar period, s")
    parser.add_argument("--profile", type=int, default=0, help="py-spy seconds (last window)")
    parser.add_argument("--history-days", type=float, default=0.0, help="past usage to seed")
    parser.add_argument("--json", type=Path, help="also write the windows here")
    args = parser.parse_args()
    banner(
        f"soak: {args.minutes:g} min, snapshot every {args.interval} s, {args.rate} requests/s, "
        f"status bar every {args.poll:g} s, {args.history_days:g} days of history"
    )
    script = shutil.which("cco-monitor", path=str(Path(sys.executable).parent))
    if script is None:
        sys.exit("cco-monitor is not installed next to this interpreter")
    window_s = args.window * 60
    count = max(1, round(args.minutes / args.window))
    with temp_dir("soak") as work:
        sim = Simulator(
            work,
            "--interval",
            args.interval,
            "--rate",
            args.rate,
            "--seed",
            "19",
            "--fault",
            "0:burst:20",
        )
        monitor: Monitor | None = None
        stop = threading.Event()
        poller: threading.Thread | None = None
        windows: list[Window] = []
        try:
            if args.history_days > 0:
                (work / "state").mkdir(mode=0o700)
                seeded = seed_history(work / "state", args.history_days, float(args.rate))
                print(f"   history: {seeded:,} requests over {args.history_days:g} days")
            monitor = Monitor(work / "state", [sim.stream_url])
            monitor.wait_connected(timeout=30)
            cost = ClientCost()
            poller = threading.Thread(
                target=status_bar, args=(monitor, script, args.poll, cost, stop), daemon=True
            )
            poller.start()
            time.sleep(args.settle)
            print(f"   daemon pid {monitor.pid}; RSS after settling {rss_mb(monitor.pid):.1f} MiB")
            print(
                "   window  CPU-s  CPU-s/h  main/other threads  RSS MiB  events snaps"
                "  client: calls CPU-ms/call wall-ms/call CPU-s/h"
            )
            cost.take()
            h0 = monitor.health()
            t0, c0, th0 = time.monotonic(), cpu_seconds(monitor.pid), thread_cpu(monitor.pid)
            for index in range(1, count + 1):
                end = t0 + window_s
                if index == count and args.profile:
                    profile(monitor.pid, args.profile, work / "soak.spy")
                time.sleep(max(0.0, end - time.monotonic()))
                t1, c1, th1 = time.monotonic(), cpu_seconds(monitor.pid), thread_cpu(monitor.pid)
                h1 = monitor.health()
                calls, fails, ccpu, cwall, polls, pfails = cost.take()
                elapsed = t1 - t0
                threads = {k: v - th0.get(k, 0.0) for k, v in th1.items()}
                win = Window(
                    index=index,
                    seconds=elapsed,
                    cpu_s=c1 - c0,
                    cpu_s_per_h=(c1 - c0) / elapsed * 3600,
                    threads={k: round(v, 2) for k, v in threads.items() if v > 0},
                    rss_mib=rss_mb(monitor.pid),
                    events=h1["events_processed"] - h0["events_processed"],
                    snapshots=h1["snapshots_processed"] - h0["snapshots_processed"],
                    client_calls=calls,
                    client_failures=fails,
                    client_cpu_ms_per_call=1000 * ccpu / calls if calls else 0.0,
                    client_wall_ms_per_call=1000 * cwall / calls if calls else 0.0,
                    client_cpu_s_per_h=ccpu / elapsed * 3600,
                    http_polls=polls,
                    http_failures=pfails,
                )
                windows.append(win)
                main_s = max(threads.values(), default=0.0)
                other = win.cpu_s - main_s
                print(
                    f"   {index:>6} {win.cpu_s:6.2f} {win.cpu_s_per_h:8.2f}  "
                    f"{main_s:8.2f}/{other:<8.2f}  {win.rss_mib:7.1f}  {win.events:6d} "
                    f"{win.snapshots:5d}  {calls:13d} {win.client_cpu_ms_per_call:11.1f} "
                    f"{win.client_wall_ms_per_call:12.1f} {win.client_cpu_s_per_h:7.1f}",
                    flush=True,
                )
                t0, c0, th0, h0 = t1, c1, th1, h1
            health = monitor.health()
        finally:
            stop.set()
            if poller is not None:
                poller.join(15)
            if monitor is not None:
                monitor.stop()
            sim.stop()
    report(windows, health, cost.last_line, args)


def report(windows: list[Window], health: dict[str, Any], line: str, args: Any) -> None:
    per_h = [w.cpu_s_per_h for w in windows]
    worst = max(per_h)
    drift = (per_h[-1] - per_h[0]) / per_h[0] if per_h[0] else float("inf")
    rss = [w.rss_mib for w in windows[1:]] or [w.rss_mib for w in windows]
    rss_spread = (max(rss) - min(rss)) / min(rss)
    client = [w.client_cpu_ms_per_call for w in windows if w.client_calls]
    client_h = [w.client_cpu_s_per_h for w in windows]
    failures = sum(w.client_failures + w.http_failures for w in windows)
    print(f"   last status line: {line!r}; source: {health['connection_status']}")
    print(
        f"   daemon: worst window {worst:.2f} CPU-s/h = {100 * worst / 3600:.3f} % of a core "
        f"(target <= {TARGET_CPU_S_PER_H:g}): {verdict(worst <= TARGET_CPU_S_PER_H)}"
    )
    print(
        f"   drift: last window {per_h[-1]:.2f} vs first {per_h[0]:.2f} CPU-s/h = "
        f"{100 * drift:+.1f} % (target within {100 * TARGET_DRIFT:.0f} %): "
        f"{verdict(abs(drift) <= TARGET_DRIFT)}"
    )
    print(
        f"   RSS: {min(rss):.1f}..{max(rss):.1f} MiB over the window ends after the first = "
        f"{100 * rss_spread:.1f} % (target within {100 * TARGET_RSS_FLAT:.0f} %): "
        f"{verdict(rss_spread <= TARGET_RSS_FLAT)}"
    )
    if client:
        print(
            f"   statusline client: {min(client):.1f}..{max(client):.1f} CPU-ms per call, "
            f"{min(client_h):.1f}..{max(client_h):.1f} CPU-s/h at one call per {args.poll:g} s; "
            f"daemon + client {worst + max(client_h):.1f} CPU-s/h at worst"
        )
    print(f"   failed polls and client calls: {failures}")
    if args.json is not None:
        document = {
            "args": vars(args) | {"json": str(args.json)},
            "windows": [asdict(w) for w in windows],
        }
        args.json.write_text(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
