"""Upgraded websockets owned by one epoll loop: no green thread, buffered file or websocket object a client.

As python-engineio and eventlet ship it, a websocket client holds three green threads for as long as
it is connected: eventlet.wsgi's request thread (running Engine.IO's read loop), Engine.IO's writer
(waiting on the socket's queue) and its ping task (asleep `ping_interval` between pings), each with
the C stack greenlet saved for it and a CPython frame stack of its own, besides the request's 16 KiB
and 8 KiB buffered files, eventlet's websocket object and the queue: ~66 KiB of RSS a client
(BENCHMARKS.md, section 3b). Here, once the websocket handshake and, from long-polling, Engine.IO's
probe/upgrade exchange are done in the request's green thread:

- the HTTP server hands the connection over (environ[concurrency.DETACH_CONNECTION], server.py) and
  the request's green thread ends, its buffered files and the websocket object with it;
- one green thread waits on one epoll descriptor for every owned socket (`_Loop`): it reads and
  parses the client's frames (RFC 6455; permessage-deflate per message, the server having asked
  for no context takeover either way) and hands the Engine.IO packets to the socket's `receive`:
  pongs at once, anything else in a short-lived green thread per burst, in order (a Socket.IO
  connect runs the app's authentication);
- the Engine.IO socket's queue is replaced by a stand-in whose put() writes the packet's frame at
  once, so there is no writer green thread. Writes are non-blocking: what the kernel does not take
  waits in the socket's list of references to its frames (never copies) and leaves when epoll says
  the socket is writable. Broadcasts (sockets/broadcast.py) write their one shared frame the same
  way, which keeps each socket's order;
- every Engine.IO socket's ping task (long-polling ones too) is an entry in one heap that one green
  thread serves (`PingSweep`): the same ping at the same time, no sleeping green thread a client.
  Engine.IO's own service task still closes the sockets whose pong is late.

What stays per client: Engine.IO's and python-socketio's state for the session, the WSGI environ
python-socketio keeps for it (without the request's stream and the server's hooks), the socket and
one OwnedWebsocket.

`WebsocketOwner` is the one place that relies on internals of python-engineio, python-socketio and
eventlet: the driver table `eio._async` (its websocket and thread classes are replaced by
subclasses; the module's table is left alone), the Engine.IO socket's fields, `_websocket_handler`
and `_send_ping`, the fields of eventlet's websocket object (`socket.fd`, `extensions`, `version`,
`websocket_closed`) and python-socketio's `environ` table. It checks those shapes when installed
and again on each socket; on any surprise it switches itself off for good (logged once, counted in
`stats`): new websockets then take the stock path with their own green threads, owned ones carry on,
and every event still reaches every client.
"""
from __future__ import annotations

import functools
import heapq
import itertools
import logging
import socket as socket_module
import time
import zlib
from collections import deque
from typing import Any, Callable

import concurrency
from sockets.frames import CLOSE_FRAME, DEFLATE_MAX_WBITS, SharedFrames, close_frame, frame, unmask

log = logging.getLogger(__name__)

# The versions this was written and tested against (requirements.txt pins them).
TESTED_WITH = {"python-engineio": "4.15.1", "python-socketio": "5.18.1", "eventlet": "0.41.3"}
_SOCKET_FIELDS = ("sid", "server", "queue", "connected", "upgraded", "upgrading", "closed", "closing",
                  "last_ping")
