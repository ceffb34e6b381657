"""The HTTP server's lifecycle: listen, the protocol and its own refusals, the request pool,
signals and the graceful stop. app.main() hands it a built app; everything green goes through
concurrency.py except what eventlet's WSGI server itself needs, which lives here.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import gc
import json
import logging
import os
import re
import resource
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import quote

import eventlet
import eventlet.semaphore
import eventlet.wsgi
import greenlet

import concurrency

log = logging.getLogger("vram_dashboard")

# How long a stopping server lets in-flight requests (a streamed generate, a model load) finish
# before ending them: the contract gives SIGTERM 5 s in all.
STOP_GRACE_S = 2.0
# A second signal this long after the first is a person insisting (a second Ctrl-C): stop now.
# A repeat within it is the same request delivered twice (e.g. to the whole process group).
INSIST_AFTER_S = 1.0
# File descriptors kept free of client connections: the log, NVML, epoll, tpool's pipes, the
# Ollama client's connections and files. A proxied stream holds two descriptors (client, Ollama).
FD_HEADROOM = 128
# accept() failing for want of descriptors or memory: wait (growing to the longest pause) and retry.
_SHORTAGE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() failing for one connection that went away before it was taken: take the next one.
_LOST_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO})
SHORTAGE_PAUSE_S = (0.1, 0.5)
SHORTAGE_QUIET_S = 1.0
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a connection may take to send its request and stay idle, and how many one address holds.

    header_timeout_s: the whole request head (request line and headers), counted from the
        connection's opening, or on a kept-alive connection from the first byte of the request.
    keepalive_timeout_s: the longest wait for the next request on a kept-alive connection.
    body_timeout_s: the longest silence of a socket while a request is served (reading its body,
        or a client that does not read its answer); upgraded websockets are exempt (Socket.IO's
        pings keep them alive, and a quiet dashboard is not a dead one).
    max_per_client: connections one client address may hold; the next is answered 503 and closed.
    """

    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 75.0
    body_timeout_s: float = 30.0
    max_per_client: int = 256


class _RequestHeadTimeout(Exception):
    """The request head did not arrive within ConnectionLimits.header_timeout_s."""


class _RequestPool(eventlet.GreenPool):
    """The server's pool of request green threads; on stop, waits a grace period, then ends them.

    Its size counts connections, not only green threads: an upgraded websocket handed to its owner
    (`_JsonErrorProtocol._detach`, sockets/owner.py) keeps the slot its request took, though its green
    thread has ended, so the descriptors the cap protects stay bounded; the accept loop waits in
    spawn() while every slot is taken.
    """

    def __init__(self, size: int, grace_s: float):
        super().__init__(size)
        self.grace_s = grace_s
        self._slots = eventlet.semaphore.Semaphore(size)
        self._kept: set = set()  # request green threads whose slot their detached connection keeps
        self._detached: set[_KeptSlot] = set()

    def spawn(self, function, *args, **kwargs):
        self._slots.acquire()
        try:
            thread = super().spawn(function, *args, **kwargs)
        except BaseException:
            self._slots.release()
            raise
        thread.link(self._thread_done)
        return thread

    def _thread_done(self, thread) -> None:
        if thread in self._kept:
            self._kept.discard(thread)
        else:
            self._slots.release()

    def keep_slot(self, on_stop: Callable[[], None], counts: dict[str, int], address: str) -> "_KeptSlot":
        """Keep the calling request's slot, and its address's count, once its green thread ends.

        `on_stop` ends the connection when the server stops (as eventlet shuts down idle ones);
        the returned slot's release() gives both back.
        """
        current = greenlet.getcurrent()
        if current not in self.coroutines_running:
            raise RuntimeError("keep_slot() is for the pool's own request green threads")
        self._kept.add(current)
        kept = _KeptSlot(self, counts, address, on_stop)
        self._detached.add(kept)
        return kept

    def waitall(self) -> None:
        # eventlet.wsgi.server calls this once it stops accepting, after shutting down its idle
        # connections; the detached websockets are ended the same way.
        for kept in list(self._detached):
            try:
                kept.on_stop()
            except Exception:  # one connection's failure must not keep the others open
                log.exception("ending a detached connection at stop")
        # Unbounded, one streamed response or slow upstream call would keep the process alive
        # indefinitely.
        with eventlet.Timeout(self.grace_s, False):
            super().waitall()
        for thread in list(self.coroutines_running):
            thread.kill()


