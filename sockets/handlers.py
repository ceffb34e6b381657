"""Connect/disconnect handlers, the token each socket was opened with, and broadcasts."""
from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

from flask import request
from flask_socketio import SocketIO, join_room

log = logging.getLogger(__name__)
AUTHENTICATED_ROOM = "authenticated"


def origin_checker(allowed: tuple[str, ...]):
    """Return engineio's cors_allowed_origins callable: same origin, or one listed in the config."""
    allowed_set = frozenset(allowed)

    def is_allowed(origin: str | None, environ: dict[str, Any]) -> bool:
        if not origin or origin in allowed_set:
            return True
        # Same origin: the page was served by this host (behind a TLS proxy the scheme may differ).
        return urlsplit(origin).netloc == environ.get("HTTP_HOST")

    return is_allowed


class SocketHub:
    """Track which session token opened each socket; send events to authenticated sockets only."""

    def __init__(self, socketio: SocketIO, sessions, latest_snapshot):
        self._socketio = socketio
        self._sessions = sessions
        self._latest_snapshot = latest_snapshot
        self._lock = threading.Lock()
        self._sids_by_token: dict[str, set[str]] = defaultdict(set)
        self._token_by_sid: dict[str, str] = {}
        socketio.on_event("connect", self._on_connect)
        socketio.on_event("disconnect", self._on_disconnect)

    def _on_connect(self, auth=None):
        token = auth.get("token") if isinstance(auth, dict) else None
        session = self._sessions.get(token) if isinstance(token, str) else None
        if session is None:
            # Flask-SocketIO turns this into a refused connection with this message.
            raise ConnectionRefusedError("unauthorized: connect with auth={'token': '<session token>'}")
        sid = request.sid
        with self._lock:
            self._sids_by_token[session.token].add(sid)
            self._token_by_sid[sid] = session.token
        join_room(AUTHENTICATED_ROOM)
        polled = self._latest_snapshot()
        if polled is not None:
            self._socketio.emit("vram_update", polled.body, to=sid)
        return True

    def _on_disconnect(self, reason=None):
        sid = request.sid
        with self._lock:
            token = self._token_by_sid.pop(sid, None)
            if token is not None:
                sids = self._sids_by_token.get(token)
                if sids is not None:
                    sids.discard(sid)
                    if not sids:
                        del self._sids_by_token[token]

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._token_by_sid)

    def disconnect_token(self, token: str) -> None:
        """Disconnect every socket opened with `token` (logout or expiry)."""
        with self._lock:
            sids = list(self._sids_by_token.pop(token, ()))
            for sid in sids:
                self._token_by_sid.pop(sid, None)
        for sid in sids:
            self._socketio.server.disconnect(sid, namespace="/")

    def broadcast(self, event: str, payload: Any) -> None:
        """Send an event to every authenticated socket."""
        self._socketio.emit(event, payload, to=AUTHENTICATED_ROOM)