_QUEUE_METHODS = ("put", "get_nowait", "task_done", "getting")
# A socket the server closes with frames still unsent gets this long to take them; then it is cut.
CLOSE_FLUSH_S = 5.0
READ_CHUNK = 65536
SENDMSG_BUFFERS = 64  # pending frames handed to one sendmsg() when a slow socket drains
PINGS_BEFORE_YIELD = 256
_DEFLATE_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 7.2.2: appended before inflating a message
_OPEN, _CLOSING, _CLOSED = 0, 1, 2
_LOST = object()  # in an inbox: the connection ended, Engine.IO's close follows what came before it
# Keys of the request's environ that hold its connection, stream or server hooks: python-socketio keeps
# the environ for the session's life, and with them the request's buffered files. (And eventlet's
# `headers_raw`, a second copy of the headers, which the HTTP_* keys carry.)
_ENVIRON_DROPPED = frozenset({"wsgi.input", "eventlet.input", "eventlet.posthooks", "eventlet.set_idle",
                              "werkzeug.request", "headers_raw", concurrency.CLIENT_GONE_PROBE,
                              concurrency.DETACH_CONNECTION})


class _NoBody:
    """The stream a Socket.IO handler's request reads: nothing, as for any GET (and nothing to close)."""

    def read(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int = -1) -> bytes:
        return b""

    def readlines(self, hint: int = -1) -> list:
        return []

    def __iter__(self):
        return iter(())

    def close(self) -> None:
        pass


_NO_BODY = _NoBody()


def _probe_target() -> None:
    """A target to see that Engine.IO's thread class keeps the one it is given."""


