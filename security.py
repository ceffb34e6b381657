"""Security headers on every response; CORS for the configured origins only; undecodable queries refused."""
from __future__ import annotations

from flask import Flask, request
from flask_cors import CORS

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services import Services
from errors import BadRequestError


# On every response: the app's (after_request), Socket.IO's (sockets.transport.EngineIoResponses)
# and the HTTP server's own refusals (server.py).
SECURITY_HEADERS = (("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"))


def init_app(app: Flask, services: "Services") -> None:
    """Add the contract's headers to every response and allow CORS only where configured."""
    config = services.config
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
