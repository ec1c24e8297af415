"""Tests for sd_notify, the watchdog period and service-manager detection (``sdnotify``)."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cco_cost_monitor.sdnotify import notify, under_service_manager, watchdog_period

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="abstract sockets are Linux-only"
)


@pytest.fixture
def receiver() -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket in a short temporary directory (paths max ~104 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sdn", dir="/tmp") as directory:
        path = str(Path(directory) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        try:
            yield sock, path
        finally:
            sock.close()


def test_notify_without_socket_is_a_noop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without NOTIFY_SOCKET nothing is sent and notify() says so."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False


def test_notify_sends_datagram_to_path_socket(
    monkeypatch: pytest.MonkeyPatch, receiver: tuple[socket.socket, str]
) -> None:
    """Each notify() arrives as one datagram on the socket named by NOTIFY_SOCKET."""
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert notify("READY=1") is True
    assert notify("STATUS=connected\nWATCHDOG=1") is True
    assert sock.recv(4096) == b"READY=1"
    assert sock.recv(4096) == b"STATUS=connected\nWATCHDOG=1"


@linux_only
def test_notify_sends_to_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """A NOTIFY_SOCKET starting with '@' names a socket in the abstract namespace."""
    name = f"cco-monitor-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"


def test_notify_to_missing_socket_returns_false(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A NOTIFY_SOCKET that nobody listens on, or that is not a path, is reported, not raised."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "absent"))
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/name")
    assert notify("READY=1") is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "{pid}"}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_period(env: dict[str, str], expected: float | None) -> None:
    """The ping period is half of WATCHDOG_USEC, only when the watchdog is meant for us."""
    env = {key: value.replace("{pid}", str(os.getpid())) for key, value in env.items()}
    assert watchdog_period(env) == expected


def test_watchdog_period_reads_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an explicit mapping the process environment is used."""
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_period() == 2.0


def test_plain_shell_is_not_a_service_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interactive shell environment (as in Terminal.app) does not count as a service."""
    monkeypatch.setattr(os, "getppid", lambda: 4242)
    assert under_service_manager({}) is False
    assert under_service_manager({"XPC_SERVICE_NAME": "0"}) is False
    assert under_service_manager({"INVOCATION_ID": "abc"}) is False


def test_notify_socket_means_systemd() -> None:
    """NOTIFY_SOCKET is only given to Type=notify services: it always means systemd."""
    assert under_service_manager({"NOTIFY_SOCKET": "/run/systemd/notify"}) is True


def test_invocation_id_counts_only_when_parent_is_the_manager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """INVOCATION_ID leaked into a terminal is ignored unless our parent is systemd itself."""
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "getppid", lambda: 1)
    assert under_service_manager({"INVOCATION_ID": "abc"}) is True
    monkeypatch.setattr(os, "getppid", os.getpid)
    assert under_service_manager({"INVOCATION_ID": "abc"}) is False


@pytest.mark.parametrize(
    ("label", "ppid", "expected"),
    [
        ("dev.cco-monitor", 1, True),
        ("0", 1, False),
        ("", 1, False),
        ("application.com.microsoft.VSCode.1234.5678", 1, False),
        ("dev.cco-monitor", 4242, False),
    ],
)
def test_launchd_detection(
    monkeypatch: pytest.MonkeyPatch, label: str, ppid: int, expected: bool
) -> None:
    """Only a launchd job (a real label and launchd as parent) counts, not a GUI app's shell."""
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(os, "getppid", lambda: ppid)
    assert under_service_manager({"XPC_SERVICE_NAME": label}) is expected
