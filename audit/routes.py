"""GET /api/audit (administrators, with a session)."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

import services as services_module
from audit.log import ACTIONS, MAX_LIMIT
from auth.permissions import ADMIN, require
from errors import BadRequestError

bp = Blueprint("audit", __name__, url_prefix="/api/audit")


def positive_int(name: str, default: int, maximum: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise BadRequestError(f"{name} must be a whole number from 1 to {maximum}")
    return int(raw)


@bp.get("")
@require(ADMIN, session_only=True)
def entries():
    limit = positive_int("limit", 100, MAX_LIMIT)
    action = request.args.get("action")
    if action is not None and action not in ACTIONS:
        raise BadRequestError(f"action must be one of {', '.join(ACTIONS)}")
    username = request.args.get("username") or None
    return jsonify(entries=services_module.current().audit.entries(limit=limit, username=username, action=action))
