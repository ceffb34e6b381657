"""Keep-alive HTTP/1.1 connections to one origin (OLLAMA_HOST): requests written here, responses
parsed by httptools (llhttp, the C parser of Node.js, as uvicorn uses it).

Why not http.client or urllib3: a proxied request is on the hot path, and their Python-level
response parsing (a buffered reader, header lines through the `email` package, de-chunking line by
line) was most of the client half's cost, measured (BENCHMARKS.md, section 2): one small
`GET /api/tags` cost ~255 µs of CPU through urllib3, ~150 µs through bare http.client and ~35 µs
with the socket and httptools. OllamaClient needs none of their features (one request, no retry,
no redirect, no proxy, identity bodies). What is left is this module:

- a LIFO list of idle connections, a liveness check before reuse (poll(2)), separate connect and
  read timeouts;
- the request head built from validated parts (no CR, LF or NUL can reach the wire), framed with a
  Content-Length (bytes) or chunked (an iterable), sent with its body in one `sendall()`;
- the response fed to llhttp as it is received: status, headers, the body de-chunked; each
  `read1()` hands back all the body that one receive brought (many NDJSON lines at full speed);
- a response gives its connection back once its body has ended and the server kept it alive.

Malformed or cut responses raise `ProtocolError` (an `http.client.HTTPException`), a server that
hangs up before answering `http.client.RemoteDisconnected`, as http.client does.
"""
from __future__ import annotations

import http.client
import re
import socket
import ssl
from typing import Iterable
from urllib.parse import urlsplit

import httptools
import concurrency

RECV_BYTES = 64 * 1024
# A request header field: a token name, a value of visible octets, spaces and tabs (RFC 9110 5.1,
# 5.5): never CR, LF, NUL or another control character, nothing past latin-1.
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_FIELD_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
_BAD_TARGET = re.compile(r"[^\x21-\x7e]")  # a request target is visible ASCII (RFC 9112 3.2)
_METHOD = re.compile(r"[A-Z]+")
# The framing is this module's: a caller's header could smuggle a second request past it.
_FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_EXPECTING_BODY = frozenset({"POST", "PUT", "PATCH"})  # sent "Content-Length: 0" when bodiless


class UnsendableHeader(ValueError):
    """A request header whose name or value cannot go on the wire as it is; `name` says which."""

    def __init__(self, name: str) -> None:
        super().__init__(f"invalid header field {name!r}")
        self.name = name


class ConnectError(OSError):
    """No connection could be opened (refused, unknown host, no route, TLS); the cause is chained."""


class ConnectTimeout(ConnectError):
    """The connection was not accepted within the connect timeout."""


class ProtocolError(http.client.HTTPException):
    """The response broke off or is not HTTP/1.1 as llhttp reads it."""


class ResponseHeaders(dict):
    """A response's header fields by lower-cased name; looked up in any case.

    A repeated field's values are joined by ", " (RFC 9110 5.3; none that Ollama sends may not be).
    A dict, not werkzeug's or http.client's header classes: those cost a small proxied request
    more than the rest of its response parsing (measured, BENCHMARKS.md section 2).
    """

    __slots__ = ()

    def get(self, name: str, default=None):
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())


class Connection:
    """One connection to the origin: its socket, None until opened and once closed."""

    __slots__ = ("sock",)

    def __init__(self) -> None:
        self.sock: socket.socket | None = None

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()


