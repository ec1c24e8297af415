"""Side by side with the tools a user would pick instead, on the same usage, in one run.

- **cco-monitor**: the daemon (product defaults) on the simulator's stream at ``--rate``
  requests/s, one snapshot per 5 s, with ``--history-days`` of past usage in its state dir
  (bench_soak's ``seed_history``); a status bar polls ``/health`` and ``/statusline`` every
  ``--poll`` s and runs ``cco-monitor statusline`` (its CPU counted apart);
- **claude-monitor** (PyPI ``claude-monitor``), live (its realtime view, in a detached tmux
  pane), reading Claude Code's JSONL files;
- **ccusage** (npm ``ccusage``): ``ccusage blocks --active --json --offline`` every ``--poll``
  s, as a status bar would run it.

The peers read a temporary ``HOME/.claude/projects/bench/*.jsonl`` (Claude Code's format:
``message.usage`` with cache tokens, ``costUSD``) seeded with the same history and the same
rate, and appended to live at that rate (one line per request, like Claude Code writes).
CPU is utime+stime from /proc for the long-running processes (claude-monitor with its
children) and the children's rusage for the polled commands; RSS is VmRSS (max RSS per call
for polled commands). Each figure is CPU-s per hour of wall time over the same window.

Usage: python bench/bench_peers.py --minutes 10 --history-days 1
       [--claude-monitor PATH] [--ccusage PATH]     (default: found on PATH)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench_soak import seed_history
from common import Monitor, Simulator, banner, cpu_seconds, rss_mb, temp_dir

# Claude Code usage per request, shaped like its JSONL (cache reads dominate).
MODELS = (
    ("claude-sonnet-4-5-20250929", 0.021),
    ("claude-opus-4-5-20251101", 0.074),
    ("claude-haiku-4-5-20251001", 0.004),
)


def jsonl_line(index: int, at: datetime) -> str:
    model, cost = MODELS[index % 3]
    return json.dumps(
        {
            "type": "assistant",
            "timestamp": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "sessionId": "bench-session",
            "requestId": f"req_{index:012d}",
            "uuid": f"u-{index}",
            "cwd": "/home/user/project",
            "version": "2.0.0",
            "message": {
                "id": f"msg_{index:012d}",
                "model": model,
                "role": "assistant",
                "usage": {
                    "input_tokens": 12,
                    "output_tokens": 350,
                    "cache_creation_input_tokens": 1200,
                    "cache_read_input_tokens": 48000,
                },
            },
            "costUSD": cost,
        },
        separators=(",", ":"),
    )


def seed_jsonl(path: Path, days: float, rate: float) -> int:
    now = datetime.now(UTC)
    step = timedelta(seconds=1 / rate)
    at = now - timedelta(days=days)
    count = 0
    with path.open("w") as handle:
        while at < now - timedelta(minutes=5):
            handle.write(jsonl_line(count, at) + "\n")
            count += 1
            at += step
    return count


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants (from /proc)."""
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            total += cpu_seconds(current)
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        stack.extend(int(child) for child in children)
    return total


def tree_rss(pid: int) -> float:
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            total += rss_mb(current)
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, ValueError):
            continue
        stack.extend(int(child) for child in children)
    return total


