"""Exactly-once accounting: the reconciler against an independent proxy model."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cco_cost_monitor.pricing import PriceTable
from cco_cost_monitor.reconciler import Accounting, BoundedKeySet, Reconciler
from cco_cost_monitor.wire import (
    GatewayCompleted,
    GatewayError,
    GatewayLag,
    GatewayStarted,
    Snapshot,
    parse_frame,
)
from tests.proxy_model import ProxyModel

NOW = datetime(2025, 11, 17, 22, 0, tzinfo=UTC)
PRICES = PriceTable.default()


def feed(reconciler: Reconciler, proxy: ProxyModel) -> Accounting:
    frame = parse_frame("analytics", proxy.snapshot_json())
    return reconciler.apply(frame, proxy.clock)


Call = st.tuples(
    st.integers(0, 3), st.integers(1, 200_000), st.sampled_from(["api", "cache_hit", "override"])
)
Op = st.one_of(
    st.tuples(st.just("calls"), st.lists(Call, min_size=1, max_size=8)),
    st.tuples(st.just("burst"), st.lists(Call, min_size=21, max_size=60)),
    st.tuples(st.just("snapshot")),
    st.tuples(st.just("disconnect")),
    st.tuples(st.just("reconnect")),
    st.tuples(st.just("save")),
    st.tuples(st.just("restart"), st.lists(Call, max_size=12)),
    st.tuples(st.just("monitor_restart")),
)


class Run:
    """Drives a proxy model and a reconciler, keeping the ground truth."""

    def __init__(self) -> None:
        self.proxy = ProxyModel()
        self.reconciler = Reconciler("p", PRICES)
        self.connected = True
        self.keys: list[str] = []
        self.base_calls = 0
        self.base_cost = 0.0
        self.exact = True
        self.window_events: set[str] = set()
        self.first_window: set[str] = set()
        self.deliver()
        self.base_calls, self.base_cost = self.proxy.true_calls, self.proxy.true_cost

    def deliver(self) -> None:
        snap = self.proxy.snapshot()
        frame = parse_frame("analytics", orjson.dumps(snap).decode())
        assert isinstance(frame, Snapshot)
        accounting = self.reconciler.apply(frame, self.proxy.clock)
        stamps = {event["timestamp"] for event in snap["activity"]}
        if accounting.first_contact:
            self.first_window = stamps
        else:
            self.window_events |= stamps - self.first_window
        self.keys.extend(event.key for event in accounting.events)
        if accounting.unattributed is not None:
            assert accounting.unattributed.requests >= 0
            assert accounting.unattributed.cost_usd >= -1e-9

    def calls(self, calls: list[tuple[int, int, str]]) -> None:
        for model, tokens, kind in calls:
            self.proxy.call(model, tokens, kind)

    def step(self, op: tuple[object, ...]) -> None:
        name = op[0]
        if name in ("calls", "burst"):
            self.calls(op[1])  # type: ignore[arg-type]
            if name == "burst" and self.connected:
                self.deliver()
        elif name == "snapshot" and self.connected:
            self.deliver()
        elif name == "disconnect":
            self.connected = False
        elif name == "reconnect":
            self.connected = True
            self.deliver()
        elif name == "save":
            self.proxy.save()
        elif name == "restart":
            # The proxy goes down right after a snapshot every connected client saw.
            self.connected = True
            self.deliver()
            self.proxy.restart()
            self.calls(op[1])  # type: ignore[arg-type]
            if len(self.proxy.ring) >= 20:
                self.exact = False
            self.deliver()
        elif name == "monitor_restart":
            state = orjson.loads(orjson.dumps(self.reconciler.snapshot_state()))
            self.reconciler = Reconciler("p", PRICES, state=state)


@settings(max_examples=300, deadline=None)
@given(st.lists(Op, max_size=40))
def test_accounting_equals_ground_truth(ops: list[tuple[object, ...]]) -> None:
    """For any traffic, bursts, disconnects and restarts, totals equal the ground truth."""
    run = Run()
    for op in ops:
        run.step(op)
    run.connected = True
    run.deliver()
    state = run.reconciler.state
    truth_calls = run.proxy.true_calls - run.base_calls
    truth_cost = run.proxy.true_cost - run.base_cost
    accounted_cost = state.attributed_cost + state.unattributed_cost
    accounted_calls = state.attributed_requests + state.unattributed_requests
    assert len(run.keys) == len(set(run.keys)), "an event was counted twice"
    if run.exact:
        assert accounted_calls == truth_calls
        assert accounted_cost == pytest.approx(truth_cost, abs=1e-9)
    else:
        assert state.attributed_requests <= accounted_calls <= truth_calls
        assert accounted_cost <= truth_cost + 1e-9
    assert state.unattributed_requests >= 0
    assert state.unattributed_cost >= -1e-9


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(Call, min_size=1, max_size=20), max_size=15))
def test_every_event_seen_in_a_window_is_attributed_exactly_once(
    batches: list[list[tuple[int, int, str]]],
) -> None:
    """Each unique event that appears in any window is attributed once, the rest is the gap."""
    run = Run()
    for batch in batches:
        run.calls(batch)
        run.deliver()
        run.deliver()  # an idle replay of the same window adds nothing
    accounted_stamps = len(run.keys)
    assert accounted_stamps == len(run.window_events)
    state = run.reconciler.state
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
    """Thirty calls in one interval: twenty attributed, ten unattributed, none lost."""
    proxy = ProxyModel()
    reconciler = Reconciler("p", PRICES)
    feed(reconciler, proxy)
    for _ in range(30):
        proxy.call(0, 10_000, "api")
    accounting = feed(reconciler, proxy)
    assert len(accounting.events) == 20
    assert accounting.unattributed is not None
    assert accounting.unattributed.requests == 10
    assert accounting.cost_usd == pytest.approx(proxy.true_cost, abs=1e-12)


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
    assert len(reconciler.state.pending) == 10
    assert reconciler.state.pending_evicted == 15


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
    assert accounting.unattributed is None or accounting.unattributed.requests >= 0
