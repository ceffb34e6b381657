"""What each role and each API-key scope may do: the one table, and the decorator that declares
a route's need. `auth.credentials` applies it before every /api/*, /ollama/* and /metrics request
(and to Socket.IO); the tests generate the role × route matrix from these same tables."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

ROLES = ("viewer", "user", "operator", "admin")
SCOPES = ("read", "models", "proxy", "metrics")

# Permissions, as the contract's roles table names its rows.
READ = "read"            # /api/vram/*, model lists, downloads, fit, alerts, fleet, GET settings, events
INFER = "infer"          # /ollama (the allowlist)
MODELS = "models"        # load, unload, download, cancel, delete
OWN = "own"              # own API keys, own password, own usage
USAGE_ALL = "usage_all"  # everyone's usage
ADMIN = "admin"          # users, everyone's keys, PATCH /api/settings, /api/audit
METRICS = "metrics"      # GET /metrics
ANY = "any"              # any valid credential (GET /api/auth/me)

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({READ, OWN, METRICS, ANY}),
    "user": frozenset({READ, OWN, METRICS, ANY, INFER}),
    "operator": frozenset({READ, OWN, METRICS, ANY, INFER, MODELS, USAGE_ALL}),
    "admin": frozenset({READ, OWN, METRICS, ANY, INFER, MODELS, USAGE_ALL, ADMIN}),
}
# A key acts as its owner, narrowed to its scopes; ANY and USAGE_ALL come with every scope
# (a key sees what its owner's role may see), OWN and ADMIN never (session-only routes).
SCOPE_PERMISSIONS: dict[str, frozenset[str]] = {
    "read": frozenset({READ, ANY, USAGE_ALL}),
    "models": frozenset({MODELS, ANY}),
    "proxy": frozenset({INFER, ANY}),
    "metrics": frozenset({METRICS, ANY}),
}
# The scopes a new key gets when none are asked for: those of these its owner's role allows.
DEFAULT_SCOPES = ("read", "proxy")
# Which role a permission needs at least (for the 403 message).
NEEDED_ROLE = {READ: "viewer", OWN: "viewer", METRICS: "viewer", ANY: "viewer", INFER: "user",
               MODELS: "operator", USAGE_ALL: "operator", ADMIN: "admin"}


@dataclass(frozen=True)
class Rule:
    """What a route needs: a permission, and whether an API key may use it at all."""

    permission: str
    session_only: bool = False


RULE_ATTRIBUTE = "_vram_dashboard_rule"
F = TypeVar("F", bound=Callable)


def require(permission: str, *, session_only: bool = False) -> Callable[[F], F]:
    """Declare what a view needs: `@require(MODELS)`, `@require(ADMIN, session_only=True)`."""
    if permission not in NEEDED_ROLE:
        raise ValueError(f"unknown permission {permission!r}")
    rule = Rule(permission, session_only)

    def mark(view: F) -> F:
        setattr(view, RULE_ATTRIBUTE, rule)
        return view

    return mark


def public(view: F) -> F:
    """Declare a view that needs no credential (login, the OpenAPI document)."""
    setattr(view, RULE_ATTRIBUTE, None)
    return view


def rule_of(view: Callable | None) -> Rule | None | bool:
    """Return a view's Rule, None when it is public, False when it declares nothing."""
    if view is None:
        return False
    return getattr(view, RULE_ATTRIBUTE, False)


def role_allows(role: str, permission: str) -> bool:
    return permission in ROLE_PERMISSIONS.get(role, frozenset())


def scopes_allow(scopes: frozenset[str], permission: str) -> bool:
    return any(permission in SCOPE_PERMISSIONS.get(scope, frozenset()) for scope in scopes)


def scopes_for_role(role: str) -> tuple[str, ...]:
    """The scopes a key of this role's owner may have."""
    return tuple(s for s in SCOPES if any(role_allows(role, p) for p in SCOPE_PERMISSIONS[s] - {ANY, USAGE_ALL}))


def default_scopes(role: str) -> tuple[str, ...]:
    allowed = scopes_for_role(role)
    return tuple(s for s in DEFAULT_SCOPES if s in allowed)