class WebsocketOwner:
    """Install on python-socketio's server; owns every websocket it can, writes broadcasts to them."""

    def __init__(self):
        self.enabled = False
        self.disabled_reason: str | None = "not installed"
        # direct: broadcast frames written by try_write; owned: websockets taken over; stock:
        # websockets left to Engine.IO's own handler; surprises: library shapes that turned this off.
        self.stats = {"direct": 0, "owned": 0, "stock": 0, "surprises": 0}
        self.pings: PingSweep | None = None
        self._by_sid: dict[str, OwnedWebsocket] = {}
        self._loop: _Loop | None = None
        self._sio: Any = None

    @property
    def connections(self) -> int:
        """Websockets owned now."""
        return len(self._by_sid)

    # -- installing, and the probes

    def install(self, sio) -> bool:
        """Probe the libraries' shapes; hook Engine.IO's websocket and thread classes if they fit."""
        try:
            import eventlet.websocket
            from engineio import exceptions as eio_exceptions
            from engineio import packet as eio_packet
            from engineio import socket as eio_socket

            eio = getattr(sio, "eio", None)
            drivers = getattr(eio, "_async", None)
            if getattr(eio, "async_mode", None) != "eventlet" or not isinstance(drivers, dict):
                return self._off("Engine.IO does not run on eventlet")
            websocket, thread = drivers.get("websocket"), drivers.get("thread")
            if not (isinstance(websocket, type) and issubclass(websocket, eventlet.websocket.WebSocketWSGI)):
                return self._off("Engine.IO's websocket driver is not eventlet's WebSocketWSGI")
            if not (isinstance(thread, type) and callable(getattr(thread, "start", None))
                    and getattr(thread(target=_probe_target), "target", None) is _probe_target
                    and getattr(thread(target=_probe_target), "args", None) == ()):
                return self._off("Engine.IO's thread class does not keep its target")
            socket_class = eio_socket.Socket
            for name in ("_websocket_handler", "_send_ping", "receive", "close", "send"):
                if not callable(getattr(socket_class, name, None)):
                    return self._off(f"Engine.IO's socket has no {name}()")
            if not isinstance(getattr(sio, "environ", None), dict) or not isinstance(getattr(eio, "sockets", None), dict):
                return self._off("python-socketio keeps no environ table, or Engine.IO no socket table")
            self._reason_close = eio.reason.TRANSPORT_CLOSE
            self._queue_empty = drivers["queue_empty"]
            self._packet = eio_packet
            self._noop, self._ping, self._pong = eio_packet.NOOP, eio_packet.PING, eio_packet.PONG
            self._upgrade_type = eio_packet.UPGRADE
            self._unknown_packet = eio_exceptions.UnknownPacketError
            self._socket_closed = eio_exceptions.SocketIsClosedError
        except (ImportError, AttributeError, TypeError, KeyError) as exc:
            return self._off(f"unexpected library shape: {exc}")
        epoll = concurrency.os_epoll()
        if epoll is None:
            return self._off("the OS has no epoll")
        self._sio = sio
        self._loop = _Loop(epoll)
        self.pings = PingSweep(self._packet)
        eio._async = dict(drivers, websocket=self._websocket_class(websocket, socket_class._websocket_handler),
                          thread=self._thread_class(thread, socket_class._send_ping))
        self.enabled, self.disabled_reason = True, None
        return True

    def _off(self, reason: str) -> bool:
        if self.enabled or self.disabled_reason in (None, "not installed"):
            log.warning("websocket owner off (new websockets and broadcasts take python-socketio's stock "
                        "path): %s", reason)
        self.enabled = False
        self.disabled_reason = reason
        self.stats["surprises"] += 1
        return False

    def _websocket_class(self, base: type, stock_handler: Callable) -> type:
        owner = self

        class OwnedWebSocketWSGI(base):
            """Engine.IO's websocket class; the handler it runs after the handshake is the owner's."""

            def __init__(self, handler, server):
                if getattr(handler, "__func__", None) is stock_handler:
                    handler = functools.partial(owner._serve, handler.__self__, handler)
                super().__init__(handler, server)

            def __call__(self, environ, start_response):
                offer = environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS")
                if offer and owner.enabled:
                    environ["HTTP_SEC_WEBSOCKET_EXTENSIONS"] = _without_context_takeover(offer)
                return super().__call__(environ, start_response)

        return OwnedWebSocketWSGI

    def _thread_class(self, base: type, send_ping: Callable) -> type:
        owner = self

        class PingSweepThread(base):
            """Engine.IO's background task, except a socket's ping wait: that is an entry in PingSweep."""

            def start(self):
                target = self.target
                if owner.enabled and getattr(target, "__func__", None) is send_ping \
                        and not self.args and not self.kwargs:
                    owner.pings.schedule(target.__self__)
                    return None
                return super().start()

        return PingSweepThread

    def _why_not(self, sock, ws, detach) -> str | None:
        """Return why this websocket stays with Engine.IO's own handler, or None to own it."""
        if not self.enabled:
            return "off"
        if detach is None:
            return "the HTTP server cannot hand it over"  # not server.serve(), or not its shape
        if getattr(ws, "version", None) not in (8, 13):
            return "not an RFC 6455 websocket"
        missing = [name for name in _SOCKET_FIELDS if not hasattr(sock, name)]
        if missing:
            return self._surprise(f"Engine.IO's socket lacks {', '.join(missing)}")
        if not all(callable(getattr(sock.queue, name, None)) for name in _QUEUE_METHODS):
            return self._surprise("Engine.IO's socket queue is not eventlet's queue")
        raw = getattr(getattr(ws, "socket", None), "fd", None)
        if not (all(callable(getattr(raw, name, None)) for name in ("send", "sendmsg", "recv", "fileno", "detach"))
                and isinstance(getattr(ws, "extensions", None), dict) and hasattr(ws, "websocket_closed")):
            return self._surprise("eventlet's websocket has no socket.fd, extensions or websocket_closed")
        deflate = ws.extensions.get("permessage-deflate")
        if deflate is not None and not (deflate.get("server_no_context_takeover")
                                        and deflate.get("client_no_context_takeover")):
            return "permessage-deflate with context takeover"
        return None

    def _surprise(self, reason: str) -> str:
        self._off(reason)
        return reason

    # -- taking a websocket over (in its request's green thread)

    def _serve(self, sock, stock_handler: Callable, ws) -> list:
        """Engine.IO's websocket handler: own the socket from here, or run Engine.IO's own."""
        detach = concurrency.detach_hook(getattr(ws, "environ", None) or {})
        if self._why_not(sock, ws, detach) is not None:
            self.stats["stock"] += 1
            return stock_handler(ws)
        server = sock.server
        # As Engine.IO does: the upgrade exchange below waits at most this long for each packet.
        ws.socket.settimeout(server.ping_interval + server.ping_timeout)
        if sock.connected:
            if not self._upgrade(sock, ws):
                return []
        else:
            sock.connected = True
            sock.upgraded = True
        self._take(sock, ws, detach)
        return []

    def _upgrade(self, sock, ws) -> bool:
        """The upgrade from long-polling, as Engine.IO's Socket._websocket_handler does it."""
        packet, logger = self._packet, sock.server.logger
        sock.upgrading = True  # Engine.IO holds packet sends in the queue meanwhile
        try:
            received = self._wait(sock, ws)
            if received.packet_type != self._ping or received.data != "probe":
                logger.info("%s: Failed websocket upgrade, no PING packet", sock.sid)
                sock.upgrading = False
                return False
            ws.send(packet.Packet(self._pong, data="probe").encode())
            sock.queue.put(packet.Packet(self._noop))  # ends the pending long-poll
            received = self._wait(sock, ws)
        except (OSError, ValueError, TypeError, IndexError) as exc:
            logger.info("%s: Failed websocket upgrade: %s", sock.sid, exc)
            sock.upgrading = False
            return False
        if received.packet_type != self._upgrade_type:
            sock.upgraded = False
            logger.info("%s: Failed websocket upgrade, expected UPGRADE packet, received %s instead.",
                        sock.sid, received.encode())
            sock.upgrading = False
            return False
        sock.upgraded = True
        sock.upgrading = False
        return True

    def _wait(self, sock, ws):
        data = ws.wait()
        if data is None:
            raise ValueError("the client closed the websocket")
        if len(data) > sock.server.max_http_buffer_size:
            raise ValueError("packet is too large")
        return self._packet.Packet(encoded_packet=data)

    def _take(self, sock, ws, detach) -> None:
        server = sock.server
        deflate = ws.extensions.get("permessage-deflate")
        wbits = None if deflate is None else int(deflate.get("server_max_window_bits") or DEFLATE_MAX_WBITS)
        # The connection moves to a plain socket of the OS: eventlet's green one (the request's, with
        # its cached bound methods) stays with the request and goes with it.
        conn = OwnedWebsocket(self, sock, concurrency.os_socket(ws.socket), wbits, inflate=deflate is not None,
                              limit=int(server.max_http_buffer_size))
        _, conn.release = detach(conn.end)
        ws.websocket_closed = True  # eventlet sends no close frame as the handler returns: it lives on
        old = sock.queue
        sock.queue = _OwnedQueue(conn)
        self._by_sid[sock.sid] = conn
        self.stats["owned"] += 1
        environ = self._sio.environ.get(sock.sid)
        if environ is not None:
            self._sio.environ[sock.sid] = _slim_environ(environ)
        self._loop.add(conn)
        # What Engine.IO queued before (its open packet, what the connect handler sent) goes first.
        while True:
            try:
                queued = old.get_nowait()
            except self._queue_empty:
                break
            old.task_done()
            if queued is None:  # closed meanwhile
                conn.shutdown()
                break
            conn.send_packet(queued)
        if old.getting():  # a long-poll still waiting there ends, as Engine.IO's NOOP ends it
            old.put(self._packet.Packet(self._noop))

    def _forget(self, conn: OwnedWebsocket) -> None:
        if self._by_sid.get(conn.sid) is conn:
            del self._by_sid[conn.sid]
        self._loop.remove(conn)

    # -- the broadcast path

    def try_write(self, eio, eio_sid: str, frames: SharedFrames) -> bool:
        """Write a shared frame to an owned websocket; False: not owned (or closing), send it the stock way."""
        conn = self._by_sid.get(eio_sid)
        if conn is None or eio.sockets.get(eio_sid) is not conn.eio_socket:
            return False
        return conn.write_shared(frames)


