"""Users, sessions and API keys, kept in the database, answered from memory.

Authentication must not cost a database round trip per request: a session or key is read from the
database once and then answered from a cache; every change made here (logout, a disabled or
deleted user, a revoked key, a role change) updates the cache at once and tells the listeners
(open sockets). Tokens and keys are kept as SHA-256 only, and compared by that digest, which a
dict lookup on a 256-bit random value cannot leak anything useful about.
"""
from __future__ import annotations

import hashlib
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Callable, Iterable

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DbSession

import concurrency
from auth.models import ApiKeyRecord, SessionRecord, UserRecord
from auth.permissions import ROLES
from db import Database
from errors import ApiError

log = logging.getLogger(__name__)
KEY_PREFIX = "vdk_"
# How often the store looks whether a session has expired, and writes keys' last use.
EXPIRY_CHECK_S = 1.0
LAST_USED_FLUSH_S = 30.0


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    disabled: bool
    source: str
    created_at: float
    last_login_at: float | None
    password_hash: bytes

    def to_dict(self) -> dict:
        return {"username": self.username, "role": self.role, "disabled": self.disabled,
                "created_at": iso(self.created_at), "last_login_at": iso(self.last_login_at),
                "source": self.source}


@dataclass(frozen=True)
class Session:
    """A login session. `token` is known only to the process that created it (and to the client)."""

    token_sha256: str
    user_id: int
    username: str
    created_at: float
    expires_at: float
    token: str | None = None

    def expires_at_iso(self) -> str:
        return iso(self.expires_at) or ""


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    user_id: int
    username: str
    created_at: float
    expires_at: float | None
    last_used_at: float | None

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "prefix": self.prefix, "scopes": list(self.scopes),
                "username": self.username, "created_at": iso(self.created_at),
                "expires_at": iso(self.expires_at), "last_used_at": iso(self.last_used_at)}


@dataclass(frozen=True)
class Ended:
    """What just stopped being valid: a session, a key, or everything of a user."""

    session_sha256: str | None = None
    key_id: str | None = None
    user_id: int | None = None
    keep_session_sha256: str | None = None  # a password change keeps the session that made it


Listener = Callable[[Ended], None]


class DuplicateUserError(Exception):
    pass


