"""Access control and security headers of the HTTP server.

When ``health_token`` is set, every request except those in :data:`PUBLIC_PATHS`
(``/livez``, so that a liveness probe needs no secret) must carry
``Authorization: Bearer <token>``; the comparison is constant-time
(:func:`hmac.compare_digest`) and a missing or wrong token gets ``401`` with a
``WWW-Authenticate`` challenge and no data. The token is read from the settings on
each request, so a ``reload`` that changes it takes effect at once. The token never
appears in a response or a log line.

On a loopback bind the ``Host`` header must name the bound address, ``localhost`` or an
entry of ``allowed_hosts`` (any port): a page on another site that points a domain of
its own at 127.0.0.1 (DNS rebinding) makes the browser send that domain as ``Host`` and
gets ``421`` with no data. Without this, such a page is same-origin with the monitor and
can read the user's spend. A request without ``Host`` (HTTP/1.0 tools) is answered: a
browser always sends one. On any other bind the token guards the API instead.

Every response, including errors, carries defensive headers (``nosniff``, no
framing, no referrer, a restrictive Content-Security-Policy). No CORS header is ever
sent: browsers on other origins cannot read anything from the monitor.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler

if TYPE_CHECKING:
    from pydantic import SecretStr

__all__ = [
    "PUBLIC_PATHS",
    "host_allowed",
    "install",
    "make_auth_middleware",
    "make_host_middleware",
    "token_matches",
]

PUBLIC_PATHS = frozenset({"/livez"})
# The dashboard loads its script and style from the same origin and fetches the JSON API
# from it; nothing else is allowed.
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
TokenGetter = Callable[[], "SecretStr | None"]
#: ``(bound host, extra allowed hosts)``, or ``None`` when no Host check applies.
HostsGetter = Callable[[], "tuple[str, Sequence[str]] | None"]
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _host_name(header: str) -> str:
    """The name in a ``Host`` header, without port, brackets or a trailing dot, lowercased."""
    value = header.strip().lower()
    if value.startswith("["):
        value = value[1:].partition("]")[0]
    elif value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def host_allowed(header: str | None, bound: str, extra: Sequence[str]) -> bool:
    """Whether a request with this ``Host`` may be answered on a loopback bind."""
    if header is None:
        return True
    if "*" in extra:
        return True
    name = _host_name(header)
    allowed = {"localhost", bound.lower(), *extra}
    if bound == "localhost":
        allowed |= LOOPBACK_NAMES
    return name in allowed


def make_host_middleware(get_hosts: HostsGetter) -> Callable[[web.Request, Handler], object]:
    """A middleware answering 421 to a ``Host`` that does not name this server."""

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        hosts = get_hosts()
        if hosts is not None and not host_allowed(request.headers.get("Host"), *hosts):
            return web.Response(
                status=421,
                text=(
                    "misdirected request: this monitor answers only Host names of its own "
                    "address or localhost (add others to allowed_hosts)\n"
                ),
                headers={"Cache-Control": "no-store"},
            )
        return await handler(request)

    return check_host


def token_matches(header: str | None, expected: str) -> bool:
    """Whether ``header`` is ``Bearer <expected>``, compared in constant time."""
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), expected.encode())


def make_auth_middleware(get_token: TokenGetter) -> Callable[[web.Request, Handler], object]:
    """A middleware that enforces the bearer token returned by ``get_token`` (if any)."""

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = get_token()
        if token is None or request.path in PUBLIC_PATHS:
            return await handler(request)
        if not token_matches(request.headers.get("Authorization"), token.get_secret_value()):
            return web.Response(
                status=401,
                text="unauthorized: send Authorization: Bearer <health_token>\n",
                headers={
                    "WWW-Authenticate": 'Bearer realm="cco-monitor"',
                    "Cache-Control": "no-store",
                },
            )
        return await handler(request)

    return require_token


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    content_type = response.headers.get("Content-Type", "")
    policy = DASHBOARD_CSP if content_type.startswith("text/html") else API_CSP
    response.headers.setdefault("Content-Security-Policy", policy)
    # Never let a handler (or a future one) open the API to other origins.
    for name in list(response.headers):
        if name.lower().startswith("access-control-"):
            del response.headers[name]


def install(
    app: web.Application, get_token: TokenGetter, get_hosts: HostsGetter | None = None
) -> None:
    """Put the Host and token checks first in ``app``'s middlewares and add the headers."""
    app.middlewares.insert(0, make_auth_middleware(get_token))  # type: ignore[arg-type]
    if get_hosts is not None:
        app.middlewares.insert(0, make_host_middleware(get_hosts))  # type: ignore[arg-type]
    app.on_response_prepare.append(_security_headers)