class OwnedWebsocket:
    """One websocket the loop owns: its frames in, Engine.IO's packets and shared frames out."""

    __slots__ = ("owner", "eio_socket", "sid", "raw", "fd", "wbits", "inflate", "limit", "release",
                 "state", "inbuf", "fragments", "pending", "inbox", "processing")

    def __init__(self, owner: WebsocketOwner, eio_socket, raw, wbits: int | None, *, inflate: bool, limit: int):
        self.owner = owner
        self.eio_socket = eio_socket
        self.sid = eio_socket.sid
        self.raw = raw  # the OS socket, non-blocking (eventlet's green one is left with the request)
        self.fd = raw.fileno()
        self.wbits = wbits  # permessage-deflate: the server's window; None: plain frames
        self.inflate = inflate
        self.limit = limit  # Engine.IO's max_http_buffer_size, for a frame and for a message
        self.release: Callable[[], None] | None = None
        self.state = _OPEN
        self.inbuf = b""
        self.fragments: list | None = None  # [opcode, compressed, size, parts] of a fragmented message
        self.pending: deque | None = None  # frames (or their tails) the kernel has not taken yet
        self.inbox: deque | None = None  # packets for Engine.IO's receive, in order
        self.processing = False

    # -- writing

    def write_shared(self, frames: SharedFrames) -> bool:
        sock = self.eio_socket
        if self.state != _OPEN or sock.closed or sock.closing:
            return False
        self.write(frames.for_window(self.wbits))
        return True

    def send_packet(self, pkt) -> None:
        """Write one Engine.IO packet (what Engine.IO put in the socket's queue)."""
        if self.state != _OPEN:
            return
        if pkt.packet_type == self.owner._ping and pkt.data is None:
            frames = _PING_FRAMES
        else:
            frames = SharedFrames(pkt.encode())
        self.write(frames.for_window(self.wbits))

    def write(self, data: bytes) -> None:
        if self.state == _CLOSED:
            return
        if self.pending is not None:
            self.pending.append(data)
            return
        try:
            sent = self.raw.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._lost()
            return
        if sent != len(data):
            self.pending = deque((memoryview(data)[sent:],))
            self.owner._loop.watch(self)

    def on_writable(self) -> None:
        pending = self.pending
        while pending:
            chunks = list(itertools.islice(pending, SENDMSG_BUFFERS))
            try:
                sent = self.raw.sendmsg(chunks)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._lost()
                return
            for chunk in chunks:
                size = len(chunk)
                if sent >= size:
                    pending.popleft()
                    sent -= size
                    continue
                if sent:
                    pending[0] = memoryview(chunk)[sent:]
                return  # the kernel took what it could; epoll says when it takes more
        self.pending = None
        if self.state == _CLOSING:
            self._close_transport()
        elif self.state == _OPEN:
            self.owner._loop.watch(self)

    # -- closing

    def shutdown(self) -> None:
        """Engine.IO closed the socket: a close frame after what is queued, then the connection."""
        if self.state != _OPEN:
            return
        self.write(CLOSE_FRAME)
        if self.state != _OPEN:
            return
        self.state = _CLOSING
        if self.pending is None:
            self._close_transport()
        else:
            concurrency.call_later(CLOSE_FLUSH_S, self._close_transport)

    def end(self) -> None:
        """The server stops: end the connection, as eventlet ends its idle ones."""
        self._lost()

    def _lost(self) -> None:
        """The connection ended (end of stream, reset, close frame, protocol error, server stop)."""
        if self.state == _CLOSED:
            return
        self._close_transport()
        self._enqueue(_LOST)

    def _close_transport(self) -> None:
        if self.state == _CLOSED:
            return
        self.state = _CLOSED
        self.pending = None
        self.inbuf = b""
        self.fragments = None
        self.owner._forget(self)
        try:
            self.raw.shutdown(socket_module.SHUT_WR)
        except OSError:
            pass
        self.raw.close()
        release, self.release = self.release, None
        if release is not None:
            release()
        self._drop_closed_session()

    def _drop_closed_session(self) -> None:
        # Engine.IO drops a closed socket from its table in disconnect() and in its service task; its
        # websocket handler drops it too, which here returned long ago.
        sock = self.eio_socket
        sockets = sock.server.sockets
        if sock.closed and sockets.get(self.sid) is sock:
            del sockets[self.sid]

    # -- reading

    def on_readable(self) -> None:
        try:
            data = self.raw.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost()
            return
        if not data:
            self._lost()
            return
        if self.state == _OPEN:  # a closing socket's frames are not read any more
            self._feed(data)

    def _feed(self, data: bytes) -> None:
        buf = self.inbuf + data if self.inbuf else data
        end, pos = len(buf), 0
        while end - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length, at = second & 0x7F, pos + 2
            if length == 126:
                if end - at < 2:
                    break
                length, at = int.from_bytes(buf[at:at + 2], "big"), at + 2
            elif length == 127:
                if end - at < 8:
                    break
                length, at = int.from_bytes(buf[at:at + 8], "big"), at + 8
            if not second & 0x80:
                return self._fail(1002, "a client must mask its frames")
            if length > self.limit:
                return self._fail(1009, f"a frame of {length} bytes (at most {self.limit})")
            if end - at < 4 + length:
                break
            payload = unmask(buf[at + 4:at + 4 + length], buf[at:at + 4])
            pos = at + 4 + length
            self._frame(first, payload)
            if self.state != _OPEN:
                return
        self.inbuf = buf[pos:] if pos < end else b""

    def _frame(self, first: int, payload: bytes) -> None:
        fin, rsv, opcode = first & 0x80, first & 0x70, first & 0x0F
        if opcode & 0x8:
            if not fin or rsv or len(payload) > 125:
                return self._fail(1002, "a malformed control frame")
            if opcode == 0x8:
                # Echo the status (RFC 6455 5.5.1; a 1-byte body has none), then close.
                self.write(frame(0x88, payload[:2] if len(payload) >= 2 else b""))
                return self._lost()
            if opcode == 0x9:
                return self.write(frame(0x8A, payload))
            if opcode == 0xA:
                return None
            return self._fail(1002, f"unknown opcode {opcode}")
        compressed = bool(rsv & 0x40)
        if rsv & 0x30 or (compressed and (not self.inflate or opcode == 0)):
            return self._fail(1002, "reserved bits set")
        if opcode == 0:
            fragments = self.fragments
            if fragments is None:
                return self._fail(1002, "a continuation frame outside a message")
            fragments[2] += len(payload)
            if fragments[2] > self.limit:
                return self._fail(1009, f"a message over {self.limit} bytes")
            fragments[3].append(payload)
            if fin:
                self.fragments = None
                self._message(fragments[0], fragments[1], b"".join(fragments[3]))
            return None
        if opcode not in (0x1, 0x2):
            return self._fail(1002, f"unknown opcode {opcode}")
        if self.fragments is not None:
            return self._fail(1002, "a new message inside a fragmented one")
        if fin:
            return self._message(opcode, compressed, payload)
        self.fragments = [opcode, compressed, len(payload), [payload]]
        return None

    def _message(self, opcode: int, compressed: bool, payload: bytes) -> None:
        if compressed:
            inflater = zlib.decompressobj(-DEFLATE_MAX_WBITS)  # fresh: client_no_context_takeover
            try:
                payload = inflater.decompress(payload + _DEFLATE_TAIL, self.limit + 1)
            except zlib.error:
                return self._fail(1007, "invalid compressed data")
            if len(payload) > self.limit or inflater.unconsumed_tail:
                return self._fail(1009, f"a message over {self.limit} bytes")
        if opcode == 0x1:
            try:
                message: str | bytes = payload.decode("utf-8")
            except UnicodeDecodeError:
                return self._fail(1007, "text that is not UTF-8")
        else:
            message = payload
        try:
            pkt = self.owner._packet.Packet(encoded_packet=message)
        except (ValueError, TypeError, IndexError, KeyError):
            return self._fail(1002, "not an Engine.IO packet")
        if pkt.packet_type == self.owner._pong and not self.inbox:
            try:
                self.eio_socket.receive(pkt)  # schedules the next ping (PingSweep): never waits
            except Exception:
                log.exception("websocket %s: receive error", self.sid)
                self._lost()
            return None
        self._enqueue(pkt)
        return None

    def _fail(self, code: int, reason: str) -> None:
        log.info("websocket %s: %s; closing it (%d)", self.sid, reason, code)
        self.write(close_frame(code))
        self._lost()

    # -- handing packets to Engine.IO, in order, off the loop's green thread

    def _enqueue(self, item) -> None:
        if self.inbox is None:
            self.inbox = deque()
        self.inbox.append(item)
        if not self.processing:
            self.processing = True
            concurrency.spawn(self._process)
            if self.state == _OPEN:
                # No more reading until Engine.IO has had these (what is parsed from this read at
                # most): a client cannot queue work faster than it is done, as with Engine.IO's own
                # read loop, which handles each packet before it reads the next.
                self.owner._loop.watch(self)

    def _process(self) -> None:
        inbox = self.inbox
        try:
            while inbox:
                item = inbox.popleft()
                if item is _LOST:
                    inbox.clear()
                    self._engineio_close()
                    return
                try:
                    self.eio_socket.receive(item)
                except self.owner._unknown_packet:
                    pass
                except self.owner._socket_closed:
                    log.info("websocket %s: receive error -- socket is closed", self.sid)
                    self._lost()
                except Exception:
                    log.exception("websocket %s: unknown receive error", self.sid)
                    self._lost()
        finally:
            self.processing = False
            if not inbox and self.inbox is inbox:
                self.inbox = None
            if self.state == _OPEN:
                self.owner._loop.watch(self)  # reading again

    def _engineio_close(self) -> None:
        sock = self.eio_socket
        try:
            if not sock.closed:
                sock.close(wait=False, abort=True, reason=self.owner._reason_close)
        except Exception:
            log.exception("websocket %s: closing its Engine.IO session", self.sid)
        self._drop_closed_session()


