"""The async specifics (eventlet) behind one small seam: spawn, sleep, run in a real thread.

Moving to gevent or threading mode later is a change here and in ASYNC_MODE only.
"""
from __future__ import annotations

import socket
import time
from typing import Any, Callable, TypeVar

import eventlet
import eventlet.tpool
import eventlet.wsgi
import greenlet
from eventlet.semaphore import Semaphore

ASYNC_MODE = "eventlet"
T = TypeVar("T")

# time.sleep is green after monkey_patch(); this one blocks the OS thread, like a C call does.
blocking_sleep = eventlet.patcher.original("time").sleep
Lock = Semaphore
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
                         minimum_chunk_size=1, custom_pool=_RequestPool(max_connections, stop_grace_s))
