"""Background mode and process control: ``start`` (daemonize), ``stop``, ``reload``.

This module owns the life of the *background* daemon as seen from the command line: forking
and detaching it with python-daemon, the ready handshake with the process that launched it,
and stopping or signalling it through the PID lock (``pidlock``). It does not own the service
itself: ``start_background`` receives a ``service`` callable that configures logging, installs
its signal handlers, takes the PID lock, creates the event loop and calls ``on_ready`` once the
health port listens -- all after the fork, in that order.

The handshake is one line over a pipe from the daemon to the launcher:

    ready <pid>       the health server listens          -> launcher exits 0
    running <pid|->   another monitor holds the PID lock  -> launcher exits 3
    fail <reason>     the service could not start         -> launcher exits 1

End of file (the daemon died) or no line within ``ready_timeout`` also exits 1.

Under systemd or launchd nothing here is used: they run ``start --foreground`` and the CLI
refuses background mode when ``under_service_manager()`` says so.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TextIO

import daemon as python_daemon

from cco_cost_monitor.errors import (
    EXIT_ALREADY_RUNNING,
    EXIT_FAILURE,
    EXIT_OK,
    AlreadyRunning,
    MonitorError,
)
from cco_cost_monitor.pidlock import lock_held, running_pid
from cco_cost_monitor.sdnotify import under_service_manager

__all__ = [
    "EXIT_ALREADY_RUNNING",
    "EXIT_FAILURE",
    "EXIT_OK",
    "Service",
    "StopOutcome",
    "StopStatus",
    "signal_pid",
    "start_background",
    "stop",
    "under_service_manager",
]


#: ``service(on_ready) -> exit status``; see the module docstring for what it must do.
Service = Callable[[Callable[[], None]], int]

_log = logging.getLogger(__name__)

_MAX_LINE = 8192
_MAX_REASON = 2000
_REAP_WAIT = 2.0
_POLL_INTERVAL = 0.1


# --------------------------------------------------------------------------- start


def start_background(
    *,
    pid_path: Path,
    log_path: Path,
    health_url: str | Callable[[], str],
    service: Service,
    ready_timeout: float = 20.0,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Daemonize ``service`` and wait until it is ready; return the exit status for ``start``.

    Checks the PID lock before forking (exit 3 with the holder's pid), then forks; the child
    detaches with python-daemon and runs ``service(on_ready)``. The launcher prints the pid,
    the health URL and the log file once the daemon says ``ready`` (exit 0), or the reason on
    ``err`` (exit 1). Every path the service uses must already be absolute: the daemon's
    working directory is ``/``. ``out`` and ``err`` default to the *current* ``sys.stdout``
    and ``sys.stderr`` (looked up at call time, so click's test runner captures them).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    pid_path = pid_path.expanduser().resolve()
    log_path = log_path.expanduser().resolve()

    holder = running_pid(pid_path)
    if holder is not None or lock_held(pid_path):
        _say(err, _already_running(holder))
        return EXIT_ALREADY_RUNNING

    for stream in (out, err, sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()

    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child, reported through the pipe
        os.close(read_fd)
        _run_daemon(write_fd, service)
    os.close(write_fd)
    try:
        line, timed_out = _read_line(read_fd, ready_timeout)
    finally:
        os.close(read_fd)
        _reap(child)

    verb, _, rest = line.partition(" ")
    if verb == "ready":
        # A callable is asked only now: the child has bound its port (it may have been 0).
        url = health_url() if callable(health_url) else health_url
        _say(out, f"cco-monitor started (pid {rest})\nhealth: {url}\nlog: {log_path}")
        return EXIT_OK
    if verb == "running":
        _say(err, _already_running(_parse_int(rest)))
        return EXIT_ALREADY_RUNNING
    if verb == "fail":
        _say(err, f"cco-monitor could not start: {rest}")
        return EXIT_FAILURE
    if timed_out:
        _say(
            err,
            f"cco-monitor could not start: the daemon did not become ready within "
            f"{ready_timeout:g} s; see {log_path} (if it is still starting, "
            f"`cco-monitor stop` ends it)",
        )
        return EXIT_FAILURE
    _say(
        err,
        f"cco-monitor could not start: the daemon exited before it became ready; see {log_path}",
    )
    return EXIT_FAILURE


def _say(stream: TextIO, text: str) -> None:
    stream.write(text + "\n")
    stream.flush()


def _already_running(pid: int | None) -> str:
    who = f"pid {pid}" if pid is not None else "pid unknown"
    return f"cco-monitor is already running ({who})"


def _parse_int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() else None


def _read_line(fd: int, timeout: float) -> tuple[str, bool]:
    """The first line written to ``fd`` (without the newline) and whether we gave up waiting."""
    deadline = time.monotonic() + timeout
    buffer = b""
    while b"\n" not in buffer and len(buffer) < _MAX_LINE:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "", True
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, _MAX_LINE)
        if not chunk:
            break
        buffer += chunk
    return buffer.partition(b"\n")[0].decode("utf-8", "replace"), False


def _reap(pid: int) -> None:
    """Collect the launcher's direct child (it exits as soon as python-daemon detaches)."""
    deadline = time.monotonic() + _REAP_WAIT
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done or time.monotonic() >= deadline:
            return
        time.sleep(0.01)