_PING_FRAMES = SharedFrames("2")  # Engine.IO's ping, the same frame for every socket


class _OwnedQueue:
    """Stands for an owned Engine.IO socket's queue: what Engine.IO puts there is written at once."""

    __slots__ = ("_conn",)

    def __init__(self, conn: OwnedWebsocket):
        self._conn = conn

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # Socket.close(): the writer would send what is queued, then close
            self._conn.shutdown()
        else:
            self._conn.send_packet(item)

    def put_nowait(self, item) -> None:
        self.put(item)

    def get(self, block: bool = True, timeout: float | None = None):
        raise self._conn.owner._queue_empty()

    def get_nowait(self):
        raise self._conn.owner._queue_empty()

    def empty(self) -> bool:
        return True

    def qsize(self) -> int:
        return 0

    def task_done(self) -> None:
        pass

    def join(self) -> None:
        pass  # nothing waits: every packet went to the kernel or to the socket's pending frames


class _Loop:
    """One green thread waiting on one epoll descriptor for every owned websocket."""

    def __init__(self, epoll):
        self._epoll = epoll
        self._conns: dict[int, OwnedWebsocket] = {}
        self._task = None

    def add(self, conn: OwnedWebsocket) -> None:
        self._epoll.register(conn.fd, concurrency.EPOLLIN)
        self._conns[conn.fd] = conn
        if self._task is None:
            self._task = concurrency.spawn(self._run)

    def watch(self, conn: OwnedWebsocket) -> None:
        """Wait for what the socket needs: input unless its packets are being handled, room to write
        while it has frames pending."""
        if self._conns.get(conn.fd) is conn:
            self._epoll.modify(conn.fd, (0 if conn.processing else concurrency.EPOLLIN)
                               | (concurrency.EPOLLOUT if conn.pending else 0))

    def remove(self, conn: OwnedWebsocket) -> None:
        if self._conns.get(conn.fd) is conn:
            del self._conns[conn.fd]
            try:
                self._epoll.unregister(conn.fd)
            except (OSError, ValueError):
                pass

    def _run(self) -> None:
        while True:
            try:
                self._turn()
            except Exception:  # the loop must outlive any one surprise, or every socket goes deaf
                log.exception("websocket loop: unexpected error")
                concurrency.sleep(0.1)

    def _turn(self) -> None:
        epoll, conns, writable = self._epoll, self._conns, concurrency.EPOLLOUT
        concurrency.wait_readable(epoll.fileno())
        try:
            ready = epoll.poll(0, 1024)
        except InterruptedError:
            return
        for fd, events in ready:
            conn = conns.get(fd)
            if conn is None:
                continue
            try:
                if events & writable:
                    conn.on_writable()
                if events & ~writable and conn.state != _CLOSED:
                    conn.on_readable()
            except Exception:
                log.exception("websocket %s: unexpected error; closing it", conn.sid)
                conn._lost()


