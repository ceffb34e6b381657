"""The audit log: who did what, from where; GET /api/audit."""
from __future__ import annotations

from flask import has_request_context, request


def init_app(app, services) -> None:
    """Register GET /api/audit."""
    from audit import routes

    app.register_blueprint(routes.bp)


def record(action: str, *, target: str | None = None, success: bool = True, detail: str | None = None,
           username: str | None = None) -> None:
    """Record an action of the current request's caller (or `username`), with its source address."""
    import services as services_module
    from flask import g

    principal = getattr(g, "principal", None) if has_request_context() else None
    who = username if username is not None else (principal.username if principal is not None else None)
    source_ip = request.remote_addr if has_request_context() else None
    services_module.current().audit.record(action, username=who, target=target, success=success,
                                           source_ip=source_ip, detail=detail)
