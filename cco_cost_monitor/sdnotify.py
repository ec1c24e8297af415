"""Talking to the service manager: sd_notify, the systemd watchdog, and "who started us".

This module owns the environment variables the service managers set (``NOTIFY_SOCKET``,
``WATCHDOG_USEC``/``WATCHDOG_PID``, ``INVOCATION_ID``, launchd's ``XPC_SERVICE_NAME``). It is
stdlib only and never raises on a missing or broken socket: outside systemd every call is a
cheap no-op.

Messages the service sends (``Type=notify``): ``READY=1`` once the health port is bound,
``WATCHDOG=1`` every ``watchdog_period()`` seconds, ``RELOADING=1`` / ``READY=1`` around a
SIGHUP reload, and ``STOPPING=1`` on shutdown.

``under_service_manager()`` decides whether ``start`` must refuse to fork. The rule, chosen to
avoid false positives in interactive shells (where these variables can leak from a terminal
emulator that itself runs as a service):

- systemd: ``NOTIFY_SOCKET`` is set (only a ``Type=notify`` unit gets it), or ``INVOCATION_ID``
  is set *and* our parent is the service manager (pid 1, or a process named ``systemd``, i.e.
  the per-user manager).
- launchd (macOS): ``XPC_SERVICE_NAME`` is set to a job label (not empty, not ``"0"`` as in
  Terminal.app shells, not ``application.*`` as in shells of GUI apps such as VS Code or iTerm2)
  *and* our parent is launchd (pid 1).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["notify", "under_service_manager", "watchdog_period"]


def notify(message: str) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``; ``False`` if it was not sent."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError:
        return False
    return True


def watchdog_period(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or ``None`` if disabled."""
    env = os.environ if environ is None else environ
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid is not None and watchdog_pid.strip() != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000


def _parent_is_systemd() -> bool:
    ppid = os.getppid()
    if ppid == 1:
        return True
    try:
        return Path(f"/proc/{ppid}/comm").read_text().strip() == "systemd"
    except OSError:
        return False


def under_service_manager(environ: Mapping[str, str] | None = None) -> bool:
    """Whether systemd or launchd runs us as a service (so ``start`` must not fork)."""
    env = os.environ if environ is None else environ
    if env.get("NOTIFY_SOCKET"):
        return True
    if env.get("INVOCATION_ID") and sys.platform.startswith("linux") and _parent_is_systemd():
        return True
    label = env.get("XPC_SERVICE_NAME", "")
    return (
        sys.platform == "darwin"
        and label not in ("", "0")
        and not label.startswith("application.")
        and os.getppid() == 1
    )