class PingSweep:
    """Engine.IO's per-socket ping task (Socket._send_ping: sleep ping_interval, then unless the socket
    is closing set last_ping and send a PING) as entries of one heap, served by one green thread."""

    def __init__(self, packet_module):
        self._packet = packet_module
        self._heap: list[tuple[float, int, Any]] = []
        self._order = itertools.count()
        self._wake = concurrency.Event()
        self._task = None

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, sock) -> None:
        heapq.heappush(self._heap, (time.monotonic() + sock.server.ping_interval, next(self._order), sock))
        if self._task is None:
            self._task = concurrency.spawn(self._run)
        elif self._heap[0][2] is sock:
            self._wake.set()  # sooner than what the sweep sleeps for

    def _run(self) -> None:
        heap = self._heap
        while True:
            self._wake.clear()
            if not heap:
                self._wake.wait()
                continue
            delay = heap[0][0] - time.monotonic()
            if delay > 0:
                self._wake.wait(delay)
                continue
            sent = 0
            while heap and heap[0][0] <= time.monotonic():
                self._ping(heapq.heappop(heap)[2])
                sent += 1
                if sent % PINGS_BEFORE_YIELD == 0:
                    concurrency.sleep(0)

    def _ping(self, sock) -> None:
        try:
            if not sock.closing and not sock.closed:
                sock.last_ping = time.time()
                sock.send(self._packet.Packet(self._packet.PING))
        except Exception:
            log.exception("Engine.IO socket %s: sending its ping", getattr(sock, "sid", "?"))


def _slim_environ(environ: dict[str, Any]) -> dict[str, Any]:
    """The environ python-socketio keeps for a session, without what holds the request's connection."""
    slim = {key: value for key, value in environ.items() if key not in _ENVIRON_DROPPED}
    slim["wsgi.input"] = _NO_BODY
    return slim


def _without_context_takeover(offer: str) -> str:
    """Add server_ and client_no_context_takeover to each permessage-deflate offer that lacks them.

    RFC 7692 7.1.1: a server may answer with either though the client did not offer it. One
    compressed frame then serves every deflate socket, and no socket keeps a (de)compressor.
    """
    parts = []
    for extension in offer.split(","):
        params = [p.strip() for p in extension.split(";")]
        if params[0].lower() == "permessage-deflate":
            present = {p.split("=")[0].strip().lower() for p in params[1:]}
            params += [name for name in ("server_no_context_takeover", "client_no_context_takeover")
                       if name not in present]
        parts.append("; ".join(params))
    return ", ".join(parts)
