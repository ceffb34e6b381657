"""Connect/disconnect handlers, the token each socket was opened with, and broadcasts.

A broadcast is encoded once: one Socket.IO packet, one Engine.IO message and one websocket frame
(plain, or deflated once per window size) that is written as is to every idle websocket. The
per-recipient path of python-socketio (a queue put, a writer green thread woken by a hub timer,
the frame built again, a Timeout per wait) cost ~70 us a client, ~180 ms of p99 at 1,000 clients;
see BENCHMARKS.md. A socket that is busy, still upgrading, long-polling or has packets queued
gets the broadcast through python-socketio's queue as before, so per-socket order is kept and a
slow client never holds up the others.
"""
from __future__ import annotations

import errno
import logging
import threading
import zlib
from collections import defaultdict
from typing import Any
from urllib.parse import urlsplit

from engineio import packet as eio_packet
from flask import request
from flask_socketio import SocketIO, join_room
from socketio import packet as sio_packet
from socketio.exceptions import ConnectionRefusedError as SocketRefused

import concurrency

log = logging.getLogger(__name__)
AUTHENTICATED_ROOM = "authenticated"
NAMESPACE = "/"
# Let other green threads run after this many direct writes (a broadcast to thousands of sockets
# must not hold REST requests for its whole duration).
YIELD_EVERY = 256
_DEFLATE_MAX_WBITS = 15


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
        self._websockets = WebsocketRegistry()
        self._direct = self._websockets.install(socketio.server.eio) if socketio.server is not None else False

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
        """Send an event to every authenticated socket, encoded once for all of them."""
        server = self._socketio.server
        if not self._direct or server is None:
            self._socketio.emit(event, payload, to=AUTHENTICATED_ROOM)
            return
        polled = self._latest_snapshot() if event == "vram_update" else None
        if polled is not None and polled.body is payload:
            # The poller serialised this body once already (the /api/vram/status bytes).
            text = '2["vram_update",' + polled.json_bytes.decode() + "]"
        else:
            encoded = server.packet_class(sio_packet.EVENT, namespace=NAMESPACE, data=[event, payload]).encode()
            if isinstance(encoded, list):  # binary attachments: leave those to python-socketio
                self._socketio.emit(event, payload, to=AUTHENTICATED_ROOM)
                return
            text = encoded
        frames = SharedFrames("4" + text)
        queued = None
        eio = server.eio
        written = 0
        for _sid, eio_sid in server.manager.get_participants(NAMESPACE, AUTHENTICATED_ROOM):
            if self._websockets.try_write(eio, eio_sid, frames):
                written += 1
                if written % YIELD_EVERY == 0:
                    concurrency.sleep(0)
                continue
            if queued is None:
                queued = eio_packet.Packet(eio_packet.MESSAGE, text)
            server._send_eio_packet(eio_sid, queued)


class SharedFrames:
    """One Engine.IO message as websocket frames, each variant built once on first use."""

    def __init__(self, message: str):
        self._data = message.encode()
        self._plain: bytes | None = None
        self._deflated: dict[int, bytes] = {}

    def plain(self) -> bytes:
        if self._plain is None:
            self._plain = _frame(0x81, self._data)
        return self._plain

    def deflated(self, wbits: int) -> bytes:
        """Return the frame compressed without context takeover, valid for any such socket."""
        frame = self._deflated.get(wbits)
        if frame is None:
            compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -wbits)
            body = compressor.compress(self._data) + compressor.flush(zlib.Z_SYNC_FLUSH)
            frame = self._deflated[wbits] = _frame(0xC1, body[:-4])  # RFC 7692 7.2.1: drop 00 00 ff ff
        return frame


