"""Users, roles, sessions and API keys; the guard that applies the permission table."""
from auth.credentials import Principal, authenticate, bearer_token, current_principal, current_session, protect

__all__ = ["Principal", "authenticate", "bearer_token", "current_principal", "current_session", "init_app"]


def init_app(app, services) -> None:
    """Guard /api/*, /ollama/* and /metrics; register the auth, users and keys routes and the throttle;
    make sure the administrator from the environment exists with its password and role."""
    from auth import keys, routes, users
    from auth.passwords import admin_password_hash

    protect(app)
    app.register_blueprint(routes.bp)
    app.register_blueprint(users.bp)
    app.register_blueprint(keys.bp)
    routes.init_throttle(app, services.config, services.redis)
    services.accounts.ensure_bootstrap_admin(services.config.auth_username, admin_password_hash(services.config))
