"""Every setting of cco-monitor, its default, and where its effective value came from.

One settings model (:class:`Settings`) holds every option. Values are layered, lowest
first: built-in defaults < ``config.toml`` < ``CCO_MONITOR_*`` environment variables <
command-line flags. :func:`load_settings` does the layering and records, per key, the
layer that supplied it, so that ``cco-monitor config`` can say where each value came
from. Any invalid file, key or value raises :class:`ConfigError` naming the key and
the layer.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from cco_cost_monitor.errors import ConfigError

#: Shortest accepted ``health_token``: 16 characters (e.g. 64 bits as hex) is out of reach of
#: guessing over HTTP; empty or short tokens are refused as a configuration error.
MIN_TOKEN_LENGTH = 16
DEFAULT_SOURCE_URL = "http://127.0.0.1:3000/api/stream"
ENV_PREFIX = "CCO_MONITOR_"
Layer = Literal["default", "file", "env", "flag"]
SourceKind = Literal["auto", "analytics", "gateway"]


def default_state_dir() -> Path:
    """``$CCO_MONITOR_HOME``, else systemd's ``$STATE_DIRECTORY``, else ``~/.cco-monitor``."""
    home = os.environ.get("CCO_MONITOR_HOME")
    if home:
        return Path(home).expanduser()
    state_directory = os.environ.get("STATE_DIRECTORY")
    if state_directory:
        # systemd passes a colon-separated list when several directories are configured.
        return Path(state_directory.split(":")[0])
    return Path("~/.cco-monitor").expanduser()


def check_http_url(value: str) -> str:
    """``value`` if it is an http(s) URL that httpx can connect to, else ``ValueError``.

    Checked when the configuration is read, so that a typo (``:8O80``, ``[::1``, port
    70000) stops ``start`` with the key's name (exit 1) and a reload keeps the running
    configuration, instead of failing the first connection or alert from deep in httpx.
    """
    shown = _shown_url(value)
    try:
        parts = urlsplit(value)
        port = parts.port  # reads the port: ValueError if not a number in 0-65535
    except ValueError as exc:
        raise ValueError(f"not a valid URL: {shown} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {shown}")
    if port == 0:
        raise ValueError(f"port 0 is not a port to connect to: {shown}")
    if any(ord(char) < 33 or ord(char) == 127 for char in value):
        raise ValueError(f"a URL cannot hold spaces or control characters: {shown}")
    try:
        httpx.URL(value)
    except (httpx.InvalidURL, ValueError) as exc:
        raise ValueError(f"not a valid URL: {shown} ({exc})") from None
    return value


def _shown_url(value: str) -> str:
    """A URL for an error message: no credentials, query or fragment, bounded length."""
    head, _, _ = value.partition("?")
    head = head.partition("#")[0]
    scheme, sep, rest = head.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = "***@" + rest.split("@", 1)[1]
    return repr((scheme + sep + rest)[:200])


