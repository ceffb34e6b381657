"""GET /api/vram/status and GET /api/vram/history."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

import services
from auth.permissions import READ, require

from errors import BadRequestError, NvmlUnavailableError

bp = Blueprint("vram", __name__, url_prefix="/api/vram")
NO_READING_YET = "no VRAM reading yet: the first NVML poll has not finished; retry in a moment"


@bp.get("/status")
@require(READ)
def status():
    polled = services.current().poller.wait_latest()
    empty = {"gpu": None, "gpus": [], "processes": []}
    if polled is None:
        raise NvmlUnavailableError(NO_READING_YET, extra=empty, headers={"Retry-After": "1"})
    if not polled.snapshot.available:
        raise NvmlUnavailableError(polled.snapshot.error or "NVML unavailable", extra=empty)
    # The body was serialised once when the poller took the reading (and is what vram_update
    # carried); its age goes in headers: seconds since it was taken, and whether that is more
    # than 3 poll intervals (the driver stopped answering in time).
    age_s = polled.age_s()
    stale = age_s > services.current().poller.stale_after_s
    return Response(polled.json_bytes, mimetype="application/json",
                    headers={"X-Reading-Age": f"{age_s:.3f}", "X-Reading-Stale": "true" if stale else "false"})


@bp.get("/history")
@require(READ)
def history():
    raw = request.args.get("limit")
    limit = None
    if raw is not None:
        # isdigit() alone also accepts non-ASCII digits ("１", "٣"), which int() then converts.
        if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
            raise BadRequestError("limit must be a positive whole number")
        limit = int(raw)
    return jsonify(samples=services.current().poller.history(limit))
