"""Exactly-once accounting: the reconciler against an independent proxy model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cco_cost_monitor.pricing import PriceTable
from cco_cost_monitor.reconciler import (
    REQUEST_EVENT_TYPES,
    Accounting,
    BoundedKeySet,
    Reconciler,
    Unattributed,
)
from cco_cost_monitor.wire import (
    GatewayCompleted,
    GatewayError,
    GatewayLag,
    GatewayStarted,
    Snapshot,
    parse_frame,
)
from tests.proxy_model import ProxyModel, Request

NOW = datetime(2025, 11, 17, 22, 0, tzinfo=UTC)
PRICES = PriceTable.default()


def feed(reconciler: Reconciler, proxy: ProxyModel, seconds: float = 5.0) -> Accounting:
    """One snapshot ``seconds`` after the last (the proxy's cadence)."""
    proxy.tick(seconds)
    frame = parse_frame("analytics", proxy.snapshot_json())
    return reconciler.apply(frame, proxy.clock)


KINDS = ["api", "api", "api", "cache_hit", "override", "override_only", "failed", "failed_hit"]
Call = st.tuples(st.integers(0, 3), st.integers(1, 200_000), st.sampled_from(KINDS))
Twins = st.tuples(st.just("twins"), st.integers(0, 3))
Op = st.one_of(
    st.tuples(st.just("calls"), st.lists(Call, min_size=1, max_size=8)),
    Twins,
    st.tuples(st.just("burst"), st.lists(Call, min_size=21, max_size=60)),
    st.tuples(st.just("snapshot")),
    # A snapshot read apart: requests finish between its reads of calls, cost and the ring,
    # and some are recorded before the calls read with their event written after the ring's.
    st.tuples(
        st.just("racing"),
        st.lists(Call, max_size=3),
        st.lists(Call, max_size=3),
        st.lists(Call, max_size=2),
    ),
    # The 60-second save holds a snapshot: old calls, newer cost and ring; then the missed
    # snapshots fire back to back.
    st.tuples(st.just("stall"), st.lists(Call, max_size=12), st.integers(0, 8)),
    st.tuples(st.just("disconnect")),
    st.tuples(st.just("reconnect")),
    st.tuples(st.just("save")),
    st.tuples(
        st.just("restart"),
        st.booleans(),
        st.booleans(),
        st.lists(Call, max_size=12),
        st.booleans(),
    ),
    st.tuples(st.just("monitor_restart")),
)


class Run:
    """Drives a proxy model and a reconciler, keeping the ground truth.

    The truth is the contract's: growth of ``calls`` and ``cost`` since the first snapshot
    read them. ``exact`` turns false only where the truth cannot be known: a restart whose
    first window is full (events may have scrolled out, or nothing shows the restart at all),
    or events lost after a restart before the new run was ever quiet (the reloaded total
    is then an estimate, docs/accounting.md: a racing first window reads the same as a calm
    one with one request fewer reloaded).
    """

    def __init__(self, ahead: list[tuple[int, int, str]] | None = None) -> None:
        self.proxy = ProxyModel()
        self.reconciler = Reconciler("p", PRICES)
        self.connected = True
        self.keys: list[str] = []
        self.exact = True
        self.first_window: set[int] = set()
        self.attributable: set[int] = set()
        self.unattributed: list[Unattributed] = []
        self.alive: list[dict[str, Any]] = []
        # After a restart, until two snapshots agree with nothing in between.
        self.unsettled_restart = False
        self.last_read: tuple[int, int, float] | None = None
        # Requests in flight at a snapshot while the reload was not yet known: an estimated
        # reload may be off by these, in either direction (docs/accounting.md).
        self.slack_calls = 0
        self.slack_cost = 0.0
        self.counted_requests = 0
        # Requests that finish between the first snapshot's reads: the contract counts them
        # (they are after the calls read) though their events are in the first window.
        race = [self.proxy.request(m, t, k) for m, t, k in ahead or []]
        self.deliver(between_calls_and_cost=race)
        self.base_calls = self.proxy.read_calls_truth
        self.base_cost = self.proxy.read_cost_truth

    def deliver(
        self,
        *,
        seconds: float = 5.0,
        between_calls_and_cost: list[Request] | None = None,
        between_cost_and_ring: list[Request] | None = None,
    ) -> None:
        self.proxy.tick(seconds)
        snap = self.proxy.snapshot(between_calls_and_cost, between_cost_and_ring)
        read = (self.proxy.pushed, self.proxy.calls, self.proxy.cost)
        if self.last_read is not None:
            if self.unsettled_restart and read[0] - self.last_read[0] > 20:
                self.exact = False  # lost before the reload was ever known
            if read == self.last_read and not self.proxy.lagging:
                self.unsettled_restart = False
        self.last_read = read
        self.proxy.finish_lagging()
        frame = parse_frame("analytics", orjson.dumps(snap).decode())
        assert isinstance(frame, Snapshot)
        accounting = self.reconciler.apply(frame, self.proxy.clock)
        window = snap["activity"]
        self.alive.extend(window)  # ids stay unique while they live
        ids = {id(event) for event in window}
        requests = {id(event) for event in window if event["event_type"] in REQUEST_EVENT_TYPES}
        if accounting.first_contact:
            self.first_window = ids
        else:
            self.attributable |= requests - self.first_window
        self.keys.extend(event.key for event in accounting.events)
        if accounting.unattributed is not None:
            self.unattributed.append(accounting.unattributed)

    def calls(self, calls: list[tuple[int, int, str]]) -> None:
        for model, tokens, kind in calls:
            self.proxy.call(model, tokens, kind)

    def in_flight(self, requests: list[Request]) -> None:
        if self.unsettled_restart:
            self.slack_calls += sum(1 for request in requests if request.records)
            self.slack_cost += sum(request.cost for request in requests)

    def requests(self, calls: list[tuple[int, int, str]]) -> list[Request]:
        return [self.proxy.request(m, t, k) for m, t, k in calls]

    def quiesce(self) -> None:
        self.connected = True
        self.proxy.finish_lagging()
        self.deliver()
        self.deliver()

    def step(self, op: tuple[Any, ...]) -> None:
        name = op[0]
        if name in ("calls", "burst"):
            self.calls(op[1])
            if name == "burst" and self.connected:
                self.deliver()
        elif name == "twins":
            self.calls([(op[1], 0, "twin"), (op[1], 0, "twin")])
        elif name == "snapshot" and self.connected:
            self.deliver()
        elif name == "racing" and self.connected:
            for model, tokens, kind in op[3]:
                self.proxy.start_lagging(model, tokens, kind)
            first, second = self.requests(op[1]), self.requests(op[2])
            self.in_flight(
                [*first, *second, *self.proxy.lagging[len(self.proxy.lagging) - len(op[3]) :]]
            )
            self.deliver(between_calls_and_cost=first, between_cost_and_ring=second)
        elif name == "stall" and self.connected:
            # The snapshot read calls, then waited for the save while requests queued.
            queued = self.requests(op[1])
            self.in_flight(queued)
            self.deliver(seconds=5.0, between_calls_and_cost=queued)
            for _ in range(op[2]):
                self.deliver(seconds=0.002)
        elif name == "disconnect":
            self.connected = False
        elif name == "reconnect":
            self.connected = True
            self.deliver()
        elif name == "save":
            self.proxy.save()
        elif name == "restart":
            # The proxy goes down right after a snapshot every connected client saw (after a
            # quiet moment, or in the middle of traffic whose gaps are not settled yet).
            if op[4]:
                self.quiesce()
            else:
                self.connected = True
                self.proxy.finish_lagging()
                self.deliver()
            self.proxy.restart(uptime_drops=op[1], reload=op[2])
            self.unsettled_restart = True
            self.last_read = None  # the emptied ring: the next read settles nothing yet
            self.calls(op[3])
            if len(self.proxy.ring) >= 20:
                self.exact = False
            self.deliver()
        elif name == "monitor_restart":
            state = orjson.loads(orjson.dumps(self.reconciler.snapshot_state()))
            self.reconciler = Reconciler("p", PRICES, state=state)


@settings(max_examples=400, deadline=None)
@given(st.lists(Call, max_size=4), st.lists(Op, max_size=40))
def test_accounting_equals_ground_truth(
    ahead: list[tuple[int, int, str]], ops: list[tuple[Any, ...]]
) -> None:
    """Races, save stalls, bursts, disconnects, restarts, twins: totals and split are the truth."""
    run = Run(ahead)
    for op in ops:
        run.step(op)
    run.quiesce()
    state = run.reconciler.state
    truth_calls = run.proxy.true_calls - run.base_calls
    truth_cost = run.proxy.true_cost - run.base_cost
    accounted_cost = state.attributed_cost + state.unattributed_cost
    accounted_calls = state.attributed_requests + state.unattributed_requests
    assert len(run.keys) == len(set(run.keys)), "an event was counted twice"
    for remainder in run.unattributed:
        assert remainder.requests >= 0
        assert remainder.cost_usd >= 0.0
    if run.exact:
        assert state.attributed_requests == len(run.attributable)
        assert accounted_calls == truth_calls
        assert accounted_cost == pytest.approx(truth_cost, abs=1e-9)
    else:
        assert state.attributed_requests <= accounted_calls <= truth_calls + run.slack_calls
        assert accounted_cost <= truth_cost + run.slack_cost + 1e-9


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(Call, min_size=1, max_size=20), max_size=15))
def test_every_event_seen_in_a_window_is_attributed_exactly_once(
    batches: list[list[tuple[int, int, str]]],
) -> None:
    """Each event that appears in any window is attributed once, the rest is the gap."""
    run = Run()
    for batch in batches:
        run.calls(batch)
        run.deliver()
        run.deliver()  # an idle replay of the same window adds nothing
    state = run.reconciler.state
    assert state.attributed_requests == len(run.attributable)
    truth_calls = run.proxy.true_calls - run.base_calls
    assert state.unattributed_requests == truth_calls - state.attributed_requests


