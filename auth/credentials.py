"""Who is calling: bearer tokens, and the guard for every /api/* route."""
from __future__ import annotations

import hmac

from flask import Flask, g, request

from auth.sessions import Session
from errors import UnauthorizedError
import services as services_module

# The login, and the OpenAPI document (it describes routes, not data).
PUBLIC_API_PATHS = frozenset({"/api/auth/login", "/api/openapi.json"})


def bearer_token(header: str | None) -> str | None:
    """Return the token of an `Authorization: Bearer <token>` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(*, allow_proxy_token: bool = False) -> Session | None:
    """Check the request's bearer token; return its session (None for the proxy token) or raise 401."""
    token = bearer_token(request.headers.get("Authorization"))
    if token is None:
        raise UnauthorizedError("missing credentials: send Authorization: Bearer <token> (POST /api/auth/login)")
    services = services_module.current()
    session = services.sessions.get(token)
    if session is not None:
        g.session = session
        return session
    config = services.config
    if (allow_proxy_token and config.proxy_auth_enabled and config.proxy_auth_token
            and hmac.compare_digest(token.encode(), config.proxy_auth_token.encode())):
        return None
    raise UnauthorizedError("invalid or expired token: log in again (POST /api/auth/login)")


def current_session() -> Session:
    return g.session


def protect_api(app: Flask) -> None:
    """Require a session token on every /api/* route except login."""

    @app.before_request
    def require_session():
        path = request.path
        if (path == "/api" or path.startswith("/api/")) and path not in PUBLIC_API_PATHS:
            if request.method == "OPTIONS":
                return None
            authenticate()
        return None
