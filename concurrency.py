"""The async primitives (eventlet) behind one small seam: spawn, sleep, run in a real thread,
Lock, Event, and the probe for a client that hung up.

Every other module but server.py (the HTTP server's lifecycle) goes through these; none imports
eventlet. Moving to gevent or threading mode later is a change here, in server.py and in
ASYNC_MODE only. This module imports nothing of the web layer.
"""
from __future__ import annotations

import time
from typing import Any, Callable, TypeVar

import eventlet
import eventlet.event
import eventlet.tpool
from eventlet.semaphore import Semaphore

ASYNC_MODE = "eventlet"
T = TypeVar("T")

# time.sleep is green after monkey_patch(); this one blocks the OS thread, like a C call does.
blocking_sleep = eventlet.patcher.original("time").sleep
_os_select = eventlet.patcher.original("select")


def readable_now(fileno: int) -> bool:
    """Return whether a descriptor has data or end-of-stream waiting, asking the OS without waiting.

    The green select() answers even a zero timeout through the hub (a timer armed and cancelled,
    a switch away and back); this is one poll(2) call.
    """
    poller = _os_select.poll()
    poller.register(fileno, _os_select.POLLIN)
    return bool(poller.poll(0))


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
