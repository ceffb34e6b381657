"""The only code that speaks HTTP to Ollama: one connection pool, one funnel for transport errors.

Every call goes through `_request_raw`, which turns transport failures into exactly two errors:
`OllamaUnavailableError` (nothing answers at OLLAMA_HOST: refused, unknown host, no route) and
`OllamaTimeoutError` (Ollama accepted the connection but went silent). An HTTP error status from
Ollama becomes `OllamaError` carrying Ollama's status and its `error` text (typed methods only;
`open_raw` hands every status back untouched, for the proxy).

The connections are ollama_client.transport's (requests written there, responses parsed by
httptools), not urllib3's or `requests`': a proxied request is on the hot path, and their features
(retries, redirects, proxies from HTTP(S)_PROXY, .netrc, decoding) are all off here, yet their
Python-level parsing cost a small proxied request 4–7× the CPU of the whole client half now
(`requests` about a millisecond). Each call sends exactly one request and follows nothing.
"""
from __future__ import annotations

import contextlib
import errno
import http.client
import json
import logging
import socket
from typing import Any, Iterable, Iterator
from urllib.parse import urlsplit

import concurrency
from errors import OllamaError, OllamaTimeoutError, OllamaUnavailableError
from ollama_client import transport

log = logging.getLogger(__name__)

Timeout = tuple[float, float]  # (connect_s, read_s): read_s is the longest silence between bytes
Response = transport.UpstreamResponse

CONNECT_TIMEOUT_S = 5.0
DEFAULT_TIMEOUT: Timeout = (CONNECT_TIMEOUT_S, 30.0)
# Loading a large model from a slow disk can take minutes; Ollama answers only once it is loaded.
LOAD_TIMEOUT: Timeout = (CONNECT_TIMEOUT_S, 600.0)
# Between two pull lines Ollama may verify a multi-GB blob (sha256) without sending anything.
PULL_TIMEOUT: Timeout = (CONNECT_TIMEOUT_S, 600.0)
REACHABLE_TIMEOUT: Timeout = (1.0, 1.0)
REACHABLE_CACHE_S = 3.0
USER_AGENT = "vram-dashboard"
READ_CHUNK_BYTES = 64 * 1024


