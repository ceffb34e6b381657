"""GET/POST /api/users, PATCH/DELETE /api/users/<username> (administrators, with a session)."""
from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, jsonify

import audit
import services as services_module
from auth.accounts import DuplicateUserError, User
from auth.credentials import current_principal
from auth.passwords import hash_password, validate_password
from auth.permissions import ADMIN, ROLES, require
from concurrency import run_in_thread
from errors import BadRequestError, ConflictError, NotFoundError
from jsonbody import read_json_object, require_string

bp = Blueprint("users", __name__, url_prefix="/api/users")
USERNAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
ENVIRONMENT_ADMIN = ("this administrator comes from the environment (DASHBOARD_AUTH_USERNAME): "
                     "change its password or role there, not through the API")


def validate_username(value: Any, field: str = "username") -> str:
    if not isinstance(value, str):
        raise BadRequestError(f"field {field} must be a string")
    if not USERNAME.fullmatch(value):
        raise BadRequestError(f"field {field} must be 1-64 of ASCII letters, digits, '.', '_' or '-'")
    return value


def validate_role(value: Any) -> str:
    if value not in ROLES:
        raise BadRequestError(f"field role must be one of {', '.join(ROLES)}")
    return value


def _user_or_404(username: str) -> User:
    user = services_module.current().accounts.user_by_name(username) if USERNAME.fullmatch(username) else None
    if user is None:
        raise NotFoundError(f"no user named {username!r}")
    return user


@bp.get("")
@require(ADMIN, session_only=True)
def list_users():
    return jsonify(users=[u.to_dict() for u in services_module.current().accounts.list_users()])


@bp.post("")
@require(ADMIN, session_only=True)
def create_user():
    body = read_json_object()
    username = validate_username(body.get("username"))
    password = require_string(body, "password", max_length=10_000, allow_empty=True)
    validate_password(password, "password")
    role = validate_role(body.get("role", "viewer"))
    hashed = run_in_thread(hash_password, password)
    try:
        user = services_module.current().accounts.create_user(username, hashed, role)
    except DuplicateUserError:
        raise ConflictError(f"the user name {username!r} is taken (names are compared ignoring case)") from None
    audit.record("user_create", target=user.username, detail=f"role={role}")
    return jsonify(user.to_dict()), 201


@bp.patch("/<username>")
@require(ADMIN, session_only=True)
def update_user(username: str):
    body = read_json_object()
    user = _user_or_404(username)
    changes: dict[str, Any] = {}
    if "role" in body:
        changes["role"] = validate_role(body["role"])
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise BadRequestError("field disabled must be true or false")
        changes["disabled"] = body["disabled"]
    if "password" in body:
        password = require_string(body, "password", max_length=10_000, allow_empty=True)
        validate_password(password, "password")
        changes["password_hash"] = run_in_thread(hash_password, password)
    if user.source == "environment" and (
            "password_hash" in changes or changes.get("disabled") is True or changes.get("role", "admin") != "admin"):
        raise ConflictError(ENVIRONMENT_ADMIN)
    me = current_principal()
    if user.id == me.user_id and (changes.get("disabled") is True or changes.get("role", user.role) != user.role):
        raise ConflictError("you cannot disable yourself or change your own role")
    accounts = services_module.current().accounts
    if user.role == "admin" and (changes.get("disabled") is True or changes.get("role", "admin") != "admin") \
            and accounts.count_admins() <= 1:
        raise ConflictError("this is the last enabled administrator")
    updated = accounts.update_user(user.id, **changes)
    if updated is None:
        raise NotFoundError(f"no user named {username!r}")
    detail = ", ".join(f"{k}={v}" for k, v in changes.items() if k != "password_hash")
    if "password_hash" in changes:
        detail = ", ".join(filter(None, [detail, "password changed"]))
    audit.record("user_update", target=updated.username, detail=detail or None)
    return jsonify(updated.to_dict())


@bp.delete("/<username>")
@require(ADMIN, session_only=True)
def delete_user(username: str):
    user = _user_or_404(username)
    if user.source == "environment":
        raise ConflictError(ENVIRONMENT_ADMIN)
    if user.id == current_principal().user_id:
        raise ConflictError("you cannot delete yourself")
    if not services_module.current().accounts.delete_user(user.id):
        raise NotFoundError(f"no user named {username!r}")
    audit.record("user_delete", target=user.username)
    return jsonify(success=True)
