"""The HTTP surface's defences: the Host header checked against ``--allowed-hosts``, and the
headers that keep browsers from sniffing, framing or injecting into the pages the service serves.

Host: a web page the user visits can make the browser send requests to ``127.0.0.1`` under a
name of the page's own (DNS rebinding: the name resolves to the page's server, then to
127.0.0.1), and read the answers as same-origin. Such requests carry the page's name in
``Host``; a server that answers only its own names (the loopback names, by default, for a
server bound to loopback) refuses them with 400.

Headers: every response says ``X-Content-Type-Options: nosniff`` (a JSON error quoting a
request's text is never run as a script); the HTML pages (the playground, /docs, /redoc) may not
be framed (``X-Frame-Options: DENY``, ``frame-ancestors 'none'``) and load only what the service
itself serves (``Content-Security-Policy``).
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

# The playground (service/static) has no inline script or style.
PLAYGROUND_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI and ReDoc (service/docs.py) start from an inline script and set inline styles;
# ReDoc runs a worker from a blob.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
PAGE_POLICIES = {"/": PLAYGROUND_CSP, "/docs": DOCS_CSP, "/redoc": DOCS_CSP}


def host_allowed(host: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``host`` (a Host header: a name or address, maybe with a port) matches one of
    ``patterns`` (``*``, ``*.domain`` or a name; lower case)."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:  # name:port (a bare IPv6 address has more colons)
        host = host.split(":")[0]
    host = host.rstrip(".")
    for pattern in patterns:
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


class HostCheckMiddleware:
    """Answer 400 to a request whose Host header is not one of ``patterns`` (``*``: any)."""

    def __init__(self, app, patterns: tuple[str, ...]):
        self.app = app
        self.patterns = patterns
        self.any = "*" in patterns

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.any:
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        if host_allowed(host, self.patterns):
            await self.app(scope, receive, send)
            return
        # The app's error body (service.app.error_response), for a header that needs no quoting
        detail = f"Host {host[:100]!r} is not served here (see --allowed-hosts)"
        await JSONResponse({"detail": detail}, status_code=400)(scope, receive, send)


class SecurityHeadersMiddleware:
    """Add ``X-Content-Type-Options`` to every response, and the framing and content policies to
    the HTML pages'."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = PAGE_POLICIES.get(scope["path"])

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                if policy is not None:
                    headers.append((b"x-frame-options", b"DENY"))
                    headers.append((b"content-security-policy", policy.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