def _frame(first_byte: int, payload: bytes) -> bytes:
    """Return an unmasked server frame (RFC 6455 5.2)."""
    length = len(payload)
    if length < 126:
        header = bytes((first_byte, length))
    elif length < 65536:
        header = bytes((first_byte, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((first_byte, 127)) + length.to_bytes(8, "big")
    return header + payload


class WebsocketRegistry:
    """Remember the websocket behind each Engine.IO session so a shared frame can be written to it.

    Installed by giving this Engine.IO server its own subclass of its websocket class (the
    module-level driver table is left alone). The subclass also asks permessage-deflate clients
    for server_no_context_takeover (RFC 7692 7.1.1.1 lets a server add it), so one compressed frame
    serves every such client, as it does for eventlet's own sends.
    """

    def __init__(self):
        self._by_sid: dict[str, Any] = {}

    def install(self, eio) -> bool:
        drivers = getattr(eio, "_async", None)
        base = drivers.get("websocket") if isinstance(drivers, dict) else None
        if base is None or getattr(eio, "async_mode", None) != "eventlet":
            return False
        registry = self

        class RegisteringWebSocket(base):
            def __init__(self, handler, server):
                owner = getattr(handler, "__self__", None)
                sid = getattr(owner, "sid", None)

                def handler_with_registration(ws):
                    if sid is not None:
                        registry._by_sid[sid] = (owner, ws)
                    try:
                        return handler(ws)
                    finally:
                        if sid is not None:
                            registry._by_sid.pop(sid, None)

                super().__init__(handler_with_registration, server)

            def __call__(self, environ, start_response):
                offer = environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS")
                if offer:
                    environ["HTTP_SEC_WEBSOCKET_EXTENSIONS"] = _without_server_context_takeover(offer)
                return super().__call__(environ, start_response)

        eio._async = dict(drivers, websocket=RegisteringWebSocket)
        return True

    def try_write(self, eio, eio_sid: str, frames: SharedFrames) -> bool:
        """Write the frame now if the socket is idle; False: send it through the socket's queue."""
        entry = self._by_sid.get(eio_sid)
        if entry is None:
            return False
        owner, ws = entry
        if (owner.closed or owner.closing or not owner.upgraded or owner.upgrading
                or not owner.queue.empty() or eio.sockets.get(eio_sid) is not owner
                or getattr(ws, "websocket_closed", True)):
            return False
        raw = getattr(getattr(ws, "socket", None), "fd", None)
        lock = getattr(ws, "_sendlock", None)
        if raw is None or lock is None:
            return False
        deflate = getattr(ws, "extensions", {}).get("permessage-deflate")
        if deflate is None:
            frame = frames.plain()
        elif deflate.get("server_no_context_takeover"):
            frame = frames.deflated(int(deflate.get("server_max_window_bits") or _DEFLATE_MAX_WBITS))
        else:
            return False
        # balance <= 0: held, or just released to a waiter (the socket's writer with older packets)
        # that eventlet wakes on its next hub turn; a non-blocking acquire would still succeed then
        # and put this frame on the wire before those packets.
        if lock.balance <= 0 or not lock.acquire(blocking=False):
            return False  # its writer is sending or about to: queue behind it
        try:
            sent = raw.send(frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            lock.release()
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF):
                log.debug("websocket %s: direct write failed: %s", eio_sid, exc)
            return True  # the socket is gone; its reader notices and cleans up
        if sent == len(frame):
            lock.release()
        else:
            # The client is slow: finish this frame in a green thread of its own, still holding the
            # socket's send lock so that nothing else interleaves, and never block the others.
            concurrency.spawn(_finish_write, ws, lock, memoryview(frame)[sent:])
        return True


def _finish_write(ws, lock, rest: memoryview) -> None:
    try:
        ws.socket.sendall(rest)
    except OSError:
        pass  # disconnected: the socket's reader sees it and closes the session
    finally:
        lock.release()


def _without_server_context_takeover(offer: str) -> str:
    """Add server_no_context_takeover to each permessage-deflate offer that lacks it."""
    parts = []
    for extension in offer.split(","):
        params = [p.strip() for p in extension.split(";")]
        if params[0].lower() == "permessage-deflate" and not any(
                p.lower() == "server_no_context_takeover" for p in params[1:]):
            params.append("server_no_context_takeover")
        parts.append("; ".join(params))
    return ", ".join(parts)
