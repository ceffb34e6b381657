"""The one owner of this process's connection to REDIS_URL: timeouts, key names, outages logged once.

Everything that talks to Redis (the Socket.IO queue, the ended-credentials channel, the fleet
registry, the login throttle, download ownership) goes through a `RedisLink`. When Redis goes
away the server keeps serving its own clients: `call()` answers a default instead of raising,
the loss is logged once, and the next attempts are spaced by a back-off (0.5 s doubling to
5 s) so a dead Redis costs no request more than one refused connection. The first call that
succeeds again logs the recovery and runs the `on_restored` callbacks.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Iterator, TypeVar
from urllib.parse import urlsplit

import concurrency

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)
T = TypeVar("T")
PREFIX = "vram-dashboard"
CONNECT_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 2.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0


def describe_url(url: str) -> str:
    """REDIS_URL without its password, for messages.

    >>> describe_url("redis://user:secret@cache:6380/1")
    'redis://cache:6380/1'
    """
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def check_reachable(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """PING Redis once; return None when it answers, else what went wrong (for the start-up line)."""
    import redis  # only a server with REDIS_URL imports redis-py (see app.py)

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        client.ping()
    except redis.RedisError as exc:
        return str(exc) or type(exc).__name__
    finally:
        client.close()
    return None


class RedisLink:
    """Clients for REDIS_URL (commands, and a second one for subscriptions), and the outage state."""

    def __init__(self, url: str, *, prefix: str = PREFIX):
        import redis  # only a server with REDIS_URL imports redis-py (see app.py)

        self.url = url
        self.prefix = prefix
        # What redis-py raises when Redis fails a command: for everyone who calls the clients below.
        self.errors: type[Exception] = redis.RedisError
        self.client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                           socket_timeout=COMMAND_TIMEOUT_S)
        # A subscription waits for messages as long as it takes: no read timeout, TCP keepalive.
        self.listen_client = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                                  socket_keepalive=True, health_check_interval=30)
        self._lock = concurrency.Lock()
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._backoff_s = FIRST_BACKOFF_S
        self._on_restored: list[Callable[[], None]] = []

    def key(self, *parts: str) -> str:
        """A key or channel name under this deployment's prefix: key("fleet", "node", name)."""
        return ":".join((self.prefix, *parts))

    @property
    def up(self) -> bool:
        return self._down_since is None

    def on_restored(self, callback: Callable[[], None]) -> None:
        """Call `callback()` each time Redis answers again after an outage."""
        self._on_restored.append(callback)

    def call(self, what: str, command: Callable[[redis.Redis], T], default: T | None = None) -> T | None:
        """Run `command(client)`; on a Redis error (or while backing off) return `default`."""
        if not self.may_try():
            return default
        try:
            result = command(self.client)
        except self.errors as exc:
            self.lost(what, exc)
            return default
        self.restored()
        return result

    def may_try(self) -> bool:
        """False while an outage's back-off has not elapsed."""
        return self._down_since is None or concurrency.monotonic() >= self._retry_at

    def retry_delay_s(self) -> float:
        """How long a loop that lost Redis should wait before its next attempt."""
        return max(0.0, self._retry_at - concurrency.monotonic()) if self._down_since is not None else 0.0

    def lost(self, what: str, exc: BaseException) -> None:
        """Record a failed attempt: log the first of an outage, push the next attempt back."""
        now = concurrency.monotonic()
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = now
                self._backoff_s = FIRST_BACKOFF_S
            elif now >= self._retry_at:
                self._backoff_s = min(self._backoff_s * 2, MAX_BACKOFF_S)
            if now >= self._retry_at or first:
                self._retry_at = now + self._backoff_s
        if first:
            log.warning("Redis at %s (REDIS_URL) is unreachable (%s: %s): serving this node's own clients "
                        "and readings; other nodes' events, revocations and fleet entries wait until it is "
                        "back (retrying with back-off)", describe_url(self.url), what, exc)

    def restored(self) -> None:
        """Record a successful attempt; after an outage, log it and run the callbacks."""
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is None:
            return
        log.info("Redis at %s (REDIS_URL) is reachable again after %.1f s", describe_url(self.url),
                 concurrency.monotonic() - since)
        for callback in self._on_restored:
            callback()

    def close(self) -> None:
        self.client.close()
        self.listen_client.close()


def subscribe_forever(link: RedisLink, channels: list[str], handle: Callable[[str, bytes], None],
                      stopping: Callable[[], bool]) -> None:
    """Deliver each message on `channels` to `handle(channel, data)`; resubscribe after an outage.

    The body of a background task; returns once `stopping()` is true (checked between messages
    and between attempts).
    """
    for message in messages(link, channels, stopping):
        channel = message["channel"]
        handle(channel.decode() if isinstance(channel, bytes) else channel, message["data"])


def messages(link: RedisLink, channels: list[str], stopping: Callable[[], bool] = lambda: False) -> Iterator[dict]:
    """Yield redis-py's message dicts published on `channels`, resubscribing after each outage."""
    while not stopping():
        pubsub = link.listen_client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(*channels)
            link.restored()
            while not stopping():
                message = pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    yield message
        except link.errors as exc:
            link.lost(f"subscribing to {', '.join(channels)}", exc)
        finally:
            try:
                pubsub.close()
            except link.errors:
                pass  # the connection is gone already
        if not stopping():
            concurrency.sleep(max(link.retry_delay_s(), 0.1))


def handle_safely(handle: Callable[[str, bytes], None]) -> Callable[[str, bytes], None]:
    """Wrap a message handler so that one bad message is logged, never ends the subscription."""
    def wrapped(channel: str, data: bytes) -> None:
        try:
            handle(channel, data)
        except Exception:  # a listener that dies would stop every later message
            log.exception("could not handle a message on %s", channel)
    return wrapped


