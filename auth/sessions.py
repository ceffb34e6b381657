"""Session tokens: a small store interface, and the in-memory store behind it."""
from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Protocol

import concurrency


@dataclass(frozen=True)
class Session:
    token: str
    username: str
    created_at: float
    expires_at: float

    def expires_at_iso(self) -> str:
        return datetime.fromtimestamp(self.expires_at, tz=timezone.utc).isoformat()


SessionListener = Callable[[str], None]
# How often the store looks whether its earliest session has expired (a float comparison).
EXPIRY_CHECK_S = 1.0


class SessionStore(Protocol):
    """What the routes need of a session store; it tells its listeners when a session ends."""

    def create(self, username: str) -> Session: ...
    def get(self, token: str) -> Session | None: ...
    def revoke(self, token: str) -> bool: ...
    def purge_expired(self) -> list[Session]: ...
    def add_listener(self, listener: SessionListener) -> None: ...
    def run_expiry(self) -> None: ...
    def stop(self) -> None: ...


class InMemorySessionStore:
    """Sessions in a dict behind a lock; tokens are 256-bit random and compared in constant time."""

    def __init__(self, lifetime_s: float, clock: Callable[[], float] = time.time):
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._lock = threading.Lock()
        # Keyed by the token's SHA-256, so neither the dict lookup nor memory reveals the token;
        # the final check is hmac.compare_digest (constant time).
        self._sessions: dict[bytes, Session] = {}
        self._listeners: list[SessionListener] = []
        self._next_expiry = math.inf
        self._stopping = False

    def add_listener(self, listener: SessionListener) -> None:
        """Call `listener(token)` whenever a session is revoked or expires."""
        self._listeners.append(listener)

    def _notify(self, token: str) -> None:
        for listener in self._listeners:
            listener(token)

    def create(self, username: str) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), username, now, now + self._lifetime_s)
        with self._lock:
            self._sessions[_key(session.token)] = session
            self._next_expiry = min(self._next_expiry, session.expires_at)
        return session

    def get(self, token: str) -> Session | None:
        if not token:
            return None
        with self._lock:
            session = self._sessions.get(_key(token))
        if session is None or not hmac.compare_digest(session.token.encode(), token.encode()):
            return None
        if session.expires_at <= self._clock():
            self.revoke(token)
            return None
        return session

    def revoke(self, token: str) -> bool:
        """End a session at once; its listeners (open sockets) hear of it."""
        with self._lock:
            session = self._sessions.pop(_key(token), None)
        if session is None:
            return False
        self._notify(session.token)
        return True

    def purge_expired(self) -> list[Session]:
        """Drop the sessions that have expired and tell the listeners; return them."""
        now = self._clock()
        with self._lock:
            if now < self._next_expiry:
                return []
            expired = [s for s in self._sessions.values() if s.expires_at <= now]
            for session in expired:
                del self._sessions[_key(session.token)]
            self._next_expiry = min((s.expires_at for s in self._sessions.values()), default=math.inf)
        for session in expired:
            self._notify(session.token)
        return expired

    def run_expiry(self) -> None:
        """End expired sessions as they expire (a background task's body, until stop())."""
        self._stopping = False
        while not self._stopping:
            concurrency.sleep(EXPIRY_CHECK_S)
            self.purge_expired()

    def stop(self) -> None:
        self._stopping = True


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
