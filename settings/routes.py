"""GET /api/settings (any reader) and PATCH /api/settings (an administrator's session)."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, jsonify

import audit
import services as services_module
from auth.credentials import current_principal
from auth.permissions import ADMIN, READ, require
from errors import BadRequestError
from jsonbody import read_json_object
from settings.store import SECRET

bp = Blueprint("settings", __name__, url_prefix="/api/settings")


def _answer():
    values, sources = services_module.current().settings.snapshot()
    if not current_principal().can(ADMIN):
        values.update({name: None for name in SECRET})
    return jsonify(settings=values, sources=sources)


@bp.get("")
@require(READ)
def get_settings():
    return _answer()


@bp.patch("")
@require(ADMIN, session_only=True)
def patch_settings():
    body = read_json_object()
    if not body:
        raise BadRequestError("request body must name at least one setting")
    changed = services_module.current().settings.update(body, username=current_principal().username)
    audit.record("settings_update", target=",".join(changed), detail=_describe(changed))
    return _answer()


def _describe(changed: dict) -> str:
    """name=value for the audit log; of a webhook URL only its host (its path may hold a token)."""
    parts = []
    for name, value in changed.items():
        if name in SECRET and value:
            value = f"{urlsplit(value).scheme}://{urlsplit(value).hostname}/…"
        parts.append(f"{name}={value}")
    return ", ".join(parts)