class SourceSpec(BaseModel):
    """One SSE source: the proxy's ``/api/stream`` or the gateway's per-request stream."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    url: str
    kind: SourceKind = "auto"
    token: SecretStr | None = None
    headers: dict[str, SecretStr] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_http_url(value)

    @property
    def effective_kind(self) -> Literal["analytics", "gateway"]:
        """``auto`` picks the gateway parser for ``/api/streams/subscribe`` URLs."""
        if self.kind != "auto":
            return self.kind
        return "gateway" if "/api/streams/" in urlsplit(self.url).path else "analytics"


def parse_source(raw: str | Mapping[str, Any], index: int) -> SourceSpec:
    """Accept ``URL``, ``NAME=URL`` or a table ``{name, url, kind, token, headers}``."""
    if isinstance(raw, Mapping):
        values = dict(raw)
        values.setdefault("name", f"source{index}" if index else "default")
        return SourceSpec.model_validate(values)
    name, sep, url = raw.partition("=")
    if sep and "://" not in name:
        return SourceSpec(name=name, url=url)
    return SourceSpec(name="default" if index == 0 else f"source{index}", url=raw)


class BudgetLimits(BaseModel):
    """The limits of one tier."""

    model_config = ConfigDict(extra="forbid")

    daily_usd: float | None = Field(default=None, gt=0)
    weekly_usd: float | None = Field(default=None, gt=0)
    monthly_usd: float | None = Field(default=None, gt=0)


class BudgetSettings(BaseModel):
    """Spending limits; each one is optional. ``per_tier`` maps a tier to its own limits."""

    model_config = ConfigDict(extra="forbid")

    daily_usd: float | None = Field(default=None, gt=0)
    weekly_usd: float | None = Field(default=None, gt=0)
    monthly_usd: float | None = Field(default=None, gt=0)
    per_tier: dict[Literal["opus", "sonnet", "haiku", "other"], BudgetLimits] = Field(
        default_factory=dict
    )


class AlertSettings(BaseModel):
    """Where budget alerts go and when they fire."""

    model_config = ConfigDict(extra="forbid")

    thresholds: list[Annotated[float, Field(gt=0, le=10)]] = Field(
        default_factory=lambda: [0.5, 0.75, 0.9, 1.0]
    )
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    webhook_max_retries: int = Field(default=5, ge=0, le=20)
    queue_size: int = Field(default=256, ge=1, le=100_000)
    command: str | None = None
    command_timeout_seconds: float = Field(default=10.0, gt=0)
    predictive: bool = True

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value)


class Settings(BaseSettings):
    """The effective configuration of one cco-monitor process."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    sources: list[SourceSpec] = Field(
        default_factory=lambda: [SourceSpec(name="default", url=DEFAULT_SOURCE_URL)]
    )
    health_host: str = "127.0.0.1"
    health_port: int = Field(default=8081, ge=0, le=65535)
    health_token: SecretStr | None = None
    allow_unauthenticated: bool = False
    # Host header values answered on a loopback bind besides the bound address and
    # localhost (DNS rebinding guard); "*" answers any.
    allowed_hosts: list[str] = Field(default_factory=list, max_length=64)
    http_header_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    http_max_connections: int = Field(default=256, ge=8, le=65536)
    state_dir: Path = Field(default_factory=default_state_dir)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    # SSE source behaviour
    backoff_initial_seconds: float = Field(default=0.5, gt=0, le=60)
    backoff_max_seconds: float = Field(default=30.0, gt=0, le=3600)
    healthy_after_seconds: float = Field(default=30.0, gt=0)
    stall_timeout_seconds: float = Field(default=45.0, gt=0)
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    max_line_bytes: int = Field(default=1_048_576, ge=1024, le=256 * 1_048_576)
    snapshot_interval_seconds: float = Field(default=5.0, gt=0)

    # accounting and engine
    timezone: str = "local"
    billing_day: int = Field(default=1, ge=1, le=28)
    dedupe_capacity: int = Field(default=10_000, ge=100, le=10_000_000)
    recent_events: int = Field(default=1000, ge=10, le=1_000_000)
    pending_gateway_requests: int = Field(default=10_000, ge=10, le=1_000_000)
    prices: dict[str, dict[str, float]] = Field(default_factory=dict)

    # persistence
    retention_days: int = Field(default=90, ge=1)
    aggregate_retention_days: int = Field(default=400, ge=1)

    # health
    health_grace_seconds: float = Field(default=60.0, ge=0)

    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: Any,
        env_settings: Any,
        dotenv_settings: Any,
        file_secret_settings: Any,
    ) -> tuple[Any, ...]:
        # load_settings() layers file/env/flags itself, to know where each value came from.
        return (init_settings,)

    @field_validator("sources", mode="before")
    @classmethod
    def _parse_sources(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            specs = [
                item if isinstance(item, SourceSpec) else parse_source(item, index)
                for index, item in enumerate(value)
            ]
            names = [spec.name for spec in specs]
            duplicates = sorted({name for name in names if names.count(name) > 1})
            if duplicates:
                raise ValueError(f"duplicate source names: {', '.join(duplicates)}")
            if not specs:
                raise ValueError("at least one source is needed")
            return specs
        return value

    @field_validator("health_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        secret = value.get_secret_value()
        if len(secret) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"must be at least {MIN_TOKEN_LENGTH} characters (it has {len(secret)}); "
                "generate one with: openssl rand -hex 16"
            )
        if not all("!" <= char <= "~" for char in secret):
            raise ValueError("must be printable ASCII without spaces")
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _plain_hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if host != "*" and not re.fullmatch(r"[A-Za-z0-9.:_\[\]-]{1,253}", host):
                raise ValueError(f"not a host name or address: {host!r}")
        return [host.lower() for host in value]

    @field_validator("prices")
    @classmethod
    def _valid_prices(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        from cco_cost_monitor.pricing import PriceTable  # noqa: PLC0415  (avoid an import cycle)

        PriceTable.default().with_overrides(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        if value != "local":
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("state_dir")
    @classmethod
    def _absolute_state_dir(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.backoff_max_seconds < self.backoff_initial_seconds:
            raise ValueError("backoff_max_seconds must be >= backoff_initial_seconds")
        if not is_loopback(self.health_host) and not (
            self.health_token is not None or self.allow_unauthenticated
        ):
            raise ValueError(
                f"health_host {self.health_host!r} is not a loopback address: "
                "set health_token (or allow_unauthenticated = true)"
            )
        return self

    @property
    def zone(self) -> tzinfo:
        """The configured zone; ``local`` resolves to this machine's zone (DST-aware)."""
        return resolve_zone(self.timezone)

    @property
    def pid_path(self) -> Path:
        return self.state_dir / "daemon.pid"

    @property
    def db_path(self) -> Path:
        return self.state_dir / "monitor.db"

    @property
    def log_path(self) -> Path:
        return self.state_dir / "monitor.log"

    @property
    def health_url(self) -> str:
        host = self.health_host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.health_port}"


def resolve_zone(name: str) -> tzinfo:
    """An IANA zone by name; ``local`` is ``$TZ`` or ``/etc/localtime``'s zone, else UTC offset."""
    if name != "local":
        return ZoneInfo(name)
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        target = os.path.realpath("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    for candidate in candidates:
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    fixed = datetime.now().astimezone().tzinfo
    return fixed if fixed is not None else UTC


def is_loopback(host: str) -> bool:
    """True for names and addresses that stay on this machine."""
    import ipaddress  # noqa: PLC0415

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class LoadedSettings:
    """Effective settings plus where each top-level key came from."""

    settings: Settings
    origins: dict[str, Layer] = field(default_factory=dict)
    config_file: Path | None = None


def _env_values() -> dict[str, Any]:
    source = EnvSettingsSource(Settings, env_prefix=ENV_PREFIX, env_nested_delimiter="__")
    try:
        values = source()
    except Exception as exc:  # pydantic-settings raises SettingsError for bad JSON values
        raise ConfigError(f"environment: {exc}") from exc
    return {key: value for key, value in values.items() if key in Settings.model_fields}


def _read_file(path: Path) -> dict[str, Any]:
    from cco_cost_monitor.statedir import check_config_file  # noqa: PLC0415

    check_config_file(path)
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _describe_error(exc: ValidationError, origins: Mapping[str, Layer]) -> str:
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "(settings)"
        top = str(error["loc"][0]) if error["loc"] else ""
        layer = origins.get(top, "default")
        where = {"file": "config file", "env": "environment", "flag": "command line"}.get(
            layer, "default"
        )
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{location} ({where}): {message}")
    return "invalid configuration: " + "; ".join(problems)


def resolve_config_path(flags: Mapping[str, Any]) -> Path | None:
    """``--config``, else ``$CCO_MONITOR_CONFIG``, else ``<state dir>/config.toml`` if present."""
    explicit = flags.get("config") or os.environ.get(f"{ENV_PREFIX}CONFIG")
    if explicit:
        path = Path(str(explicit)).expanduser().absolute()
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    state_dir = flags.get("state_dir") or os.environ.get(f"{ENV_PREFIX}STATE_DIR")
    base = Path(str(state_dir)).expanduser() if state_dir else default_state_dir()
    candidate = (base / "config.toml").absolute()
    return candidate if candidate.is_file() else None


# What the commands that only talk to a daemon or read its files need (stop, status,
# watch, report): where the state dir is, how to reach the daemon, the zone of its buckets.
CLIENT_KEYS = frozenset(
    {
        "state_dir",
        "health_host",
        "health_port",
        "health_token",
        "allow_unauthenticated",
        "timezone",
    }
)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    only: frozenset[str] | None = None,
    skip: frozenset[Layer] = frozenset(),
) -> LoadedSettings:
    """Layer defaults < file < env < flags; ``flags`` holds only options given explicitly.

    ``only`` keeps just those keys of every layer (the rest stay at their defaults);
    ``skip`` leaves whole layers (``file``, ``env``) out.
    """
    flags = {key: value for key, value in (flags or {}).items() if value not in (None, ())}
    config_file = resolve_config_path(flags) if "file" not in skip else None
    file_values = _read_file(config_file) if config_file else {}
    env_values = _env_values() if "env" not in skip else {}
    flag_values = {key: value for key, value in flags.items() if key != "config"}
    if only is not None:
        file_values, env_values, flag_values = (
            {key: value for key, value in layer.items() if key in only}
            for layer in (file_values, env_values, flag_values)
        )

    origins: dict[str, Layer] = {}
    merged: dict[str, Any] = {}
    for layer, values in (("file", file_values), ("env", env_values), ("flag", flag_values)):
        for key in values:
            origins[key] = layer  # type: ignore[assignment]
        merged = _deep_merge(merged, values)
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_describe_error(exc, origins)) from exc
    except ValueError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from exc
    for key in Settings.model_fields:
        origins.setdefault(key, "default")
    return LoadedSettings(settings=settings, origins=origins, config_file=config_file)


def load_client_settings(
    flags: Mapping[str, Any] | None = None,
) -> tuple[LoadedSettings, str | None]:
    """:func:`load_settings` for commands that need only :data:`CLIENT_KEYS`.

    A configuration that does not load (bad TOML, an invalid budget, a bad environment
    value...) does not stop them: they go on with the client keys of the layers that still
    validate (the file's, else the environment's, else only the flags'), and the problem
    comes back as the second item (``None`` when all is well). Raises
    :class:`ConfigError` only when even the flags' client keys are invalid.
    """
    try:
        return load_settings(flags), None
    except ConfigError as exc:
        problem = str(exc)
    skips: tuple[frozenset[Layer], ...] = (
        frozenset(),
        frozenset({"file"}),
        frozenset({"env"}),
        frozenset({"file", "env"}),
    )
    for skip in skips:
        try:
            return load_settings(flags, only=CLIENT_KEYS, skip=skip), problem
        except ConfigError:
            continue
    raise ConfigError(problem)


def redacted_view(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with every secret replaced by ``'**********'``.

    Source URLs lose their password and credential-like query values; the webhook URL is
    shown as its origin only (its path and query are often the secret itself).
    """
    from cco_cost_monitor.redact import origin_only, redact_url  # noqa: PLC0415

    values = settings.model_dump(mode="json")
    for source in values.get("sources", []):
        source["url"] = redact_url(source["url"])
    alerts = values.get("alerts") or {}
    if alerts.get("webhook_url"):
        alerts["webhook_url"] = origin_only(alerts["webhook_url"])
    return values
