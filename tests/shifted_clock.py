"""Run ``cco-monitor`` with a wall clock that a test can step, as ``date -s`` would.

``python tests/shifted_clock.py OFFSET_FILE ARGS...`` runs ``cco-monitor ARGS`` with
``time.time`` and ``datetime.now`` shifted by the number of seconds in OFFSET_FILE, read
again on every call (a missing or empty file is 0). The monotonic clock is left alone,
exactly as when the system clock is stepped. Only for tests: the monitor itself has no
such hook.
"""

from __future__ import annotations

import datetime as _datetime_module
import runpy
import sys
import time
from pathlib import Path
from typing import Any

OFFSET_FILE = Path(sys.argv[1])
_real_time = time.time
_real_time_ns = time.time_ns
_cache: list[Any] = [None, 0.0]


def offset() -> float:
    try:
        stamp = OFFSET_FILE.stat().st_mtime_ns
    except FileNotFoundError:
        return 0.0
    if _cache[0] != stamp:
        text = OFFSET_FILE.read_text().strip()
        _cache[:] = [stamp, float(text) if text else 0.0]
    value: float = _cache[1]
    return value


def shifted_time() -> float:
    return _real_time() + offset()


def shifted_time_ns() -> int:
    return _real_time_ns() + int(offset() * 1e9)


class ShiftedDatetime(_datetime_module.datetime):
    @classmethod
    def now(cls, tz: _datetime_module.tzinfo | None = None) -> Any:
        return cls.fromtimestamp(shifted_time(), tz)

    @classmethod
    def utcnow(cls) -> Any:
        return cls.fromtimestamp(shifted_time(), _datetime_module.UTC).replace(tzinfo=None)


time.time = shifted_time
time.time_ns = shifted_time_ns
_datetime_module.datetime = ShiftedDatetime  # type: ignore[misc]

sys.argv = ["cco-monitor", *sys.argv[2:]]
runpy.run_module("cco_cost_monitor", run_name="__main__", alter_sys=True)