class _Handshake:
    """The daemon's end of the pipe: exactly one line is ever sent, then it is closed."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def send(self, line: str) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        data = (line.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8", "replace")
        try:
            os.write(fd, data)
        except OSError:
            pass  # the launcher gave up waiting; nothing to tell
        finally:
            os.close(fd)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if not isinstance(exc, MonitorError | OSError) or not text:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:_MAX_REASON]


def _signal_map() -> dict[int, object]:
    # SIGTERM is *not* mapped to python-daemon's ``terminate`` (which raises SystemExit
    # anywhere): it keeps its default action until the service's event loop handles it.
    # SIGHUP (reload) and SIGUSR1 are ignored until the service installs its handlers, so
    # that a `reload` during start-up cannot kill the daemon.
    return {
        signal.SIGTSTP: None,
        signal.SIGTTIN: None,
        signal.SIGTTOU: None,
        signal.SIGHUP: None,
        signal.SIGUSR1: None,
        signal.SIGTERM: signal.SIG_DFL,
    }


def _detach(handshake_fd: int) -> None:
    """Stdio to /dev/null, then python-daemon: umask 077, cwd /, double fork, new session."""
    null_fd = os.open(os.devnull, os.O_RDWR)
    for std_fd in (0, 1, 2):
        os.dup2(null_fd, std_fd)
    if null_fd > 2:
        os.close(null_fd)
    # Real file objects over fds 0-2: the launcher's sys.std* may be wrappers without fileno().
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
    context = python_daemon.DaemonContext(
        # Every file the daemon creates is private (0600, directories 0700).
        umask=0o077,
        working_directory="/",
        detach_process=True,
        prevent_core=True,
        files_preserve=[handshake_fd],
        signal_map=_signal_map(),
        stdin=sys.stdin,
        stdout=sys.stdout,
        stderr=sys.stderr,
    )
    context.open()


def _run_daemon(handshake_fd: int, service: Service) -> NoReturn:  # pragma: no cover - child
    handshake = _Handshake(handshake_fd)
    code = EXIT_FAILURE
    try:
        try:
            _detach(handshake_fd)
        except BaseException as exc:
            handshake.send(f"fail could not daemonize: {_describe(exc)}")
            raise

        def on_ready() -> None:
            handshake.send(f"ready {os.getpid()}")

        try:
            code = service(on_ready)
        except AlreadyRunning as exc:
            handshake.send(f"running {exc.pid if exc.pid is not None else '-'}")
            code = EXIT_ALREADY_RUNNING
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            handshake.send(f"fail the service exited with status {code} before it became ready")
        except MonitorError as exc:
            # Our own errors say what is wrong; a traceback would only add noise.
            handshake.send(f"fail {_describe(exc)}")
            _log.error("cco-monitor could not start: %s", exc)
            code = EXIT_FAILURE
        except BaseException as exc:
            handshake.send(f"fail {_describe(exc)}")
            _log.error("cco-monitor service failed", exc_info=exc)
            code = EXIT_FAILURE
        else:
            handshake.send(f"fail the service exited with status {code} before it became ready")
    except BaseException:
        code = EXIT_FAILURE
    finally:
        with contextlib.suppress(BaseException):
            logging.shutdown()
        os._exit(code)


# --------------------------------------------------------------------------- stop, signals


class StopStatus(enum.StrEnum):
    """What ``stop`` found and did."""

    NOT_RUNNING = "not_running"
    STOPPED = "stopped"
    KILLED = "killed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StopOutcome:
    """The result of ``stop``: the status, the pid it acted on, and a detail for failures."""

    status: StopStatus
    pid: int | None = None
    detail: str = ""

    @property
    def exit_code(self) -> int:
        """The exit status of ``cco-monitor stop``: 1 only when it could not stop."""
        return EXIT_FAILURE if self.status is StopStatus.FAILED else EXIT_OK

    @property
    def message(self) -> str:
        """One line for the user."""
        if self.status is StopStatus.NOT_RUNNING:
            return "cco-monitor was not running"
        if self.status is StopStatus.STOPPED:
            return f"cco-monitor stopped (pid {self.pid})"
        if self.status is StopStatus.KILLED:
            return (
                f"cco-monitor did not stop in time and was killed (pid {self.pid}); {self.detail}"
            )
        who = f" (pid {self.pid})" if self.pid is not None else ""
        return f"could not stop cco-monitor{who}: {self.detail}"


def _wait_released(pid_path: Path, timeout: float, interval: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not lock_held(pid_path):
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))


def stop(
    pid_path: Path,
    *,
    timeout: float = 10.0,
    kill_timeout: float = 5.0,
    interval: float = _POLL_INTERVAL,
) -> StopOutcome:
    """SIGTERM the lock holder, wait up to ``timeout`` for the lock to be released, then SIGKILL.

    "Exited" means the PID lock is released (the text of the pid file is never trusted alone).
    After SIGKILL it waits up to ``kill_timeout`` more seconds.
    """
    pid_path = pid_path.expanduser().resolve()
    pid = running_pid(pid_path)
    if pid is None:
        if lock_held(pid_path):
            return StopOutcome(
                StopStatus.FAILED, None, f"{pid_path} is locked but holds no readable pid"
            )
        return StopOutcome(StopStatus.NOT_RUNNING)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass  # already gone: the lock goes with it
    except PermissionError as exc:
        return StopOutcome(StopStatus.FAILED, pid, f"not allowed to signal it: {exc.strerror}")
    if _wait_released(pid_path, timeout, interval):
        return StopOutcome(StopStatus.STOPPED, pid)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        return StopOutcome(StopStatus.FAILED, pid, f"not allowed to kill it: {exc.strerror}")
    if _wait_released(pid_path, kill_timeout, interval):
        return StopOutcome(StopStatus.KILLED, pid, f"no exit within {timeout:g} s of SIGTERM")
    return StopOutcome(
        StopStatus.FAILED, pid, f"it still holds {pid_path} {kill_timeout:g} s after SIGKILL"
    )


def signal_pid(pid_path: Path, sig: int) -> int | None:
    """Send ``sig`` (SIGHUP for ``reload``, SIGUSR1, ...) to the lock holder.

    Returns the pid signalled, or ``None`` when nothing is running. ``PermissionError``
    propagates (the daemon belongs to another user).
    """
    pid = running_pid(pid_path.expanduser().resolve())
    if pid is None:
        return None
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return None
    return pid