class Accounts:
    """The users, sessions and keys of this server, and the caches in front of them."""

    def __init__(self, database: Database, session_lifetime_s: float, *,
                 clock: Callable[[], float] = time.time):
        self._db = database
        self._lifetime_s = session_lifetime_s
        self._clock = clock
        # Held by whoever changes the caches. The request path only reads them: a single dict.get is
        # atomic, and the values are frozen dataclasses, so a reader sees the entry before or after
        # a change, never half of one (and a removal made under the lock is seen by the next read).
        self._lock = threading.Lock()
        self._users: dict[int, User] = {}                # id -> user
        self._sessions: dict[str, Session] = {}          # token sha256 -> session
        self._keys: dict[str, ApiKey] = {}               # key sha256 -> key
        self._key_used: dict[str, float] = {}            # key id -> last use not yet written
        self._listeners: list[Listener] = []
        self._change_listeners: list[Callable[[int], None]] = []
        self._next_expiry = math.inf
        self._stopping = False

    # -- listeners and the timer -------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(Ended(...))` whenever a session, a key or a user's access ends."""
        self._listeners.append(listener)

    def add_change_listener(self, listener: Callable[[int], None]) -> None:
        """Call `listener(user_id)` whenever a user's record changes (a role change, say)."""
        self._change_listeners.append(listener)

    def _notify(self, ended: Ended) -> None:
        for listener in self._listeners:
            listener(ended)

    def run_expiry(self) -> None:
        """End expired sessions as they expire and write keys' last use (a background task's body)."""
        self._stopping = False
        last_flush = concurrency.monotonic()
        while not self._stopping:
            concurrency.sleep(EXPIRY_CHECK_S)
            try:
                self.purge_expired()
                if concurrency.monotonic() - last_flush >= LAST_USED_FLUSH_S:
                    last_flush = concurrency.monotonic()
                    self.flush_key_use()
            except Exception:  # a timer that dies silently would leave expired sessions connected
                log.exception("session expiry check failed; retrying")

    def stop(self) -> None:
        self._stopping = True
        try:
            self.flush_key_use()
        except ApiError:  # the database may be gone at shutdown; last use is best effort
            log.warning("could not write the API keys' last use at shutdown")

    # -- users -----------------------------------------------------------------------------------

    def ensure_bootstrap_admin(self, username: str, password_hash: bytes) -> User:
        """Create or refresh the administrator from the environment (role admin, its password)."""
        now = self._clock()

        def work(s: DbSession) -> User:
            record = s.scalar(select(UserRecord).where(UserRecord.username_key == username.lower()))
            if record is None:
                record = UserRecord(username=username, username_key=username.lower(),
                                    password_hash=password_hash.decode("ascii"), role="admin",
                                    disabled=False, source="environment", created_at=now)
                s.add(record)
            else:
                record.username = username
                record.password_hash = password_hash.decode("ascii")
                record.role, record.disabled, record.source = "admin", False, "environment"
            # Any other user that came from the environment before (another name) is an ordinary one now.
            s.execute(update(UserRecord).where(UserRecord.source == "environment",
                                               UserRecord.username_key != username.lower())
                      .values(source="database"))
            s.flush()
            return _user(record)

        user = self._db.run(work)
        with self._lock:
            self._users.clear()
            self._users[user.id] = user
        return user

    def user_by_name(self, username: str) -> User | None:
        key = username.lower()
        with self._lock:
            for user in self._users.values():
                if user.username.lower() == key:
                    return user
        user = self._db.run(lambda s: _opt_user(s.scalar(select(UserRecord).where(UserRecord.username_key == key))))
        if user is not None:
            with self._lock:
                self._users[user.id] = user
        return user

    def user_by_id(self, user_id: int) -> User | None:
        user = self._users.get(user_id)
        if user is not None:
            return user
        user = self._db.run(lambda s: _opt_user(s.get(UserRecord, user_id)))
        if user is not None:
            with self._lock:
                self._users[user.id] = user
        return user

    def list_users(self) -> list[User]:
        return self._db.run(lambda s: [_user(r) for r in s.scalars(select(UserRecord).order_by(UserRecord.id))])

    def create_user(self, username: str, password_hash: bytes, role: str) -> User:
        now = self._clock()

        def work(s: DbSession) -> User:
            if s.scalar(select(UserRecord.id).where(UserRecord.username_key == username.lower())) is not None:
                raise DuplicateUserError(username)
            record = UserRecord(username=username, username_key=username.lower(),
                                password_hash=password_hash.decode("ascii"), role=role, disabled=False,
                                source="database", created_at=now)
            s.add(record)
            s.flush()
            return _user(record)

        try:
            return self._db.run(work)
        except IntegrityError:  # the same name created at the same moment by another request
            raise DuplicateUserError(username) from None

    def update_user(self, user_id: int, *, role: str | None = None, password_hash: bytes | None = None,
                    disabled: bool | None = None, keep_session_sha256: str | None = None,
                    end_keys: bool = True) -> User | None:
        """Change what was given (one UPDATE of those columns only: concurrent edits of other fields
        are kept); end the user's sessions and keys when their password changes or they are disabled."""
        values: dict = {}
        if role is not None:
            values["role"] = role
        if password_hash is not None:
            values["password_hash"] = password_hash.decode("ascii")
        if disabled is not None:
            values["disabled"] = disabled
        ends_access = password_hash is not None or disabled is True

        def work(s: DbSession) -> User | None:
            if values:
                s.execute(update(UserRecord).where(UserRecord.id == user_id).values(**values))
            if ends_access:
                query = delete(SessionRecord).where(SessionRecord.user_id == user_id)
                if keep_session_sha256 is not None:
                    query = query.where(SessionRecord.token_sha256 != keep_session_sha256)
                s.execute(query)
            if password_hash is not None and end_keys:
                s.execute(delete(ApiKeyRecord).where(ApiKeyRecord.user_id == user_id))
            return _opt_user(s.get(UserRecord, user_id, populate_existing=True))

        user = self._db.run(work)
        with self._lock:
            self._users.pop(user_id, None)
            if user is not None:
                self._users[user_id] = user
            if ends_access:
                for sha in [sha for sha, sess in self._sessions.items()
                            if sess.user_id == user_id and sha != keep_session_sha256]:
                    del self._sessions[sha]
                if end_keys:
                    for sha in [sha for sha, key in self._keys.items() if key.user_id == user_id]:
                        del self._keys[sha]
        if ends_access:
            self._notify(Ended(user_id=user_id, keep_session_sha256=keep_session_sha256,
                               key_id="*" if end_keys else None))
        elif values:
            for listener in self._change_listeners:
                listener(user_id)
        return user

    def delete_user(self, user_id: int) -> bool:
        def work(s: DbSession) -> bool:
            # Explicit deletes too: SQLite enforces ON DELETE CASCADE only with foreign_keys on.
            s.execute(delete(SessionRecord).where(SessionRecord.user_id == user_id))
            s.execute(delete(ApiKeyRecord).where(ApiKeyRecord.user_id == user_id))
            return s.execute(delete(UserRecord).where(UserRecord.id == user_id)).rowcount > 0

        deleted = self._db.run(work)
        with self._lock:
            self._users.pop(user_id, None)
            for sha in [sha for sha, sess in self._sessions.items() if sess.user_id == user_id]:
                del self._sessions[sha]
            for sha in [sha for sha, key in self._keys.items() if key.user_id == user_id]:
                del self._keys[sha]
        self._notify(Ended(user_id=user_id, key_id="*"))
        return deleted

    def count_admins(self, *, enabled_only: bool = True) -> int:
        def work(s: DbSession) -> int:
            query = select(func.count()).select_from(UserRecord).where(UserRecord.role == "admin")
            if enabled_only:
                query = query.where(UserRecord.disabled.is_(False))
            return int(s.scalar(query) or 0)

        return self._db.run(work)

    def record_login(self, user_id: int) -> None:
        now = self._clock()
        self._db.run(lambda s: s.execute(update(UserRecord).where(UserRecord.id == user_id)
                                         .values(last_login_at=now)))
        with self._lock:
            user = self._users.get(user_id)
            if user is not None:
                self._users[user_id] = replace(user, last_login_at=now)

    # -- sessions --------------------------------------------------------------------------------

    def create_session(self, user: User) -> Session:
        now = self._clock()
        token = secrets.token_urlsafe(32)
        session = Session(digest(token), user.id, user.username, now, now + self._lifetime_s, token)
        self._db.run(lambda s: s.add(SessionRecord(token_sha256=session.token_sha256, user_id=user.id,
                                                   created_at=now, expires_at=session.expires_at)))
        with self._lock:
            self._sessions[session.token_sha256] = replace(session, token=None)
            self._next_expiry = min(self._next_expiry, session.expires_at)
        return session

    def get(self, token: str) -> Session | None:
        """Return the live session of a token (from memory when it can), or None."""
        if not token or token.startswith(KEY_PREFIX):
            return None
        sha = digest(token)
        session = self._sessions.get(sha)
        if session is None:
            session = self._db.run(lambda s: _opt_session(s, sha))
            if session is None:
                return None
            with self._lock:
                self._sessions[sha] = session
                self._next_expiry = min(self._next_expiry, session.expires_at)
        if session.expires_at <= self._clock():
            self.revoke_digest(sha)
            return None
        return session

    def revoke(self, token: str) -> bool:
        return self.revoke_digest(digest(token))

    def revoke_digest(self, sha: str) -> bool:
        """End a session at once; its sockets hear of it."""
        removed = self._db.run(lambda s: s.execute(delete(SessionRecord).where(
            SessionRecord.token_sha256 == sha)).rowcount > 0)
        with self._lock:
            cached = self._sessions.pop(sha, None) is not None
        if removed or cached:
            self._notify(Ended(session_sha256=sha))
        return removed or cached

    def forget_cached_user(self, user_id: int) -> None:
        """Drop a user another process changed; the next request reads it from the database."""
        with self._lock:
            self._users.pop(user_id, None)

    def forget_all_cached(self) -> None:
        """Drop every cached user, session and key (after missing other processes' news)."""
        with self._lock:
            self._users.clear()
            self._sessions.clear()
            self._keys.clear()

    def forget_cached(self, ended: Ended) -> None:
        """Drop cached entries another process ended (its database rows are gone already)."""
        with self._lock:
            if ended.session_sha256:
                self._sessions.pop(ended.session_sha256, None)
            if ended.user_id is not None:
                self._users.pop(ended.user_id, None)
                for sha in [sha for sha, s in self._sessions.items()
                            if s.user_id == ended.user_id and sha != ended.keep_session_sha256]:
                    del self._sessions[sha]
            if ended.key_id:
                for sha in [sha for sha, k in self._keys.items()
                            if k.id == ended.key_id or (ended.key_id == "*" and k.user_id == ended.user_id)]:
                    del self._keys[sha]

    def purge_expired(self) -> list[Session]:
        """Drop expired sessions, tell the listeners; return them."""
        now = self._clock()
        with self._lock:
            if now < self._next_expiry:
                return []
            expired = [s for s in self._sessions.values() if s.expires_at <= now]
            for session in expired:
                del self._sessions[session.token_sha256]
            self._next_expiry = min((s.expires_at for s in self._sessions.values()), default=math.inf)
        self._db.run(lambda s: s.execute(delete(SessionRecord).where(SessionRecord.expires_at <= now)))
        for session in expired:
            self._notify(Ended(session_sha256=session.token_sha256))
        return expired

    # -- API keys ----------------------------------------------------------------------------------

    def create_key(self, user: User, name: str, scopes: Iterable[str], expires_in_days: int | None
                   ) -> tuple[ApiKey, str]:
        now = self._clock()
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(id=secrets.token_hex(8), name=name, prefix=secret[:12], scopes=tuple(scopes),
                     user_id=user.id, username=user.username, created_at=now,
                     expires_at=None if expires_in_days is None else now + expires_in_days * 86400.0,
                     last_used_at=None)
        self._db.run(lambda s: s.add(ApiKeyRecord(
            id=key.id, name=name, prefix=key.prefix, key_sha256=digest(secret), scopes=",".join(key.scopes),
            user_id=user.id, created_at=now, expires_at=key.expires_at)))
        return key, secret

    def key_for(self, secret: str) -> ApiKey | None:
        """Return the live key for a `vdk_…` secret (its owner enabled), or None."""
        if not secret.startswith(KEY_PREFIX):
            return None
        sha = digest(secret)
        key = self._keys.get(sha)
        if key is None:
            key = self._db.run(lambda s: _opt_key(s, sha))
            if key is None:
                return None
            with self._lock:
                self._keys[sha] = key
        if key.expires_at is not None and key.expires_at <= self._clock():
            return None
        owner = self.user_by_id(key.user_id)
        if owner is None or owner.disabled:
            return None
        with self._lock:
            self._key_used[key.id] = self._clock()
        return key

    def list_keys(self, user_id: int | None) -> list[ApiKey]:
        def work(s: DbSession) -> list[ApiKey]:
            query = select(ApiKeyRecord, UserRecord.username).join(UserRecord, UserRecord.id == ApiKeyRecord.user_id)
            if user_id is not None:
                query = query.where(ApiKeyRecord.user_id == user_id)
            return [_key(record, name) for record, name in s.execute(query.order_by(ApiKeyRecord.created_at))]

        keys = self._db.run(work)
        with self._lock:
            pending = dict(self._key_used)
        return [replace(k, last_used_at=max(k.last_used_at or 0, pending[k.id])) if k.id in pending else k
                for k in keys]

    def get_key(self, key_id: str) -> ApiKey | None:
        def work(s: DbSession) -> ApiKey | None:
            row = s.execute(select(ApiKeyRecord, UserRecord.username)
                            .join(UserRecord, UserRecord.id == ApiKeyRecord.user_id)
                            .where(ApiKeyRecord.id == key_id)).first()
            return None if row is None else _key(row[0], row[1])

        return self._db.run(work)

    def revoke_key(self, key_id: str) -> bool:
        removed = self._db.run(lambda s: s.execute(delete(ApiKeyRecord).where(ApiKeyRecord.id == key_id)).rowcount > 0)
        with self._lock:
            for sha in [sha for sha, key in self._keys.items() if key.id == key_id]:
                del self._keys[sha]
            self._key_used.pop(key_id, None)
        if removed:
            self._notify(Ended(key_id=key_id))
        return removed

    def flush_key_use(self) -> None:
        with self._lock:
            pending, self._key_used = self._key_used, {}
        if not pending:
            return

        def work(s: DbSession) -> None:
            for key_id, used_at in pending.items():
                s.execute(update(ApiKeyRecord).where(ApiKeyRecord.id == key_id).values(last_used_at=used_at))

        self._db.run(work)


