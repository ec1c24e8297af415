"""The one grammar for a moment a user names (``--since``, ``--until``, ``?since=``). Pure.

``now``, ``today`` (midnight in the zone), a relative ``90s`` / ``30m`` / ``6h`` / ``7d`` /
``2w`` ago, epoch seconds, a date, or an RFC 3339 time. A date or a time without an offset is
in the zone the caller gives: the user's zone on the terminal, UTC on the HTTP API (a client
there has no zone we could know).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, tzinfo

__all__ = ["FORMS", "parse_moment"]

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: What an error message names as accepted.
FORMS = "7d, 12h, 30m, now, today, epoch seconds, 2025-11-17 or an RFC 3339 time"


def parse_moment(value: str, now: datetime, zone: tzinfo = UTC) -> datetime:
    """The moment ``value`` names, aware; ``ValueError`` when it names none."""
    text = value.strip().lower()
    if text == "now":
        return now
    if text == "today":
        return now.astimezone(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    try:
        if text[-1:] in UNITS and text[:-1].isdigit():
            return now - timedelta(seconds=int(text[:-1]) * UNITS[text[-1]])
        seconds = float(text)
    except OverflowError as exc:
        raise ValueError(f"{value!r} is too far back") from exc
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"{value!r} is not a moment")
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError) as exc:
            raise ValueError(f"{value!r} is out of range") from exc
    moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)
