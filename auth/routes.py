"""POST /api/auth/login, POST /api/auth/logout, GET /api/auth/me."""
from __future__ import annotations

import hmac
import logging
import sys

from flask import Blueprint, Flask, current_app, jsonify, request

from auth.credentials import current_session
from auth.passwords import admin_password_hash, check_password
from auth.throttle import LoginThrottle
from concurrency import run_in_thread
from errors import UnauthorizedError
from jsonbody import read_json_object, require_string
import services as services_module

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__, url_prefix="/api/auth")
INVALID_LOGIN = "invalid username or password"
_PASSWORD_HASH = "auth.admin_password_hash"  # key in app.extensions
THROTTLE_KEY = "login_throttle"


def init_throttle(app: Flask, config) -> LoginThrottle:
    """Throttle logins: N failures per window from one client address (or for one user name), then 429."""
    throttle = LoginThrottle(config.login_max_failures, config.login_max_user_failures, config.login_window_s)
    app.extensions[THROTTLE_KEY] = throttle
    return throttle


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
    # The slot is taken before bcrypt runs, so concurrent guesses cannot all slip past the count.
    with current_app.extensions[THROTTLE_KEY].attempt(request.remote_addr or "", username) as attempt:
        # Always run bcrypt (in a real thread: ~250 ms at cost 12 would stall every connection),
        # so a wrong user name takes as long as a wrong password.
        password_ok = run_in_thread(check_password, password, current_app.extensions[_PASSWORD_HASH])
        user_ok = hmac.compare_digest(username.encode("utf-8", "surrogatepass"),
                                      config.auth_username.encode("utf-8"))
        if not (password_ok and user_ok):
            attempt.failed()
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
