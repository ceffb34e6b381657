"""POST /api/auth/login, POST /api/auth/logout, GET /api/auth/me."""
from __future__ import annotations

import functools
import hmac
import logging
import sys

from flask import Blueprint, Flask, current_app, jsonify, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from auth.credentials import current_session
from auth.passwords import admin_password_hash, check_password
from concurrency import run_in_thread
from errors import UnauthorizedError
from jsonbody import read_json_object, require_string
import services as services_module

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__, url_prefix="/api/auth")
INVALID_LOGIN = "invalid username or password"
_PASSWORD_HASH = "auth.admin_password_hash"  # key in app.extensions


def init_limiter(app: Flask, config) -> Limiter:
    """Throttle logins: N failures per window from one client address, then 429 with Retry-After."""
    limiter = Limiter(get_remote_address, app=app, storage_uri="memory://", strategy="moving-window",
                      headers_enabled=True, default_limits=[])
    # Only the login is limited. Flask-Limiter hooks itself into every request of the app, and
    # even filtered out its bookkeeping costs ~0.15 ms a request: run its hooks for this
    # blueprint's routes alone, which keeps the proxy and the status route cheap.
    _scope_hooks_to_blueprint(app, limiter, bp.name)
    limiter.request_filter(lambda: request.endpoint != "auth.login")
    limit = f"{config.login_max_failures} per {config.login_window_s} seconds"
    # Only failed attempts count, so a user who logs in correctly is never locked out by it.
    app.view_functions["auth.login"] = limiter.limit(
        limit, deduct_when=lambda response: response.status_code == 401)(app.view_functions["auth.login"])
    return limiter


def _scope_hooks_to_blueprint(app: Flask, limiter: Limiter, blueprint: str) -> None:
    """Move the limiter's before/after/teardown request hooks from the whole app to one blueprint."""
    def owned(hook) -> bool:
        owner = getattr(hook, "__self__", None)  # a bound method of the limiter
        if owner is None and isinstance(hook, functools.partial) and hook.args:
            owner = hook.args[0]  # partial(Limiter.__inject_headers, limiter)
        return owner is limiter

    moved = 0
    for hooks in (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs):
        mine = [hook for hook in hooks.get(None, []) if owned(hook)]
        hooks[None] = [hook for hook in hooks.get(None, []) if not owned(hook)]
        hooks.setdefault(blueprint, []).extend(mine)
        moved += len(mine)
    if moved != 3:  # a Flask-Limiter that hooks in differently: fail loudly, not silently unlimited
        raise RuntimeError(f"expected Flask-Limiter's 3 request hooks, found {moved}")


@bp.record_once
def _hash_admin_password(state) -> None:
    # Once per app, at creation: from here on the login checks against this hash.
    state.app.extensions[_PASSWORD_HASH] = admin_password_hash(state.app.extensions["dashboard"].config)


@bp.post("/login")
def login():
    body = read_json_object()
    # No length limits of their own (the body is capped at 1 MiB): an over-long user name or
    # password is a wrong one, a 401 with the one message, not a 400 that tells them apart.
    username = require_string(body, "username", max_length=sys.maxsize, allow_empty=True)
    password = require_string(body, "password", max_length=sys.maxsize, allow_empty=True)
    services = services_module.current()
    config = services.config
    # Always run bcrypt (in a real thread: ~250 ms at cost 12 would stall every connection),
    # so a wrong user name takes as long as a wrong password.
    password_ok = run_in_thread(check_password, password, current_app.extensions[_PASSWORD_HASH])
    user_ok = hmac.compare_digest(username.encode("utf-8", "surrogatepass"),
                                  config.auth_username.encode("utf-8"))
    if not (password_ok and user_ok):
        log.info("failed login attempt")
        raise UnauthorizedError(INVALID_LOGIN)
    session = services.sessions.create(config.auth_username)
    log.info("user %s logged in", session.username)
    return jsonify(token=session.token, token_type="bearer", expires_at=session.expires_at_iso(),
                   username=session.username)


@bp.post("/logout")
def logout():
    session = current_session()
    services_module.current().sessions.revoke(session.token)  # its sockets are disconnected too
    return jsonify(success=True)


@bp.get("/me")
def me():
    session = current_session()
    return jsonify(username=session.username, expires_at=session.expires_at_iso())
