"""The PID lock: who is running, decided by ``fcntl.flock`` and never by a file's existence.

This module owns ``daemon.pid`` in the state directory. A running monitor holds an exclusive
``flock`` on that file for its whole life and writes its pid into it. The kernel drops the lock
when the holder dies in any way (including ``kill -9``), so a file left behind is harmless: the
lock, not the text, says "running". The file is never unlinked, because unlinking races with a
concurrent starter (which could lock the old inode while a third process creates a new one).

``PidLock`` is the holder's side; ``running_pid`` and ``lock_held`` are the observers' side
(``status``, ``stop``, ``reload`` and the pre-check of ``start``).

The lock is tied to the open file description: a process that ``fork``\\ s without ``exec``
shares it with its children. The descriptor is opened ``O_CLOEXEC`` so that programs started
with ``exec`` do not inherit it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from cco_cost_monitor.errors import AlreadyRunning
from cco_cost_monitor.statedir import open_private

__all__ = ["PidLock", "lock_held", "running_pid"]

#: How long an observer waits for a freshly started holder to write its pid.
_PID_TEXT_WAIT = 0.25
_PID_TEXT_STEP = 0.01
_MAX_PID_TEXT = 64


class PidLock:
    """An exclusive, non-blocking ``flock`` on ``path`` that records the holder's pid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this instance currently holds the lock."""
        return self._fd is not None

    def fileno(self) -> int:
        """The locked descriptor (for ``files_preserve``); ``ValueError`` when not held."""
        if self._fd is None:
            raise ValueError("the PID lock is not held")
        return self._fd

    def acquire(self) -> None:
        """Take the lock and publish our pid, or raise ``AlreadyRunning(holder pid or None)``.

        Install signal handling before calling this: the pid is published here.
        """
        if self._fd is not None:
            return
        # 0600, and never through a symlink planted in the state dir (O_NOFOLLOW: ELOOP).
        fd = open_private(self.path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = _wait_for_pid_text(fd)
            finally:
                os.close(fd)
            raise AlreadyRunning(holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Drop the lock by closing the descriptor. The file stays where it is."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "held" if self.held else "free"
        return f"PidLock({str(self.path)!r}, {state})"


def _parse_pid(raw: bytes) -> int | None:
    text = raw.strip()
    if not text.isdigit():
        return None
    pid = int(text)
    return pid if pid > 0 else None


def _read_pid_text(fd: int) -> int | None:
    return _parse_pid(os.pread(fd, _MAX_PID_TEXT, 0))


def _wait_for_pid_text(fd: int) -> int | None:
    """Read the holder's pid, allowing it a moment to write it after taking the lock."""
    deadline = time.monotonic() + _PID_TEXT_WAIT
    while True:
        pid = _read_pid_text(fd)
        if pid is not None or time.monotonic() >= deadline:
            return pid
        time.sleep(_PID_TEXT_STEP)


def _probe(path: Path) -> tuple[bool, int | None]:
    """(held, pid) as seen through a fresh descriptor; never creates the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _wait_for_pid_text(fd)
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        return False, None
    finally:
        os.close(fd)


def lock_held(path: Path) -> bool:
    """Whether some process holds the lock on ``path`` (regardless of what the file says)."""
    return _probe(path)[0]


def running_pid(path: Path) -> int | None:
    """The pid of the live holder of the lock on ``path``; ``None`` when nobody holds it.

    A stale file (left by a killed holder) reads as not running. In the rare case where the
    lock is held but no pid can be read (a holder stopped between locking and writing, or a
    foreign program locking the file), this also returns ``None``; use ``lock_held`` to tell.
    """
    return _probe(path)[1]
