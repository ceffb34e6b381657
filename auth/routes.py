"""POST /api/auth/login, POST /api/auth/logout, GET /api/auth/me."""
from __future__ import annotations

import hmac
import logging
import sys

import bcrypt
from flask import Blueprint, Flask, current_app, jsonify, request

from auth.credentials import current_session
from auth.throttle import LoginThrottle
from concurrency import run_in_thread
from errors import UnauthorizedError
from jsonbody import read_json_object, require_string

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__, url_prefix="/api/auth")
INVALID_LOGIN = "invalid username or password"
THROTTLE_KEY = "login_throttle"


def init_throttle(app: Flask) -> LoginThrottle:
    """Throttle logins: N failures per window from one client address (or for one user name), then 429."""
    config = app.extensions["dashboard"].config
    throttle = LoginThrottle(config.login_max_failures, config.login_max_user_failures, config.login_window_s)
    app.extensions[THROTTLE_KEY] = throttle
    return throttle


def _password_matches(password: str, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password.encode("utf-8", "surrogatepass"), hashed)
    except ValueError:
        # bcrypt 5 raises on passwords over 72 bytes; they can never match a valid password.
        return False


@bp.post("/login")
def login():
    body = read_json_object()
    # No length limits of their own (the body is capped at 1 MiB): an over-long user name or
    # password is a wrong one, a 401 with the one message, not a 400 that tells them apart.
    username = require_string(body, "username", max_length=sys.maxsize, allow_empty=True)
    password = require_string(body, "password", max_length=sys.maxsize, allow_empty=True)
    services = current_app.extensions["dashboard"]
    config = services.config
    # The slot is taken before bcrypt runs, so concurrent guesses cannot all slip past the count.
    with current_app.extensions[THROTTLE_KEY].attempt(request.remote_addr or "", username) as attempt:
        # Always run bcrypt (in a real thread: ~250 ms at cost 12 would stall every connection),
        # so a wrong user name takes as long as a wrong password.
        password_ok = run_in_thread(_password_matches, password, config.auth_password_hash)
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
    services = current_app.extensions["dashboard"]
    services.sessions.revoke(session.token)
    services.notify_session_ended(session.token)
    return jsonify(success=True)


@bp.get("/me")
def me():
    session = current_session()
    return jsonify(username=session.username, expires_at=session.expires_at_iso())
