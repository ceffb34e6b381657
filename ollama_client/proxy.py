"""The /ollama proxy: an authenticated, allowlisted, streaming pass-through to Ollama's API.

Order of decisions for every request under /ollama (OPTIONS aside, which CORS preflights send
without credentials and which never reaches Ollama):

1. credentials (401) — before anything else, so an unauthenticated caller learns nothing about
   which paths exist;
2. path and method (404 unsafe or unknown, 403 model management, 405 wrong method);
3. body size (413, declared or counted while streaming);
4. one upstream request through `services.ollama.open_raw`; 502 unreachable, 504 silent.

The query string is dropped: none of the forwarded Ollama endpoints reads one, and forwarding
only the canonical path and the body keeps what reaches Ollama exactly what the allowlist names.
"""
from __future__ import annotations

import logging
import time
from typing import Iterable, Iterator

from flask import Blueprint, Flask, Response, request
from werkzeug.routing import BaseConverter

from auth.credentials import current_principal
from auth.permissions import INFER, require
from errors import ApiError, BadRequestError, OllamaTimeoutError, OllamaUnavailableError, PayloadTooLargeError
from ollama_client.client import iter_body
from ollama_client.transport import UnsendableHeader
from ollama_client.proxy_paths import PREFIX, Refusal, allowed_methods, resolve, usage_endpoint
import services as services_module
from usage.log import Usage
from usage.meter import UsageMeter

log = logging.getLogger(__name__)

bp = Blueprint("ollama_proxy", __name__)

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ROUTE_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
# Only these client headers go upstream (Content-Type only with a body); never Authorization,
# Cookie, Host, Content-Length (the body is re-framed) or hop-by-hop headers (Connection,
# Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade, Proxy-*).
FORWARDED_REQUEST_HEADERS = ("Content-Type", "Accept", "User-Agent")
_ENVIRON_KEYS = {"Content-Type": "CONTENT_TYPE", "Accept": "HTTP_ACCEPT", "User-Agent": "HTTP_USER_AGENT"}
# Only these upstream headers come back (Content-Length too, when Ollama sent one and did not
# chunk); never Set-Cookie, Location (redirects are not followed), Content-Encoding (bodies are
# relayed decoded; identity is asked for anyway) or hop-by-hop headers.
RELAYED_RESPONSE_HEADERS = ("Content-Type", "Cache-Control")
# Bodies up to this size are read whole and sent with a Content-Length (one write, the common
# case for chat and generate); larger or still-arriving ones are streamed up chunked.
SMALL_BODY_BYTES = 64 * 1024
READ_CHUNK_BYTES = 64 * 1024


class _AnyPath(BaseConverter):
    """Match the rest of the URL, empty or with odd slashes: the view judges the raw path itself."""

    regex = ".*"
    part_isolating = False


def init_app(app: Flask, services) -> None:
    """Register the proxy blueprint (auth.credentials authenticates every /ollama request first)."""
    app.url_map.converters["proxy_any"] = _AnyPath
    app.register_blueprint(bp)


# One rule for /ollama, /ollama/ and everything below, slashes unmerged and never redirected.
@bp.route(PREFIX + "<proxy_any:rest>", methods=ROUTE_METHODS, merge_slashes=False, strict_slashes=False)
@require(INFER)
def forward(rest: str) -> Response:
    """Forward one allowlisted request to Ollama and relay its answer as it streams."""
    started = time.monotonic()
    try:
        return _forward()
    except ApiError as exc:
        # Refused or failed before any answer streamed: counted as an error of its caller.
        principal = current_principal()
        services_module.current().usage.record_later(Usage(
            principal.username, principal.key.id if principal.key else None,
            usage_endpoint(raw_request_path(request.environ)), None, exc.status,
            round(time.monotonic() - started, 6), None, None))
        raise


