"""The HTTP server's lifecycle: listen, the protocol and its own refusals, the request pool,
signals and the graceful stop. app.main() hands it a built app; everything green goes through
concurrency.py except what eventlet's WSGI server itself needs, which lives here.
"""
from __future__ import annotations

import errno
import functools
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Callable, Iterable

import eventlet
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


class _RequestPool(eventlet.GreenPool):
    """The server's pool of request green threads; on stop, waits a grace period, then ends them."""

    def __init__(self, size: int, grace_s: float):
        super().__init__(size)
        self.grace_s = grace_s

    def waitall(self) -> None:
        # eventlet.wsgi.server calls this once it stops accepting; unbounded, one streamed
        # response or slow upstream call would keep the process alive indefinitely.
        with eventlet.Timeout(self.grace_s, False):
            super().waitall()
        for thread in list(self.coroutines_running):
            thread.kill()


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


class _JsonErrorProtocol(eventlet.wsgi.HttpProtocol):
    """eventlet's HTTP/1.1 protocol, answering the requests it refuses itself in the JSON error shape
    (and telling Werkzeug that a chunked body is safe to read).

    Left alone it sends an HTML page for a malformed request line (http.server's send_error) and
    bare, header-less 414/400 responses for an over-long URL or header, or a bad Content-Length.
    """

    # Set by serve(): the headers every response carries (security.SECURITY_HEADERS).
    refusal_headers: tuple[tuple[str, str], ...] = ()

    def _refuse(self, code: int, reason: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        head = [f"HTTP/1.1 {code} {reason}", "Connection: close", "Content-Type: application/json",
                f"Content-Length: {len(body)}", *(f"{name}: {value}" for name, value in self.refusal_headers)]
        try:
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            self.wfile.flush()
        except OSError:
            pass  # the client is gone; nothing to tell it
        self.close_connection = 1

    def send_error(self, code, message=None, explain=None):
        """Refuse a request http.server could not parse (bad request line, unsupported version)."""
        reason = self.responses.get(code, ("Error",))[0]
        self._refuse(code, reason, message or reason)

    def _read_request_line(self):
        line = super()._read_request_line()
        if len(line) >= self.server.url_length_limit:
            self._refuse(414, "URI Too Long",
                         f"request line too long (at most {self.server.url_length_limit - 1} bytes)")
            return b""  # eventlet closes a connection whose request line is empty
        return line

    def get_environ(self):
        environ = super().get_environ()
        if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
            # eventlet de-chunks the body and ends the stream where it ends. Saying so lets Werkzeug
            # read it (and apply MAX_CONTENT_LENGTH); otherwise it hands views an empty body, and a
            # chunked JSON request is "not valid JSON".
            environ["wsgi.input_terminated"] = True
        # http.server's `connection` is this request's socket: views ask whether its client left.
        environ[concurrency.CLIENT_GONE_PROBE] = functools.partial(_peer_closed, self.connection)
        return environ

    def parse_request(self):
        try:
            if not super().parse_request():
                return False
        except eventlet.wsgi.HeaderLineTooLong:
            self._refuse(400, "Bad Request", "a request header line is too long")
            return False
        except eventlet.wsgi.HeadersTooLarge:
            self._refuse(400, "Bad Request", "the request headers are too large")
            return False
        length = self.headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                self._refuse(400, "Bad Request", "invalid Content-Length header")
                return False
            if self.headers.get("transfer-encoding") is not None:
                self._refuse(400, "Bad Request", "Content-Length and Transfer-Encoding are not allowed together")
                return False
        return True


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
          refusal_headers: Iterable[tuple[str, str]] = (), stop_grace_s: float = STOP_GRACE_S) -> None:
    """Serve a WSGI app on a bound socket until the main green thread is interrupted."""
    protocol = type("HttpProtocol", (_JsonErrorProtocol,), {"refusal_headers": tuple(refusal_headers)})
    # The pool's size lifts eventlet's default cap of 1,024 concurrent connections.
    eventlet.wsgi.server(listener, app, log_output=log_output,
                         # Flush streamed output at once (eventlet otherwise holds back 4 KiB).
                         minimum_chunk_size=1, custom_pool=_RequestPool(max_connections, stop_grace_s),
                         protocol=protocol)


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