class OllamaClient:
    """Talk to one Ollama server (the configured OLLAMA_HOST) over a pool of keep-alive connections."""

    def __init__(self, base_url: str, *, timeout: Timeout = DEFAULT_TIMEOUT, load_timeout: Timeout = LOAD_TIMEOUT,
                 pull_timeout: Timeout = PULL_TIMEOUT, reachable_cache_s: float = REACHABLE_CACHE_S,
                 pool_maxsize: int = 64):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.load_timeout = load_timeout
        self.pull_timeout = pull_timeout
        self.reachable_cache_s = reachable_cache_s
        # OLLAMA_HOST may carry a path (https://host/ollama): every request path goes under it.
        self._path_prefix = (urlsplit(self.base_url).path or "").rstrip("/")
        # Past pool_maxsize busy connections a request opens one of its own instead of waiting.
        self._pool = transport.Pool(self.base_url, maxsize=pool_maxsize)
        self._reachable_lock = concurrency.Lock()
        self._reachable: tuple[float, bool] | None = None  # (monotonic time checked, answer)

    # -- the funnel -------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """Return the absolute URL of `path` (which starts with "/") under OLLAMA_HOST."""
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        if any(ch in path for ch in "\r\n\x00") or any(seg in (".", "..") for seg in path.split("?")[0].split("/")):
            raise ValueError(f"refusing to request an unnormalised path: {path!r}")
        return self.base_url + path

    def _request_raw(self, method: str, path: str, *, timeout: Timeout, json_body: Any = None,
                     data: bytes | Iterable[bytes] | None = None,
                     headers: dict[str, str] | None = None) -> Response:
        """Send one request and return its response unread; transport failures become the two errors.

        `data` is bytes (sent with a Content-Length) or an iterator of bytes (sent chunked).
        """
        self.url(path)  # validates
        sent = {"User-Agent": USER_AGENT}
        if json_body is not None:
            data = json.dumps(json_body).encode()
            sent["Content-Type"] = "application/json"
        sent.update(headers or {})
        with self.transport_errors(timeout, reading=False):
            return self._pool.request(method, self._path_prefix + path, body=data, headers=sent, timeout=timeout)

    @contextlib.contextmanager
    def transport_errors(self, timeout: Timeout | None = None, *, reading: bool = True) -> Iterator[None]:
        """Turn a transport failure inside the block into OllamaUnavailableError or OllamaTimeoutError.

        Wrap reads of a response body with this too (`reading`, the default), so that a stream
        that breaks half-way is reported the same way as a request that never connected.
        """
        try:
            yield
        except transport.ConnectTimeout as exc:
            raise self._unavailable(f"no connection within {timeout[0] if timeout else '?'} s", exc) from None
        except transport.ConnectError as exc:  # refused, unknown host, no route
            raise self._unavailable(_describe(exc), exc) from None
        except (TimeoutError, socket.timeout):  # read timeouts: silent after connecting
            read_s = timeout[1] if timeout else None
            within = f" within {read_s:g} s" if read_s else ""
            raise OllamaTimeoutError(f"Ollama at {self.base_url} did not answer{within} "
                                     "(OLLAMA_HOST); it may be busy loading a model") from None
        except (http.client.HTTPException, OSError) as exc:
            reason = ("the connection broke mid-response (Ollama stopped or restarted?)" if reading
                      else _describe(exc))
            raise self._unavailable(reason, exc) from None

    def _unavailable(self, reason: str, exc: BaseException) -> OllamaUnavailableError:
        log.debug("Ollama transport error: %r", exc)
        return OllamaUnavailableError(
            f"Ollama is not reachable at {self.base_url}: {reason}. "
            "Start Ollama (`ollama serve`) or set OLLAMA_HOST to its address.")

    def _request_json(self, method: str, path: str, *, timeout: Timeout | None = None,
                      json_body: Any = None) -> Any:
        """Send a request and return its decoded JSON body, or raise OllamaError on an error status."""
        timeout = timeout or self.timeout
        response = self._request_raw(method, path, timeout=timeout, json_body=json_body,
                                     headers={"Accept": "application/json"})
        with contextlib.closing(response), self.transport_errors(timeout):
            content = response.read()
        check_status(response, content)
        if not content.strip():
            return None
        try:
            return json.loads(content)
        except ValueError:
            raise OllamaError(f"Ollama sent a body that is not JSON for {method} {path}",
                              upstream_status=response.status) from None

    # -- raw access for the proxy ------------------------------------------------------------

    def open_raw(self, method: str, path: str, *, body: bytes | Iterable[bytes] | None = None,
                 headers: dict[str, str] | None = None, timeout: Timeout | None = None) -> Response:
        """Open a streamed request to OLLAMA_HOST + path and return the response, whatever its status.

        `body` is bytes or an iterator of bytes (sent chunked). Redirects are not followed. The
        caller reads the body (`iter_body`, inside `transport_errors(timeout)`) and closes the
        response; `abort_response` stops a read from another green thread. Raises only
        OllamaUnavailableError / OllamaTimeoutError.
        """
        return self._request_raw(method, path, timeout=timeout or self.timeout, data=body, headers=headers)

    # -- typed calls -------------------------------------------------------------------------

    def is_reachable(self) -> bool:
        """Return whether Ollama answers /api/version; cached a few seconds, never raises."""
        now = concurrency.monotonic()
        cached = self._reachable
        if cached is not None and now - cached[0] < self.reachable_cache_s:
            return cached[1]
        # One check at a time; while it runs, others get the previous answer instead of waiting.
        if not self._reachable_lock.acquire(blocking=cached is None):
            return cached[1]
        try:
            cached = self._reachable
            if cached is not None and concurrency.monotonic() - cached[0] < self.reachable_cache_s:
                return cached[1]
            try:
                self._request_json("GET", "/api/version", timeout=REACHABLE_TIMEOUT)
                answer = True
            except (OllamaUnavailableError, OllamaTimeoutError, OllamaError):
                answer = False
            self._reachable = (concurrency.monotonic(), answer)
            return answer
        finally:
            self._reachable_lock.release()

    def version(self) -> str:
        """Return Ollama's version string."""
        body = self._request_json("GET", "/api/version")
        return str((body or {}).get("version", ""))

    def list_models(self) -> list[dict[str, Any]]:
        """Return /api/tags's models (downloaded models)."""
        return _models(self._request_json("GET", "/api/tags"))

    def list_loaded(self) -> list[dict[str, Any]]:
        """Return /api/ps's models (models loaded in memory)."""
        return _models(self._request_json("GET", "/api/ps"))

    def show(self, model: str) -> dict[str, Any]:
        """Return /api/show for one model."""
        return self._request_json("POST", "/api/show", json_body={"model": model}) or {}

    def load(self, model: str, keep_alive: str | int | float) -> dict[str, Any]:
        """Load a model into memory: /api/generate with no prompt; returns once Ollama has loaded it."""
        return self._request_json("POST", "/api/generate", timeout=self.load_timeout,
                                  json_body={"model": model, "keep_alive": keep_alive, "stream": False}) or {}

    def unload(self, model: str) -> dict[str, Any]:
        """Unload a model: /api/generate with keep_alive 0."""
        return self._request_json("POST", "/api/generate", timeout=self.load_timeout,
                                  json_body={"model": model, "keep_alive": 0, "stream": False}) or {}

    def delete(self, model: str) -> None:
        """Delete a downloaded model."""
        self._request_json("DELETE", "/api/delete", json_body={"model": model})

    def pull(self, model: str) -> "PullStream":
        """Start /api/pull and return its NDJSON progress lines as a closable iterator."""
        timeout = self.pull_timeout
        response = self._request_raw("POST", "/api/pull", timeout=timeout,
                                     json_body={"model": model, "stream": True},
                                     headers={"Accept": "application/x-ndjson"})
        if not 200 <= response.status < 300:
            with contextlib.closing(response), self.transport_errors(timeout):
                content = response.read()
            check_status(response, content)
        return PullStream(self, response, timeout)

    def close(self) -> None:
        """Close pooled connections."""
        self._pool.close()


