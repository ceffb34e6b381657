"""Connect/disconnect handlers, the token each socket was opened with, and events to authenticated sockets."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from flask import request
from flask_socketio import SocketIO, join_room
from socketio.exceptions import ConnectionRefusedError as SocketRefused

from auth.accounts import Ended
from auth.permissions import READ

if TYPE_CHECKING:
    from auth.credentials import Principal

log = logging.getLogger(__name__)
AUTHENTICATED_ROOM = "authenticated"
NAMESPACE = "/"


@dataclass(frozen=True)
class _Listener:
    """What opened a socket: to find the sockets whose credential just ended."""

    session_sha256: str | None
    key_id: str | None
    user_id: int | None


class SocketHub:
    """Track the credential each socket was opened with; send events to authenticated sockets only.

    Data flows one way into it: the poller publishes each reading (kept for connect-time sends),
    the download manager publishes progress, the accounts report credentials that ended.
    """

    def __init__(self, socketio: SocketIO, authenticate: Callable[[str], Principal | None]):
        self.socketio = socketio
        self._authenticate = authenticate
        self._lock = threading.Lock()
        self._listeners: dict[str, _Listener] = {}
        self._latest_vram: Any = None
        socketio.on_event("connect", self._on_connect)
        socketio.on_event("disconnect", self._on_disconnect)

    def _on_connect(self, auth=None):
        token = auth.get("token") if isinstance(auth, dict) else None
        principal = self._authenticate(token) if isinstance(token, str) and token else None
        if principal is None or not principal.can(READ):
            # python-socketio's exception: its message reaches the client's connect_error (the
            # dashboard looks for "unauthorized"); with the builtin one clients get only
            # "Connection refused by server".
            raise SocketRefused("unauthorized: connect with auth={'token': '<session token or API key with "
                                "the read scope>'}")
        sid = request.sid
        with self._lock:
            self._listeners[sid] = _Listener(principal.session.token_sha256 if principal.session else None,
                                             principal.key.id if principal.key else None, principal.user_id)
        join_room(AUTHENTICATED_ROOM)
        latest = self._latest_vram
        if latest is not None:
            self.socketio.emit("vram_update", latest, to=sid)
        return True

    def _on_disconnect(self, reason=None):
        with self._lock:
            self._listeners.pop(request.sid, None)

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._listeners)

    def credentials_ended(self, ended: Ended) -> None:
        """Disconnect every socket opened with a credential that just ended (logout, expiry, revoke)."""
        with self._lock:
            sids = [sid for sid, who in self._listeners.items() if _matches(who, ended)]
            for sid in sids:
                del self._listeners[sid]
        for sid in sids:
            self.socketio.server.disconnect(sid, namespace=NAMESPACE)

    def publish_vram(self, body: dict[str, Any]) -> None:
        """Send a reading to every authenticated socket of this process, and keep it for the next ones.

        Never through the message queue: `vram_update` is this node's own reading (each process
        reads its own GPUs); every node's reaches every client as `fleet_update`.
        """
        self._latest_vram = body
        self.socketio.emit("vram_update", body, to=AUTHENTICATED_ROOM, ignore_queue=True)

    def broadcast(self, event: str, payload: Any) -> None:
        """Send an event to every authenticated socket (encoded once: see sockets.broadcast)."""
        self.socketio.emit(event, payload, to=AUTHENTICATED_ROOM)


def _matches(who: _Listener, ended: Ended) -> bool:
    if ended.session_sha256 is not None and who.session_sha256 == ended.session_sha256:
        return True
    if ended.key_id is not None and who.key_id is not None and (
            who.key_id == ended.key_id or (ended.key_id == "*" and who.user_id == ended.user_id)):
        return True
    if ended.user_id is not None and who.user_id == ended.user_id and who.key_id is None:
        return who.session_sha256 != ended.keep_session_sha256
    return False
