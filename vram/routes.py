"""GET /api/vram/status and GET /api/vram/history."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

import services
from auth.permissions import READ, require

from errors import BadRequestError, NvmlUnavailableError

bp = Blueprint("vram", __name__, url_prefix="/api/vram")
# Bodies up to this size go as they are: a 2-GPU snapshot (~1 KB) fits one packet either way.
GZIP_MIN_BYTES = 1400
NO_READING_YET = "no VRAM reading yet: the first NVML poll has not finished; retry in a moment"


@bp.get("/status")
@require(READ)
def status():
    poller = services.current().poller
    polled = poller.wait_latest()
    empty = {"gpu": None, "gpus": [], "processes": []}
    if polled is None:
        raise NvmlUnavailableError(NO_READING_YET, extra=empty, headers={"Retry-After": "1"})
    if not polled.snapshot.available:
        raise NvmlUnavailableError(polled.snapshot.error or "NVML unavailable", extra=empty)
    # The body was serialised (and, on first demand, compressed) once when the poller took the
    # reading; requests only copy bytes, or answer 304 when the client already holds this poll.
    # Its age goes in headers: seconds since it was taken, and whether that is more than 3 poll
    # intervals (the driver stopped answering in time).
    age_s = polled.age_s()
    stale = age_s > poller.stale_after_s
    return snapshot_response(polled, [("X-Reading-Age", f"{age_s:.3f}"),
                                      ("X-Reading-Stale", "true" if stale else "false")])


class PreparedResponse(Response):
    """A 200 whose body is complete bytes and whose headers need none of Werkzeug's fix-ups.

    Response.get_wsgi_headers (public, documented for overriding) copies every header into a new
    Headers, checking each value again, to absolutise a Location, encode a Content-Location and
    count a Content-Length. A prepared snapshot has neither location and its Content-Length is
    set with its body, so its headers go out as they are: one copy of ~11 headers less on the
    route dashboards and scripts poll most (BENCHMARKS.md, section 1). A 304 stays a Response,
    whose entity headers Werkzeug strips.
    """

    def get_wsgi_headers(self, environ):
        return self.headers


def snapshot_response(polled, extra_headers: list[tuple[str, str]] = ()) -> Response:
    """Answer with a poll's prepared body: 304 if the client has it, gzip if it accepts that."""
    # security.py adds Cache-Control: no-store to every /api answer; a client that keeps the body
    # itself (a script, the dashboard's own poll) still revalidates with If-None-Match.
    # Read from the WSGI environ: Werkzeug's headers.get() builds and catches an exception (a
    # BadRequestKeyError) for every header that is absent, and If-None-Match usually is.
    environ = request.environ
    if_none_match = environ.get("HTTP_IF_NONE_MATCH")
    compressible = len(polled.json_bytes) > GZIP_MIN_BYTES
    # Only a body that may go compressed varies with Accept-Encoding.
    vary = [("Vary", "Accept-Encoding")] if compressible else []
    if if_none_match is not None and _matches(if_none_match, polled.etag):
        response = Response(status=304, headers=[("ETag", polled.etag), *extra_headers, *vary])
        response.headers.remove("Content-Type")  # a 304 has no body to describe
        return response
    accept = environ.get("HTTP_ACCEPT_ENCODING", "")
    # A body that fits one packet gains nothing from gzip. The substring tests keep the common
    # request free of header parsing; Werkzeug's parser is asked only when weights are given
    # (so "gzip;q=0" is honoured).
    gzip = (compressible and "gzip" in accept
            and ("q=" not in accept or request.accept_encodings["gzip"] > 0))
    # Content-Type given first among the headers, not as mimetype=: Werkzeug then finds it at once
    # instead of building the value and setting it (a scan of the list) on every request.
    headers = [("Content-Type", "application/json"), ("ETag", polled.etag), *extra_headers, *vary]
    if gzip:
        headers.append(("Content-Encoding", "gzip"))
    return PreparedResponse(polled.gzip_bytes if gzip else polled.json_bytes, headers=headers)


def _matches(if_none_match: str, etag: str) -> bool:
    """Whether an If-None-Match header names `etag` (weak comparison, as RFC 9110 asks for GET)."""
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


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
