"""GET /api/alerts?state=firing|resolved&limit=N: stored alerts, newest started_at first."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

import services as services_module
from alerts.engine import MAX_LIMIT
from auth.permissions import READ, require
from errors import BadRequestError

bp = Blueprint("alerts", __name__, url_prefix="/api/alerts")
STATES = ("firing", "resolved")
DEFAULT_LIMIT = 100


@bp.get("")
@require(READ)
def list_alerts():
    state = request.args.get("state")
    if state is not None and state not in STATES:
        raise BadRequestError("state must be firing or resolved")
    raw = request.args.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise BadRequestError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return jsonify(alerts=services_module.current().alerts.alerts(state=state, limit=int(raw)))
