"""Session tokens: a small store interface, and the in-memory store behind it."""
from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Protocol


@dataclass(frozen=True)
class Session:
    token: str
    username: str
    created_at: float
    expires_at: float

    def expires_at_iso(self) -> str:
        return datetime.fromtimestamp(self.expires_at, tz=timezone.utc).isoformat()


class SessionStore(Protocol):
    """What the routes need of a session store (in memory now; Redis later)."""

    def create(self, username: str) -> Session: ...
    def get(self, token: str) -> Session | None: ...
    def revoke(self, token: str) -> bool: ...
    def purge_expired(self) -> list[Session]: ...


class InMemorySessionStore:
    """Sessions in a dict behind a lock; tokens are 256-bit random and compared in constant time."""

    def __init__(self, lifetime_s: float, clock: Callable[[], float] = time.time):
        self._lifetime_s = lifetime_s
        self._clock = clock
        self._lock = threading.Lock()
        # Keyed by the token's SHA-256, so neither the dict lookup nor memory reveals the token;
        # the final check is hmac.compare_digest (constant time).
        self._sessions: dict[bytes, Session] = {}

    def create(self, username: str) -> Session:
        now = self._clock()
        session = Session(secrets.token_urlsafe(32), username, now, now + self._lifetime_s)
        with self._lock:
            self._sessions[_key(session.token)] = session
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
        with self._lock:
            return self._sessions.pop(_key(token), None) is not None

    def purge_expired(self) -> list[Session]:
        now = self._clock()
        with self._lock:
            expired = [s for s in self._sessions.values() if s.expires_at <= now]
            for session in expired:
                del self._sessions[_key(session.token)]
        return expired


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