def _forward() -> Response:
    services = services_module.current()
    config, client = services.config, services.ollama
    try:
        route = resolve(raw_request_path(request.environ), request.method)
    except Refusal as refusal:
        headers = {"Allow": ", ".join(sorted(refusal.allow))} if refusal.allow else None
        raise ApiError(refusal.message, status=refusal.status, headers=headers) from None

    reader = None
    body: bytes | Iterable[bytes] | None = None
    if route.method in BODY_METHODS:
        reader = _BodyReader.from_request(config.max_proxy_request_size)
        body = reader.body()

    names = FORWARDED_REQUEST_HEADERS if body is not None else FORWARDED_REQUEST_HEADERS[1:]
    # From the WSGI environ: Werkzeug's `name in request.headers` raises and catches an exception
    # for each absent header. Content-Type is the one CGI keeps without the HTTP_ prefix.
    environ = request.environ
    headers = {name: value for name, value in
               ((name, environ.get(_ENVIRON_KEYS[name])) for name in names) if value is not None}
    # Ask for the bytes as they are: nothing to decode, nothing to re-encode, no buffering.
    headers["Accept-Encoding"] = "identity"
    timeout = (config.proxy_timeout_s, config.proxy_timeout_s)
    try:
        upstream = client.open_raw(route.method, route.upstream_path, body=body, headers=headers,
                                   timeout=timeout)
    except UnsendableHeader as exc:  # checked by the transport before anything is sent
        raise BadRequestError(f"the {exc.name} header holds a control character; it cannot be forwarded") from None
    except OllamaUnavailableError as exc:
        if reader is not None and reader.too_large:
            raise reader.error() from None
        raise _bad_gateway(exc) from None
    if reader is not None and reader.too_large:
        upstream.close()
        raise reader.error()

    chunks = iter_body(upstream, READ_CHUNK_BYTES)
    try:
        # Wait for the first byte before answering, so that silence up to then is still a 504.
        with client.transport_errors(timeout):
            first = next(chunks, b"")
    except OllamaUnavailableError as exc:
        upstream.close()
        raise _bad_gateway(exc) from None
    except OllamaTimeoutError:
        upstream.close()
        raise

    principal = current_principal()
    meter = UsageMeter(principal.username, principal.key.id if principal.key else None, route.endpoint,
                       upstream.status, services.usage.record_later)
    length = _body_length(upstream)
    if length is not None and len(first) >= length:
        # The whole answer came with the first receive (a model list, a version, most errors):
        # it goes out as it is, in one write, and the upstream connection is back in the pool.
        upstream.close()
        meter.feed(first)
        meter.finish()
        response = Response(first, status=upstream.status)
        _copy_response_headers(upstream, response, length)
        return response
    response = Response(meter.wrap(_relay(client, timeout, upstream, first, chunks, length)),
                        status=upstream.status,
                        direct_passthrough=True)
    _copy_response_headers(upstream, response, length)
    response.call_on_close(upstream.close)
    return response


def _body_length(upstream) -> int | None:
    """The length of the upstream body as relayed (identity bytes), when Ollama declared one."""
    headers = upstream.headers
    declared = headers.get("Content-Length")
    if declared is None or "Content-Encoding" in headers or upstream.chunked or not declared.isdigit():
        return None
    return int(declared)


@bp.after_request
def _allow_what_is_forwarded(response: Response) -> Response:
    """Make Flask's automatic OPTIONS answer list the allowlist's methods, not the catch-all rule's."""
    if request.method == "OPTIONS" and "Allow" in response.headers:
        response.headers["Allow"] = ", ".join(sorted(allowed_methods(raw_request_path(request.environ)) | {"OPTIONS"}))
    return response


def _bad_gateway(exc: OllamaUnavailableError) -> OllamaUnavailableError:
    """Through the proxy an unreachable Ollama is a bad gateway (502), not the API's 503."""
    return OllamaUnavailableError(exc.message, status=502, extra=exc.extra)


def raw_request_path(environ: dict) -> str:
    """Return the request path as it came on the wire (still percent-encoded, no query string)."""
    raw = environ.get("RAW_PATH_INFO") or environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw is None:
        # A server that keeps no raw path: the decoded one, which at least shows "..", "//" and "\".
        raw = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    raw = raw.split("?", 1)[0]
    script = environ.get("SCRIPT_NAME", "")
    if script and raw.startswith(script):
        raw = raw[len(script):]
    return raw


