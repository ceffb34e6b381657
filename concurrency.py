"""The async primitives (eventlet) behind one small seam: spawn, sleep, run in a real thread,
a bounded pool of real threads of its own, Lock, Event, and the probe for a client that hung up.

Every other module but server.py (the HTTP server's lifecycle) goes through these; none imports
eventlet. Moving to gevent or threading mode later is a change here, in server.py and in
ASYNC_MODE only. This module imports nothing of the web layer.
"""
from __future__ import annotations

import ipaddress
import sys
import time
from collections import deque
from typing import Any, Callable, TypeVar

import eventlet
import eventlet.event
import eventlet.greenio
import eventlet.hubs
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


_os_thread = eventlet.patcher.original("_thread")
_blocking_getaddrinfo: Callable[..., list] | None = None  # the C library's, once installed
_hub_thread: int | None = None


def resolve_names_in_threads() -> None:
    """After monkey_patch(): socket.getaddrinfo (what urllib3 and redis-py call for a host name)
    waits greenly for the C library's resolver in a real thread, as a database or NVML call does.

    Instead of eventlet's greendns, which imports dnspython twice over (once as patched copies:
    ~7 MB of an idle server's memory, ~0.3 s of every start) and reads only /etc/hosts and
    resolv.conf; getaddrinfo(3) answers as it does for every other program on the machine
    (nsswitch.conf: systemd-resolved, mDNS). The entry points set EVENTLET_NO_GREENDNS=yes before
    eventlet is imported, so dnspython is never loaded. An IP address is answered at once.
    """
    global _blocking_getaddrinfo, _hub_thread
    import socket  # the module monkey_patch() made green, in place

    _blocking_getaddrinfo = eventlet.patcher.original("socket").getaddrinfo
    _hub_thread = _os_thread.get_ident()
    socket.getaddrinfo = getaddrinfo


def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0) -> list:  # socket.getaddrinfo's signature
    """socket.getaddrinfo, with a host name looked up in a real thread (resolve_names_in_threads)."""
    if _is_address(host) or _os_thread.get_ident() != _hub_thread:  # already in a real thread: block it
        return _blocking_getaddrinfo(host, port, family, type, proto, flags)
    return eventlet.tpool.execute(_blocking_getaddrinfo, host, port, family, type, proto, flags)


def _is_address(host) -> bool:
    if host is None:
        return True
    try:
        ipaddress.ip_address(host.decode("ascii") if isinstance(host, bytes) else host)
    except (ValueError, UnicodeDecodeError):
        return False
    return True


def wait_readable(fileno: int) -> None:
    """Wait, green, until a descriptor is readable (or at end-of-stream)."""
    eventlet.hubs.trampoline(fileno, read=True)


def os_epoll():
    """Return an epoll object of the OS itself (level-triggered), or None where there is none.

    Its descriptor is readable while any registered one is ready: wait_readable() on it waits for
    all of them in one green thread.
    """
    epoll = getattr(_os_select, "epoll", None)
    return epoll() if epoll is not None else None


def os_socket(green_socket):
    """Move a green socket's connection into a plain socket of the OS (non-blocking); return it.

    The green socket is left without a descriptor, so that neither closing it nor collecting it
    closes the connection. For a loop that waits on the descriptor itself (os_epoll()).
    """
    fileno = green_socket.fd.detach()
    plain = eventlet.patcher.original("socket").socket(fileno=fileno)
    plain.setblocking(False)
    return plain


EPOLLIN = getattr(_os_select, "EPOLLIN", 0)
EPOLLOUT = getattr(_os_select, "EPOLLOUT", 0)


def call_later(seconds: float, fn: Callable[..., Any], *args: Any):
    """Run fn(*args) in a green thread of its own after `seconds`; return a handle with cancel()."""
    return eventlet.spawn_after(seconds, fn, *args)


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


class PoolBusyError(Exception):
    """A BoundedThreadPool has as many calls running and waiting as it takes."""


class PoolTimeoutError(Exception):
    """A call to a BoundedThreadPool did not finish within its timeout (it may still run)."""


class BoundedThreadPool:
    """A few real OS threads of their own, for CPU-bound calls (bcrypt) that must not queue in
    front of run_in_thread's (NVML reads): at most `workers` run and `queue_size` wait; beyond
    that, a call is refused at once (PoolBusyError) rather than waiting unboundedly.

    Not concurrent.futures.ThreadPoolExecutor: after monkey_patch() its threads would be green
    ones, running the C call on the hub. The workers are the original threads; a finished call
    wakes the hub as eventlet.tpool does, by a byte on a socket pair that a green thread reads.
    Used from the hub's OS thread only (green threads), like every primitive here.
    """

    def __init__(self, workers: int, queue_size: int, name: str):
        self.workers = workers
        self.queue_size = queue_size
        self.name = name
        self.in_flight = 0  # running or waiting; changed by green threads only
        self._jobs = None
        self._done: deque = deque()  # (event, ok, value) from the workers; deque ops are thread-safe
        self._wake_w = None

    def _start(self) -> None:
        threading = eventlet.patcher.original("threading")
        queue = eventlet.patcher.original("queue")
        socket = eventlet.patcher.original("socket")
        self._jobs = queue.SimpleQueue()
        read_end, self._wake_w = socket.socketpair()
        wake_r = eventlet.greenio.GreenSocket(read_end)
        for number in range(self.workers):
            threading.Thread(target=self._work, name=f"{self.name}-{number}", daemon=True).start()
        eventlet.spawn_n(self._deliver, wake_r)

    def _work(self) -> None:  # in an OS thread
        while True:
            waiter, fn, args = self._jobs.get()
            try:
                self._done.append((waiter, True, fn(*args)))
            except Exception:
                self._done.append((waiter, False, sys.exc_info()[1]))
            self._wake_w.sendall(b" ")

    def _deliver(self, wake_r) -> None:  # a green thread
        while wake_r.recv(4096):
            while self._done:
                waiter, ok, value = self._done.popleft()
                # Counted until it ends, even when its caller stopped waiting (it held a thread).
                self.in_flight -= 1
                (waiter.send if ok else waiter.send_exception)(value)

    def submit_and_wait(self, fn: Callable[..., T], *args: Any, timeout_s: float) -> T:
        """Run fn(*args) in one of the pool's threads; wait greenly for its result (or its exception).

        Raise PoolBusyError at once when the pool is full, PoolTimeoutError after `timeout_s`.
        """
        if self.in_flight >= self.workers + self.queue_size:
            raise PoolBusyError(f"{self.name}: {self.in_flight} calls running or waiting")
        if self._jobs is None:
            self._start()
        waiter = eventlet.event.Event()
        self.in_flight += 1
        self._jobs.put((waiter, fn, args))
        with eventlet.Timeout(timeout_s, PoolTimeoutError(f"{self.name}: no result within {timeout_s:g} s")):
            return waiter.wait()


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


# The key under which the HTTP server offers a websocket upgrade's way out of its green thread:
# `detach(on_stop) -> (socket, release)` (server._JsonErrorProtocol._detach).
DETACH_CONNECTION = "vram_dashboard.detach"


def detach_hook(environ: dict[str, Any]) -> Callable[..., Any] | None:
    """Return the server's detach callable for this request, or None (not our server, not an upgrade)."""
    return environ.get(DETACH_CONNECTION)


def monotonic() -> float:
    return time.monotonic()


def kill(handle) -> None:
    """Stop a green thread started by spawn()."""
    if handle is not None:
        handle.kill()
