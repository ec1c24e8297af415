"""Credentials out of every URL the monitor shows: health, summary, logs, ``config``.

A source URL may carry a password (``http://user:pass@host/...``) or a token in its query
(``?token=...``); :func:`redact_url` replaces the password and the value of every query key
that looks like a credential with ``***`` and keeps the rest (scheme, host, port, path, the
user name and harmless query keys), so that the URL still says which stream it is. A webhook
URL's path and query are themselves often the secret (Slack, Discord): :func:`origin_only`
keeps only scheme, host and port. :func:`child_environment` is the environment handed to the
alert command: the daemon's own, minus every ``CCO_MONITOR_*`` variable (they can hold the
health token, source tokens and URLs) except the three that only locate the state.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

__all__ = ["MASK", "child_environment", "origin_only", "redact_url"]

MASK = "***"
#: Query keys whose values are masked: any key containing one of these words.
SECRET_KEY = re.compile(
    r"token|key|secret|pass|pwd|auth|sig|credential|session|cookie|bearer|jwt|code",
    re.IGNORECASE,
)
#: ``CCO_MONITOR_*`` variables the alert command keeps: they only say where the state is.
KEPT_ENV = frozenset({"CCO_MONITOR_HOME", "CCO_MONITOR_STATE_DIR", "CCO_MONITOR_CONFIG"})


def redact_url(url: str) -> str:
    """``url`` with its password and credential-like query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
        hostinfo = parts.netloc.rpartition("@")[2]
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        userinfo = netloc.rpartition("@")[0]
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostinfo}" if has_password else f"{user}@{hostinfo}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(SECRET_KEY.search(key) for key, _ in pairs):
        query = "&".join(
            f"{quote(key, safe='')}={MASK if SECRET_KEY.search(key) else quote(value, safe='')}"
            for key, value in pairs
        )
    fragment = MASK if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def origin_only(url: str) -> str:
    """Scheme, host and port: nothing of the path, query, user or password."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return MASK
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def child_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child process: no ``CCO_MONITOR_*`` secret in it."""
    source = os.environ if environ is None else environ
    return {
        name: value
        for name, value in source.items()
        if not name.upper().startswith("CCO_MONITOR_") or name.upper() in KEPT_ENV
    }
