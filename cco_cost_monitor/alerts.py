"""Alert delivery: log, webhook and command sinks behind a bounded queue that never blocks.

:meth:`AlertDispatcher.submit` is synchronous and O(1): it logs the alert, remembers it in a
bounded history and puts it on a bounded queue (when full, the oldest queued alert is dropped
and counted). :meth:`AlertDispatcher.run` (an anyio task) delivers the queue in order:

* webhook -- ``POST`` of the alert JSON, signed with ``X-CCO-Signature: sha256=<hex HMAC-SHA256
  of the body>`` when a secret is set; connection errors, timeouts, 429 and 5xx are retried
  with exponential backoff (and jitter) up to ``webhook_max_retries`` times;
* command -- run (no shell: the string is split like a shell would) with the alert JSON on
  stdin and ``CCO_ALERT_*`` environment variables, killed after ``command_timeout_seconds``.

Counters (``sent``, ``failed``, ``dropped``, ``retries``) are in :meth:`stats`. The secret and
the webhook URL's path and query (which often carry a token) never reach a log.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import random
import shlex
import subprocess
from collections import deque
from collections.abc import Callable
from typing import Any, get_args
from urllib.parse import urlsplit

import anyio
import httpx
import orjson

from cco_cost_monitor.budgets import Alert, AlertKind
from cco_cost_monitor.config import AlertSettings
from cco_cost_monitor.logs import get_logger
from cco_cost_monitor.redact import child_environment
from cco_cost_monitor.rounding import tidy

__all__ = ["SIGNATURE_HEADER", "AlertDispatcher", "sign"]

SIGNATURE_HEADER = "X-CCO-Signature"
HISTORY_SIZE = 200
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 60.0
USER_AGENT = "cco-monitor-alerts"

ALERT_KINDS: tuple[str, ...] = get_args(AlertKind)
log = get_logger("cco_cost_monitor.alerts")


def sign(body: bytes, secret: str) -> str:
    """The ``X-CCO-Signature`` value of ``body``: ``sha256=<hex HMAC-SHA256>``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def _safe_url(url: str) -> str:
    """Scheme and host only: webhook paths and queries often hold tokens."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")


class AlertDispatcher:
    """Delivers alerts to the configured sinks from one background task."""

    def __init__(
        self,
        settings: AlertSettings,
        *,
        backoff_base_seconds: float = BACKOFF_BASE_SECONDS,
        backoff_max_seconds: float = BACKOFF_MAX_SECONDS,
        history_size: int = HISTORY_SIZE,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.backoff_base_seconds = backoff_base_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self._transport = transport
        self._sleep = sleep or anyio.sleep
        self._queue: deque[Alert] = deque()
        self._history: deque[Alert] = deque(maxlen=history_size)
        self._fired: dict[str, int] = {}  # per kind, a closed set: bounded
        self._wakeup: anyio.Event | None = None
        self._idle_waiters: list[anyio.Event] = []
        self._busy = False
        self.counters: dict[str, int] = {
            "submitted": 0,
            "sent": 0,
            "failed": 0,
            "dropped": 0,
            "retries": 0,
            "webhook_sent": 0,
            "webhook_failed": 0,
            "command_sent": 0,
            "command_failed": 0,
        }

    # -- the caller's side ---------------------------------------------------------------

    @property
    def has_sinks(self) -> bool:
        return bool(self.settings.webhook_url or self.settings.command)

    def submit(self, alert: Alert) -> None:
        """Log, remember and queue ``alert``; never blocks, never raises for a full queue.

        Call it from the event loop's thread (it wakes the :meth:`run` task directly).
        """
        self.counters["submitted"] += 1
        self._fired[alert.kind] = self._fired.get(alert.kind, 0) + 1
        self._history.append(alert)
        log.warning(
            "budget_alert",
            kind=alert.kind,
            period=alert.period,
            tier=alert.tier,
            threshold=alert.threshold,
            message=alert.message,
        )
        if not self.has_sinks:
            return
        if len(self._queue) >= self.settings.queue_size:
            dropped = self._queue.popleft()
            self.counters["dropped"] += 1
            log.warning(
                "alert_dropped",
                reason="queue full",
                kind=dropped.kind,
                period=dropped.period,
                dropped=self.counters["dropped"],
            )
        self._queue.append(alert)
        if self._wakeup is not None:
            self._wakeup.set()

    def history(self, limit: int = 50) -> list[Alert]:
        """The newest ``limit`` alerts submitted, newest first."""
        items = list(self._history)[-limit:] if limit > 0 else []
        return items[::-1]

    def fired_by_kind(self) -> dict[str, int]:
        """Alerts submitted by this process, per kind (every kind present, 0 if none)."""
        return {kind: self._fired.get(kind, 0) for kind in ALERT_KINDS}

    def stats(self) -> dict[str, int]:
        """Counters plus the current queue length."""
        return {**self.counters, "queued": len(self._queue)}

    def restore_history(self, alerts: list[Alert]) -> None:
        """Refill the history (oldest first) without delivering anything."""
        self._history.extend(alerts)

    async def drain(self) -> None:
        """Wait until the queue is empty and nothing is being delivered (tests, shutdown)."""
        if not self._queue and not self._busy:
            return
        waiter = anyio.Event()
        self._idle_waiters.append(waiter)
        await waiter.wait()

    # -- the delivery task ---------------------------------------------------------------

    async def run(self) -> None:
        """Deliver queued alerts until cancelled."""
        self._wakeup = anyio.Event()
        timeout = httpx.Timeout(self.settings.webhook_timeout_seconds)
        async with httpx.AsyncClient(
            timeout=timeout, transport=self._transport, follow_redirects=False
        ) as client:
            while True:
                if not self._queue:
                    await self._wakeup.wait()
                    self._wakeup = anyio.Event()
                    continue
                alert = self._queue.popleft()
                self._busy = True
                try:
                    await self._deliver(client, alert)
                except Exception as exc:  # one alert must never stop the delivery of the rest
                    self.counters["failed"] += 1
                    log.error(
                        "alert_delivery_failed",
                        error=type(exc).__name__,
                        kind=alert.kind,
                        period=alert.period,
                    )
                finally:
                    self._busy = False
                    if not self._queue:
                        for waiter in self._idle_waiters:
                            waiter.set()
                        self._idle_waiters.clear()

    async def _deliver(self, client: httpx.AsyncClient, alert: Alert) -> None:
        body = orjson.dumps(tidy(alert.to_dict()))
        results: list[bool] = []

        async def webhook() -> None:
            results.append(await self._webhook(client, body, alert))

        async def command() -> None:
            results.append(await self._command(body, alert))

        async with anyio.create_task_group() as group:
            if self.settings.webhook_url:
                group.start_soon(webhook)
            if self.settings.command:
                group.start_soon(command)
        if results and all(results):
            self.counters["sent"] += 1
        else:
            self.counters["failed"] += 1

    def _backoff(self, attempt: int) -> float:
        delay = min(self.backoff_max_seconds, self.backoff_base_seconds * 2.0**attempt)
        return delay * random.uniform(0.5, 1.0)

    async def _webhook(self, client: httpx.AsyncClient, body: bytes, alert: Alert) -> bool:
        url = self.settings.webhook_url
        assert url is not None
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        secret = self.settings.webhook_secret
        if secret is not None:
            headers[SIGNATURE_HEADER] = sign(body, secret.get_secret_value())
        attempts = self.settings.webhook_max_retries + 1
        reason = ""
        for attempt in range(attempts):
            if attempt:
                self.counters["retries"] += 1
                await self._sleep(self._backoff(attempt - 1))
            try:
                # Per request, so that a reload's new timeout applies to the next delivery.
                response = await client.post(
                    url,
                    content=body,
                    headers=headers,
                    timeout=self.settings.webhook_timeout_seconds,
                )
            except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
                # InvalidURL is no HTTPError: config validation refuses such a URL, and a
                # receiver's redirect-free answer cannot produce one, but never trust that.
                reason = type(exc).__name__
                if not isinstance(exc, httpx.HTTPError):
                    break  # the same URL will not become valid on a retry
                continue
            if response.is_success:
                self.counters["webhook_sent"] += 1
                return True
            reason = f"HTTP {response.status_code}"
            if response.status_code != 429 and response.status_code < 500:
                break  # the receiver refuses this alert: retrying will not help
        self.counters["webhook_failed"] += 1
        log.warning(
            "alert_webhook_failed",
            target=_safe_url(url),
            reason=reason,
            kind=alert.kind,
            period=alert.period,
            failed=self.counters["webhook_failed"],
        )
        return False

    async def _command(self, body: bytes, alert: Alert) -> bool:
        command = self.settings.command
        assert command is not None
        # Not the daemon's secrets (health token, source tokens in CCO_MONITOR_*).
        env = child_environment()
        env.update(
            {
                "CCO_ALERT_KIND": alert.kind,
                "CCO_ALERT_PERIOD": alert.period,
                "CCO_ALERT_TIER": alert.tier or "",
                "CCO_ALERT_THRESHOLD": "" if alert.threshold is None else str(alert.threshold),
                "CCO_ALERT_MESSAGE": alert.message,
                "CCO_ALERT_AT": alert.at.isoformat(),
            }
        )
        reason = ""
        try:
            process = await anyio.open_process(
                shlex.split(command),
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            reason = f"cannot start: {exc.strerror or type(exc).__name__}"
        except ValueError as exc:
            reason = f"cannot start: {exc}"
        else:
            returncode: int | None = None
            async with process:
                with anyio.move_on_after(self.settings.command_timeout_seconds):
                    if process.stdin is not None:
                        with contextlib.suppress(
                            anyio.BrokenResourceError, anyio.ClosedResourceError, OSError
                        ):
                            await process.stdin.send(body)
                        await process.stdin.aclose()
                    returncode = await process.wait()
                if returncode is None:
                    process.kill()
                    with anyio.CancelScope(shield=True):
                        await process.wait()
                    reason = f"timed out after {self.settings.command_timeout_seconds:g} s"
                elif returncode != 0:
                    reason = f"exit status {returncode}"
            if returncode == 0:
                self.counters["command_sent"] += 1
                return True
        self.counters["command_failed"] += 1
        log.warning(
            "alert_command_failed",
            # The program only: its arguments may carry a token.
            command=_program(command),
            reason=reason,
            kind=alert.kind,
            period=alert.period,
        )
        return False


def _program(command: str) -> str:
    """The program a command line runs (its first word), for logs."""
    try:
        words = shlex.split(command)
    except ValueError:
        return "(unparsable command line)"
    return words[0] if words else "(empty command line)"
