"""Connect/disconnect handlers, the token each socket was opened with, and events to authenticated sockets."""
from __future__ import annotations

import logging
import threading
from collections import defaultdict
from typing import Any

from flask import request
from flask_socketio import SocketIO, join_room
from socketio.exceptions import ConnectionRefusedError as SocketRefused

from auth.sessions import SessionStore

log = logging.getLogger(__name__)
AUTHENTICATED_ROOM = "authenticated"
NAMESPACE = "/"


class SocketHub:
    """Track which session token opened each socket; send events to authenticated sockets only.

    Data flows one way into it: the poller publishes each reading (kept for connect-time sends),
    the download manager publishes progress, the session store reports ended sessions.
    """

    def __init__(self, socketio: SocketIO, sessions: SessionStore):
        self.socketio = socketio
        self._sessions = sessions
        self._lock = threading.Lock()
        self._sids_by_token: dict[str, set[str]] = defaultdict(set)
        self._token_by_sid: dict[str, str] = {}
        self._latest_vram: Any = None
        socketio.on_event("connect", self._on_connect)
        socketio.on_event("disconnect", self._on_disconnect)
        sessions.add_listener(self.disconnect_token)

    def _on_connect(self, auth=None):
        token = auth.get("token") if isinstance(auth, dict) else None
        session = self._sessions.get(token) if isinstance(token, str) else None
        if session is None:
            # python-socketio's exception: its message reaches the client's connect_error (the
            # dashboard looks for "unauthorized"); with the builtin one clients get only
            # "Connection refused by server".
            raise SocketRefused("unauthorized: connect with auth={'token': '<session token>'}")
        sid = request.sid
        with self._lock:
            self._sids_by_token[session.token].add(sid)
            self._token_by_sid[sid] = session.token
        join_room(AUTHENTICATED_ROOM)
        latest = self._latest_vram
        if latest is not None:
            self.socketio.emit("vram_update", latest, to=sid)
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
            self.socketio.server.disconnect(sid, namespace=NAMESPACE)

    def publish_vram(self, body: dict[str, Any]) -> None:
        """Send a reading to every authenticated socket, and keep it for the ones that connect next."""
        self._latest_vram = body
        self.broadcast("vram_update", body)

    def broadcast(self, event: str, payload: Any) -> None:
        """Send an event to every authenticated socket (encoded once: see sockets.broadcast)."""
        self.socketio.emit(event, payload, to=AUTHENTICATED_ROOM)