class Polled:
    """A command run every ``every`` s: summed CPU of the calls, max RSS, failures."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.command = command
        self.env = env
        self.cpu = 0.0
        self.calls = 0
        self.failures = 0
        self.max_rss_mib = 0.0
        self.last = ""
        self.lock = threading.Lock()

    def once(self) -> None:
        proc = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=self.env
        )
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        with self.lock:
            self.calls += 1
            self.failures += os.waitstatus_to_exitcode(status) != 0
            self.cpu += usage.ru_utime + usage.ru_stime
            self.max_rss_mib = max(self.max_rss_mib, usage.ru_maxrss / 1024)
            self.last = out.decode("utf-8", "replace").strip()[:120]

    def reset(self) -> None:
        with self.lock:
            self.cpu = 0.0
            self.calls = self.failures = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=60.0)
    parser.add_argument("--history-days", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=0.1, help="requests per second")
    parser.add_argument("--poll", type=float, default=10.0)
    parser.add_argument("--claude-monitor", default=shutil.which("claude-monitor"))
    parser.add_argument("--ccusage", default=shutil.which("ccusage"))
    args = parser.parse_args()
    banner(
        f"peers: {args.minutes:g} min at {args.rate} requests/s, "
        f"{args.history_days:g} days of history, polled every {args.poll:g} s"
    )
    missing = [name for name in ("claude_monitor", "ccusage") if not getattr(args, name)]
    if missing or shutil.which("tmux") is None:
        sys.exit(f"not found: {', '.join(missing) or 'tmux'} (pip install claude-monitor; "
                 "npm install ccusage; apt-get install tmux)")  # fmt: skip
    script = shutil.which("cco-monitor", path=str(Path(sys.executable).parent))
    assert script is not None
    with temp_dir("peers") as work:
        home = work / "home"
        projects = home / ".claude" / "projects" / "bench"
        projects.mkdir(parents=True)
        log = projects / "bench-session.jsonl"
        seeded = seed_jsonl(log, args.history_days, args.rate)
        (work / "state").mkdir(mode=0o700)
        seed_history(work / "state", args.history_days, args.rate)
        print(f"   history: {seeded:,} requests over {args.history_days:g} days, for every tool")
        env = {
            **os.environ,
            "HOME": str(home),
            "CLAUDE_CONFIG_DIR": str(home / ".claude"),
            "NO_COLOR": "1",
            "TERM": "xterm-256color",
        }
        sim = Simulator(work, "--interval", "5", "--rate", str(args.rate), "--seed", "19")
        monitor: Monitor | None = None
        session = f"cco-bench-peers-{os.getpid()}"
        stop = threading.Event()
        threads: list[threading.Thread] = []
        try:
            monitor = Monitor(work / "state", [sim.stream_url])
            monitor.wait_connected(30)
            tmux_env = [f"{key}={env[key]}" for key in ("HOME", "CLAUDE_CONFIG_DIR", "TERM")]
            subprocess.run(
                ["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "50",
                 "env", *tmux_env, args.claude_monitor, "--plan", "custom", "--no-api",
                 "--data-paths", str(home / ".claude" / "projects")],
                check=True,
            )  # fmt: skip
            pane = subprocess.run(
                ["tmux", "display-message", "-p", "-t", session, "#{pane_pid}"],
                capture_output=True,
                text=True,
                check=True,
            )
            claude_pid = int(pane.stdout.strip())
            ccusage = Polled([args.ccusage, "blocks", "--active", "--json", "--offline"], env)
            client = Polled([script, "statusline", "--health-port", str(monitor.port)], env)
            url = monitor.url

            def append() -> None:
                index = seeded
                while not stop.wait(1 / args.rate):
                    with log.open("a") as handle:
                        handle.write(jsonl_line(index, datetime.now(UTC)) + "\n")
                    index += 1

            def bar() -> None:
                while not stop.wait(args.poll):
                    for path in ("/health", "/statusline"):
                        try:
                            with urllib.request.urlopen(url + path, timeout=5) as answer:
                                answer.read()
                        except OSError:
                            pass
                    client.once()
                    ccusage.once()

            threads = [threading.Thread(target=f, daemon=True) for f in (append, bar)]
            for thread in threads:
                thread.start()
            time.sleep(args.settle)
            ccusage.reset()
            client.reset()
            t0 = time.monotonic()
            d0, c0 = cpu_seconds(monitor.pid), tree_cpu(claude_pid)
            time.sleep(args.minutes * 60)
            elapsed = time.monotonic() - t0
            daemon = (cpu_seconds(monitor.pid) - d0) / elapsed * 3600
            claude = (tree_cpu(claude_pid) - c0) / elapsed * 3600
            with ccusage.lock:
                polled = ccusage.cpu / elapsed * 3600
                ccusage_calls, ccusage_failures = ccusage.calls, ccusage.failures
            with client.lock:
                client_h = client.cpu / elapsed * 3600
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            shown = [line.strip() for line in screen.splitlines() if "$" in line]
            print(f"   claude-monitor's screen: {len(shown)} lines with a cost, e.g. "
                  f"{(shown or ['(none)'])[0][:70]!r}")  # fmt: skip
            rows = [
                ("cco-monitor daemon", daemon, rss_mb(monitor.pid)),
                ("claude-monitor (live)", claude, tree_rss(claude_pid)),
                (f"ccusage blocks, every {args.poll:g} s", polled, ccusage.max_rss_mib),
            ]
            print(f"   window {elapsed:.0f} s; ccusage {ccusage_calls} calls "
                  f"({ccusage_failures} failed), last: {ccusage.last[:60]!r}")  # fmt: skip
            for name, per_h, rss in rows:
                ratio = per_h / daemon if daemon else float("inf")
                print(
                    f"   {name:<28} {per_h:9.1f} CPU-s/h  {rss:6.1f} MiB  {ratio:7.0f}x the daemon"
                )
            print(
                f"   cco-monitor statusline every {args.poll:g} s: {client_h:.1f} CPU-s/h "
                f"(daemon + client {daemon + client_h:.1f}: "
                f"claude-monitor {claude / (daemon + client_h):.0f}x, "
                f"ccusage {polled / (daemon + client_h):.0f}x)"
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
            subprocess.run(
                ["tmux", "kill-session", "-t", session], capture_output=True, check=False
            )
            if monitor is not None:
                monitor.stop()
            sim.stop()


if __name__ == "__main__":
    main()
