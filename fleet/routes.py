"""GET /api/fleet, and /api/nodes/<node>/<path> forwarded to that node's /api/<path>.

The forward carries the caller's own credential (Authorization or X-API-Key) and nothing else
of theirs. Permissions: the route itself declares ANY (a valid credential); the view then looks
up the rule of `<METHOD> /api/<path>` in this server's own URL map (every node runs the same
code) and applies it with the same `authorize` as the guard, so a viewer's
`POST /api/nodes/b/models/ollama/load` is a 403 naming the operator role before anything leaves
this server, and a key with only the `models` scope may load there as it may here. The target
node authenticates and authorises the request again with its own rule. Sessions and keys live
in the shared DATABASE_URL, so a credential of one node is valid on all.

Only nodes that registered themselves in the fleet are reached (an unknown name is a 404, never
a URL taken from the request); redirects are not followed; an unreachable or silent node is a
503 naming it.
"""
from __future__ import annotations

import logging
from urllib.parse import quote

import urllib3
from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException

import services
from auth.credentials import authorize, current_principal
from auth.permissions import ADMIN, ANY, READ, Rule, require, rule_of
from errors import ApiError, NotFoundError

log = logging.getLogger(__name__)
bp = Blueprint("fleet", __name__, url_prefix="/api")
CONNECT_TIMEOUT_S = 3.0
# Longer than the slowest route a node answers (loading a large model waits for Ollama).
READ_TIMEOUT_S = 120.0
_POOL = urllib3.PoolManager()
FORWARDED_REQUEST_HEADERS = ("Authorization", "X-API-Key", "Content-Type", "Accept")
FORWARDED_RESPONSE_HEADERS = ("Content-Type", "Retry-After", "WWW-Authenticate", "X-Reading-Age",
                              "X-Reading-Stale")
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


@bp.get("/fleet")
@require(READ)
def fleet():
    """Every node of the fleet with its latest reading (this node alone without REDIS_URL)."""
    return {"nodes": services.current().fleet.nodes()}


@bp.route("/nodes/<node>/<path:path>", methods=METHODS)
@require(ANY)  # and, in the view, the rule of the route forwarded to
def forward(node: str, path: str):
    """Do on `node` what /api/<path> does there, with the caller's credential."""
    segments = path.split("/")
    if any(part in ("", ".", "..") for part in segments) or segments[0] == "nodes":
        raise NotFoundError(f"/api/{path} is not a route another node answers")
    _authorize_as_target(path)
    base = services.current().fleet.url_of(node)
    if base is None:
        raise NotFoundError(f"unknown node {node!r}: GET /api/fleet lists the nodes")
    url = f"{base}/api/{quote(path, safe='/:@-._~')}"
    if request.query_string:
        url += "?" + request.query_string.decode("ascii", "replace")
    headers = {name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers}
    try:
        # As with the Ollama client: no redirect followed, no retry (the caller sees the failure).
        answer = _POOL.request(request.method, url, headers=headers, body=request.get_data() or None,
                               timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
                               redirect=False, retries=False)
    except urllib3.exceptions.HTTPError as exc:
        log.info("node %s at %s did not answer: %s", node, base, exc)
        raise ApiError(f"node {node!r} at {base} is unreachable ({type(exc).__name__}); "
                       "GET /api/fleet shows whether it is stale", status=503) from None
    if 300 <= answer.status < 400:
        raise ApiError(f"node {node!r} answered a redirect ({answer.status}); is its DASHBOARD_PUBLIC_URL "
                       "right?", status=502)
    response = Response(answer.data, status=answer.status)
    for name in FORWARDED_RESPONSE_HEADERS:
        if name in answer.headers:
            response.headers[name] = answer.headers[name]
    response.headers["X-Fleet-Node"] = node
    return response


def _authorize_as_target(path: str) -> None:
    """Apply the rule `<METHOD> /api/<path>` has on this server (the same code as the node's)."""
    try:
        endpoint, _ = current_app.url_map.bind("localhost").match("/api/" + path, method=request.method)
    except HTTPException:
        raise NotFoundError(f"no route {request.method} /api/{path}: GET /api/openapi.json lists them") from None
    if endpoint == request.endpoint:
        raise NotFoundError(f"/api/{path} is not a route another node answers")
    rule = rule_of(current_app.view_functions.get(endpoint))
    if rule is not None:  # None: a public route (the login)
        authorize(current_principal(), rule if isinstance(rule, Rule) else Rule(ADMIN))
