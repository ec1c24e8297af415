"""A tiny HTTP client to the running daemon, and the fast ``statusline`` path.

Standard library only: ``cco-monitor statusline`` runs on every status-bar refresh and every
shell prompt, so importing this module imports nothing at all beyond ``os`` and ``sys`` (both
loaded by every interpreter). The status line itself is one ``GET /statusline`` over a raw
``_socket`` connection (no ``urllib``/``http.client``/``email``/``ssl``/``enum``, which cost
~25 ms of start-up each time); ``urllib``, ``json`` and ``tomllib`` are imported only by the
paths that need them (:class:`DaemonClient`, a ``daemon.json`` that is not plain, a config
file). Measured by ``bench/bench_statusline.py`` and counted in ``bench/bench_soak.py``.

:class:`DaemonClient` does ``GET /health``, ``/api/summary``, ``/api/events`` and
``/api/timeseries`` with a timeout and the optional bearer token, and raises
:class:`Unreachable` (with a short reason) when the daemon does not answer.

:func:`resolve_endpoint` finds the daemon's address the way the settings do (flag > env >
config file > default) but only for the three keys it needs, without validating the rest of
the configuration. :func:`format_statusline` turns an ``/api/summary`` document into the one
line (the daemon's ``/statusline`` serves exactly that); :func:`statusline_main` is the whole
command (the ``cco-monitor`` console script runs it without importing click or the CLI, and
``python -m cco_cost_monitor.client`` runs it too).
"""

from __future__ import annotations

import os
import sys

# typing and collections.abc cost start-up time; the annotations only matter to mypy.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path
    from typing import Any

__all__ = [
    "OFFLINE",
    "DaemonClient",
    "Endpoint",
    "Unreachable",
    "format_statusline",
    "resolve_endpoint",
    "statusline_main",
]

ENV_PREFIX = "CCO_MONITOR_"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
#: What ``statusline`` prints when the daemon does not answer.
OFFLINE = "cco: offline"
STATUSLINE_TIMEOUT = 0.5
MAX_BODY = 16 * 1024 * 1024