def _user(record: UserRecord) -> User:
    return User(id=record.id, username=record.username, role=record.role if record.role in ROLES else "viewer",
                disabled=bool(record.disabled), source=record.source, created_at=record.created_at,
                last_login_at=record.last_login_at, password_hash=record.password_hash.encode("ascii"))


def _opt_user(record: UserRecord | None) -> User | None:
    return None if record is None else _user(record)


def _opt_session(s: DbSession, sha: str) -> Session | None:
    row = s.execute(select(SessionRecord, UserRecord.username)
                    .join(UserRecord, UserRecord.id == SessionRecord.user_id)
                    .where(SessionRecord.token_sha256 == sha)).first()
    if row is None:
        return None
    record, username = row
    return Session(sha, record.user_id, username, record.created_at, record.expires_at)


def _key(record: ApiKeyRecord, username: str) -> ApiKey:
    return ApiKey(id=record.id, name=record.name, prefix=record.prefix,
                  scopes=tuple(s for s in record.scopes.split(",") if s), user_id=record.user_id,
                  username=username, created_at=record.created_at, expires_at=record.expires_at,
                  last_used_at=record.last_used_at)


def _opt_key(s: DbSession, sha: str) -> ApiKey | None:
    row = s.execute(select(ApiKeyRecord, UserRecord.username)
                    .join(UserRecord, UserRecord.id == ApiKeyRecord.user_id)
                    .where(ApiKeyRecord.key_sha256 == sha)).first()
    return None if row is None else _key(row[0], row[1])
