"""Broadcasts encoded once: python-socketio's client manager, with a direct websocket write.

`BroadcastManager` is a python-socketio client manager (the library's extension point for how
events reach recipients; a Redis manager can sit on top of it, see its docstring). For an event
to a room it encodes one Socket.IO packet, one Engine.IO message and one websocket frame (plain,
or deflated once per window size) and hands that frame to `DirectWebsocketWriter`, which writes
it as is to every idle websocket. The per-recipient path of python-socketio (a queue put, a
writer green thread woken by a hub timer, the frame built again, a Timeout per wait) cost ~70 us
a client, ~180 ms of p99 at 1,000 clients; see BENCHMARKS.md. A socket that is busy, still
upgrading, long-polling or has packets queued gets the message through Engine.IO's public
`send_packet`, so per-socket order is kept and a slow client never holds up the others.

`DirectWebsocketWriter` is the one place that relies on internals of python-engineio and
eventlet (the driver table `eio._async`, a socket's `queue`/`upgrading` fields, the websocket's
`_sendlock`). It checks those shapes when it is installed and again on each socket it meets; on
any surprise it switches itself off for good (logged once, counted in `stats`) and every event
goes the stock way: `vram_update` never stops.
"""
from __future__ import annotations

import errno
import logging
import zlib
from typing import Any

import socketio
from socketio import packet as sio_packet

import concurrency

log = logging.getLogger(__name__)
# Let other green threads run after this many direct writes (a broadcast to thousands of sockets
# must not hold REST requests for its whole duration).
YIELD_EVERY = 256
_DEFLATE_MAX_WBITS = 15
# The versions the direct path was written and tested against (requirements.txt pins them).
TESTED_WITH = {"python-engineio": "4.15.1", "eventlet": "0.41.3"}
_SOCKET_FIELDS = ("queue", "upgraded", "upgrading", "closed", "closing")


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


class DirectWebsocketWriter:
    """Remember the websocket behind each Engine.IO session and write shared frames to idle ones.

    Installed by giving the Engine.IO server its own subclass of its websocket class (the
    module-level driver table is left alone). The subclass also asks permessage-deflate clients
    for server_no_context_takeover (RFC 7692 7.1.1.1 lets a server add it), so one compressed frame
    serves every such client, as it does for eventlet's own sends.
    """

    def __init__(self):
        self.enabled = False
        self.disabled_reason: str | None = "not installed"
        self.stats = {"direct": 0, "queued": 0, "surprises": 0}
        self._by_sid: dict[str, tuple[Any, Any]] = {}

    def install(self, eio) -> bool:
        """Probe python-engineio's and eventlet's shapes; hook the websocket class if they fit."""
        try:
            import eventlet.semaphore
            import eventlet.websocket

            drivers = getattr(eio, "_async", None)
            base = drivers.get("websocket") if isinstance(drivers, dict) else None
            if getattr(eio, "async_mode", None) != "eventlet":
                return self._off("Engine.IO does not run on eventlet")
            if not (isinstance(base, type) and issubclass(base, eventlet.websocket.WebSocketWSGI)):
                return self._off("Engine.IO's websocket driver is not eventlet's WebSocketWSGI")
            self._semaphore_class = eventlet.semaphore.Semaphore
        except (ImportError, AttributeError, TypeError) as exc:
            return self._off(f"unexpected library shape: {exc}")
        eio._async = dict(drivers, websocket=self._websocket_class(base))
        self.enabled, self.disabled_reason = True, None
        return True

    def _off(self, reason: str) -> bool:
        if self.enabled or self.disabled_reason in (None, "not installed"):
            log.warning("broadcast fast path off, using python-socketio's stock sends: %s", reason)
        self.enabled = False
        self.disabled_reason = reason
        self.stats["surprises"] += 1
        self._by_sid.clear()
        return False

    def _websocket_class(self, base: type) -> type:
        writer = self

        class RegisteringWebSocket(base):
            def __init__(self, handler, server):
                owner = getattr(handler, "__self__", None)
                sid = getattr(owner, "sid", None)

                def handler_with_registration(ws):
                    registered = sid is not None and writer._register(sid, owner, ws)
                    try:
                        return handler(ws)
                    finally:
                        if registered:
                            writer._by_sid.pop(sid, None)

                super().__init__(handler_with_registration, server)

            def __call__(self, environ, start_response):
                offer = environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS")
                if offer and writer.enabled:
                    environ["HTTP_SEC_WEBSOCKET_EXTENSIONS"] = _without_server_context_takeover(offer)
                return super().__call__(environ, start_response)

        return RegisteringWebSocket

    def _register(self, sid: str, owner: Any, ws: Any) -> bool:
        if not self.enabled:
            return False
        missing = [name for name in _SOCKET_FIELDS if not hasattr(owner, name)]
        if missing:
            return self._off(f"Engine.IO socket lacks {', '.join(missing)}")
        if not isinstance(getattr(ws, "_sendlock", None), self._semaphore_class):
            return self._off("eventlet's websocket has no _sendlock semaphore")
        if getattr(getattr(ws, "socket", None), "fd", None) is None or not isinstance(
                getattr(ws, "extensions", None), dict):
            return self._off("eventlet's websocket has no socket.fd or extensions")
        self._by_sid[sid] = (owner, ws)
        return True

    def try_write(self, eio, eio_sid: str, frames: SharedFrames) -> bool:
        """Write the frame now if the socket is idle; False: send it through the socket's queue."""
        entry = self._by_sid.get(eio_sid)
        if entry is None:
            return False
        try:
            return self._write(eio, eio_sid, entry, frames)
        except (AttributeError, TypeError, KeyError) as exc:
            self._off(f"unexpected library shape while writing: {exc!r}")
            return False

    def _write(self, eio, eio_sid: str, entry: tuple[Any, Any], frames: SharedFrames) -> bool:
        owner, ws = entry
        if (owner.closed or owner.closing or not owner.upgraded or owner.upgrading
                or not owner.queue.empty() or eio.sockets.get(eio_sid) is not owner
                or getattr(ws, "websocket_closed", True)):
            return False
        raw = ws.socket.fd
        lock = ws._sendlock
        deflate = ws.extensions.get("permessage-deflate")
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


