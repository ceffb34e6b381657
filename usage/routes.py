"""GET /api/usage: proxied requests grouped by user, model or day; everyone's for operators."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from flask import Blueprint, jsonify, request

import services as services_module
from auth.credentials import current_principal
from auth.permissions import READ, USAGE_ALL, require
from errors import BadRequestError
from usage.log import GROUPS

bp = Blueprint("usage", __name__, url_prefix="/api/usage")
DEFAULT_DAYS = 7
MIN_TIME = datetime(1, 1, 1, tzinfo=timezone.utc).timestamp()
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc).timestamp()


def _time(name: str, default: float) -> float:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestError(f"{name} must be an ISO 8601 time, e.g. 2026-01-31T00:00:00Z") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    timestamp = parsed.timestamp()
    # An offset can carry a time past year 9999 or before year 1 in UTC, which the answer cannot name.
    if not MIN_TIME <= timestamp <= MAX_TIME:
        raise BadRequestError(f"{name} must be between 0001-01-01 and 9999-12-31 (UTC)")
    return timestamp


@bp.get("")
@require(READ)
def usage():
    now = time.time()
    until = _time("until", now)
    since = _time("since", max(until - DEFAULT_DAYS * 86400.0, MIN_TIME))
    if since > until:
        raise BadRequestError("since must not be after until")
    group_by = request.args.get("group_by", "user")
    if group_by not in GROUPS:
        raise BadRequestError(f"group_by must be one of {', '.join(GROUPS)}")
    principal = current_principal()
    only = None if principal.can(USAGE_ALL) else principal.username
    rows = services_module.current().usage.summary(since, until, group_by, only)
    iso = lambda ts: datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()  # noqa: E731
    return jsonify(since=iso(since), until=iso(until), group_by=group_by, rows=rows)