def test_first_contact_counts_nothing() -> None:
    """The totals and the window present at first contact are history, not new spend."""
    proxy = ProxyModel()
    for index in range(5):
        proxy.call(index, 1000, "api")
    reconciler = Reconciler("p", PRICES)
    accounting = feed(reconciler, proxy)
    assert accounting.first_contact
    assert accounting.events == ()
    assert reconciler.state.baseline_calls == 5
    assert feed(reconciler, proxy).is_empty


def test_idle_replays_count_nothing() -> None:
    """The same window re-sent every 5 s forever is counted once."""
    proxy = ProxyModel()
    reconciler = Reconciler("p", PRICES)
    feed(reconciler, proxy)
    proxy.call(1, 1000, "api")
    assert len(feed(reconciler, proxy).events) == 1
    for _ in range(50):
        assert feed(reconciler, proxy).is_empty
    assert reconciler.state.attributed_requests == 1


def test_burst_beyond_window_is_unattributed_not_lost() -> None:
    """Thirty calls in one interval: twenty attributed, ten unattributed once settled."""
    proxy = ProxyModel()
    reconciler = Reconciler("p", PRICES)
    feed(reconciler, proxy)
    for _ in range(30):
        proxy.call(0, 10_000, "api")
    accounting = feed(reconciler, proxy)
    assert len(accounting.events) == 20
    # The counters of that snapshot are compared with the events once they are settled.
    assert accounting.unattributed is None
    settled = feed(reconciler, proxy)
    assert settled.unattributed is not None
    assert settled.unattributed.requests == 10
    assert accounting.cost_usd + settled.cost_usd == pytest.approx(proxy.true_cost, abs=1e-12)


