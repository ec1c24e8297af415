"""The ``cco-monitor`` command line (click): parse options, load settings, dispatch.

Every option can also come from the config file or a ``CCO_MONITOR_<NAME>`` environment
variable; precedence is flag > env > file > default (see :mod:`cco_cost_monitor.config`).
Only options given explicitly on the command line are passed on as flags, so that an
unset flag never hides a value from the environment or the file.

Exit statuses follow the LSB conventions of the contract: 0 success, 1 failure,
3 "already running" for ``start`` and "not running" for ``status``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from cco_cost_monitor import __version__
from cco_cost_monitor.errors import (
    EXIT_FAILURE,
    EXIT_NOT_RUNNING,
    AlreadyRunning,
    ConfigError,
    MonitorError,
    StartupError,
)
from cco_cost_monitor.redact import redact_url

F = TypeVar("F", bound=Callable[..., Any])


def _option_table(hidden: bool = False) -> dict[str, Callable[[F], F]]:
    """Every shared option by its settings key, in --help order (``hidden`` from --help)."""
    options = [
        click.option(
            "--config",
            "config",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Config file (default: <state dir>/config.toml if present).",
            hidden=hidden,
        ),
        click.option(
            "--source",
            "sources",
            multiple=True,
            metavar="[NAME=]URL",
            help="SSE source, repeatable (default http://127.0.0.1:3000/api/stream).",
            hidden=hidden,
        ),
        click.option(
            "--source-token",
            "source_token",
            metavar="TOKEN",
            help=(
                "Bearer token sent to every --source given on the command line "
                "(prefer $CCO_MONITOR_SOURCE_TOKEN: flags are visible to every local user)."
            ),
            hidden=hidden,
        ),
        click.option(
            "--health-host", help="Address of the HTTP server (default 127.0.0.1).", hidden=hidden
        ),
        click.option(
            "--health-port", type=int, help="Port of the HTTP server (default 8081).", hidden=hidden
        ),
        click.option(
            "--health-token",
            help=(
                "Bearer token required by the HTTP server, 16+ characters (prefer "
                "$CCO_MONITOR_HEALTH_TOKEN or the config file: flags are visible to "
                "every local user; start moves it out of its argv)."
            ),
            hidden=hidden,
        ),
        click.option(
            "--allow-unauthenticated",
            is_flag=True,
            default=None,
            help="Allow a non-loopback --health-host without a token.",
            hidden=hidden,
        ),
        click.option(
            "--state-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help=(
                "State directory (default $CCO_MONITOR_HOME, else systemd's "
                "$STATE_DIRECTORY, else ~/.cco-monitor)."
            ),
            hidden=hidden,
        ),
        click.option(
            "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), hidden=hidden
        ),
        click.option(
            "--log-format",
            type=click.Choice(["auto", "json", "console"]),
            help="auto: JSON unless stderr is a terminal.",
            hidden=hidden,
        ),
    ]
    names = [
        "config",
        "sources",
        "source_token",
        "health_host",
        "health_port",
        "health_token",
        "allow_unauthenticated",
        "state_dir",
        "log_level",
        "log_format",
    ]
    return dict(zip(names, options, strict=True))


def shared_options(*names: str) -> Callable[[F], F]:
    """Every shared option, but ``--help`` lists only ``names`` (settings keys): those the
    command uses. The others are still accepted (and ignored), so that one set of flags
    keeps working for every command of a script or an alias."""

    def decorate(func: F) -> F:
        shown, hidden = _option_table(), _option_table(hidden=True)
        for name in reversed(list(shown)):
            func = (shown if name in names else hidden)[name](func)
        return func

    return decorate


def common_options(func: F) -> F:
    """Every shared option: for the commands that run or describe the daemon."""
    return shared_options(*_option_table())(func)


# Commands that find a daemon by its state dir (the file may move it) and talk to it.
client_options = shared_options("config", "state_dir", "health_host", "health_port", "health_token")
# Commands that only need the state dir.
location_options = shared_options("config", "state_dir")


def flags_from(options: dict[str, Any]) -> dict[str, Any]:
    """Only the options given on the command line, in settings-key form."""
    flags = {key: value for key, value in options.items() if value not in (None, ())}
    sources = flags.pop("sources", None)
    if not sources and (moved := os.environ.get(SOURCE_FLAGS_ENV)):
        # Where `start` moves --source values with credentials before it re-executes.
        sources = tuple(orjson.loads(moved))
    token = flags.pop("source_token", None)
    if token is None and sources:
        # Where `start` moves --source-token before it re-executes itself (see below).
        token = os.environ.get(SOURCE_TOKEN_ENV) or None
    if sources:
        specs: list[dict[str, Any]] = []
        for index, raw in enumerate(sources):
            name, url = _split_source(raw)
            spec: dict[str, Any] = {
                "name": name or ("default" if index == 0 else f"source{index}"),
                "url": url,
            }
            if token:
                spec["token"] = token
            specs.append(spec)
        flags["sources"] = specs
    elif token:
        raise click.UsageError("--source-token needs --source")
    return flags


def _split_source(raw: str) -> tuple[str | None, str]:
    """A ``--source`` value's name (``None`` when unnamed) and URL."""
    name, sep, url = raw.partition("=")
    return (name, url) if sep and "://" not in name else (None, raw)


