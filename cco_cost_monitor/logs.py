"""Logging: structlog for our own events, stdlib logs (httpx, aiohttp, asyncio) through it.

JSON lines when stderr is not a terminal or journald reads it (``JOURNAL_STREAM``), a
readable console rendering otherwise. Configure only after daemonizing: handlers opened
before the fork are closed by it. Tracebacks are rendered without local variables, so
that no secret held in a local can reach a log.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal, TextIO

import structlog
import structlog.tracebacks

LogFormat = Literal["auto", "json", "console"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def wants_json(log_format: LogFormat, stream: TextIO) -> bool:
    """``auto`` means JSON unless a person is watching a terminal outside journald."""
    if log_format != "auto":
        return log_format == "json"
    if os.environ.get("JOURNAL_STREAM"):
        return True
    isatty = getattr(stream, "isatty", None)
    return not (isatty and isatty())


def configure_logging(
    level: str = "info",
    log_format: LogFormat = "auto",
    *,
    log_file: Path | None = None,
    stream: TextIO | None = None,
) -> None:
    """Route structlog and stdlib logging to ``log_file`` or ``stream`` (stderr)."""
    output: TextIO
    if log_file is not None:
        from cco_cost_monitor.statedir import PRIVATE_DIR_MODE, open_private  # noqa: PLC0415

        log_file.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
        # 0600 and never through a symlink planted in the state dir.
        fd = open_private(log_file, os.O_WRONLY | os.O_APPEND)
        output = open(fd, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
    else:
        output = stream or sys.stderr
    json_output = wants_json(log_format, output)

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if json_output:
        renderer = structlog.processors.JSONRenderer()
        # dict_tracebacks would include every frame's locals (flags, tokens): never.
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=bool(getattr(output, "isatty", lambda: False)()),
            exception_formatter=structlog.dev.plain_traceback,
        )

    handler = logging.StreamHandler(output)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level, logging.INFO))
    # httpx logs every request at INFO: one line per reconnect is ours to write.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