class _BodyReader:
    """The client's request body, counted as it is read; refuses to pass MAX_PROXY_REQUEST_SIZE."""

    def __init__(self, stream, limit: int, declared: int | None):
        self.stream = stream
        self.limit = limit
        self.declared = declared
        self.total = 0
        self.too_large = False

    @classmethod
    def from_request(cls, limit: int) -> "_BodyReader":
        declared = request.content_length  # None when chunked
        if declared is not None and declared > limit:
            raise cls._error_for(limit)
        # The app-wide MAX_CONTENT_LENGTH (1 MiB, for the JSON API) must not cut proxy bodies.
        request.max_content_length = limit
        if declared is not None:
            stream = request.stream  # limited to the declared length
        elif "chunked" in request.environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            # Werkzeug would hand back an empty stream for a body without a length; the server
            # has already de-chunked wsgi.input and ends it where the body ends.
            stream = request.environ["wsgi.input"]
        else:
            stream = None
        return cls(stream, limit, declared)

    @staticmethod
    def _error_for(limit: int) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"request body too large: the proxy accepts at most {limit} bytes "
                                    "(MAX_PROXY_REQUEST_SIZE)")

    def error(self) -> PayloadTooLargeError:
        return self._error_for(self.limit)

    def read(self, size: int) -> bytes:
        try:
            data = self.stream.read(size)
        except (OSError, ValueError) as exc:  # the client hung up mid-body, or sent broken chunks
            raise BadRequestError(f"request body ended early or is malformed: {exc}") from None
        self.total += len(data)
        if self.total > self.limit:
            # Stop here: Ollama gets at most `limit` bytes of a chunked upload it cannot finish.
            self.too_large = True
            raise self.error()
        return data

    def body(self) -> bytes | Iterator[bytes] | None:
        """Return the body as bytes when small, else as an iterator that reads as it is sent."""
        if self.stream is None:
            return None
        head = self.read(SMALL_BODY_BYTES)
        if self.declared is not None and self.total >= self.declared:
            return head
        more = self.read(SMALL_BODY_BYTES) if head else b""
        if not more:
            return head
        return self._rest(head, more)

    def _rest(self, *already: bytes) -> Iterator[bytes]:
        yield from already
        while data := self.read(READ_CHUNK_BYTES):
            yield data


def _relay(client, timeout, upstream, first: bytes, chunks: Iterator[bytes],
           length: int | None = None) -> Iterator[bytes]:
    """Pass Ollama's body on as it comes, in the request's own green thread.

    Each chunk is read and written by the same green thread, with nothing held in between, so:
    a client that reads slower than Ollama writes blocks the write, and so the next upstream
    read (the backlog sits in the two kernels' socket buffers, never in our memory); a silence of
    PROXY_TIMEOUT_SECONDS raises out of the read and ends the stream; and a client that goes away
    fails the write, the server closes this generator, and the `finally` closes the upstream
    connection, which tells Ollama to stop generating. A separate reader thread (the pump this
    replaces) cost a hub wake-up and a green-thread switch per receive, ~+9 ms on the first line
    with 8 paced streams. A chunk is all that one upstream receive brought (iter_body), so lines
    that arrived together leave in one write. With the body's `length` known, the relay ends once
    that much has passed, without a last read to find the end.
    """
    sent = len(first)
    try:
        if first:
            yield first
        with client.transport_errors(timeout):
            for chunk in chunks:
                yield chunk
                sent += len(chunk)
                if length is not None and sent >= length:
                    return
    except (OllamaTimeoutError, OllamaUnavailableError) as exc:
        # Headers are out: all that is left is to end the stream where Ollama stopped.
        log.warning("proxy: upstream stream ended early: %s", exc.message)
    finally:
        upstream.close()


def _copy_response_headers(upstream, response: Response, length: int | None) -> None:
    headers = upstream.headers
    response.headers.remove("Content-Type")
    for name in RELAYED_RESPONSE_HEADERS:
        value = headers.get(name)
        if value is not None:
            response.headers[name] = value
    # iter_body hands back identity bytes, so a length (_body_length) only holds for an unencoded body.
    if length is not None:
        response.headers["Content-Length"] = str(length)


