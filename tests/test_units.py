"""Tests for the service definitions: systemd units (``systemd/``) and the launchd agent.

The units are checked with the real ``systemd-analyze``: ``verify --recursive-errors=no`` (which
reports unknown keys) and ``security --offline=yes --threshold=N``. Exposure measured with
systemd 252: system unit 1.1, user unit 6.2 (in ``--user`` mode); the thresholds below leave a
little room for other systemd versions re-weighting the checks. Without ``systemd-analyze``
these tests skip, except on Linux with ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEM_UNIT = REPO / "systemd" / "cco-monitor.service"
USER_UNIT = REPO / "systemd" / "cco-monitor.user.service"
PLIST = REPO / "examples" / "launchd" / "dev.cco-monitor.plist"
INSTALLED_BINARY = "/usr/local/bin/cco-monitor"

#: ``systemd-analyze security --threshold`` is on the 0-100 scale (exposure 1.1 is 11).
SYSTEM_THRESHOLD = 15
USER_THRESHOLD = 65


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is not None:
        return found
    if os.environ.get("CI") == "true" and sys.platform.startswith("linux"):
        pytest.fail("systemd-analyze is required on CI (install systemd)")
    pytest.skip("systemd-analyze is not installed")


def _directives(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys may repeat)."""
    section = ""
    found = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def _service(path: Path) -> dict[str, str]:
    """The [Service] section with the last value of each key."""
    return {key: value for section, key, value in _directives(path) if section == "Service"}


def _copy_with_binary(unit: Path, directory: Path, text: str | None = None) -> Path:
    """The unit in ``directory`` with ExecStart pointing to an executable that exists."""
    binary = directory / "cco-monitor"
    if not binary.exists():
        binary.write_text("#!/bin/sh\nexit 0\n")
        binary.chmod(0o755)
    copy = directory / unit.name
    copy.write_text((text or unit.read_text()).replace(INSTALLED_BINARY, str(binary)))
    return copy


def _run(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_PAGER": "", "LC_ALL": "C"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize(
    ("unit", "mode"), [(SYSTEM_UNIT, "--system"), (USER_UNIT, "--user")], ids=["system", "user"]
)
def test_unit_verifies_cleanly(unit: Path, mode: str, tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit without unknown keys or errors."""
    analyze = _systemd_analyze()
    copy = _copy_with_binary(unit, tmp_path)
    result = _run([analyze, mode, "verify", "--recursive-errors=no", str(copy)], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Unknown" not in output, output


def test_verify_catches_a_typo(tmp_path: Path) -> None:
    """The verify check is not vacuous: a misspelt key fails it."""
    analyze = _systemd_analyze()
    text = SYSTEM_UNIT.read_text().replace("NoNewPrivileges=", "NoNewPrivilege=")
    copy = _copy_with_binary(SYSTEM_UNIT, tmp_path, text)
    result = _run([analyze, "verify", "--recursive-errors=no", str(copy)], tmp_path)
    assert result.returncode != 0
    assert "NoNewPrivilege" in result.stderr


@pytest.mark.parametrize(
    ("unit", "mode", "threshold"),
    [(SYSTEM_UNIT, "--system", SYSTEM_THRESHOLD), (USER_UNIT, "--user", USER_THRESHOLD)],
    ids=["system", "user"],
)
def test_unit_security_exposure(unit: Path, mode: str, threshold: int, tmp_path: Path) -> None:
    """The unit's offline security exposure stays at or below the measured threshold."""
    analyze = _systemd_analyze()
    copy = _copy_with_binary(unit, tmp_path)
    result = _run(
        [analyze, mode, "security", "--offline=yes", f"--threshold={threshold}", str(copy)],
        tmp_path,
    )
    overall = [line for line in result.stdout.splitlines() if "Overall exposure" in line]
    assert result.returncode == 0, overall or result.stdout + result.stderr


@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_unit_comments_are_on_their_own_lines(unit: Path) -> None:
    """systemd has no trailing comments: a '#' after a value would become part of it."""
    for section, key, value in _directives(unit):
        assert "#" not in value, f"[{section}] {key}={value}"


@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_unit_lifecycle_settings(unit: Path) -> None:
    """Both units run the foreground service with sd_notify, watchdog, reload and restart."""
    service = _service(unit)
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert service["WatchdogSec"] == "30"
    assert service["ExecStart"] == f"{INSTALLED_BINARY} start --foreground"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["TimeoutStopSec"] == "15"
    assert service["NoNewPrivileges"] == "yes"


@pytest.mark.parametrize("unit", [SYSTEM_UNIT, USER_UNIT], ids=["system", "user"])
def test_unit_descriptor_limit_fits_the_http_connection_cap(unit: Path) -> None:
    """LimitNOFILE is set, and under it the default connection cap is not lowered."""
    from cco_cost_monitor.config import Settings
    from cco_cost_monitor.httpguard import BACKLOG, RESERVED_DESCRIPTORS

    limit = int(_service(unit)["LimitNOFILE"])
    default_cap = Settings.model_fields["http_max_connections"].default
    assert (limit - RESERVED_DESCRIPTORS - 2 * BACKLOG) // 2 >= default_cap


def test_system_unit_hardening() -> None:
    """The system unit runs as a dynamic user in a read-only OS with its own state directory."""
    service = _service(SYSTEM_UNIT)
    expected = {
        "DynamicUser": "yes",
        "StateDirectory": "cco-monitor",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "MemoryDenyWriteExecute": "yes",
    }
    assert {key: service.get(key) for key in expected} == expected
    filters = [v for s, k, v in _directives(SYSTEM_UNIT) if k == "SystemCallFilter"]
    assert "@system-service" in filters
    install = {
        key: value for section, key, value in _directives(SYSTEM_UNIT) if section == "Install"
    }
    assert install["WantedBy"] == "multi-user.target"


def test_user_unit_shares_the_cli_state_dir() -> None:
    """The user unit uses ~/.cco-monitor, so `cco-monitor status` in a shell finds the daemon."""
    service = _service(USER_UNIT)
    assert service["Environment"] == "CCO_MONITOR_HOME=%h/.cco-monitor"
    assert "DynamicUser" not in service
    assert "StateDirectory" not in service
    install = {key: value for section, key, value in _directives(USER_UNIT) if section == "Install"}
    assert install["WantedBy"] == "default.target"


def test_launchd_plist() -> None:
    """The launchd agent runs the foreground service, restarts it only after failures, and logs."""
    with PLIST.open("rb") as handle:
        plist = plistlib.load(handle)
    assert plist["Label"] == "dev.cco-monitor"
    assert plist["ProgramArguments"][1:] == ["start", "--foreground"]
    assert Path(plist["ProgramArguments"][0]).is_absolute()
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert isinstance(plist["ExitTimeOut"], int)
    assert plist["ExitTimeOut"] > 0
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert Path(plist[key]).is_absolute()
    assert isinstance(plist["EnvironmentVariables"], dict)
    assert all(isinstance(value, str) for value in plist["EnvironmentVariables"].values())