class Unreachable(Exception):
    """The daemon did not answer (refused, timed out, or answered with an error)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


def _base_url(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


class DaemonClient:
    """GET JSON and text from the daemon's HTTP server."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token or None
        self.timeout = timeout

    def _get(self, path: str, ok: Sequence[int] = (200,)) -> bytes:
        import urllib.error  # noqa: PLC0415  (not on the status-line path)
        import urllib.request  # noqa: PLC0415

        url = self.base_url + path
        request = urllib.request.Request(url, headers={"Accept": "*/*"})  # noqa: S310
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                body: bytes = response.read(MAX_BODY)
                return body
        except urllib.error.HTTPError as exc:
            with exc:
                if exc.code in ok:
                    return exc.read(MAX_BODY)
                if exc.code in (401, 403):
                    raise Unreachable(url, f"HTTP {exc.code}: check --health-token") from None
                raise Unreachable(url, f"HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            text = getattr(reason, "strerror", None) or str(reason)
            raise Unreachable(url, text) from None
        except (TimeoutError, OSError) as exc:
            raise Unreachable(url, str(exc) or type(exc).__name__) from None

    def get_json(self, path: str, ok: Sequence[int] = (200,)) -> Any:
        """The decoded JSON body of ``GET path``."""
        import json  # noqa: PLC0415  (not on the status-line path)

        body = self._get(path, ok)
        try:
            return json.loads(body)
        except ValueError:
            raise Unreachable(self.base_url + path, "the answer is not JSON") from None

    def get_text(self, path: str) -> str:
        """The text body of ``GET path``."""
        return self._get(path).decode("utf-8", "replace")

    def health(self) -> dict[str, Any]:
        """``/health`` (also when it says ``fail`` with HTTP 503)."""
        document: dict[str, Any] = self.get_json("/health", ok=(200, 503))
        return document

    def summary(self) -> dict[str, Any]:
        """``/api/summary``."""
        document: dict[str, Any] = self.get_json("/api/summary")
        return document

    def events(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest ``limit`` accounted events, newest first."""
        document = self.get_json(f"/api/events?limit={int(limit)}")
        events: list[dict[str, Any]] = document.get("events", [])
        return events

    def timeseries(self, bucket: str = "minute", since: str = "60m") -> list[dict[str, Any]]:
        """``/api/timeseries`` buckets (cost and requests per bucket and tier)."""
        import urllib.parse  # noqa: PLC0415

        query = urllib.parse.urlencode({"bucket": bucket, "since": since})
        document = self.get_json(f"/api/timeseries?{query}")
        buckets: list[dict[str, Any]] = document.get("buckets", [])
        return buckets


# -- where the daemon listens ------------------------------------------------------------


class Endpoint:
    """The daemon's base URL and the bearer token to send (a value; no dataclass: start-up)."""

    __slots__ = ("base_url", "token")

    def __init__(self, base_url: str, token: str | None) -> None:
        self.base_url = base_url
        self.token = token

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Endpoint):
            return NotImplemented
        return (self.base_url, self.token) == (other.base_url, other.token)

    def __hash__(self) -> int:
        return hash((self.base_url, self.token))

    def __repr__(self) -> str:
        token = "***" if self.token else None
        return f"Endpoint(base_url={self.base_url!r}, token={token!r})"


def _state_dir(flag: str | None, environ: Mapping[str, str]) -> str:
    value = flag or environ.get(f"{ENV_PREFIX}STATE_DIR") or environ.get("CCO_MONITOR_HOME")
    if not value:
        state_directory = environ.get("STATE_DIRECTORY")
        value = state_directory.split(":")[0] if state_directory else "~/.cco-monitor"
    return os.path.expanduser(value)


def _config_values(
    config: str | None, state_dir: str | None, environ: Mapping[str, str]
) -> dict[str, Any]:
    path_text = config or environ.get(f"{ENV_PREFIX}CONFIG")
    path = (
        os.path.expanduser(path_text)
        if path_text
        else os.path.join(_state_dir(state_dir, environ), "config.toml")
    )
    try:
        handle = open(path, "rb")  # noqa: SIM115  (pathlib costs start-up time)
    except OSError:
        return {}
    import tomllib  # noqa: PLC0415  (only when no flag or env var decided: keeps start-up fast)

    with handle:
        try:
            return tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError):
            return {}


RUNTIME_FILE = "daemon.json"


def _announced_url(text: str) -> object:
    """``health_url`` of a ``daemon.json`` document; ``json`` only if it is not plain."""
    # The daemon writes it with orjson: {"pid":1,"health_url":"http://127.0.0.1:8081",...}
    marker = '"health_url":"'
    start = text.find(marker)
    if start != -1:
        start += len(marker)
        end = text.find('"', start)
        if end != -1 and "\\" not in text[start:end]:
            return text[start:end]
    import json  # noqa: PLC0415  (written by hand, with spaces or escapes)

    data = json.loads(text)
    return data.get("health_url") if isinstance(data, dict) else None


def running_url(state_dir: str | Path) -> str | None:
    """The base URL the running daemon announced in ``<state dir>/daemon.json``, if any.

    The daemon writes it once its HTTP port is bound, so clients find a daemon started
    with ``--health-port`` or ``--health-port 0`` without being told the port again.
    """
    try:
        with open(os.path.join(state_dir, RUNTIME_FILE), "rb") as handle:
            url = _announced_url(handle.read(65536).decode("utf-8", "replace"))
    except (OSError, ValueError):
        return None
    return url if isinstance(url, str) and url.startswith("http") else None