def test_proxy_restart_does_not_count_reloaded_totals() -> None:
    """A restart reloads lower totals: no negative delta, the reload is not new spend."""
    proxy = ProxyModel()
    reconciler = Reconciler("p", PRICES)
    feed(reconciler, proxy)
    proxy.call(0, 1000, "api")
    proxy.save()
    proxy.call(1, 1000, "api")  # the unsaved tail
    feed(reconciler, proxy)
    proxy.restart()
    proxy.call(2, 1000, "api")
    accounting = feed(reconciler, proxy)
    assert accounting.proxy_restart
    assert len(accounting.events) == 1
    assert accounting.unattributed is None
    assert reconciler.state.proxy_restarts == 1
    assert reconciler.state.attributed_requests == 3


def test_restart_while_disconnected_is_caught_by_the_window() -> None:
    """A restart whose new uptime exceeds the old one is caught by the missing window tail."""
    proxy = ProxyModel()
    reconciler = Reconciler("p", PRICES)
    feed(reconciler, proxy)
    proxy.save()
    proxy.call(0, 1000, "api")
    feed(reconciler, proxy)
    proxy.restart()
    proxy.tick(600)  # the monitor comes back after the new uptime passed the old one
    proxy.call(1, 1000, "api")
    accounting = feed(reconciler, proxy)
    assert accounting.proxy_restart
    assert reconciler.state.attributed_requests == 2


