"""Keep-alive HTTP/1.1 connections to one origin (OLLAMA_HOST), on the standard library's http.client.

urllib3 is http.client with a pool, retries, redirects, proxies, decoding and its own response
and header classes around it. OllamaClient uses none of those features (one request, no retry, no
redirect, no proxy, identity bodies), yet they cost a small proxied request about 80–130 µs of CPU,
measured (BENCHMARKS.md, section 2): ~35–45 % of the client half of a proxied `GET /api/tags`. This
module is what is left when they are taken out: a LIFO list of idle `http.client.HTTPConnection`s,
a liveness check before reuse, separate connect and read timeouts, and a response that gives its
connection back once its body has been read to the end. Everything else (the request line and
headers, Content-Length or chunked framing, status and header parsing, de-chunking) is
http.client's own, through its public API, plus one attribute it keeps undocumented:
`HTTPResponse.length`, the bytes of a Content-Length body still unread (its read1() does not close
a body it has read to its declared end, so that is how the end is seen without another read).
"""
from __future__ import annotations

import http.client
import socket
import ssl
from typing import Iterable
from urllib.parse import urlsplit

import concurrency


class ConnectError(OSError):
    """No connection could be opened (refused, unknown host, no route, TLS); the cause is chained."""


class ConnectTimeout(ConnectError):
    """The connection was not accepted within the connect timeout."""


class _OneSend:
    """http.client's connection, sending a request with a bytes body in one send().

    http.client sends the header block, then the body, with a `send()` each: two packets, and
    Ollama, having read the headers, waits for a second wake-up to read the body. For a body given
    as bytes (the proxy's chat and generate requests, the API's JSON) the header block is held
    back by `send()` (the connection's documented output method) and leaves with the body;
    streamed bodies and requests without one are sent as http.client sends them.
    """

    _held: bytes | None = None  # None: pass every send through; b"": hold the next; bytes: held

    def request(self, method, url, body=None, headers={}, *, encode_chunked=False):  # noqa: B006 (http.client's)
        self._held = b"" if isinstance(body, bytes) and body else None
        try:
            super().request(method, url, body=body, headers=headers, encode_chunked=encode_chunked)
            held = self._held
        finally:
            self._held = None
        if held:  # the body never came: the headers go alone
            super().send(held)

    def send(self, data):
        held = self._held
        if held is None or not isinstance(data, bytes):
            return super().send(data)
        if not held:
            self._held = data
            return None
        self._held = None
        return super().send(held + data)


class _Connection(_OneSend, http.client.HTTPConnection):
    pass


class _TLSConnection(_OneSend, http.client.HTTPSConnection):
    pass


class Pool:
    """Idle keep-alive connections to one origin, reused newest first; past `maxsize` idle ones, closed."""

    def __init__(self, base_url: str, maxsize: int = 64):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.maxsize = maxsize
        self._idle: list[http.client.HTTPConnection] = []
        self._ssl_context = ssl.create_default_context() if parts.scheme == "https" else None
        self.num_connections = 0  # opened so far: with keep-alive, one a concurrent request

    def request(self, method: str, target: str, *, body: bytes | Iterable[bytes] | None,
                headers: dict[str, str], timeout: tuple[float, float]) -> "UpstreamResponse":
        """Send one request and return its response with the body unread.

        A bytes body goes with a Content-Length, in the same send() as the header block; an
        iterable body is sent chunked as it is produced. Raises ConnectError / ConnectTimeout
        when no connection opens, OSError (TimeoutError on silence) or http.client.HTTPException
        after that; whatever is raised, the connection is closed, never reused.
        """
        connect_s, read_s = timeout
        conn = self._take()
        try:
            if conn.sock is None:
                self._connect(conn, connect_s)
            sock = conn.sock
            sock.settimeout(read_s)
            conn.request(method, target, body=body, headers=headers)
            raw = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        return UpstreamResponse(self, conn, sock, raw)

    def _take(self) -> http.client.HTTPConnection:
        idle = self._idle
        while idle:
            conn = idle.pop()
            sock = conn.sock
            # An idle keep-alive connection with something to read has been closed by Ollama (or
            # holds bytes nobody asked for): not reusable. poll(2), not the hub's green select.
            if sock is not None and not concurrency.readable_now(sock.fileno()):
                return conn
            conn.close()
        if self._ssl_context is not None:
            return _TLSConnection(self.host, self.port, context=self._ssl_context)
        return _Connection(self.host, self.port)

    def _connect(self, conn: http.client.HTTPConnection, connect_s: float) -> None:
        conn.timeout = connect_s
        try:
            conn.connect()
        except (TimeoutError, socket.timeout) as exc:
            raise ConnectTimeout(f"no connection within {connect_s:g} s") from exc
        except OSError as exc:  # a failed TLS handshake too
            raise ConnectError(str(exc)) from exc
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.num_connections += 1

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        if conn.sock is not None and len(self._idle) < self.maxsize:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close the idle connections (responses still being read close theirs when done)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class UpstreamResponse:
    """One response: status, headers (case-insensitive), the body read as it arrives.

    Read to its end, its connection goes back to the pool; closed before that, the connection is
    closed (Ollama sees the client leave, which cancels a generation or a pull).
    """

    def __init__(self, pool: Pool, conn: http.client.HTTPConnection, sock: socket.socket,
                 raw: http.client.HTTPResponse):
        self._pool = pool
        self._conn: http.client.HTTPConnection | None = conn
        self.sock = sock
        self.raw = raw
        self.status: int = raw.status
        self.headers: http.client.HTTPMessage = raw.headers
        self.chunked: bool = bool(raw.chunked)

    @property
    def closed(self) -> bool:
        """Read to its end or closed: either way its connection is no longer this response's."""
        return self._conn is None

    def read1(self, size: int) -> bytes:
        """Return what one receive brings (for a chunked body, at most the rest of one chunk)."""
        raw = self.raw
        data = raw.read1(size)
        # http.client closes a chunked body at its end, not one whose Content-Length is used up.
        if not data or raw.length == 0 or raw.isclosed():
            self._finish()
        return data

    def read(self) -> bytes:
        """Return the whole (rest of the) body."""
        data = self.raw.read()
        self._finish()
        return data

    def _finish(self) -> None:
        """The body has ended: its connection is reusable unless Ollama said it closes it or
        the read was cut short by shutdown()."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        self.raw.close()  # at the end already (a HEAD or 204 answer leaves it open): frees the connection
        if self.raw.will_close or self._aborted:
            conn.close()
        else:
            self._pool._give_back(conn)

    _aborted = False

    def shutdown(self) -> None:
        """Make a read blocked in another green thread return end-of-stream (SHUT_RD)."""
        if self._conn is not None:
            self._aborted = True
            self.sock.shutdown(socket.SHUT_RD)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()  # the body was not read to its end: this connection cannot carry another
        self.raw.close()