#: Flags whose value is a secret, and the environment variable each one is moved to.
SOURCE_TOKEN_ENV = "CCO_MONITOR_SOURCE_TOKEN"  # noqa: S105  (a variable name)
SECRET_FLAGS = {"--health-token": "CCO_MONITOR_HEALTH_TOKEN", "--source-token": SOURCE_TOKEN_ENV}
#: Where every --source value goes when one of them holds a credential (user:password@ or a
#: ?token=-like query value): a JSON list, in order (the order names unnamed sources).
SOURCE_FLAGS_ENV = "CCO_MONITOR_SOURCE_FLAGS"


def without_secret_flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """``argv`` without ``--health-token``/``--source-token``, and their values by env name.

    ``--source`` values go too (all of them, in order) when one holds a credential.
    """
    clean: list[str] = []  # argv without the secret flags
    sourceless: list[str] = []  # and without the --source flags
    moved: dict[str, str] = {}
    sources: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        name, equals, value = arg.partition("=")
        if arg == "--":
            clean.extend(argv[index:])
            sourceless.extend(argv[index:])
            break
        if name in SECRET_FLAGS and equals:
            moved[SECRET_FLAGS[name]] = value
        elif arg in SECRET_FLAGS and index + 1 < len(argv):
            moved[SECRET_FLAGS[arg]] = argv[index + 1]
            index += 1
        elif name == "--source" and equals:
            sources.append(value)
            clean.append(arg)
        elif arg == "--source" and index + 1 < len(argv):
            sources.append(argv[index + 1])
            clean.extend(argv[index : index + 2])
            index += 1
        else:
            clean.append(arg)
            sourceless.append(arg)
        index += 1
    if any(redact_url(url) != url for _, url in map(_split_source, sources)):
        moved[SOURCE_FLAGS_ENV] = orjson.dumps(sources).decode()
        return sourceless, moved
    return clean, moved


def reexec_without_secrets() -> None:
    """Run this command again with its token flags moved into the environment.

    ``/proc/<pid>/cmdline`` is readable by every local user for the daemon's whole life;
    ``/proc/<pid>/environ`` only by its owner. Nothing happens when no token flag is in
    ``sys.argv`` (nor under click's test runner, whose arguments are not in ``sys.argv``).
    """
    clean, moved = without_secret_flags(sys.argv[1:])
    if not moved:
        return
    env = {**os.environ, **moved}
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execve(sys.executable, [sys.executable, "-m", "cco_cost_monitor", *clean], env)  # noqa: S606


