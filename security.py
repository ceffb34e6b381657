"""Security headers on every response; CORS for the configured origins only; undecodable queries
refused; requests naming a host this server does not answer for refused (DNS rebinding)."""
from __future__ import annotations

import ipaddress
import json
import socket
from typing import TYPE_CHECKING, Any, Callable, Iterable

from flask import Flask, request
from flask_cors import CORS

if TYPE_CHECKING:
    from services import Services
from errors import BadRequestError


# On every response: the app's (after_request), Socket.IO's (sockets.transport.EngineIoResponses)
# and the HTTP server's own refusals (server.py).
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))
FOREIGN_HOST = "the Host header names a host this server does not answer for (see DASHBOARD_ALLOWED_HOSTS)"


def default_allowed_hosts(bind_host: str) -> tuple[str, ...]:
    """This machine's names: localhost, its host name, and the bound address (IP addresses pass anyway)."""
    names = {"localhost", "127.0.0.1", "::1", bind_host.lower()}
    hostname = socket.gethostname().lower()
    if hostname:
        names.update({hostname, f"{hostname}.local"})
    return tuple(sorted(names))


def host_name(header: str) -> str:
    """Return the host of a Host header, without its port, lower-cased.

    >>> host_name("[::1]:5000"), host_name("Dash.LAN.:80"), host_name("127.0.0.1")
    ('::1', 'dash.lan', '127.0.0.1')
    """
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") == 1:
        header = header.partition(":")[0]
    return header.rstrip(".")


class AllowedHosts:
    """WSGI middleware below Flask and Socket.IO: refuse a request whose Host is not this server's.

    A web page on another site can point its own name at 127.0.0.1 (DNS rebinding) and then talk
    to this server as if same-origin; its requests still carry that name in Host. An IP address
    in Host cannot be a rebinding, so by default every address passes, and names only when listed.
    """

    def __init__(self, wsgi_app: Callable, configured: tuple[str, ...], bind_host: str):
        self.wsgi_app = wsgi_app
        self.any_host = "*" in configured
        self.names = frozenset(configured or default_allowed_hosts(bind_host))
        self.addresses_pass = not configured

    def allows(self, header: str) -> bool:
        if self.any_host:
            return True
        host = host_name(header)
        if host in self.names or host.endswith(".localhost"):
            return True
        if self.addresses_pass:
            try:
                ipaddress.ip_address(host)
                return True
            except ValueError:
                return False
        return False

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST")
        # No Host at all (HTTP/1.0 tools): browsers always send one, so it is no rebinding.
        if host is None or self.allows(host):
            return self.wsgi_app(environ, start_response)
        body = json.dumps({"error": FOREIGN_HOST}).encode()
        start_response("400 BAD REQUEST", [("Content-Type", "application/json"),
                                           ("Content-Length", str(len(body))), *SECURITY_HEADERS])
        return [body]


def init_app(app: Flask, services: "Services") -> None:
    """Add the contract's headers to every response and allow CORS only where configured."""
    config = services.config
    # Outermost, around Socket.IO's middleware too: its handshake is refused like any request.
    app.wsgi_app = AllowedHosts(app.wsgi_app, config.allowed_hosts, config.host)  # type: ignore[method-assign]
    if config.cors_allowed_origins:
        CORS(app, resources={r"/api/*": {"origins": list(config.cors_allowed_origins)},
                             r"/ollama/*": {"origins": list(config.cors_allowed_origins)},
                             r"/health": {"origins": list(config.cors_allowed_origins)}},
             allow_headers=["Authorization", "Content-Type"], expose_headers=["X-Reading-Age", "X-Reading-Stale"],
             supports_credentials=False, max_age=600)

    @app.before_request
    def refuse_undecodable_query():
        # Werkzeug decodes the query strictly when a view reads request.args: a raw non-UTF-8 byte
        # would surface there as a UnicodeDecodeError (a 500) instead of the client's mistake.
        try:
            request.query_string.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequestError("malformed query string: it is not valid UTF-8 "
                                  "(percent-encode other bytes)") from None

    security_headers = tuple((name.lower(), name, value) for name, value in SECURITY_HEADERS)

    @app.after_request
    def add_headers(response):
        headers = response.headers
        # A view may have set one itself. One pass over the names: Headers.setdefault (and `in`)
        # raise and catch a BadRequestKeyError for every header that is absent, on every request.
        present = {name.lower(): value for name, value in headers}
        for lower, name, value in security_headers:
            if lower not in present:
                headers.add(name, value)
        req = request._get_current_object()  # type: ignore[attr-defined]  # one context lookup
        if present.get("content-type", "").partition(";")[0].strip().lower() == "text/html":
            host = req.host
            headers.setdefault(
                "Content-Security-Policy",
                f"default-src 'self'; connect-src 'self' ws://{host} wss://{host}; img-src 'self' data:; "
                "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
                "form-action 'self'; frame-ancestors 'none'")
            headers.setdefault("X-Frame-Options", "DENY")
        if req.path.startswith("/api/"):
            # API answers are per-user and may carry a token: never cache them.
            cache_control = present.get("cache-control")
            if cache_control is None:
                headers.add("Cache-Control", "no-store")  # not set(): nothing to look for and replace
            elif cache_control != "no-store":
                headers["Cache-Control"] = "no-store"
        return response
