"""A scripted fault schedule against the real daemon; totals must equal ground truth.

One simulator in its realistic mode (``--interval 0.2 --rate 10``, a save every 6 s that
holds the stream 2.5 s -- longer than the stall timeout -- while keep-alives flow, random
races between totals and ring, identical events, overrides with no call, failed calls) and
the daemon (product backoff, stall timeout 2 s) on a temp state dir. For at least
``--min-seconds`` it runs: garbage, bad JSON, error events, bursts beyond the 20-event
window, drops followed by HTTP 500 and 401 answers, a stall longer than the stall timeout,
a 10 MiB data: line, a long save hold, forced races of each kind, identical twins, orphan
overrides, failed calls, proxy restarts (down 0.2-2 s; one whose uptime does not drop and
whose queued requests lift the totals, one that reloads nothing) and daemon ``kill -9``s
(traffic paused around each, since ground truth is exactly recoverable only if fewer than
20 events happen while the daemon is away; a new daemon is started on the same state dir).
Then traffic is paused, the daemon must report the proxy's final call count, and
``/api/summary`` totals are compared with the ledger's truth since first contact
(``since_first_contact``): requests equal, cost within 1e-9 -> PASS/FAIL.
``--no-realistic`` runs the simulator's classic mode and the schedule without the
realistic faults (the figures before realistic mode).

Reconnect delay per proxy restart: from the moment the proxy accepts connections again
(first successful GET after the refused ones) to the daemon's connection_status being
``connected`` with one more reconnect; also from the restart fault itself.

Usage: python bench/bench_faults.py [--min-seconds 60] [--no-realistic]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from common import Monitor, Simulator, banner, median, temp_dir, verdict, wait_until

ENV = {"CCO_MONITOR_STALL_TIMEOUT_SECONDS": "2", "CCO_MONITOR_SNAPSHOT_INTERVAL_SECONDS": "0.2"}
RATE = 10.0


REALISTIC = ("--save-interval", "6", "--save-hold", "2.5", "--keepalive", "0.5")


class Run:
    def __init__(self, work: Path, *, realistic: bool) -> None:
        mode = REALISTIC if realistic else ("--no-realistic",)
        self.sim = Simulator(work, "--interval", "0.2", "--rate", str(RATE), "--seed", "17", *mode)
        self.state = work / "state"
        self.monitors: list[Monitor] = []
        self.monitor = self._start_monitor()
        self.delays_up: list[float] = []
        self.delays_fault: list[float] = []
        self.kills = 0

    def _start_monitor(self) -> Monitor:
        monitor = Monitor(self.state, [self.sim.stream_url], env=ENV)
        self.monitors.append(monitor)
        monitor.wait_connected(timeout=30)
        return monitor

    def stop(self) -> None:
        for monitor in self.monitors:
            monitor.stop()
        self.sim.stop()

    def caught_up(self) -> bool:
        """The daemon is connected and has seen the proxy's latest totals."""
        source = self.monitor.summary()["sources"][0]
        ledger = self.sim.ledger()
        return bool(
            not ledger["holding"]
            and source["connection_status"] == "connected"
            and source["proxy_reported_calls"] == ledger["proxy_calls"]
        )

    def restart(self, down: float, **params: object) -> None:
        # Traffic paused and the daemon caught up first: calls made while the daemon is
        # away and then forgotten by the restarting proxy (its unsaved tail) are unknowable
        # to anyone, and so are more than 20 calls between the restart and the reconnect.
        self.sim.traffic(0)
        wait_until(self.caught_up, timeout=30)
        before = self.sim.ledger()["incarnation"]
        reconnects = self.monitor.health()["reconnects"]
        t_fault = time.monotonic()
        self.sim.fault("restart", down_seconds=down, **params)
        t_up: float | None = None
        t_conn: float | None = None
        deadline = t_fault + down + 30
        while time.monotonic() < deadline and t_conn is None:
            now = time.monotonic()
            if t_up is None:
                try:
                    ledger = self.sim.ledger()
                    if ledger["incarnation"] != before and ledger["up"]:
                        t_up = now
                except httpx.HTTPError:
                    pass
            health = self.monitor.health()
            if (
                t_up is not None
                and health["reconnects"] > reconnects
                and health["connection_status"] == "connected"
            ):
                t_conn = time.monotonic()
            time.sleep(0.01)
        self.sim.traffic(RATE)
        if t_conn is None or t_up is None:
            print(f"   restart down {down} s: no reconnect seen (up={t_up}, conn={t_conn})")
            return
        self.delays_up.append(t_conn - t_up)
        self.delays_fault.append(t_conn - t_fault)
        print(
            f"   restart down {down:.1f} s: proxy back after {t_up - t_fault:.2f} s, daemon "
            f"connected {t_conn - t_up:.2f} s later ({t_conn - t_fault:.2f} s after the fault)"
        )

    def kill9(self) -> None:
        self.sim.traffic(0)
        time.sleep(0.3)
        self.monitor.kill9()
        self.kills += 1
        time.sleep(0.5)
        self.monitor = self._start_monitor()
        self.sim.traffic(RATE)

    def settle(self) -> None:
        # Unexplained spend is counted at a quiet point (two calm snapshots); a save may
        # hold the stream first, so wait out one save cycle after catching up.
        self.sim.traffic(0)
        time.sleep(0.5)
        wait_until(self.caught_up, timeout=60)
        time.sleep(3.0)
        wait_until(self.caught_up, timeout=60)
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-seconds", type=float, default=60.0)
    parser.add_argument(
        "--realistic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the simulator's realistic mode and faults (default), or its classic mode",
    )
    args = parser.parse_args()
    banner(f"fault schedule vs ground truth ({'realistic' if args.realistic else 'classic'})")
    with temp_dir("faults") as work:
        run = Run(work, realistic=args.realistic)
        try:
            t0 = time.monotonic()
            sim = run.sim
            steps: list[tuple[str, Callable[[], object]]] = [
                ("garbage", lambda: sim.fault("garbage")),
                ("bad_json", lambda: sim.fault("bad_json")),
                ("burst 50", lambda: sim.fault("burst", count=50)),
                ("drop + http_500 x2", lambda: (sim.fault("http_500", count=2), sim.fault("drop"))),
                ("restart 0.2 s", lambda: run.restart(0.2)),
                ("drop + http_401", lambda: (sim.fault("http_401", count=1), sim.fault("drop"))),
                ("stall 4 s", lambda: sim.fault("stall", seconds=4)),
                ("kill -9", run.kill9),
                ("huge_line 10M", lambda: sim.fault("huge_line", size=10 * 1024 * 1024)),
                ("error_event", lambda: sim.fault("error_event")),
                ("restart 1 s", lambda: run.restart(1.0)),
                ("burst 80", lambda: sim.fault("burst", count=80)),
                ("kill -9", run.kill9),
                ("drop + http_500", lambda: (sim.fault("http_500", count=1), sim.fault("drop"))),
                ("restart 2 s", lambda: run.restart(2.0)),
                ("garbage", lambda: sim.fault("garbage")),
                ("burst 30", lambda: sim.fault("burst", count=30)),
                ("kill -9", run.kill9),
                ("stall 3 s", lambda: sim.fault("stall", seconds=3)),
                ("restart 0.5 s", lambda: run.restart(0.5)),
            ]
            if args.realistic:
                steps[5:5] = [
                    ("save holding 4 s", lambda: sim.fault("save", seconds=4)),
                    ("race event_ahead", lambda: sim.fault("race", mode="event_ahead", count=3)),
                    ("identical x3", lambda: sim.fault("identical", count=3)),
                ]
                steps[12:12] = [
                    ("race cost_ahead", lambda: sim.fault("race", mode="cost_ahead", count=2)),
                    ("orphan_override x2", lambda: sim.fault("orphan_override", count=2)),
                    (
                        "restart 0.5 s hidden, queued 3",
                        lambda: run.restart(0.5, hidden=True, save_first=True, queued=3),
                    ),
                    ("race event_late", lambda: sim.fault("race", mode="event_late", count=2)),
                    ("failed_call + 2 repeats", lambda: sim.fault("failed_call", count=2)),
                    ("restart 0.3 s reload nothing", lambda: run.restart(0.3, reload="nothing")),
                ]
            gap = max(0.5, (args.min_seconds - 25) / len(steps))
            for name, action in steps:
                print(f"   {time.monotonic() - t0:5.1f} s  {name}")
                action()
                time.sleep(gap + (4.5 if name.startswith(("stall", "save")) else 0))
            while time.monotonic() - t0 < args.min_seconds:
                time.sleep(0.5)
            scheduled = time.monotonic() - t0
            run.settle()
            ledger = sim.ledger()
            summary = run.monitor.summary()
            health = run.monitor.health()
            truth_cost = ledger["since_first_contact"]["cost_usd"]
            truth_calls = ledger["since_first_contact"]["requests"]
            totals = summary["totals"]
            source = summary["sources"][0]
            ok_calls = totals["requests"] == truth_calls
            ok_cost = abs(totals["cost_usd"] - truth_cost) <= 1e-9
            print(
                f"   schedule ran {scheduled:.0f} s (+{time.monotonic() - t0 - scheduled:.1f} s "
                f"to settle); {ledger['restarts']} proxy restarts, {run.kills} kill -9s, "
                f"{ledger['connections_total']} stream connections, {ledger['saves']} saves, "
                f"odd records {ledger['odd_records']}"
            )
            print(
                f"   daemon: requests {totals['requests']} (unattributed "
                f"{totals['unattributed_requests']}), cost {totals['cost_usd']:.12f}; "
                f"proxy_restarts {source['proxy_restarts']}, gaps {source['gaps']}, "
                f"reconnects (last daemon) {health['reconnects']}, "
                f"bad_frames {health['sources'][0]['bad_frames']}"
            )
            print(f"   truth since first contact: requests {truth_calls}, cost {truth_cost:.12f}")
            print(
                f"   requests equal: {verdict(ok_calls)}; cost diff "
                f"{abs(totals['cost_usd'] - truth_cost):.2e} <= 1e-9: {verdict(ok_cost)}"
            )
            print(f"   OVERALL: {verdict(ok_calls and ok_cost)}")
            if run.delays_up:
                print(
                    f"   reconnect delay after the proxy returns: median "
                    f"{median(run.delays_up):.2f} s, max {max(run.delays_up):.2f} s "
                    f"(n={len(run.delays_up)}); from the restart fault: median "
                    f"{median(run.delays_fault):.2f} s"
                )
        finally:
            run.stop()


if __name__ == "__main__":
    main()