class Pool:
    """Idle keep-alive connections to one origin, reused newest first; past `maxsize` idle ones, closed."""

    def __init__(self, base_url: str, maxsize: int = 64):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.host_header = parts.netloc.rpartition("@")[2]
        self.maxsize = maxsize
        self._idle: list[Connection] = []
        self._ssl_context = ssl.create_default_context() if parts.scheme == "https" else None
        self.num_connections = 0  # opened so far: with keep-alive, one a concurrent request

    def request(self, method: str, target: str, *, body: bytes | Iterable[bytes] | None,
                headers: dict[str, str], timeout: tuple[float, float]) -> "UpstreamResponse":
        """Send one request and return its response with the head read and the body unread.

        A bytes body goes with a Content-Length, in the same send as the head; an iterable body is
        sent chunked as it is produced. Raises ValueError for a method, target or header that cannot
        be sent as it is (UnsendableHeader for a header; before anything is sent), ConnectError / ConnectTimeout when no connection
        opens, OSError (TimeoutError on silence) or http.client.HTTPException after that; whatever
        is raised, the connection is closed, never reused.
        """
        connect_s, read_s = timeout
        head = self.head(method, target, body, headers)
        conn = self._take()
        try:
            if conn.sock is None:
                self._connect(conn, connect_s)
            sock = conn.sock
            sock.settimeout(read_s)
            if body is None or isinstance(body, bytes):
                sock.sendall(head + body if body else head)
            else:
                sock.sendall(head)
                for piece in body:
                    if piece:  # an empty chunk would end the body
                        sock.sendall(b"%X\r\n%s\r\n" % (len(piece), piece))
                sock.sendall(b"0\r\n\r\n")
            response = UpstreamResponse(self, conn, head_only=method == "HEAD")
            response.read_head()
        except BaseException:
            conn.close()
            raise
        return response

    def head(self, method: str, target: str, body: bytes | Iterable[bytes] | None, headers: dict[str, str]) -> bytes:
        """Return the request line and header block, framed for `body`; ValueError for what cannot be sent."""
        if not _METHOD.fullmatch(method):
            raise ValueError(f"invalid method {method!r}")
        if not target.startswith("/") or _BAD_TARGET.search(target):
            raise ValueError(f"invalid request target {target!r}")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        encoding_given = False
        for name, value in headers.items():
            if not _FIELD_NAME.fullmatch(name) or _BAD_FIELD_VALUE.search(value):
                raise UnsendableHeader(name)
            lowered = name.lower()
            if lowered in _FRAMING:
                raise ValueError(f"{name} is set by the transport, not the caller")
            encoding_given = encoding_given or lowered == "accept-encoding"
            lines.append(f"{name}: {value}")
        if not encoding_given:
            lines.append("Accept-Encoding: identity")  # the bytes as they are (http.client's default)
        if isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}")
        elif body is not None:
            lines.append("Transfer-Encoding: chunked")
        elif method in _EXPECTING_BODY:
            lines.append("Content-Length: 0")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1")

    def _take(self) -> Connection:
        idle = self._idle
        while idle:
            conn = idle.pop()
            sock = conn.sock
            # An idle keep-alive connection with something to read has been closed by Ollama (or
            # holds bytes nobody asked for): not reusable. poll(2), not the hub's green select.
            if sock is not None and not concurrency.readable_now(sock.fileno()):
                return conn
            conn.close()
        return Connection()

    def _connect(self, conn: Connection, connect_s: float) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=connect_s)
        except (TimeoutError, socket.timeout) as exc:
            raise ConnectTimeout(f"no connection within {connect_s:g} s") from exc
        except OSError as exc:
            raise ConnectError(str(exc)) from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl_context is not None:
                sock = self._ssl_context.wrap_socket(sock, server_hostname=self.host)
        except OSError as exc:  # a failed TLS handshake
            sock.close()
            raise ConnectError(str(exc)) from exc
        conn.sock = sock
        self.num_connections += 1

    def _give_back(self, conn: Connection) -> None:
        if conn.sock is not None and len(self._idle) < self.maxsize:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close the idle connections (responses still being read close theirs when done)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


_HEAD, _BODY, _DONE = 0, 1, 2  # UpstreamResponse._state