def resolve_endpoint(
    *,
    host: str | None = None,
    port: int | None = None,
    token: str | None = None,
    config: str | None = None,
    state_dir: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Endpoint:
    """flag > ``CCO_MONITOR_HEALTH_*`` env > config file > default, for host, port, token."""
    env = os.environ if environ is None else environ
    file_values: dict[str, Any] | None = None

    def pick(flag: Any, key: str, default: Any) -> Any:
        nonlocal file_values
        if flag not in (None, ""):
            return flag
        from_env = env.get(f"{ENV_PREFIX}{key.upper()}")
        if from_env:
            return from_env
        if file_values is None:
            file_values = _config_values(config, state_dir, env)
        return file_values.get(key, default)

    chosen_token = pick(token, "health_token", None)
    token_text = str(chosen_token) if chosen_token else None
    explicit = any(
        value not in (None, "")
        for value in (
            host,
            port,
            env.get(f"{ENV_PREFIX}HEALTH_HOST"),
            env.get(f"{ENV_PREFIX}HEALTH_PORT"),
        )
    )
    if not explicit:
        announced = running_url(_state_dir(state_dir, env))
        if announced is not None:
            return Endpoint(announced, token_text)
    chosen_host = str(pick(host, "health_host", DEFAULT_HOST))
    try:
        chosen_port = int(pick(port, "health_port", DEFAULT_PORT))
    except (TypeError, ValueError):
        chosen_port = DEFAULT_PORT
    return Endpoint(_base_url(chosen_host, chosen_port), token_text)


# -- the status line ---------------------------------------------------------------------

#: The level of each budget state the daemon sends (``budgets.BUDGET_STATES``; a test keeps
#: the two equal: this module stays stdlib-only, so it cannot import them).
BUDGET_LEVELS = {
    "ok": "ok",
    "warning": "warn",
    "projected_to_exceed": "warn",
    "exceeded": "over",
}


def budget_level(budget: Mapping[str, Any]) -> str:
    """``ok``, ``warn`` or ``over`` for one budget entry of ``/api/summary``.

    Uses the daemon's ``state``, else (a daemon of another version) ``used_ratio`` and the
    projection: >= 1 over, >= 0.75 or projected over the limit warn.
    """
    state = str(budget.get("state") or "").lower()
    if state in BUDGET_LEVELS:
        return BUDGET_LEVELS[state]
    ratio = _number(budget.get("used_ratio"))
    limit = _number(budget.get("limit_usd"))
    projected = _number(budget.get("projected_usd"))
    if ratio >= 1.0:
        return "over"
    if state or ratio >= 0.75 or (limit > 0 and projected > limit):
        return "warn"
    return "ok"


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def format_statusline(summary: Mapping[str, Any]) -> str:
    """One short line: today's spend, the 1 h burn rate, the tightest budget, link trouble."""
    periods = summary.get("periods") or {}
    today = _number((periods.get("today") or {}).get("cost_usd"))
    burn = summary.get("burn_rate_usd_per_hour") or {}
    rate = _number(burn.get("1h"))
    parts = [f"cco ${today:,.2f} today", f"${rate:,.2f}/h"]
    budgets = [b for b in summary.get("budgets") or [] if isinstance(b, dict)]
    if budgets:
        tightest = max(budgets, key=lambda b: _number(b.get("used_ratio")))
        level = budget_level(tightest)
        marker = {"ok": "", "warn": " ⚠", "over": " ✖ over"}[level]
        period = str(tightest.get("period") or "budget")
        if tightest.get("tier"):
            period += f" {tightest['tier']}"
        ratio = _number(tightest.get("used_ratio"))
        parts.append(f"{period} {ratio * 100:.0f}%{marker}")
    sources = [s for s in summary.get("sources") or [] if isinstance(s, dict)]
    if sources:
        connected = sum(1 for s in sources if s.get("connection_status") == "connected")
        if connected == 0:
            parts.append("proxy down")
        elif connected < len(sources):
            parts.append(f"{connected}/{len(sources)} sources")
    return " · ".join(parts)


def statusline_text(endpoint: Endpoint, timeout: float = STATUSLINE_TIMEOUT) -> str | None:
    """The status line, or ``None`` when the daemon does not answer.

    One raw ``GET /statusline`` (the daemon formats the line itself); a daemon without that
    route (404) gets the ``/api/summary`` round trip, formatted here.
    """
    answer = _raw_get(endpoint, "/statusline", timeout)
    if answer is None:
        return None
    if answer[0] == 200:
        line = answer[1].decode("utf-8", "replace").strip()
        return line or None
    if answer[0] != 404:
        return None
    client = DaemonClient(endpoint.base_url, endpoint.token, timeout=timeout)
    try:
        return format_statusline(client.summary())
    except Unreachable:
        return None


#: The most of a ``/statusline`` answer that is read (it is one short line).
MAX_STATUSLINE_ANSWER = 64 * 1024


def _raw_get(endpoint: Endpoint, path: str, timeout: float) -> tuple[int, bytes] | None:
    """``(status, body)`` of one HTTP/1.1 GET over a plain ``_socket``; ``None`` if unreachable.

    Plain HTTP only (what the daemon serves); for any other scheme it answers 404, which
    sends the caller to :class:`DaemonClient` (``urllib``).
    """
    scheme, _, rest = endpoint.base_url.partition("://")
    if scheme != "http":
        return 404, b""
    authority, slash, prefix = rest.partition("/")
    prefix = ("/" + prefix).rstrip("/") if slash else ""
    if authority.startswith("["):
        host, _, port_text = authority[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = authority.partition(":")
    try:
        port = int(port_text) if port_text else 80
    except ValueError:
        return None
    lines = [
        f"GET {prefix}{path} HTTP/1.1",
        f"Host: {authority}",
        "Accept: text/plain",
        "Connection: close",
    ]
    if endpoint.token:
        lines.append(f"Authorization: Bearer {endpoint.token}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    import _socket  # noqa: PLC0415  (socket.py would import enum, selectors: ~5 ms)

    try:
        # Bytes: a str host loads the idna codec (~1 ms) even for "127.0.0.1".
        name: str | bytes = host.encode("ascii") if host.isascii() else host
        addresses = _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM)
    except OSError:
        return None
    for family, kind, proto, _, address in addresses:
        sock = _socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(request)
            chunks: list[bytes] = []
            size = 0
            while size < MAX_STATUSLINE_ANSWER:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
        except OSError:
            continue
        finally:
            sock.close()
        return _parse_answer(b"".join(chunks))
    return None


def _parse_answer(raw: bytes) -> tuple[int, bytes] | None:
    """Status and body of an HTTP/1.x response (``Content-Length`` or chunked)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    status_line, _, header_text = head.partition(b"\r\n")
    parts = status_line.split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        return None
    try:
        status = int(parts[1])
    except ValueError:
        return None
    headers = header_text.lower()
    if b"transfer-encoding: chunked" in headers:
        out = []
        while True:
            size_line, crlf, body = body.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                return None
            if not crlf or size == 0:
                break
            out.append(body[:size])
            body = body[size + 2 :]
        return status, b"".join(out)
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            try:
                return status, body[: int(value)]
            except ValueError:
                return None
    return status, body


def _parse_args(argv: Sequence[str]) -> dict[str, str]:
    """``--name value`` / ``--name=value`` pairs; unknown words are ignored."""
    known = {
        "--health-host",
        "--health-port",
        "--health-token",
        "--config",
        "--state-dir",
        "--timeout",
    }
    values: dict[str, str] = {}
    index = 0
    while index < len(argv):
        word = argv[index]
        name, sep, value = word.partition("=")
        if name in known:
            if not sep:
                index += 1
                value = argv[index] if index < len(argv) else ""
            values[name[2:].replace("-", "_")] = value
        index += 1
    return values


def statusline_main(argv: Sequence[str] | None = None) -> int:
    """Print the status line (or :data:`OFFLINE`); 0 when the daemon answered, else 1."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        port = int(args["health_port"]) if args.get("health_port") else None
        timeout = float(args.get("timeout") or STATUSLINE_TIMEOUT)
    except ValueError:
        sys.stderr.write("cco-monitor statusline: --health-port and --timeout take numbers\n")
        return 2
    endpoint = resolve_endpoint(
        host=args.get("health_host"),
        port=port,
        token=args.get("health_token"),
        config=args.get("config"),
        state_dir=args.get("state_dir"),
    )
    line = statusline_text(endpoint, timeout)
    sys.stdout.write((line if line is not None else OFFLINE) + "\n")
    return 0 if line is not None else 1


if __name__ == "__main__":
    sys.exit(statusline_main())