def test_model_override_is_never_a_request_or_cost() -> None:
    """An override is counted as its own kind, its api_call as the request."""
    proxy = ProxyModel()
    reconciler = Reconciler("p", PRICES)
    feed(reconciler, proxy)
    proxy.call(1, 5000, "override")
    accounting = feed(reconciler, proxy)
    kinds = sorted(event.event_type for event in accounting.events)
    assert kinds == ["api_call", "model_override"]
    override = next(e for e in accounting.events if e.event_type == "model_override")
    assert (override.requests, override.cost_usd) == (0, 0.0)
    assert accounting.requests == 1


def test_state_round_trip_keeps_exactly_once() -> None:
    """A reconciler restored from its saved state does not recount the replayed window."""
    proxy = ProxyModel()
    reconciler = Reconciler("p", PRICES)
    feed(reconciler, proxy)
    for _ in range(7):
        proxy.call(2, 2000, "api")
    feed(reconciler, proxy)
    restored = Reconciler(
        "p", PRICES, state=orjson.loads(orjson.dumps(reconciler.snapshot_state()))
    )
    assert feed(restored, proxy).is_empty
    proxy.call(2, 2000, "api")
    assert len(feed(restored, proxy).events) == 1


def test_costless_events_get_the_exact_share_of_the_growth() -> None:
    """Early-format events without cost share the visible growth, labelled apportioned."""
    reconciler = Reconciler("p", PRICES)
    base = {
        "project": {"cost": 1.0, "calls": 1, "last_updated": "2025-11-15T21:40:00+00:00"},
        "machine": {"uptime": 300},
        "activity": [],
    }
    reconciler.apply(Snapshot.model_validate(base), NOW)
    events = [
        {
            "timestamp": f"2025-11-15T21:40:0{i}.123456+00:00",
            "event_type": "api_call",
            "agent_name": None,
            "model": "claude-opus-4",
            "tokens": 1000 * (i + 1),
            "latency_ms": 5,
        }
        for i in range(2)
    ]
    snap = {
        "project": {"cost": 1.3, "calls": 3, "last_updated": "2025-11-15T21:40:05+00:00"},
        "machine": {"uptime": 305},
        "activity": events,
    }
    accounting = reconciler.apply(Snapshot.model_validate(snap), NOW)
    assert {event.cost_basis for event in accounting.events} == {"apportioned"}
    assert sum(event.cost_usd for event in accounting.events) == pytest.approx(0.3)
    assert accounting.unattributed is None


