"""Reading JSON request bodies: one object, typed fields, 400s that name the field."""
from __future__ import annotations

from typing import Any

from flask import request

from errors import BadRequestError, PayloadTooLargeError


def parsed_json_or_none() -> Any:
    """Return the decoded JSON body, or None when it is missing or does not decode."""
    try:
        return request.get_json(silent=True)
    except RecursionError:  # nested deeper than the decoder recurses; silent=True only covers ValueError
        return None


def read_json_object() -> dict[str, Any]:
    """Return the request body as a JSON object, or raise a 400 that says what is wrong."""
    if not request.is_json:
        raise BadRequestError("request body must be JSON (Content-Type: application/json)")
    body = parsed_json_or_none()
    if body is None:
        _refuse_if_cut_at_the_limit()
        raise BadRequestError("request body is not valid JSON")
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object")
    return body


def _refuse_if_cut_at_the_limit() -> None:
    """Raise a 413 if a body sent without a length was cut at MAX_CONTENT_LENGTH (Werkzeug's reader
    stops there silently, which would otherwise read as "not valid JSON")."""
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(request.get_data()) >= limit:
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
