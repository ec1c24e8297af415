"""What one window of the proxy's activity ring says about the last one. Pure, no I/O.

Every snapshot carries the newest events of the proxy's append-only ring, oldest first, and
events carry no id. Two events can be byte-identical (simulated-era responses with
microsecond clocks), so identity by content alone loses multiplicity. This module owns the
two answers that keep it:

- :func:`overlap` -- how many events at the start of a window are the end of the previous one
  (consecutive windows of one ring overlap in order), so that ``window[overlap:]`` are the new
  events, duplicates included;
- :class:`Occurrences` -- a stable key per occurrence of identical content (the second twin gets
  its own key), so the database and a restart keep both.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

__all__ = ["Occurrences", "overlap"]


def overlap(previous: Sequence[str], window: Sequence[str]) -> int:
    """The length of the longest suffix of ``previous`` that is a prefix of ``window``.

    The longest match means the fewest new events: when identical events make the alignment
    ambiguous, counting too few events is safe (the proxy's counters account the rest as
    unattributed), counting too many is not.
    """
    longest = min(len(previous), len(window))
    for length in range(longest, 0, -1):
        if previous[len(previous) - length] == window[0] and (
            previous[len(previous) - length :] == window[:length]
        ):
            return length
    return 0


class Occurrences:
    """How often each recent content key was counted, so that twins get distinct keys.

    Identical events share a timestamp, so they are close together in the ring: remembering
    the ``capacity`` most recently counted contents is enough to number them.
    """

    __slots__ = ("_counts", "capacity")

    def __init__(self, capacity: int, counts: Iterable[tuple[str, int]] = ()) -> None:
        self.capacity = capacity
        self._counts: OrderedDict[str, int] = OrderedDict(counts)
        while len(self._counts) > capacity:
            self._counts.popitem(last=False)

    def key(self, content: str) -> str:
        """The key of the next occurrence of ``content``: itself the first time, then ``#n``."""
        seen = self._counts.pop(content, 0)
        self._counts[content] = seen + 1
        if len(self._counts) > self.capacity:
            self._counts.popitem(last=False)
        return content if seen == 0 else f"{content}#{seen + 1}"

    def items(self) -> list[tuple[str, int]]:
        """Oldest first, for persisting."""
        return list(self._counts.items())