def test_old_format_counts_per_model_deltas() -> None:
    """The old {cache, models, totals} format is accounted from per-model growth."""
    reconciler = Reconciler("p", PRICES)

    def old(requests: int, cost: float) -> str:
        return orjson.dumps(
            {
                "cache": {},
                "models": [
                    {
                        "model": "claude-opus-4",
                        "requests": requests,
                        "cache_hits": 0,
                        "cache_misses": requests,
                        "actual_cost": cost,
                    }
                ],
                "totals": {"requests": requests, "actual_cost": cost},
            }
        ).decode()

    assert reconciler.apply(parse_frame("analytics", old(2, 0.05)), NOW).first_contact
    accounting = reconciler.apply(parse_frame("analytics", old(5, 0.20)), NOW)
    assert accounting.requests == 3
    assert accounting.cost_usd == pytest.approx(0.15)
    assert reconciler.apply(parse_frame("analytics", old(5, 0.20)), NOW).is_empty


def test_gateway_joins_started_and_completed_once() -> None:
    """Gateway requests count once by request_id, with the model from `started`."""
    reconciler = Reconciler("g", PRICES, kind="gateway")
    reconciler.apply(GatewayStarted(type="started", request_id="r1", model="claude-sonnet-4"), NOW)
    done = GatewayCompleted(
        type="completed", request_id="r1", input_tokens=1000, output_tokens=100, cost_usd=0.0045
    )
    accounting = reconciler.apply(done, NOW)
    assert [(e.model, e.cost_usd, e.input_tokens) for e in accounting.events] == [
        ("claude-sonnet-4", 0.0045, 1000)
    ]
    assert reconciler.apply(done, NOW).is_empty
    failed = reconciler.apply(GatewayError(type="error", request_id="r2", message="529"), NOW)
    assert failed.events[0].event_type == "error"
    lag = reconciler.apply(GatewayLag(skipped=3), NOW)
    assert lag.unattributed is not None
    assert lag.unattributed.lost_events == 3


def test_gateway_pending_map_is_bounded() -> None:
    """Started requests that never complete are evicted and counted, not kept forever."""
    reconciler = Reconciler("g", PRICES, kind="gateway", pending_capacity=10)
    for index in range(25):
        reconciler.apply(
            GatewayStarted(type="started", request_id=f"r{index}", model="claude-opus-4"), NOW
        )
    saved = reconciler.snapshot_state()
    assert len(saved["pending"]) == 10
    assert saved["pending_evicted"] == 15


@given(st.lists(st.text(min_size=1, max_size=5), max_size=200), st.integers(1, 50))
def test_bounded_key_set_never_exceeds_capacity(keys: list[str], capacity: int) -> None:
    """The de-duplication memory holds at most its capacity and keeps the newest keys."""
    memory = BoundedKeySet(capacity)
    for key in keys:
        memory.add(key)
    assert len(memory) <= capacity
    if keys:
        assert keys[-1] in memory


def test_restart_missed_by_uptime_and_window_is_caught_by_the_totals() -> None:
    """Away longer than the new uptime, a full new window, totals past the old: a restart."""
    proxy = ProxyModel()
    reconciler = Reconciler("p", PRICES)
    feed(reconciler, proxy)
    proxy.save()
    for _ in range(10):
        proxy.call(1, 1000, "api")  # unsaved: the restarting proxy forgets them
    feed(reconciler, proxy)
    proxy.restart()
    proxy.tick(900)
    for _ in range(25):
        proxy.call(2, 1000, "api")
    accounting = feed(reconciler, proxy)
    assert accounting.proxy_restart
    assert accounting.requests == 20  # the window; the 5 beyond it are unknowable
    feed(reconciler, proxy)
    # The documented estimate: the reloaded total is taken as at most the last one seen
    # (10 here; really 0), so the 5 events that scrolled out are not counted.
    state = reconciler.state
    assert (state.attributed_requests, state.unattributed_requests) == (30, 0)
