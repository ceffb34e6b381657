"""Security headers on every response; CORS for the configured origins only; undecodable queries refused."""
from __future__ import annotations

import json
from typing import Any, Callable, Iterable

from flask import Flask, request
from flask_cors import CORS

from config import Config
from errors import BadRequestError


# On every response: the app's (after_request), Socket.IO's (EngineIoResponses) and the HTTP
# server's own refusals (concurrency.serve).
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))


class EngineIoResponses:
    """WSGI middleware for what Socket.IO answers itself, below Flask: add the security headers, and
    give its errors (plain text such as `"Not an accepted origin."`) the one JSON error shape."""

    def __init__(self, wsgi_app: Callable, path: str = "/socket.io/"):
        self.wsgi_app = wsgi_app
        self.path = path

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if not (environ.get("PATH_INFO") or "").startswith(self.path):
            return self.wsgi_app(environ, start_response)  # Flask's own after_request covers these
        captured: dict[str, Any] = {}

        def start(status: str, headers: list[tuple[str, str]], exc_info=None):
            present = {name.lower() for name, _ in headers}
            headers = list(headers) + [h for h in SECURITY_HEADERS if h[0].lower() not in present]
            if status[:1] in ("4", "5"):
                captured.update(status=status, headers=headers)  # sent below, once the body is JSON
                return lambda data: None
            return start_response(status, headers, exc_info)

        body = self.wsgi_app(environ, start)
        if not captured:
            return body
        try:
            text = b"".join(body).decode("utf-8", "replace")
        finally:
            if hasattr(body, "close"):
                body.close()
        try:
            message = json.loads(text)
        except ValueError:
            message = text
        if not isinstance(message, str):
            message = text
        payload = json.dumps({"error": message or captured["status"]}).encode()
        headers = [(k, v) for k, v in captured["headers"] if k.lower() not in ("content-type", "content-length")]
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        start_response(captured["status"], headers)
        return [payload]


def register_security(app: Flask, config: Config) -> None:
    """Add the contract's headers to every response and allow CORS only where configured.

    Call it after SocketIO(app): it wraps the Socket.IO middleware that SocketIO puts on app.wsgi_app.
    """
    app.wsgi_app = EngineIoResponses(app.wsgi_app)  # type: ignore[method-assign]
    if config.cors_allowed_origins:
        CORS(app, resources={r"/api/*": {"origins": list(config.cors_allowed_origins)},
                             r"/ollama/*": {"origins": list(config.cors_allowed_origins)},
                             r"/health": {"origins": list(config.cors_allowed_origins)}},
             allow_headers=["Authorization", "Content-Type"], supports_credentials=False, max_age=600)

    @app.before_request
    def refuse_undecodable_query():
        # Werkzeug decodes the query strictly when a view reads request.args: a raw non-UTF-8 byte
        # would surface there as a UnicodeDecodeError (a 500) instead of the client's mistake.
        try:
            request.query_string.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequestError("malformed query string: it is not valid UTF-8 "
                                  "(percent-encode other bytes)") from None

    @app.after_request
    def add_headers(response):
        headers = response.headers
        for name, value in SECURITY_HEADERS:
            headers.setdefault(name, value)
        if response.mimetype == "text/html":
            host = request.host
            headers.setdefault(
                "Content-Security-Policy",
                f"default-src 'self'; connect-src 'self' ws://{host} wss://{host}; img-src 'self' data:; "
                "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
                "form-action 'self'; frame-ancestors 'none'")
            headers.setdefault("X-Frame-Options", "DENY")
        if request.path.startswith("/api/"):
            # API answers are per-user and may carry a token: never cache them.
            headers["Cache-Control"] = "no-store"
        return response
