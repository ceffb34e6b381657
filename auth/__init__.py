"""Login, sessions and credentials; the hook that guards every /api/* route."""
from auth.credentials import authenticate, bearer_token, current_session, protect_api
from auth.routes import bp, init_throttle
from auth.sessions import InMemorySessionStore, Session, SessionStore

__all__ = ["authenticate", "bearer_token", "bp", "current_session", "init_app", "InMemorySessionStore",
           "Session", "SessionStore"]


def init_app(app, services) -> None:
    """Guard /api/*, register the auth routes and the login throttle."""
    protect_api(app)
    app.register_blueprint(bp)
    init_throttle(app, services.config)