class BroadcastManager(socketio.Manager):
    """python-socketio's in-memory client manager, sending room events through one shared frame.

    A message-queue manager keeps this as its local delivery by listing it after the queue class,
    `class RedisBroadcastManager(socketio.RedisManager, BroadcastManager)`: the queue's listener
    delivers through `super().emit`, which is this method.
    """

    def __init__(self, writer: DirectWebsocketWriter | None = None, **kwargs):
        super().__init__(**kwargs)
        self.writer = writer or DirectWebsocketWriter()

    def emit(self, event, data, namespace, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        room = to or room
        if (not self.writer.enabled or room is None or callback or skip_sid
                or namespace not in self.rooms or isinstance(data, tuple)):
            return super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                                callback=callback, **kwargs)
        args = [] if data is None else [data]
        encoded = self.server.packet_class(sio_packet.EVENT, namespace=namespace,
                                           data=[event, *args]).encode()
        if isinstance(encoded, list):  # binary attachments: leave those to python-socketio
            return super().emit(event, data, namespace, room=room, callback=callback, **kwargs)
        frames = SharedFrames("4" + encoded)
        eio = self.server.eio
        written = _SidSet()
        waiting = False
        for sid, eio_sid in self.get_participants(namespace, room):
            if self.writer.try_write(eio, eio_sid, frames):
                written.add(sid)
                if len(written) % YIELD_EVERY == 0:
                    concurrency.sleep(0)
            else:
                waiting = True
        self.writer.stats["direct"] += len(written)
        if waiting:
            # The rest (busy, upgrading, long-polling) through the stock path, in their queues.
            return super().emit(event, data, namespace, room=room, skip_sid=written, **kwargs)
        return None


class _SidSet(list):
    """A skip_sid list for Manager.emit with set lookups (it tests `sid not in skip_sid` per recipient)."""

    def __init__(self):
        super().__init__()
        self._members: set[str] = set()

    def add(self, sid: str) -> None:
        self._members.add(sid)
        self.append(sid)

    def __contains__(self, sid: object) -> bool:
        return sid in self._members
