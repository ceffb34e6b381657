"""Login, sessions and credentials; the hook that guards every /api/* route."""
from auth.credentials import authenticate, bearer_token, current_session, protect_api
from auth.routes import bp, init_throttle
from auth.sessions import InMemorySessionStore, Session, SessionStore

__all__ = ["authenticate", "bearer_token", "bp", "current_session", "init_throttle", "protect_api",
           "InMemorySessionStore", "Session", "SessionStore"]
