"""Who is calling (a session token, an API key, the proxy's static token), and the one guard that
applies the permission table (auth/permissions.py) to every /api/*, /ollama/* and /metrics request."""
from __future__ import annotations

import functools
import hmac
from dataclasses import dataclass

from flask import Flask, g, request

import services as services_module
from auth.accounts import KEY_PREFIX, ApiKey, Session
from auth.permissions import ADMIN, NEEDED_ROLE, Rule, role_allows, rule_of, scopes_allow
from errors import ForbiddenError, UnauthorizedError

PROTECTED_PREFIXES = ("/api/", "/ollama")
PROTECTED_PATHS = frozenset({"/api", "/metrics"})
# Query parameters that look like a credential: refused, so that none ends up in a log or a history.
CREDENTIAL_PARAMETERS = frozenset({"token", "access_token", "api_key", "apikey", "key"})


@dataclass(frozen=True)
class Principal:
    """The caller: a user through a session or one of their keys, or the proxy's static token."""

    username: str
    role: str
    auth: str  # "session" | "api_key" | "proxy_token"
    user_id: int | None = None
    session: Session | None = None
    key: ApiKey | None = None

    @property
    def scopes(self) -> frozenset[str] | None:
        if self.key is not None:
            return frozenset(self.key.scopes)
        if self.auth == "proxy_token":
            return frozenset({"proxy"})
        return None

    def can(self, permission: str) -> bool:
        if not role_allows(self.role, permission):
            return False
        scopes = self.scopes
        return scopes is None or scopes_allow(scopes, permission)

    @property
    def expires_at(self) -> float | None:
        if self.session is not None:
            return self.session.expires_at
        return self.key.expires_at if self.key is not None else None


def bearer_token(header: str | None) -> str | None:
    """Return the token of an `Authorization: Bearer <token>` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def principal_for(credential: str, *, allow_proxy_token: bool = False) -> Principal | None:
    """Return who a credential (a session token, a `vdk_` key, the proxy token) stands for, or None."""
    services = services_module.current()
    accounts = services.accounts
    if credential.startswith(KEY_PREFIX):
        key = accounts.key_for(credential)
        user = accounts.user_by_id(key.user_id) if key is not None else None
        if key is None or user is None or user.disabled:
            return None
        return Principal(user.username, user.role, "api_key", user.id, key=key)
    session = accounts.get(credential)
    if session is not None:
        user = accounts.user_by_id(session.user_id)
        if user is None or user.disabled:
            return None
        return Principal(user.username, user.role, "session", user.id, session=session)
    config = services.config
    if (allow_proxy_token and config.proxy_auth_enabled and config.proxy_auth_token
            and hmac.compare_digest(credential.encode("utf-8", "surrogatepass"),
                                    config.proxy_auth_token.encode())):
        return Principal("proxy_token", "user", "proxy_token")
    return None


def authenticate(*, allow_proxy_token: bool = False) -> Principal:
    """Return the request's principal, or raise 401."""
    req = request._get_current_object()  # type: ignore[attr-defined]  # one context lookup, not five
    # Most requests have no query string: parsing one into request.args is skipped for them.
    if req.query_string and CREDENTIAL_PARAMETERS & {name.lower() for name in req.args}:
        raise UnauthorizedError("credentials in the URL are refused: send Authorization: Bearer <token> "
                                "or X-API-Key: <key> as a header")
    # From the WSGI environ: Werkzeug's headers.get() raises and catches an exception for each
    # header that is absent (a request with a key has no Authorization, one with a token no key).
    environ = req.environ
    credential = bearer_token(environ.get("HTTP_AUTHORIZATION")) or environ.get("HTTP_X_API_KEY", "").strip()
    if not credential:
        raise UnauthorizedError("missing credentials: send Authorization: Bearer <token> (POST /api/auth/login) "
                                "or X-API-Key: <key>")
    principal = principal_for(credential, allow_proxy_token=allow_proxy_token)
    if principal is None:
        raise UnauthorizedError("invalid or expired credentials: log in again (POST /api/auth/login) "
                                "or use a valid API key")
    g.principal = principal
    return principal


def current_principal() -> Principal:
    return g.principal


def current_session() -> Session:
    """The session of a session-only route (the guard has made sure there is one)."""
    session = g.principal.session
    if session is None:
        raise ForbiddenError("this route needs a session from a login, not an API key")
    return session


def authorize(principal: Principal, rule: Rule) -> None:
    """Raise 403 naming what is missing when the principal may not use a route with this rule."""
    if rule.session_only and principal.auth != "session":
        raise ForbiddenError("this route needs a session from a login (POST /api/auth/login); "
                             "API keys cannot use it")
    if not role_allows(principal.role, rule.permission):
        raise ForbiddenError(f"this needs the {NEEDED_ROLE[rule.permission]} role "
                             f"(you are {principal.role})")
    scopes = principal.scopes
    if scopes is not None and not scopes_allow(scopes, rule.permission):
        needed = {"read": "read", "models": "models", "infer": "proxy", "metrics": "metrics"}.get(
            rule.permission, "read")
        raise ForbiddenError(f"this API key lacks the {needed!r} scope")


def is_protected(path: str) -> bool:
    return path in PROTECTED_PATHS or path.startswith(PROTECTED_PREFIXES)


def protect(app: Flask) -> None:
    """Authenticate and authorise every protected request before routing decides 404/405."""

    @functools.cache
    def public_paths() -> frozenset[str]:
        """Paths of public views, also for a wrong method on them (405, not 401)."""
        return frozenset(rule.rule for rule in app.url_map.iter_rules()
                         if rule_of(app.view_functions.get(rule.endpoint)) is None)

    @app.before_request
    def guard():
        req = request._get_current_object()  # type: ignore[attr-defined]
        path = req.path
        if req.method == "OPTIONS" or not is_protected(path):
            return None
        endpoint = req.endpoint
        view = app.view_functions.get(endpoint) if endpoint else None
        rule = rule_of(view)
        if rule is None or path in public_paths():  # the login, the OpenAPI document
            return None
        principal = authenticate(allow_proxy_token=path.startswith("/ollama"))
        if req.routing_exception is not None:
            return None  # 404 or 405, answered once the caller is known
        # A protected route that declares nothing is for administrators only (fail closed).
        authorize(principal, rule if isinstance(rule, Rule) else Rule(ADMIN))
        return None