class UpstreamResponse:
    """One response: status, headers (case-insensitive), the body read as it arrives.

    Read to its end, its connection goes back to the pool; closed before that, the connection is
    closed (Ollama sees the client leave, which cancels a generation or a pull). The parser's
    callbacks (on_*) are llhttp's, called from `feed_data` inside this object's reads.
    """

    def __init__(self, pool: Pool, conn: Connection, *, head_only: bool = False):
        self._pool = pool
        self._conn: Connection | None = conn
        self.sock = conn.sock
        self.status = 0
        self.headers = ResponseHeaders()
        self.chunked = False
        self._head_only = head_only  # the answer to a HEAD: no body, whatever its headers say
        self._body: list[bytes] = []  # de-chunked, not yet handed out
        self._state = _HEAD
        self._interim = False  # a 1xx answer is being skipped
        self._keep_alive = False
        self._received = False
        self._aborted = False
        self._parser = httptools.HttpResponseParser(self)

    # -- llhttp's callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._state != _HEAD:
            self._keep_alive = False  # a second answer nobody asked for: this connection is not reusable

    def on_header(self, name: bytes, value: bytes) -> None:
        headers, key, text = self.headers, name.lower().decode("latin-1"), value.decode("latin-1")
        before = dict.get(headers, key)
        dict.__setitem__(headers, key, text if before is None else f"{before}, {text}")

    def on_headers_complete(self) -> None:
        if self._state != _HEAD:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # 100 Continue and the like: the real answer follows
            self._interim = True
            self.headers.clear()
            return
        self.status = status
        self.chunked = "chunked" in dict.get(self.headers, "transfer-encoding", "").lower()
        if self._head_only:
            self._state = _DONE
            self._keep_alive = self._parser.should_keep_alive()
        else:
            self._state = _BODY

    def on_body(self, data: bytes) -> None:
        if self._state == _BODY:
            self._body.append(data)
        else:
            self._keep_alive = False  # bytes after the answer to a HEAD: the framing is lost

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
        elif self._state == _BODY:
            self._state = _DONE
            self._keep_alive = self._parser.should_keep_alive()

    # -- reading ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Read to its end or closed: either way its connection is no longer this response's."""
        return self._conn is None

    def read_head(self) -> None:
        """Receive until the status line and headers are in (some of the body may come along)."""
        while self._state == _HEAD:
            if not self._receive():
                if not self._received:
                    raise http.client.RemoteDisconnected("Remote end closed connection without response")
                raise ProtocolError("the connection closed inside the response head")
        if self._state == _DONE:
            self._finish()

    def _receive(self) -> bool:
        """Feed one receive to the parser; False at the end of the stream."""
        data = self.sock.recv(RECV_BYTES)
        if not data:
            return False
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise ProtocolError("Ollama switched protocols, which nothing asked for") from None
        except httptools.HttpParserError as exc:
            raise ProtocolError(f"malformed response: {exc}") from None
        return True

    def read1(self, size: int = RECV_BYTES) -> bytes:
        """Return the body that has arrived, receiving once when none has (b"" at the end).

        At most `size` bytes; what one receive brought otherwise comes in one piece.
        """
        body = self._body
        while not body and self._state == _BODY and self._conn is not None:
            if not self._receive():
                self._end_of_stream()
        if not body:
            self._finish()
            return b""
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        if len(data) > size:
            body.append(data[size:])
            data = data[:size]
        if self._state == _DONE and not body:
            self._finish()
        return data

    def read(self) -> bytes:
        """Return the whole (rest of the) body."""
        parts = []
        while data := self.read1(RECV_BYTES):
            parts.append(data)
        return b"".join(parts)

    def _end_of_stream(self) -> None:
        """The server closed the connection inside the body (or shutdown() did): the end, if the body
        was to run until then, else a broken response."""
        self._keep_alive = False
        if not self.chunked and not dict.__contains__(self.headers, "content-length"):
            self._state = _DONE
            return
        raise ProtocolError("the connection closed before the end of the body")

    def _finish(self) -> None:
        """The body has ended: its connection goes back to the pool if the server keeps it alive
        and the read was not cut short by shutdown()."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._keep_alive and not self._aborted and self._state == _DONE:
            self._pool._give_back(conn)
        else:
            conn.close()

    def shutdown(self) -> None:
        """Wake a read blocked in another green thread (SHUT_RD): it sees the stream end early,
        raises ProtocolError, and its reader closes the response."""
        if self._conn is not None:
            self._aborted = True
            self.sock.shutdown(socket.SHUT_RD)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self._body.clear()
        if conn is not None:
            conn.close()  # the body was not read to its end: this connection cannot carry another
