"""Reading JSON request bodies: one object, typed fields, 400s that name the field, 413s."""
from __future__ import annotations

from typing import Any

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from errors import BadRequestError, PayloadTooLargeError


def parsed_json_or_none() -> Any:
    """Return the decoded JSON body, or None when it is missing, too large or does not decode."""
    try:
        return request.get_json(silent=True)
    # RecursionError: nested deeper than the decoder recurses (silent=True only covers ValueError);
    # RequestEntityTooLarge: over MAX_CONTENT_LENGTH, which read_json_object reports as our 413.
    except (RecursionError, RequestEntityTooLarge):
        return None


def read_json_object() -> dict[str, Any]:
    """Return the request body as a JSON object, or raise a 400 (or 413) that says what is wrong."""
    _refuse_if_too_large(read=False)
    if not request.is_json:
        raise BadRequestError("request body must be JSON (Content-Type: application/json)")
    body = parsed_json_or_none()
    if body is None:
        _refuse_if_too_large(read=True)
        raise BadRequestError("request body is not valid JSON")
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object")
    return body


def _refuse_if_too_large(*, read: bool) -> None:
    """Raise a 413 (an ApiError, so model operations give it their shape) for a body over the limit.

    A declared length is checked without reading. A body sent without one is cut at the limit by
    Werkzeug's reader, silently; with `read`, such a body that reached the limit counts as over it.
    """
    limit = request.max_content_length
    if limit is None:
        return
    declared = request.content_length
    if (declared is not None and declared > limit) or (
            read and declared is None and len(request.get_data()) >= limit):
        raise PayloadTooLargeError(f"request body too large (limit {limit} bytes)")


def require_string(body: dict[str, Any], name: str, *, max_length: int = 1024,
                   allow_empty: bool = False) -> str:
    """Return body[name] if it is a string of acceptable length, else raise a 400 naming it."""
    if name not in body or body[name] is None:
        raise BadRequestError(f"missing field: {name}")
    value = body[name]
    if not isinstance(value, str):
        raise BadRequestError(f"field {name} must be a string")
    if not allow_empty and value == "":
        raise BadRequestError(f"field {name} must not be empty")
    if len(value) > max_length:
        raise BadRequestError(f"field {name} is too long (at most {max_length} characters)")
    return value
