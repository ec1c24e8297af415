"""Settling the proxy's counters against the events seen: what no event explains. Pure.

A snapshot is not an atomic picture (wire-format spec, "What a snapshot does not promise"):
``calls``, ``cost`` and the ring are read apart while requests finish, so one snapshot can show
an event its ``calls`` does not include yet, ``cost`` ahead of ``calls``, or (rarely) a total
whose event appears only in the next snapshot; a snapshot held back by the proxy's save shows
old ``calls`` next to a newer ring. Comparing one snapshot's counters with its own window is
therefore wrong in both directions. :class:`Settlement` compares them only where the
comparison is sound:

- **settled pairs**: every request a snapshot's counters include has its event in the ring a
  moment later (the proxy writes the record, then the ring). So the counters of a snapshot
  ``k`` against the events seen up to a snapshot at least :data:`SETTLE_SECONDS` later (by the
  monitor's clock *and* the proxy's) give a lower bound of what no event will ever explain.
  Counted as it grows, it is never more than the truth, and never negative.
- **quiet points**: two settled snapshots with the same counters and the same window mean
  nothing was in flight: counters and ring agree exactly there. Between two quiet points the
  unexplained growth is exact; the remainder of the lower bound is counted at the second.

The counters of the point where accounting starts (an *anchor*) come from first contact (the
contract's baseline: growth is measured from the counters first seen) or from a quiet point.
When the proxy restarts, its ring is gone and no event of the old run can still come: the last
snapshot of that run settles it (:meth:`Settlement.close`).
After a proxy restart the reloaded totals are not known exactly while requests are in flight:
until the first quiet point nothing is counted as unexplained unless the windows prove a loss
(then the reloaded total is estimated from the first window, reason ``restart_gap``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["SETTLE_SECONDS", "Counters", "Settlement", "Shortfall", "settle_seconds"]

#: How long after a snapshot's counters were read its requests' events are surely in the ring.
#: The proxy writes an event microseconds after its record; snapshots fired back to back after a
#: save are milliseconds apart and must not settle each other. (Less when the proxy's cadence is
#: faster than 2 s, as in tests and the demo: half the snapshot interval.)
SETTLE_SECONDS = 1.0
COST_EPSILON = 1e-9
#: Snapshots waiting to settle. At one per 5 s only two or three are ever kept; a burst of back-
#: to-back snapshots is collapsed to its newest.
PENDING_LIMIT = 64
#: Distinct estimates of a restarted proxy's reloaded totals kept while voting.
VOTE_LIMIT = 32

Reason = Literal["gap", "restart_overflow", "restart_gap"]


def settle_seconds(snapshot_interval: float) -> float:
    """The settle time for a proxy that sends a snapshot every ``snapshot_interval`` seconds."""
    return min(SETTLE_SECONDS, snapshot_interval / 2)


@dataclass(frozen=True, slots=True)
class Counters:
    """One snapshot's counters with the events counted by then and when it was taken."""

    calls: int
    cost: float
    seen_requests: int
    seen_cost: float
    observed: float
    proxy_time: float | None

    def settles(self, later: Counters, seconds: float) -> bool:
        """Whether ``later`` was taken at least ``seconds`` after this one on both clocks.

        A clock that went backwards between the two (a wall-clock step) proves nothing
        either way and is not asked; when both did, the pair is taken as settled, so that a
        step back never holds settlement until the clock has caught up again.
        """
        gaps = [later.observed - self.observed]
        if self.proxy_time is not None and later.proxy_time is not None:
            gaps.append(later.proxy_time - self.proxy_time)
        return all(gap >= seconds for gap in gaps if gap >= 0)

    def to_list(self) -> list[Any]:
        return [
            self.calls,
            self.cost,
            self.seen_requests,
            self.seen_cost,
            self.observed,
            self.proxy_time,
        ]

    @classmethod
    def from_list(cls, values: list[Any]) -> Counters:
        calls, cost, seen_requests, seen_cost, observed, proxy_time = values
        return cls(
            int(calls),
            float(cost),
            int(seen_requests),
            float(seen_cost),
            float(observed),
            None if proxy_time is None else float(proxy_time),
        )


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Requests and dollars the counters prove that no event explains (both >= 0)."""

    requests: int
    cost: float
    reason: Reason


class Settlement:
    """Per proxy run: the anchor, the snapshots waiting to settle, what was counted as unexplained.

    ``seen_*`` arguments are cumulative counts of attributed requests/cost, ``unexplained_*``
    the cumulative unattributed counts, both as the reconciler keeps them.
    """

    def __init__(
        self, state: dict[str, Any] | None = None, *, settle_seconds: float = SETTLE_SECONDS
    ) -> None:
        self.settle_seconds = settle_seconds
        state = state or {}
        self.anchor: Counters | None = (
            Counters.from_list(state["anchor"]) if state.get("anchor") else None
        )
        # Unattributed counted at the anchor, less any excess found there (see quiet()).
        self.anchor_unexplained_requests: int = int(state.get("anchor_unexplained_requests", 0))
        self.anchor_unexplained_cost: float = float(state.get("anchor_unexplained_cost", 0.0))
        # After a restart, until a quiet point: the reloaded totals are an estimate.
        self.estimated: bool = bool(state.get("estimated", False))
        # After a restart, while no event can have been missed since its first window: the
        # reloaded totals are tightened from settled snapshots, never above ``cap``.
        self.refining: bool = bool(state.get("refining", False))
        # How often each estimate of the reloaded calls and cost was seen (see _vote).
        self.call_votes: dict[str, int] = dict(state.get("call_votes", {}))
        self.cost_votes: dict[str, int] = dict(state.get("cost_votes", {}))
        # Estimates given by a snapshot with no event since the restart: no event can be ahead
        # of its counters (the common race), so on a tie they outweigh the others.
        self.clean_calls: set[str] = set(state.get("clean_calls", []))
        self.clean_costs: set[str] = set(state.get("clean_costs", []))
        # What the settled snapshots since the restart prove of the reloaded totals (_narrow).
        self.low: tuple[int, float] | None = _pair(state.get("low"))
        self.high: tuple[int, float] | None = _pair(state.get("high"))
        self.cap: tuple[int, float] | None = _pair(state.get("cap"))
        # Reloaded totals a restart often has: what the last run showed last (a save just
        # before it stopped, or traffic idle since the last save), and nothing at all.
        self.likely: list[tuple[int, float]] = [
            (int(c), float(k)) for c, k in state.get("likely", [])
        ]
        self.loss: bool = bool(state.get("loss", False))
        self.reason: Reason = state.get("reason", "gap")
        self.pending: list[Counters] = [Counters.from_list(v) for v in state.get("pending", [])]
        self.previous: Counters | None = (
            Counters.from_list(state["previous"]) if state.get("previous") else None
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "anchor": self.anchor.to_list() if self.anchor else None,
            "anchor_unexplained_requests": self.anchor_unexplained_requests,
            "anchor_unexplained_cost": self.anchor_unexplained_cost,
            "estimated": self.estimated,
            "refining": self.refining,
            "call_votes": self.call_votes,
            "cost_votes": self.cost_votes,
            "clean_calls": sorted(self.clean_calls),
            "clean_costs": sorted(self.clean_costs),
            "low": list(self.low) if self.low else None,
            "high": list(self.high) if self.high else None,
            "cap": list(self.cap) if self.cap else None,
            "likely": [list(pair) for pair in self.likely],
            "loss": self.loss,
            "reason": self.reason,
            "pending": [c.to_list() for c in self.pending],
            "previous": self.previous.to_list() if self.previous else None,
        }

    # -- where accounting starts and ends ----------------------------------------------

    def close(self, unexplained_requests: int, unexplained_cost: float) -> Shortfall | None:
        """The proxy restarted: settle its last run against the last snapshot seen of it.

        Its ring is gone, so no event of it will ever come: what the last counters show beyond
        the events seen is a lower bound of what was lost (less only by requests recorded
        after that snapshot read ``calls``, which the proxy took down with it unsaved).
        """
        last = self.previous
        if last is None or self.anchor is None or (self.estimated and not self.loss):
            return None
        return self._shortfall(last, last, unexplained_requests, unexplained_cost)

    def start(
        self,
        anchor: Counters,
        unexplained_requests: int,
        unexplained_cost: float,
        *,
        estimated: bool,
        loss: bool = False,
        reason: Reason = "gap",
        cap: tuple[int, float] | None = None,
        likely: tuple[tuple[int, float], ...] = (),
    ) -> None:
        """Begin a proxy run at ``anchor`` (first contact, or the estimate after a restart).

        ``cap``: the reloaded totals are at most this (the last seen before a restart whose
        first window may have lost events). ``likely``: reloaded totals to prefer where the
        snapshots allow them (see :meth:`_vote`).
        """
        self.anchor = anchor
        self.anchor_unexplained_requests = unexplained_requests
        self.anchor_unexplained_cost = unexplained_cost
        self.estimated = estimated
        self.refining = estimated
        self.call_votes = {}
        self.cost_votes = {}
        self.clean_calls = set()
        self.clean_costs = set()
        self.low = None
        self.high = None
        self.cap = cap
        self.likely = list(likely)
        self.loss = loss
        self.reason = reason
        self.pending = []
        self.previous = anchor
        if estimated:
            self._bound()

    # -- every snapshot ----------------------------------------------------------------

    def observe(
        self,
        now: Counters,
        *,
        unchanged: bool,
        loss: bool,
        unexplained_requests: int,
        unexplained_cost: float,
    ) -> Shortfall | None:
        """Account one snapshot (its events already counted in ``now.seen_*``).

        ``unchanged``: the window is the previous snapshot's, with no new event. ``loss``: the
        window does not overlap the previous one, so events may have scrolled out unseen.
        Returns what became provably unexplained, or ``None``.
        """
        self.loss = self.loss or loss
        self.refining = self.refining and not loss
        if self.estimated:
            self._narrow(now)
        if self.refining:
            self._vote(now)
        elif self.estimated:
            self._bound()
        previous = self.previous
        self.previous = now
        quiet = (
            unchanged
            and previous is not None
            and previous.calls == now.calls
            and previous.cost == now.cost
            and previous.settles(now, self.settle_seconds)
        )
        if quiet:
            if self.refining:  # counters and ring agree here: the reload is known exactly
                self._refine(now, now)
            return self._quiet(now, unexplained_requests, unexplained_cost)
        settled = None
        while self.pending and self.pending[0].settles(now, self.settle_seconds):
            settled = self.pending.pop(0)
        if settled is not None:
            # The newest settled snapshot stays first: a later one may settle against it again.
            self.pending.insert(0, settled)
        self.pending.append(now)
        if len(self.pending) > PENDING_LIMIT:
            del self.pending[1]
        if settled is None or (self.estimated and not self.loss):
            return None
        return self._shortfall(settled, now, unexplained_requests, unexplained_cost)

    def _refine(self, settled: Counters, now: Counters) -> None:
        """Take the reloaded totals from a snapshot whose counters agree with the ring."""
        anchor = self.anchor
        if anchor is None:
            return
        self._set_anchor(
            settled.calls - (now.seen_requests - anchor.seen_requests),
            settled.cost - (now.seen_cost - anchor.seen_cost),
            replace=True,
        )

    def _narrow(self, now: Counters) -> None:
        """After a restart: what this snapshot proves of the reloaded totals ``B``.

        ``calls`` is ``B`` plus the requests recorded by the time it was read, so it is at
        least ``B`` plus the requests of every event seen in a snapshot it settles (the
        restart itself to begin with): an upper bound, which holds even after a loss. While
        no event can have been missed, the events seen now include every request a settled
        snapshot's counters count: a lower bound. The same holds for ``cost``. At a quiet
        point the two meet.
        """
        anchor = self.anchor
        if anchor is None:
            return
        earlier = next(
            (c for c in reversed(self.pending) if c.settles(now, self.settle_seconds)), None
        )
        before = earlier if earlier is not None else anchor
        high = (
            now.calls - (before.seen_requests - anchor.seen_requests),
            now.cost - (before.seen_cost - anchor.seen_cost),
        )
        if self.high is not None:
            high = (min(high[0], self.high[0]), min(high[1], self.high[1]))
        self.high = high
        if earlier is not None and self.refining:
            low = (
                earlier.calls - (now.seen_requests - anchor.seen_requests),
                earlier.cost - (now.seen_cost - anchor.seen_cost),
            )
            if self.low is not None:
                low = (max(low[0], self.low[0]), max(low[1], self.low[1]))
            self.low = low

    def _vote(self, now: Counters) -> None:
        """After a restart, while no event can have been missed: estimate the reloaded totals.

        Each snapshot's ``counters - events seen since the restart`` is the reloaded total,
        less the requests it shows ahead of its ``calls`` (the common race), plus any it
        counts whose events are not in the ring yet (the rare one). A snapshot with nothing in
        flight gives the exact value, and most do: the value seen most often is the estimate
        (the first window's alone to begin with).
        """
        anchor = self.anchor
        if anchor is None:
            return
        calls = now.calls - (now.seen_requests - anchor.seen_requests)
        cost = now.cost - (now.seen_cost - anchor.seen_cost)
        call_key, cost_key = str(calls), f"{cost:.9f}"
        if now.seen_requests == anchor.seen_requests:
            # No event since the restart, so none can be ahead of these counters.
            self.clean_calls.add(call_key)
            self.clean_costs.add(cost_key)
        # Calls and cost are read apart and race apart: each has its own vote.
        low, high = self.low, self.high
        likely_calls = {
            str(c)
            for c, _ in self.likely
            if (low is None or c >= low[0]) and (high is None or c <= high[0])
        }
        likely_costs = {
            f"{k:.9f}"
            for _, k in self.likely
            if (low is None or k >= low[1] - COST_EPSILON)
            and (high is None or k <= high[1] + COST_EPSILON)
        }
        best_calls = int(_most_seen(self.call_votes, call_key, self.clean_calls, likely_calls))
        best_cost = float(_most_seen(self.cost_votes, cost_key, self.clean_costs, likely_costs))
        self._set_anchor(best_calls, best_cost, replace=True)

    def _set_anchor(self, calls: int, cost: float, *, replace: bool = False) -> None:
        anchor = self.anchor
        if anchor is None:
            return
        if not replace:
            calls, cost = max(calls, anchor.calls), max(cost, anchor.cost)
        self.anchor = Counters(
            calls, cost, anchor.seen_requests, anchor.seen_cost, anchor.observed, anchor.proxy_time
        )
        self._bound()

    def _bound(self) -> None:
        """Reloaded totals within what the snapshots prove, never negative, never above the
        cap (when there is one)."""
        anchor = self.anchor
        if anchor is None:
            return
        calls, cost = anchor.calls, anchor.cost
        if self.low is not None:
            calls, cost = max(calls, self.low[0]), max(cost, self.low[1])
        if self.high is not None:
            calls, cost = min(calls, self.high[0]), min(cost, self.high[1])
        calls, cost = max(0, calls), max(0.0, cost)
        if self.cap is not None:
            calls, cost = min(calls, self.cap[0]), min(cost, self.cap[1])
        if self.high is not None and self.high[0] <= 0:
            cost = 0.0  # proved: no record reloaded, so no dollar (a metrics file cut by a crash)
        if (calls, cost) != (anchor.calls, anchor.cost):
            self.anchor = Counters(
                calls,
                cost,
                anchor.seen_requests,
                anchor.seen_cost,
                anchor.observed,
                anchor.proxy_time,
            )

    def _target(self, counters: Counters, now: Counters) -> tuple[int, float]:
        anchor = self.anchor
        if anchor is None:
            return 0, 0.0
        requests = (counters.calls - anchor.calls) - (now.seen_requests - anchor.seen_requests)
        cost = (counters.cost - anchor.cost) - (now.seen_cost - anchor.seen_cost)
        return requests, cost

    def _shortfall(
        self, settled: Counters, now: Counters, unexplained_requests: int, unexplained_cost: float
    ) -> Shortfall | None:
        target_requests, target_cost = self._target(settled, now)
        requests = target_requests - (unexplained_requests - self.anchor_unexplained_requests)
        cost = target_cost - (unexplained_cost - self.anchor_unexplained_cost)
        requests = max(0, requests)
        cost = cost if cost > COST_EPSILON else 0.0
        if not requests and not cost:
            return None
        return Shortfall(requests, cost, self.reason if self.estimated else "gap")

    def _quiet(
        self, now: Counters, unexplained_requests: int, unexplained_cost: float
    ) -> Shortfall | None:
        """Counters and ring agree here: settle exactly, then start again from this point."""
        shortfall = None
        excess_requests = 0
        excess_cost = 0.0
        if not self.estimated or self.loss:
            target_requests, target_cost = self._target(now, now)
            requests = target_requests - (unexplained_requests - self.anchor_unexplained_requests)
            cost = target_cost - (unexplained_cost - self.anchor_unexplained_cost)
            # Negative only when more was counted than the counters grew by (an event of
            # the baseline that reached the ring late, or a restart nothing showed): carried
            # into the next anchor so later growth pays it off first, never shown as negative.
            excess_requests = min(0, requests)
            excess_cost = min(0.0, cost) if abs(cost) > COST_EPSILON else 0.0
            if requests > 0 or cost > COST_EPSILON:
                shortfall = Shortfall(
                    max(0, requests),
                    cost if cost > COST_EPSILON else 0.0,
                    self.reason if self.estimated else "gap",
                )
        counted_requests = unexplained_requests + (shortfall.requests if shortfall else 0)
        counted_cost = unexplained_cost + (shortfall.cost if shortfall else 0.0)
        self.anchor = now
        self.anchor_unexplained_requests = counted_requests + excess_requests
        self.anchor_unexplained_cost = counted_cost + excess_cost
        self.estimated = False
        self.refining = False
        self.low = None
        self.high = None
        self.cap = None
        self.likely = []
        self.loss = False
        self.reason = "gap"
        self.pending = []
        return shortfall


def _pair(value: Any) -> tuple[int, float] | None:
    return (int(value[0]), float(value[1])) if value else None


def _most_seen(votes: dict[str, int], value: str, clean: set[str], likely: set[str]) -> str:
    """Count one more ``value``; the value seen most often. A tie of two snapshots is one
    race either way: then a ``clean`` value (given by a snapshot no event can be ahead of),
    then a ``likely`` one, else the smaller. (A likely value never seen is not a candidate:
    one snapshot without a race outweighs any prior.)"""
    votes[value] = votes.get(value, 0) + 1
    if len(votes) > VOTE_LIMIT:
        del votes[min(votes, key=votes.__getitem__)]
        clean.intersection_update(votes)
    return max(votes, key=lambda key: (votes[key], key in clean, key in likely, -float(key)))