class PullStream:
    """The NDJSON lines of one /api/pull; iterate for dicts, close() to abandon the pull."""

    def __init__(self, client: OllamaClient, response: Response, timeout: Timeout):
        self._client = client
        self.response = response
        self._timeout = timeout
        self.closed = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._reading = True
        try:
            with self._client.transport_errors(self._timeout):
                for line in iter_lines(iter_body(self.response)):
                    if not line.strip():
                        continue
                    try:
                        item = json.loads(line)
                    except ValueError:
                        raise OllamaError(f"Ollama sent a pull line that is not JSON: {line[:200]!r}") from None
                    if isinstance(item, dict):
                        yield item
        finally:
            self._reading = False
            self.response.close()

    _reading = False

    def close(self) -> None:
        """Close the upstream connection; Ollama cancels a pull when its last client leaves.

        Safe from another green thread while one is blocked reading: the socket is shut down
        (the reader sees the stream end and closes the response itself).
        """
        self.closed = True
        abort_response(self.response)
        if not self._reading:
            self.response.close()


def iter_body(response: Response, chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[bytes]:
    """Yield a response's body as it arrives: what one receive brought, never held back.

    Read inside `transport_errors`. A body read to its end gives its connection back to the pool.
    """
    # Each read1() returns all the body one receive brought, de-chunked (Ollama sends every NDJSON
    # line as a chunk of its own; at full speed one receive holds many), and waits only when
    # nothing has arrived: a line goes on the moment it arrives, lines that came together go
    # together.
    while data := response.read1(chunk_bytes):
        yield data


def iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Split a stream of chunks into lines (without the newline); a last unterminated line too."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


def abort_response(response: Response) -> None:
    """Shut down a streamed response's socket, waking a green thread blocked reading it.

    Closing the socket under a green thread blocked on it would leave that thread waiting on a
    descriptor that may be reused; `shutdown()` (SHUT_RD) instead makes that read see the stream
    end (a broken response, OllamaUnavailableError), and the reader closes the response, so
    Ollama sees the connection close. A response read to its end has given its connection back to
    the pool already, and a closed one has no socket left: then there is nothing to do
    (`shutdown()` knows).
    """
    with contextlib.suppress(OSError, ValueError):  # ValueError: closed meanwhile (no socket to shut)
        response.shutdown()


def check_status(response: Response, content: bytes) -> None:
    """Raise OllamaError with Ollama's status and `error` text unless the response is a 2xx."""
    status = response.status
    if 200 <= status < 300:
        return
    if 300 <= status < 400:
        raise OllamaError(f"Ollama answered HTTP {status} (a redirect to "
                          f"{response.headers.get('Location', '?')}, not followed): check OLLAMA_HOST",
                          upstream_status=status)
    raise OllamaError(f"Ollama: {error_text(content, status)}", upstream_status=status)


def error_text(content: bytes, status: int) -> str:
    """Return Ollama's `error` message from an error body (JSON `{"error": ...}` or plain text)."""
    text = content.decode("utf-8", errors="replace").strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):  # the OpenAI-compatible endpoints nest it
            err = err.get("message")
        if isinstance(err, str) and err:
            return err
    return text[:500] or f"HTTP {status}"


def _models(body: Any) -> list[dict[str, Any]]:
    models = (body or {}).get("models") if isinstance(body, dict) else None
    return [m for m in (models or []) if isinstance(m, dict)]


def _root_causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))
        for attr in ("reason", "__cause__", "__context__"):
            nested = getattr(current, attr, None)
            if isinstance(nested, BaseException):
                stack.append(nested)


def _describe(exc: BaseException) -> str:
    """Say in a few words why a connection failed (refused, unknown host...)."""
    for cause in _root_causes(exc):
        if isinstance(cause, socket.gaierror):
            return "cannot resolve the host name"
        if isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset"
        if getattr(cause, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "no route to host"
    return str(exc)[:200] or type(exc).__name__
