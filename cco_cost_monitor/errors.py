"""The exceptions cco-monitor raises, as one small hierarchy.

MonitorError
├── ConfigError        -- a bad config file, key, value or flag (exit 1, names the key)
├── StartupError       -- the service could not come up (port in use, state dir unwritable)
├── StoreError         -- the database is corrupt, locked or unwritable
├── AlreadyRunning     -- another daemon holds the PID lock (exit 3)
└── WireError          -- a frame that is not what the proxy sends (counted and skipped)

and the exit codes the commands answer with (the README's table).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
#: ``start``: another daemon holds the lock. ``status``/``stop``: the same number, "not running".
EXIT_ALREADY_RUNNING = 3
EXIT_NOT_RUNNING = 3


class MonitorError(Exception):
    """Base class of every error cco-monitor raises on purpose."""


class ConfigError(MonitorError):
    """The configuration is invalid; the message names the offending key."""


class StartupError(MonitorError):
    """The service could not start; the message says why."""


class StoreError(MonitorError):
    """The database cannot be used; never answered by a silent reset."""


class AlreadyRunning(MonitorError):
    """Another cco-monitor holds the PID lock."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "an unknown process"
        super().__init__(f"already running ({who})")


class WireError(MonitorError):
    """A frame could not be parsed. ``kind`` is a short, bounded label for counters."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")
