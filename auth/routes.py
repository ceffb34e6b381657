"""POST /api/auth/login, POST /api/auth/logout, GET /api/auth/me, POST /api/auth/password."""
from __future__ import annotations

import logging
import sys

from flask import Blueprint, Flask, current_app, jsonify, request

import audit
import services as services_module
from auth.credentials import current_principal, current_session
from auth.accounts import iso
from auth.passwords import check_password_async, hash_password, hash_password_like, validate_password
from auth.permissions import ANY, OWN, public, require
from auth.throttle import LoginThrottle
from concurrency import run_in_thread
from errors import ConflictError, UnauthorizedError
from jsonbody import read_json_object, require_string

log = logging.getLogger(__name__)
bp = Blueprint("auth", __name__, url_prefix="/api/auth")
INVALID_LOGIN = "invalid username or password"
THROTTLE_KEY = "login_throttle"
# Checked when the user name is unknown, so that a wrong name takes as long as a wrong password.
_DUMMY_HASH_KEY = "auth.dummy_hash"


def init_throttle(app: Flask, config, link=None) -> LoginThrottle:
    """Throttle logins: N failures per window from one client address (or for one user name), then 429.

    With a RedisLink the counts are shared by every process of the fleet.
    """
    throttle = LoginThrottle(config.login_max_failures, config.login_max_user_failures, config.login_window_s,
                             link=link)
    app.extensions[THROTTLE_KEY] = throttle
    return throttle


@bp.post("/login")
@public
def login():
    body = read_json_object()
    # No length limits of their own (the body is capped at 1 MiB): an over-long user name or
    # password is a wrong one, a 401 with the one message, not a 400 that tells them apart.
    username = require_string(body, "username", max_length=sys.maxsize, allow_empty=True)
    password = require_string(body, "password", max_length=sys.maxsize, allow_empty=True)
    accounts = services_module.current().accounts
    # The slot is taken before bcrypt runs, so concurrent guesses cannot all slip past the count.
    with current_app.extensions[THROTTLE_KEY].attempt(request.remote_addr or "", username) as attempt:
        user = accounts.user_by_name(username) if 0 < len(username) <= 128 else None
        if user is not None and user.username != username:
            user = None  # names are unique ignoring case, but a login spells its name exactly
        hashed = user.password_hash if user is not None else _dummy_hash()
        # Always run bcrypt (in a real thread: ~250 ms at cost 12 would stall every connection).
        password_ok = check_password_async(password, hashed)  # its own pool: never delays NVML reads
        if user is None or user.disabled or not password_ok:
            attempt.failed()
            log.info("failed login attempt")
            audit.record("login_failed", username=username[:128], success=False)
            raise UnauthorizedError(INVALID_LOGIN)
    session = accounts.create_session(user)
    accounts.record_login(user.id)
    audit.record("login", username=user.username)
    log.info("user %s logged in", user.username)
    return jsonify(token=session.token, token_type="bearer", expires_at=session.expires_at_iso(),
                   username=user.username, role=user.role)


def _dummy_hash() -> bytes:
    hashed = current_app.extensions.get(_DUMMY_HASH_KEY)
    if hashed is None:
        hashed = current_app.extensions[_DUMMY_HASH_KEY] = hash_password_like(
            services_module.current().accounts.user_by_name(services_module.current().config.auth_username))
    return hashed


@bp.post("/logout")
@require(OWN, session_only=True)
def logout():
    session = current_session()
    services_module.current().accounts.revoke_digest(session.token_sha256)  # its sockets are disconnected too
    audit.record("logout")
    return jsonify(success=True)


@bp.get("/me")
@require(ANY)
def me():
    principal = current_principal()
    expires_at = principal.expires_at
    return jsonify(username=principal.username, role=principal.role, expires_at=iso(expires_at),
                   auth=principal.auth)


@bp.post("/password")
@require(OWN, session_only=True)
def change_password():
    body = read_json_object()
    current = require_string(body, "current_password", max_length=sys.maxsize, allow_empty=True)
    new = require_string(body, "new_password", max_length=sys.maxsize, allow_empty=True)
    validate_password(new, "new_password")
    principal = current_principal()
    accounts = services_module.current().accounts
    user = accounts.user_by_id(principal.user_id)
    if user is None or not check_password_async(current, user.password_hash):
        audit.record("password_change", target=principal.username, success=False, detail="wrong current password")
        raise UnauthorizedError("the current password is wrong")
    if user.source == "environment":
        raise ConflictError("this administrator's password comes from the environment "
                            "(DASHBOARD_AUTH_PASSWORD or DASHBOARD_AUTH_PASSWORD_HASH): change it there")
    hashed = run_in_thread(hash_password, new)
    # Your other sessions end; the one you used and your API keys keep working.
    accounts.update_user(user.id, password_hash=hashed, keep_session_sha256=principal.session.token_sha256,
                         end_keys=False)
    audit.record("password_change", target=user.username)
    return jsonify(success=True)