class _KeptSlot:
    """A detached connection's slot in the pool and count for its address; release() gives both back."""

    __slots__ = ("_pool", "_counts", "_address", "on_stop")

    def __init__(self, pool: _RequestPool, counts: dict[str, int], address: str, on_stop: Callable[[], None]):
        self._pool: _RequestPool | None = pool
        self._counts = counts
        self._address = address
        self.on_stop = on_stop

    def release(self) -> None:
        """The connection closed (once; a second call does nothing)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool._detached.discard(self)
        pool._slots.release()
        _count_closed(self._counts, self._address)


class _HandedOver:
    """Stands where eventlet's server keeps a connection's socket once the socket has a new owner:
    what the server does to it when the request's green thread ends (shut down, close) is a no-op."""

    def shutdown(self, how: int = socket.SHUT_RDWR) -> None:
        pass

    def close(self) -> None:
        pass


_HANDED_OVER = _HandedOver()


def _peer_closed(sock: socket.socket) -> bool:
    """Return whether the peer has closed `sock` (end-of-stream or reset), without waiting or reading."""
    # eventlet's GreenSocket answers a would-block receive by waiting, MSG_DONTWAIT or not; set
    # non-blocking through the socket API it passes the receive straight through.
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False  # nothing sent, still open
    except OSError:
        return True   # reset, or closed under us
    finally:
        sock.settimeout(timeout)


