"""Which /ollama/<path> requests may reach Ollama: raw-path normalisation and the allowlist.

Pure functions, no Flask: the proxy view asks `resolve(raw_path, method)` and either gets the
canonical upstream path or a reason to refuse (403, 404, 405).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "/ollama"

# The contract's allowlist, matched on the canonical path (no leading slash; "" is Ollama's `/`).
# HEAD rides along with GET: it is GET without a body, and Ollama answers it where it answers GET.
_GET = frozenset({"GET", "HEAD"})
_POST = frozenset({"POST"})
ALLOWED: dict[str, frozenset[str]] = {
    "": _GET,
    "api/version": _GET,
    "api/tags": _GET,
    "api/ps": _GET,
    "api/show": _POST,
    "api/generate": _POST,
    "api/chat": _POST,
    "api/embed": _POST,
    "api/embeddings": _POST,
    "v1/models": _GET,
    "v1/chat/completions": _POST,
    "v1/completions": _POST,
    "v1/embeddings": _POST,
}
# `v1/models/<name>`: one path segment holding a model name as Ollama parses it
# ([namespace-less] model[:tag]; Ollama's route takes a single segment, so no registry/namespace).
_MODEL_PART = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,79}"
_MODEL_SEGMENT = re.compile(rf"{_MODEL_PART}(:{_MODEL_PART})?")

# Model management goes through the dashboard's own routes, which validate names.
MANAGEMENT = frozenset({"api/pull", "api/push", "api/delete", "api/copy", "api/create", "api/blobs"})
MANAGEMENT_HINT = {
    "api/pull": "POST /api/models/ollama/download",
    "api/delete": "POST /api/models/ollama/delete",
}

# Characters allowed verbatim in a raw path: RFC 3986 unreserved plus the sub-delims and ":" "@"
# that a path segment may hold. Everything else (controls, spaces, "\", non-ASCII, "%" outside the
# escapes below, "?" and "#" which never belong to a path) is refused.
_RAW_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
# The only escape decoded: "%3A" for ":" (JS clients encodeURIComponent model names). Any other
# escape — %2e, %2f, %5c, %00, %25... — is refused rather than decoded, so no encoded dot, slash or
# backslash can change which path Ollama sees.
_ALLOWED_ESCAPES = re.compile(r"%3[Aa]")


# What a usage row (and the Prometheus label) names a request by: its route, never the path as
# asked, so that neither grows with the model names or paths callers make up.
OTHER_ENDPOINT = "(other)"
MODEL_ENDPOINT = "/v1/models/{model}"


@dataclass(frozen=True)
class Route:
    """A proxied request the allowlist accepts: send `method upstream_path` to Ollama."""

    method: str
    upstream_path: str  # starts with "/", e.g. "/api/tags", "/" for Ollama's root
    endpoint: str  # what usage and the metrics count it under (usage_endpoint), e.g. "/v1/models/{model}"


class Refusal(Exception):
    """Why a path or method is refused: `status` is 403, 404 or 405; `allow` lists methods for 405."""

    def __init__(self, status: int, message: str, allow: frozenset[str] = frozenset()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


def canonical_path(raw_path: str) -> str | None:
    """Return the path under /ollama in canonical form ("api/tags", "" for root), or None if unsafe.

    `raw_path` is the path as it arrived on the request line (still percent-encoded, without the
    query string). Only canonical paths are accepted: no empty, "." or ".." segments, no trailing
    slash (except the root "/ollama/"), no encoded dots, slashes or backslashes.

    >>> canonical_path("/ollama/api/tags"), canonical_path("/ollama"), canonical_path("/ollama/")
    ('api/tags', '', '')
    >>> canonical_path("/ollama/v1/models/llama3%3A8b")
    'v1/models/llama3:8b'
    >>> [canonical_path(p) for p in ("/ollama/../api/tags", "/ollama/api%2Ftags", "/ollama//api/tags")]
    [None, None, None]
    """
    if not raw_path.startswith(PREFIX):
        return None
    rest = raw_path[len(PREFIX):]
    if rest in ("", "/"):
        return ""
    if not rest.startswith("/") or not _RAW_PATH_CHARS.fullmatch(rest):
        return None
    if "%" in rest:
        if "%" in _ALLOWED_ESCAPES.sub("", rest):
            return None
        rest = _ALLOWED_ESCAPES.sub(":", rest)
    segments = rest[1:].split("/")
    if any(segment in ("", ".", "..") for segment in segments):
        return None
    return "/".join(segments)


def resolve(raw_path: str, method: str) -> Route:
    """Return the upstream route for a request, or raise Refusal (403 management, 404, 405)."""
    path = canonical_path(raw_path)
    if path is None:
        raise Refusal(404, "not found: the Ollama proxy forwards only the documented Ollama API paths")
    allowed = _allowed_methods(path) or None
    if allowed is None:
        head = "/".join(path.split("/")[:2])
        if head in MANAGEMENT:
            hint = MANAGEMENT_HINT.get(head, "the dashboard's /api/models/ollama/... routes")
            raise Refusal(403, f"model management is not available through the proxy ({head}); "
                               f"use {hint}, which validates model names")
        raise Refusal(404, f"not found: /ollama/{path} is not an Ollama API path the proxy forwards")
    if method not in allowed:
        raise Refusal(405, f"method {method} not allowed on /ollama/{path}", allow=allowed)
    return Route(method=method, upstream_path="/" + path, endpoint=_endpoint(path))


def usage_endpoint(raw_path: str) -> str:
    """Return the route a request is counted under: one of a fixed set, whatever the path asked.

    >>> usage_endpoint("/ollama/api/tags"), usage_endpoint("/ollama/v1/models/llama3%3A8b")
    ('/api/tags', '/v1/models/{model}')
    >>> usage_endpoint("/ollama/api/pull"), usage_endpoint("/ollama/api/blobs/sha256:ab"), usage_endpoint("/ollama/x")
    ('/api/pull', '/api/blobs', '(other)')
    """
    path = canonical_path(raw_path)
    if path is None:
        return OTHER_ENDPOINT
    if _allowed_methods(path):
        return _endpoint(path)
    head = "/".join(path.split("/")[:2])
    return "/" + head if head in MANAGEMENT else OTHER_ENDPOINT


def allowed_methods(raw_path: str) -> frozenset[str]:
    """Return the methods the allowlist accepts on a raw path (empty when it forwards none).

    >>> sorted(allowed_methods("/ollama/api/chat")), sorted(allowed_methods("/ollama/api/pull"))
    (['POST'], [])
    """
    path = canonical_path(raw_path)
    return frozenset() if path is None else _allowed_methods(path)


def _allowed_methods(path: str) -> frozenset[str]:
    """The methods the allowlist accepts on a canonical path."""
    allowed = ALLOWED.get(path)
    if allowed is None and path.startswith("v1/models/") and _is_model_segment(path[len("v1/models/"):]):
        allowed = _GET
    return allowed or frozenset()


def _endpoint(path: str) -> str:
    """The endpoint of a canonical path the allowlist forwards: itself, or the model route's template."""
    return "/" + path if path in ALLOWED else MODEL_ENDPOINT


def _is_model_segment(name: str) -> bool:
    return bool(_MODEL_SEGMENT.fullmatch(name)) and ".." not in name
