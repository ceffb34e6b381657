"""POST/GET /api/keys, DELETE /api/keys/<id>: API keys, made by a user for themselves (sessions only)."""
from __future__ import annotations

from flask import Blueprint, jsonify

import audit
import services as services_module
from auth.credentials import current_principal
from auth.permissions import OWN, SCOPES, default_scopes, require, role_allows, scopes_for_role
from errors import BadRequestError, NotFoundError
from jsonbody import read_json_object

bp = Blueprint("keys", __name__, url_prefix="/api/keys")


@bp.post("")
@require(OWN, session_only=True)
def create_key():
    body = read_json_object()
    name = body.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 100 or not name.isprintable():
        raise BadRequestError("field name must be 1-100 printable characters")
    principal = current_principal()
    allowed = scopes_for_role(principal.role)
    scopes = body.get("scopes")
    if scopes is None:
        scopes = list(default_scopes(principal.role))
    elif (not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes)
          or not set(scopes) <= set(SCOPES)):
        raise BadRequestError(f"field scopes must be a list drawn from {', '.join(SCOPES)}")
    elif not set(scopes) <= set(allowed):
        raise BadRequestError(f"field scopes: your role ({principal.role}) allows only {', '.join(allowed)}")
    days = body.get("expires_in_days")
    if isinstance(days, float) and days.is_integer():
        days = int(days)  # JSON does not tell 30 from 30.0; both are a whole number of days
    if days is not None and (not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650):
        raise BadRequestError("field expires_in_days must be a whole number from 1 to 3650")
    accounts = services_module.current().accounts
    user = accounts.user_by_id(principal.user_id)
    ordered = [s for s in SCOPES if s in scopes]
    key, secret = accounts.create_key(user, name, ordered, days)
    audit.record("key_create", target=key.id, detail=f"name={name!r}, scopes={','.join(ordered)}")
    return jsonify({**key.to_dict(), "key": secret}), 201


@bp.get("")
@require(OWN, session_only=True)
def list_keys():
    principal = current_principal()
    everyone = role_allows(principal.role, "admin")
    keys = services_module.current().accounts.list_keys(None if everyone else principal.user_id)
    return jsonify(keys=[k.to_dict() for k in keys])


@bp.delete("/<key_id>")
@require(OWN, session_only=True)
def revoke_key(key_id: str):
    principal = current_principal()
    accounts = services_module.current().accounts
    key = accounts.get_key(key_id) if len(key_id) <= 32 else None
    if key is None or (key.user_id != principal.user_id and not role_allows(principal.role, "admin")):
        raise NotFoundError("no such API key (unknown, or not yours)")
    accounts.revoke_key(key.id)
    audit.record("key_revoke", target=key.id)
    return jsonify(success=True)