class _PatientListener:
    """The listening socket, whose accept() waits out a shortage of file descriptors.

    eventlet.wsgi.server lets any accept() error but a few leave its loop: EMFILE with every
    descriptor in use would end the process. Here the connection waits in the kernel's backlog
    until a descriptor is free. The shortage is logged once per episode: one that ends when
    accept() has gone `quiet_s` without failing (a descriptor freed now and then does not end it).
    """

    def __init__(self, sock: socket.socket, pause_s: tuple[float, float] = SHORTAGE_PAUSE_S,
                 quiet_s: float = SHORTAGE_QUIET_S):
        self._sock = sock
        self._pause_s = pause_s
        self._quiet_s = quiet_s
        self.short_since: float | None = None  # when the current episode began
        self._last_failure = 0.0

    def accept(self):
        pause, longest = self._pause_s
        while True:
            try:
                connection = self._sock.accept()
            except OSError as exc:
                if exc.errno in _LOST_ERRNOS:
                    continue
                if exc.errno not in _SHORTAGE_ERRNOS:
                    raise
                self._last_failure = time.monotonic()
                if self.short_since is None:
                    self.short_since = self._last_failure
                    log.error("cannot accept connections: %s; new connections wait until one closes "
                              "(raise LimitNOFILE / ulimit -n, or lower DASHBOARD_MAX_CONNECTIONS)",
                              os.strerror(exc.errno))
                concurrency.sleep(pause)
                pause = min(pause * 2, longest)
                continue
            now = time.monotonic()
            if self.short_since is not None and now - self._last_failure >= self._quiet_s:
                log.warning("accepting connections again after %.1f s", self._last_failure - self.short_since)
                self.short_since = None
            return connection

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Linux refuses an infinite soft limit (fs.nr_open caps it); 2**20 is its default there.
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def release_startup_memory() -> bool:
    """Give the heap pages that start-up used and freed back to the OS; False where that cannot be done.

    Building the app (the settings' and the API's pydantic schemas, the migrations, the OpenAPI
    document) allocates far more than it keeps, and glibc's malloc holds the freed pages. Its
    `malloc_trim(0)` returns them (~0.7 MB of an idle server's ~80 MB). Probed by name among the
    process's own symbols: a libc without it (musl, macOS) is left as it is.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return False
    gc.collect()
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def connection_cap(max_connections: int, fd_limit: int) -> int:
    """Return how many connections fit in `fd_limit` descriptors, at most `max_connections`."""
    if fd_limit == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, (fd_limit - FD_HEADROOM) // 2))


def _redact_query(target: str) -> str:
    """Return a request target for the access log: the path, and query parameters without values.

    >>> _redact_query("/ollama/api/tags?token=s3cret&x")
    '/ollama/api/tags?token=…&x=…'
    """
    path, sep, query = target.partition("?")
    if not sep:
        return target
    names = [quote(part.partition("=")[0], safe="%") for part in query.split("&") if part]
    return path + "?" + "&".join(f"{name}=…" for name in names)


class _JsonErrorProtocol(eventlet.wsgi.HttpProtocol):
    """eventlet's HTTP/1.1 protocol, answering the requests it refuses itself in the JSON error shape
    (and telling Werkzeug that a chunked body is safe to read).

    Left alone it sends an HTML page for a malformed request line (http.server's send_error) and
    bare, header-less 414/400 responses for an over-long URL or header, or a bad Content-Length.
    """

    # Set by serve(): the headers every response carries (security.SECURITY_HEADERS), the limits,
    # and the count of open connections per client address (shared by the server's connections).
    refusal_headers: tuple[tuple[str, str], ...] = ()
    limits: ConnectionLimits = ConnectionLimits()
    connections_per_client: dict[str, int] = {}
    pool: "_RequestPool | None" = None

    _head_deadline: "eventlet.Timeout | None" = None
    _requests_started = 0
    _detached = False

    def _refuse(self, code: int, reason: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        body = json.dumps({"error": message}).encode()
        head = [f"HTTP/1.1 {code} {reason}", "Connection: close", "Content-Type: application/json",
                f"Content-Length: {len(body)}", *(f"{name}: {value}" for name, value in self.refusal_headers),
                *(f"{name}: {value}" for name, value in headers)]
        try:
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            self.wfile.flush()
        except OSError:
            pass  # the client is gone; nothing to tell it
        self.close_connection = 1

    def _bad_request(self, message: str) -> bool:
        self._refuse(400, "Bad Request", message)
        return False

    def handle(self):
        """Serve the connection's requests, unless its address already holds its share of the pool."""
        address = self._address()
        counts = self.connections_per_client
        if counts.get(address, 0) >= self.limits.max_per_client:
            self._refuse(503, "Service Unavailable",
                         f"too many connections from this address (at most {self.limits.max_per_client})",
                         [("Retry-After", "1")])
            return
        counts[address] = counts.get(address, 0) + 1
        try:
            super().handle()
        finally:
            if not self._detached:  # a detached connection counts until its owner closes it
                self._count_closed(address)

    def _address(self) -> str:
        return self.client_address[0] if isinstance(self.client_address, tuple) else str(self.client_address)

    def _count_closed(self, address: str) -> None:
        _count_closed(self.connections_per_client, address)

    def _detach(self, on_stop: Callable[[], None]) -> tuple[socket.socket, Callable[[], None]]:
        """Hand this connection (an upgraded websocket) to a new owner; return its socket and `release`.

        The request's green thread then ends without shutting the connection down or closing it; the
        owner closes the socket and calls `release()`, until when the connection still counts against
        the pool and its address. `on_stop` ends it when the server stops. Offered to the app as
        environ[concurrency.DETACH_CONNECTION] on websocket upgrades only (see get_environ).
        """
        self._detached = True
        # eventlet's server shuts down and closes what this entry holds when the green thread ends.
        self.conn_state[1] = _HANDED_OVER
        # `release` must not hold this protocol object (its parsed headers, environ and files).
        kept = self.pool.keep_slot(on_stop, self.connections_per_client, self._address())
        return self.connection, kept.release

    def finish(self):
        if not self._detached:
            return super().finish()
        # Only the buffered files go (and their buffers with them); the socket is the owner's now.
        for stream in (self.wfile, self.rfile):
            try:
                stream.close()
            except OSError:
                pass
        return None

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except _RequestHeadTimeout:
            self._refuse(408, "Request Timeout",
                         f"the request head did not arrive within {self.limits.header_timeout_s:g} s")
        finally:
            self._end_head_deadline()

    def _end_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def send_error(self, code, message=None, explain=None):
        """Refuse a request http.server could not parse (bad request line, unsupported version)."""
        reason = self.responses.get(code, ("Error",))[0]
        self._refuse(code, reason, message or reason)

    def _read_request_line(self):
        if self._requests_started and not self.rfile.closed:
            # Between two requests of a kept-alive connection: wait for the next one's first byte.
            self.connection.settimeout(self.limits.keepalive_timeout_s)
            try:
                if not self.rfile.peek(1):
                    return b""  # the client closed the connection
            except OSError:  # the idle timeout, or a reset
                return b""
        self._requests_started += 1
        # The whole head from here (from the connection's opening, for its first request): a client
        # that sends it a byte at a time (slowloris), or never finishes it (a TLS ClientHello on
        # this plain-HTTP port), does not keep the connection.
        self._head_deadline = eventlet.Timeout(self.limits.header_timeout_s, _RequestHeadTimeout())
        self.connection.settimeout(None)
        line = super()._read_request_line()
        if len(line) >= self.server.url_length_limit:
            self._refuse(414, "URI Too Long",
                         f"request line too long (at most {self.server.url_length_limit - 1} bytes)")
            return b""  # eventlet closes a connection whose request line is empty
        return line

    def get_environ(self):
        # The head is complete: from here the app reads the body (if any) and answers.
        self._end_head_deadline()
        environ = super().get_environ()
        if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
            # eventlet de-chunks the body and ends the stream where it ends. Saying so lets Werkzeug
            # read it (and apply MAX_CONTENT_LENGTH); otherwise it hands views an empty body, and a
            # chunked JSON request is "not valid JSON".
            environ["wsgi.input_terminated"] = True
        # http.server's `connection` is this request's socket: views ask whether its client left.
        environ[concurrency.CLIENT_GONE_PROBE] = functools.partial(_peer_closed, self.connection)
        upgrade = environ.get("HTTP_UPGRADE", "").lower() == "websocket"
        if upgrade and self.pool is not None and isinstance(self.conn_state, list) and \
                len(self.conn_state) == 3 and self.conn_state[1] is self.connection:
            # Once upgraded, the websocket may leave this green thread for one loop that owns them
            # all (sockets/owner.py); only where eventlet's per-connection entry has the expected shape.
            environ[concurrency.DETACH_CONNECTION] = self._detach
        # A socket silent this long while the request is served (an unfinished body, a client that
        # stopped reading) ends the connection; a websocket lives on Socket.IO's own pings.
        self.connection.settimeout(None if upgrade else self.limits.body_timeout_s)
        return environ

    def parse_request(self):
        try:
            if not super().parse_request():
                return False
        except eventlet.wsgi.HeaderLineTooLong:
            return self._bad_request("a request header line is too long")
        except eventlet.wsgi.HeadersTooLarge:
            return self._bad_request("the request headers are too large")
        return self._check_framing()

    def _check_framing(self) -> bool:
        """Refuse what two HTTP parsers could read differently (request smuggling): one reading only."""
        words = self.requestline.split()
        target = words[1] if len(words) >= 2 else ""
        if not target.startswith("/"):
            # Absolute-form (`GET http://host/x`) is for proxies; `*` is for OPTIONS of a proxy too.
            return self._bad_request("the request target must be a path starting with /")
        if target.startswith("//"):
            # No route starts with an empty segment, but http.server and then Werkzeug both
            # collapse leading slashes, so `//api/x` would be served as `/api/x`: answer what it is.
            self._refuse(404, "Not Found", "not found")
            return False
        headers = self.headers
        if headers.defects or any("\n" in value or "\r" in value for value in headers.values()):
            # A line folded onto the previous one (obs-fold), or one that is not `name: value`.
            return self._bad_request("malformed request headers (folded or not name: value)")
        lengths = headers.get_all("content-length") or []
        encodings = headers.get_all("transfer-encoding") or []
        if len(lengths) > 1:
            return self._bad_request("more than one Content-Length header")
        if lengths and not _CONTENT_LENGTH.fullmatch(lengths[0].strip()):
            return self._bad_request("invalid Content-Length header")
        if encodings:
            if lengths:
                return self._bad_request("Content-Length and Transfer-Encoding are not allowed together")
            if len(encodings) > 1 or encodings[0].strip().lower() != "chunked":
                return self._bad_request("Transfer-Encoding must be exactly chunked")
        # The access log (DEBUG) shows the path and the names of query parameters, never their
        # values: a token in the query string (?token=) stays out of the log.
        self.requestline = " ".join([words[0], _redact_query(target), *words[2:]])
        return True


def _count_closed(counts: dict[str, int], address: str) -> None:
    counts[address] -= 1
    if not counts[address]:
        del counts[address]


def listen(host: str, port: int) -> socket.socket:
    """Bind the listening socket: one server per port (no SO_REUSEPORT), TCP_NODELAY inherited."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    # eventlet.listen sets SO_REUSEPORT by default: a second server on the same port would start
    # and silently take half the connections (and count its failed logins apart).
    listener = eventlet.listen(address, family, reuse_port=False)
    # Accepted sockets inherit this: without it, small streamed writes (proxied tokens, NDJSON
    # progress) wait up to 40 ms for the client's delayed ACK (Nagle's algorithm).
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listener


def serve(listener: socket.socket, app: Callable, *, log_output: bool, max_connections: int,
          refusal_headers: Iterable[tuple[str, str]] = (), limits: ConnectionLimits = ConnectionLimits(),
          stop_grace_s: float = STOP_GRACE_S) -> None:
    """Serve a WSGI app on a bound socket until the main green thread is interrupted."""
    # The pool's size lifts eventlet's default cap of 1,024 concurrent connections.
    pool = _RequestPool(max_connections, stop_grace_s)
    protocol = type("HttpProtocol", (_JsonErrorProtocol,), {
        "refusal_headers": tuple(refusal_headers), "limits": limits, "connections_per_client": {},
        "pool": pool})
    eventlet.wsgi.server(_PatientListener(listener), app, log_output=log_output,
                         # Flush streamed output at once (eventlet otherwise holds back 4 KiB).
                         minimum_chunk_size=1, custom_pool=pool, protocol=protocol,
                         # Header names go out as the app wrote them (Flask's, ours and Ollama's are
                         # already canonical; HTTP names are case-insensitive): eventlet's re-casing
                         # costs ~0.6 µs a header on every response, and turned ETag into Etag.
                         capitalize_response_headers=False)


class Lifecycle:
    """Start-up and stop of `python app.py`: signals at any moment end it cleanly with exit 0.

    Until the server loop runs, a signal only records the request: each start-up step checks it,
    so a SIGTERM during start-up is never a traceback raised in whatever code was running. Once
    serving, it spawns the graceful stop (signal handlers may not do green I/O; a green thread can).
    """

    def __init__(self):
        self.stop_requested = False
        self._first_signal_at: float | None = None
        self._serving = False
        self._stopping = False
        self._on_stop: Callable[[], None] = lambda: None
        self._main = greenlet.getcurrent()  # where the server loop runs

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        now = time.monotonic()
        if self._first_signal_at is None:
            self._first_signal_at = now
            self.stop_requested = True
            if self._serving:
                concurrency.spawn(self._graceful_stop)
        elif now - self._first_signal_at > INSIST_AFTER_S:
            os._exit(1)

    def _graceful_stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._on_stop()  # e.g. "interrupted" events go out before connections close
        # eventlet.kill also reschedules the caller, so it ends normally instead of being left
        # suspended (a suspended green thread is torn down at exit, with a traceback).
        eventlet.kill(self._main, KeyboardInterrupt)

    def _now_serving(self) -> None:
        self._serving = True
        if self.stop_requested:
            self._graceful_stop()

    def run(self, listener: socket.socket, app: Callable, *, on_stop: Callable[[], None],
            **serve_options) -> None:
        """Serve until a signal: `on_stop` runs first while connections are still open."""
        self._on_stop = on_stop
        # Runs as soon as the server loop waits for its first connection.
        concurrency.spawn(self._now_serving)
        try:
            serve(listener, app, **serve_options)
        except KeyboardInterrupt:
            pass


def describe_listen_error(exc: OSError) -> str:
    """Return the reason a bind failed, as a person would say it."""
    if exc.errno == errno.EADDRINUSE:
        return "the address is already in use (is another server running on this port?)"
    if exc.errno == errno.EACCES:
        return "permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return "this machine has no such address"
    return exc.strerror or str(exc)


def exit_now(code: int) -> None:
    """End the process at once (flushing logs and output) without joining blocked OS threads."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