def _load(options: dict[str, Any], *, lenient: bool = False) -> tuple[Any, dict[str, Any]]:
    """The settings, or exit 1 naming the offending key.

    ``lenient`` is for the commands that need only the state dir and the daemon's address
    (stop, status, watch, report): a broken configuration is reported as a warning and they
    go on with those keys, so that a daemon started before the file broke can still be seen
    and stopped.
    """
    from cco_cost_monitor.config import load_client_settings, load_settings  # noqa: PLC0415

    flags = flags_from(options)
    try:
        if not lenient:
            return load_settings(flags), flags
        loaded, problem = load_client_settings(flags)
    except ConfigError as exc:
        click.echo(f"cco-monitor: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    if problem is not None:
        click.echo(
            f"cco-monitor: warning: {problem}; going on with the state dir "
            f"({loaded.settings.state_dir}) and the daemon's address only",
            err=True,
        )
    return loaded, flags


# Commands that live in other modules, imported only when used: `statusline` must start
# fast, and `simulate` pulls in aiohttp.
LAZY_COMMANDS = {
    "simulate": "cco_cost_monitor.simulator.cli:simulate_command",
    "demo": "cco_cost_monitor.demo:demo_command",
    "status": "cco_cost_monitor.terminal:status",
    "watch": "cco_cost_monitor.terminal:watch",
    "statusline": "cco_cost_monitor.terminal:statusline",
    "report": "cco_cost_monitor.terminal:report",
    "db": "cco_cost_monitor.dbcli:db_group",
}


class LazyGroup(click.Group):
    """A click group that imports a command's module only when that command is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = LAZY_COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module_name, _, attribute = target.partition(":")
        module = importlib.import_module(module_name)
        command = getattr(module, attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(
    cls=LazyGroup,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="cco-monitor")
@click.pass_context
def main(ctx: click.Context) -> None:
    """cco-monitor: exactly-once cost monitoring for the CCO LLM proxy.

    It follows the proxy's SSE stream, counts every request once, and serves /health,
    Prometheus /metrics and a JSON API on 127.0.0.1:8081.

    \b
    Try it:   cco-monitor demo
    Run it:   cco-monitor start            (background)
              cco-monitor start --foreground   (systemd, launchd)
    Ask it:   cco-monitor status   |   curl -s 127.0.0.1:8081/health
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@main.command()
@common_options
@click.option("--foreground", is_flag=True, help="Stay in the foreground and log to stderr.")
def start(foreground: bool, **options: Any) -> None:
    """Start the monitor (in the background unless --foreground)."""
    from cco_cost_monitor import lean  # noqa: PLC0415

    # First: the imports below (structlog, later httpx) would pull in rich and click's
    # pretty helpers that the daemon never uses.
    lean.skip_unused_optional_imports()
    from cco_cost_monitor import daemon, sdnotify  # noqa: PLC0415
    from cco_cost_monitor.client import running_url  # noqa: PLC0415
    from cco_cost_monitor.logs import configure_logging  # noqa: PLC0415

    loaded, flags = _load(options)
    # Checked as flags first (errors name the command line), then out of our argv.
    reexec_without_secrets()
    settings = loaded.settings
    # A reload re-reads the settings from these flags, after daemonizing into "/": pin
    # the paths the user gave relative to where they typed the command.
    flags["state_dir"] = settings.state_dir
    if loaded.config_file is not None:
        # Also when it was found as <state dir>/config.toml: that file may itself move
        # state_dir, and a reload must read the same file again.
        flags["config"] = loaded.config_file
    if foreground:
        from cco_cost_monitor.server import run_service  # noqa: PLC0415

        configure_logging(settings.log_level, settings.log_format)
        try:
            code = run_service(settings, flags=flags)
        except AlreadyRunning as exc:
            click.echo(f"cco-monitor is already running (pid {exc.pid})", err=True)
            sys.exit(EXIT_NOT_RUNNING)
        except MonitorError as exc:
            click.echo(f"cco-monitor: could not start: {exc}", err=True)
            sys.exit(EXIT_FAILURE)
        sys.exit(code)
    if sdnotify.under_service_manager():
        click.echo(
            "cco-monitor: refusing to daemonize under a service manager; "
            "run `cco-monitor start --foreground` instead",
            err=True,
        )
        sys.exit(EXIT_FAILURE)

    def service(on_ready: Callable[[], None]) -> int:
        # Imported in the child: "already running" is answered before this ~1 s import.
        from cco_cost_monitor.server import run_service  # noqa: PLC0415

        configure_logging(
            settings.log_level,
            "json" if settings.log_format == "auto" else settings.log_format,
            log_file=settings.log_path,
        )
        return run_service(settings, flags=flags, on_ready=on_ready)

    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        click.echo(
            f"cco-monitor: could not start: state dir {settings.state_dir}: {exc.strerror}",
            err=True,
        )
        sys.exit(EXIT_FAILURE)
    sys.exit(
        daemon.start_background(
            pid_path=settings.pid_path,
            log_path=settings.log_path,
            health_url=lambda: f"{running_url(settings.state_dir) or settings.health_url}/health",
            service=service,
        )
    )


@main.command()
@location_options
@click.option(
    "--timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to wait after SIGTERM before SIGKILL.",
)
def stop(timeout: float, **options: Any) -> None:
    """Stop the background monitor (SIGTERM, then SIGKILL after --timeout)."""
    from cco_cost_monitor import daemon  # noqa: PLC0415

    loaded, _ = _load(options, lenient=True)
    outcome = daemon.stop(loaded.settings.pid_path, timeout=timeout)
    click.echo(outcome.message)
    sys.exit(outcome.exit_code)


@main.command()
@common_options
@click.option(
    "--timeout",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds to wait for the running daemon after SIGTERM before SIGKILL.",
)
@click.pass_context
def restart(ctx: click.Context, /, timeout: float, **options: Any) -> None:
    """Stop, then start in the background.

    The configuration is checked first: when it is invalid nothing is stopped (the new
    daemon could not start), the problem is printed and the exit status is 1.
    """
    from cco_cost_monitor import daemon  # noqa: PLC0415
    from cco_cost_monitor.config import load_settings  # noqa: PLC0415

    try:
        load_settings(flags_from(options))
    except ConfigError as exc:
        click.echo(f"cco-monitor: {exc}", err=True)
        click.echo(
            "cco-monitor: not restarting: a new daemon could not start with this "
            "configuration; the running one (if any) was left running",
            err=True,
        )
        sys.exit(EXIT_FAILURE)
    loaded, _ = _load(options)
    reexec_without_secrets()
    outcome = daemon.stop(loaded.settings.pid_path, timeout=timeout)
    click.echo(outcome.message)
    if outcome.exit_code != 0:
        sys.exit(outcome.exit_code)
    ctx.invoke(start, foreground=False, **options)


@main.command()
@location_options
def reload(**options: Any) -> None:
    """Re-read config, prices and budgets (SIGHUP) without losing counts."""
    import signal  # noqa: PLC0415

    from cco_cost_monitor import daemon  # noqa: PLC0415

    loaded, _ = _load(options)
    pid = daemon.signal_pid(loaded.settings.pid_path, signal.SIGHUP)
    if pid is None:
        click.echo("cco-monitor is not running", err=True)
        sys.exit(EXIT_NOT_RUNNING)
    click.echo(f"sent SIGHUP to cco-monitor (pid {pid}); see its log for the outcome")


@main.command("config")
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def config_command(as_json: bool, **options: Any) -> None:
    """Show the effective configuration and where each value came from."""
    import orjson  # noqa: PLC0415

    from cco_cost_monitor.config import redacted_view  # noqa: PLC0415

    loaded, _ = _load(options)
    values = redacted_view(loaded.settings)
    if as_json:
        document = {
            "config_file": str(loaded.config_file) if loaded.config_file else None,
            "values": values,
            "origins": loaded.origins,
        }
        click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"# config file: {loaded.config_file or '(none)'}")
    width = max(len(key) for key in values)
    for key, value in values.items():
        origin = loaded.origins.get(key, "default")
        click.echo(f"{key:<{width}}  {orjson.dumps(value).decode()}  # {origin}")


def run() -> None:
    """The console script: a clean message for our own errors, a fast status line."""
    argv = sys.argv[1:]
    if argv[:1] == ["statusline"] and not {"-h", "--help"} & set(argv):
        # Runs from a shell prompt on every keystroke-to-prompt: skip click and pydantic.
        from cco_cost_monitor.client import statusline_main  # noqa: PLC0415

        sys.exit(statusline_main(argv[1:]))
    try:
        main.main(args=argv, prog_name="cco-monitor", standalone_mode=False)
    except click.UsageError as exc:
        exc.show()
        # The contract: a bad flag stops start (and restart) with exit 1; click says 2.
        starting = bool(argv) and argv[0] in ("start", "restart")
        sys.exit(EXIT_FAILURE if starting else exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(EXIT_FAILURE)
    except (StartupError, ConfigError) as exc:
        click.echo(f"cco-monitor: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
