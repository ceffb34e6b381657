"""The async specifics (eventlet) behind one small seam: spawn, sleep, run in a real thread.

Moving to gevent or threading mode later is a change here and in ASYNC_MODE only.
"""
from __future__ import annotations

import functools
import json
import socket
import time
from typing import Any, Callable, TypeVar

import eventlet
import eventlet.event
import eventlet.tpool
import eventlet.wsgi
import greenlet
from eventlet.semaphore import Semaphore

from security import SECURITY_HEADERS

ASYNC_MODE = "eventlet"
T = TypeVar("T")

# time.sleep is green after monkey_patch(); this one blocks the OS thread, like a C call does.
blocking_sleep = eventlet.patcher.original("time").sleep
# The main green thread of the main OS thread: where `socketio.run` serves.
_MAIN = greenlet.getcurrent()


def os_lock():
    """Return a lock that makes OS threads (tpool workers) wait, even after monkey_patch()."""
    # A green lock cannot block one real thread on behalf of another.
    return eventlet.patcher.original("_thread").allocate_lock()


def spawn(fn: Callable[..., Any], *args: Any, **kwargs: Any):
    """Start fn in a green thread; return a handle with kill() and wait()."""
    return eventlet.spawn(fn, *args, **kwargs)


def sleep(seconds: float) -> None:
    """Yield to other green threads for `seconds`."""
    eventlet.sleep(seconds)


def run_in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking call (a C library, bcrypt) in a real OS thread without stalling the hub."""
    return eventlet.tpool.execute(fn, *args, **kwargs)


def interrupt_main() -> None:
    """Raise KeyboardInterrupt in the main green thread, which ends the server loop."""
    # eventlet.kill also reschedules the caller, so it ends normally instead of being left
    # suspended (a suspended green thread is torn down at exit, with a traceback).
    eventlet.kill(_MAIN, KeyboardInterrupt)


class Lock:
    """A mutual-exclusion lock between green threads (`with lock:`), also with a timeout."""

    def __init__(self):
        self._semaphore = Semaphore(1)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        return self._semaphore.acquire(blocking, timeout)

    def release(self) -> None:
        self._semaphore.release()

    def __enter__(self) -> "Lock":
        self._semaphore.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self._semaphore.release()


class Event:
    """A flag green threads wait for: set() wakes every waiter; clear() lowers it again.

    For green threads of the hub's OS thread only (not tpool workers), like every primitive here.
    """

    def __init__(self):
        self._flag = False
        self._waiters: list[eventlet.event.Event] = []

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        self._flag = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.send(True)

    def clear(self) -> None:
        self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the flag is set (or `timeout` seconds pass); return whether it is set."""
        if self._flag:
            return True
        waiter = eventlet.event.Event()
        self._waiters.append(waiter)
        try:
            waiter.wait(timeout)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return self._flag


# The key under which the HTTP server puts a probe for "has this request's client hung up?".
CLIENT_GONE_PROBE = "vram_dashboard.client_gone"


def client_gone_probe(environ: dict[str, Any]) -> Callable[[], bool] | None:
    """Return a callable that tells whether the request's client has closed its connection.

    None when the request did not come through the dashboard's HTTP server (Flask's test client).
    """
    return environ.get(CLIENT_GONE_PROBE)


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


def monotonic() -> float:
    return time.monotonic()


def kill(handle) -> None:
    """Stop a green thread started by spawn()."""
    if handle is not None:
        handle.kill()


# How long a stopping server lets in-flight requests (a streamed generate, a model load) finish
# before ending them: the contract gives SIGTERM 5 s in all.
STOP_GRACE_S = 2.0


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




# The HTTP server answers these refusals itself, before any app code runs, so it adds the
# security headers itself too.
class _JsonErrorProtocol(eventlet.wsgi.HttpProtocol):
    """eventlet's HTTP/1.1 protocol, answering the requests it refuses itself in the JSON error shape
    (and telling Werkzeug that a chunked body is safe to read).

    Left alone it sends an HTML page for a malformed request line (http.server's send_error) and
    bare, header-less 414/400 responses for an over-long URL or header, or a bad Content-Length.
    """

    def _refuse(self, code: int, reason: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        head = [f"HTTP/1.1 {code} {reason}", "Connection: close", "Content-Type: application/json",
                f"Content-Length: {len(body)}", *(f"{name}: {value}" for name, value in SECURITY_HEADERS)]
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
        environ[CLIENT_GONE_PROBE] = functools.partial(_peer_closed, self.connection)
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


def serve(app: Callable, host: str, port: int, *, log_output: bool, max_connections: int,
          stop_grace_s: float = STOP_GRACE_S) -> None:
    """Serve a WSGI app until interrupted: what socketio.run does under eventlet, plus TCP_NODELAY."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = eventlet.listen(address, family)
    # Accepted sockets inherit this: without it, small streamed writes (proxied tokens, NDJSON
    # progress) wait up to 40 ms for the client's delayed ACK (Nagle's algorithm).
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # The pool's size lifts eventlet's default cap of 1,024 concurrent connections.
    eventlet.wsgi.server(listener, app, log_output=log_output,
                         # Flush streamed output at once (eventlet otherwise holds back 4 KiB).
                         minimum_chunk_size=1, custom_pool=_RequestPool(max_connections, stop_grace_s),
                         protocol=_JsonErrorProtocol)
