"""OllamaClient against the fake Ollama over real HTTP: typed calls, the two transport errors, open_raw."""
import hashlib
import http.client
import json
import socket
import ssl
import statistics
import time

import pytest

import concurrency
from tests.fakes.fake_registry import make_certificate
from tests.live import wait_until
from errors import OllamaError, OllamaTimeoutError, OllamaUnavailableError
from ollama_client import transport
from ollama_client.client import OllamaClient, iter_body, iter_lines


def layer_hex(model, index):
    """The 12 hex digits the fake names layer `index` of `model` with."""
    return hashlib.sha256(f"{model}/{index}".encode()).hexdigest()[:12]


@pytest.fixture
def client(fake_ollama):
    ollama = OllamaClient(fake_ollama.url, timeout=(2.0, 0.5), reachable_cache_s=0.2)
    yield ollama
    ollama.close()


def test_typed_calls_speak_ollamas_protocol(client, fake_ollama):
    assert client.version() == "0.6.8"
    assert [m["name"] for m in client.list_models()] == ["llama3.2:latest", "qwen2.5-coder:7b", "all-minilm:latest"]
    assert client.list_loaded() == []
    assert client.show("llama3.2")["details"]["family"] == "llama"

    assert client.load("llama3.2", "5m")["done_reason"] == "load"
    assert [m["name"] for m in client.list_loaded()] == ["llama3.2:latest"]
    assert client.unload("llama3.2")["done_reason"] == "unload"
    client.delete("all-minilm")

    generate = fake_ollama.requests("/api/generate")
    assert [json.loads(r["body"]) for r in generate] == [
        {"model": "llama3.2", "keep_alive": "5m", "stream": False},
        {"model": "llama3.2", "keep_alive": 0, "stream": False},
    ]
    delete = fake_ollama.requests("/api/delete")[0]
    assert (delete["method"], json.loads(delete["body"])) == ("DELETE", {"model": "all-minilm"})
    assert generate[0]["headers"]["User-Agent"] == "vram-dashboard"
    assert "Authorization" not in generate[0]["headers"]


def test_ollama_error_status_and_message_are_kept(client, fake_ollama):
    with pytest.raises(OllamaError) as caught:
        client.load("nope", -1)
    assert (caught.value.status, caught.value.upstream_status) == (502, 404)
    assert caught.value.message == "Ollama: model 'nope' not found"

    fake_ollama.set_behaviour(fail={"/api/tags": {"status": 500, "error": "disk full"}})
    with pytest.raises(OllamaError) as caught:
        client.list_models()
    assert (caught.value.upstream_status, caught.value.message) == (500, "Ollama: disk full")


def test_unreachable_ollama_is_503_naming_ollama_host(client, fake_ollama):
    fake_ollama.stop()
    with pytest.raises(OllamaUnavailableError) as caught:
        client.list_models()
    assert caught.value.status == 503
    assert caught.value.message == (f"Ollama is not reachable at {fake_ollama.url}: connection refused. "
                                    "Start Ollama (`ollama serve`) or set OLLAMA_HOST to its address.")


def test_unknown_host_is_503_too():
    ollama = OllamaClient("http://no-such-host.invalid:11434")
    with pytest.raises(OllamaUnavailableError, match="cannot resolve the host name.*OLLAMA_HOST"):
        ollama.version()


def test_silent_ollama_is_504(client, fake_ollama):
    fake_ollama.set_behaviour(delay_s={"/api/tags": 2.0})
    started = time.monotonic()
    with pytest.raises(OllamaTimeoutError) as caught:
        client.list_models()
    assert 0.4 < time.monotonic() - started < 1.5
    assert caught.value.status == 504
    assert caught.value.message.startswith(f"Ollama at {fake_ollama.url} did not answer within 0.5 s (OLLAMA_HOST)")


def test_redirects_are_not_followed(client, fake_ollama):
    fake_ollama.set_behaviour(redirect={"/api/tags": "http://example.com/api/tags"})
    with pytest.raises(OllamaError, match="HTTP 307 .*not followed"):
        client.list_models()
    response = client.open_raw("GET", "/api/tags")
    assert (response.status, response.headers["Location"]) == (307, "http://example.com/api/tags")
    response.close()
    assert fake_ollama.count("GET", "/api/tags") == 2


def test_environment_proxies_are_ignored(client, fake_ollama, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "")
    assert client.version() == "0.6.8"


def test_is_reachable_is_cached_and_never_raises(client, fake_ollama):
    assert client.is_reachable() is True
    fake_ollama.stop()
    assert client.is_reachable() is True  # still the cached answer
    wait_until(lambda: client.is_reachable() is False, 2)  # once the cache has aged
    assert fake_ollama.running is False


def test_open_raw_streams_chunks_as_ollama_sends_them(client, fake_ollama):
    fake_ollama.set_behaviour(tokens=4, token_interval_s=0.15)
    started = time.monotonic()
    response = client.open_raw("POST", "/api/generate", body=b'{"model": "llama3.2", "prompt": "hi"}',
                               headers={"Content-Type": "application/json"}, timeout=(2, 5))
    arrivals = []
    with client.transport_errors():
        for line in iter_lines(iter_body(response)):
            arrivals.append((time.monotonic() - started, json.loads(line)))
    response.close()
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert [a[1]["response"] for a in arrivals] == ["The", " sky", " is", " blue", ""]
    assert arrivals[0][0] < 0.1      # the first token did not wait for the last
    assert arrivals[-1][0] >= 0.45


def test_open_raw_returns_error_statuses_untouched(client):
    response = client.open_raw("POST", "/api/show", body=b'{"model": "nope"}')
    assert (response.status, json.loads(response.read())) == (404, {"error": "model 'nope' not found"})
    response.close()


def test_open_raw_sends_an_iterator_body_chunked(client, fake_ollama):
    def body():
        yield b'{"model": "all-minilm", '
        yield b'"input": "hello"}'

    response = client.open_raw("POST", "/api/embed", body=body(), headers={"Content-Type": "application/json"})
    assert response.status == 200
    assert len(json.loads(response.read())["embeddings"][0]) == 8
    response.close()
    recorded = fake_ollama.requests("/api/embed")[0]
    assert recorded["headers"]["Transfer-Encoding"] == "chunked"
    assert recorded["body"] == '{"model": "all-minilm", "input": "hello"}'


def test_open_raw_transport_errors_are_the_two_kinds(client, fake_ollama):
    fake_ollama.set_behaviour(delay_s={"/api/ps": 2.0})
    with pytest.raises(OllamaTimeoutError):
        client.open_raw("GET", "/api/ps", timeout=(1, 0.2))
    fake_ollama.stop()
    with pytest.raises(OllamaUnavailableError, match="connection refused"):
        client.open_raw("GET", "/api/ps")


def test_open_raw_refuses_unnormalised_paths(client):
    for path in ("api/tags", "/api/../api/pull", "/./api/tags", "/api/tags\r\nX: y"):
        with pytest.raises(ValueError):
            client.open_raw("GET", path)


def test_pull_stream_lines_error_line_and_broken_stream(client, fake_ollama):
    fake_ollama.set_behaviour(pull={"layers": [100], "lines_per_layer": 2})
    statuses = [line["status"] for line in client.pull("tiny")]
    layer = f"pulling {layer_hex('tiny', 0)}"
    assert statuses == ["pulling manifest", layer, layer, layer, "verifying sha256 digest", "writing manifest",
                        "success"]

    assert list(client.pull("does-not-exist")) == [{"status": "pulling manifest"},
                                                    {"error": "pull model manifest: file does not exist"}]

    fake_ollama.set_behaviour(pull={"die_after_lines": 2})
    lines = []
    with pytest.raises(OllamaUnavailableError, match="the connection broke mid-response"):
        for line in client.pull("tiny"):
            lines.append(line)
    assert len(lines) == 2


def test_closing_a_pull_from_another_green_thread_cancels_it_upstream(client, fake_ollama):
    fake_ollama.set_behaviour(pull={"hang_after_lines": 2})
    stream = client.pull("big")
    seen = []

    def read():
        try:
            for line in stream:
                seen.append(line["status"])
        except OllamaUnavailableError:
            seen.append("broken")

    reader = concurrency.spawn(read)
    time.sleep(0.1)
    stream.close()
    reader.wait()
    assert seen == ["pulling manifest", f"pulling {layer_hex('big', 0)}", "broken"]
    wait_until(lambda: fake_ollama.cancelled_pulls(), 2)
    assert fake_ollama.cancelled_pulls() == ["big"]


def test_fake_sets_tcp_nodelay_so_small_replies_are_not_delayed(fake_ollama):
    # Headers and body go out in two writes; without TCP_NODELAY the second waits ~40 ms for
    # the client's delayed ACK on a reused connection.
    connection = http.client.HTTPConnection("127.0.0.1", fake_ollama.port, timeout=5)
    timings = []
    for _ in range(20):
        started = time.perf_counter()
        connection.request("GET", "/api/version")
        assert connection.getresponse().read() == b'{"version": "0.6.8"}'
        timings.append(time.perf_counter() - started)
    connection.close()
    assert statistics.median(timings) < 0.02


def test_transport_errors_cover_reading_response_raw(client, fake_ollama):
    # Reading a streamed body (as the proxy does) reports its errors as the same two kinds.
    fake_ollama.set_behaviour(pull={"die_after_lines": 2})
    response = client.open_raw("POST", "/api/pull", body=b'{"model": "x"}')
    with pytest.raises(OllamaUnavailableError, match="the connection broke mid-response"):
        with client.transport_errors():
            for _ in iter_body(response, 1024):
                pass
    response.close()

    fake_ollama.set_behaviour(pull={"die_after_lines": None, "hang_after_lines": 1})
    response = client.open_raw("POST", "/api/pull", body=b'{"model": "x"}', timeout=(1, 0.3))
    with pytest.raises(OllamaTimeoutError, match="did not answer within 0.3 s"):
        with client.transport_errors((1, 0.3)):
            for _ in iter_body(response, 1024):
                pass
    response.close()


def test_fake_rolls_a_layer_back_when_asked(client, fake_ollama):
    fake_ollama.set_behaviour(pull={"layers": [1000], "lines_per_layer": 4, "rollback_after_lines": 3})
    completed = [line["completed"] for line in client.pull("x") if "completed" in line]
    assert completed == [0, 250, 500, 375, 750, 1000]


def test_fake_speaks_chat_embed_and_openai_endpoints(client, fake_ollama):
    fake_ollama.set_behaviour(tokens=2)

    def call(path, body, method="POST"):
        response = client.open_raw(method, path, body=json.dumps(body).encode() if body is not None else None,
                                   headers={"Content-Type": "application/json"})
        with client.transport_errors():
            content = response.read()
        response.close()
        return response.status, response.headers["Content-Type"], content.decode()

    status, kind, text = call("/api/chat", {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
    chunks = [json.loads(line) for line in text.splitlines()]
    assert (status, kind) == (200, "application/x-ndjson")
    assert [c["message"]["content"] for c in chunks] == ["The", " sky", ""] and chunks[-1]["done"] is True

    status, kind, text = call("/v1/chat/completions", {"model": "llama3.2", "stream": True, "messages": []})
    events = [e[len("data: "):] for e in text.split("\n\n") if e]
    assert (status, kind, events[-1]) == (200, "text/event-stream", "[DONE]")
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]] == ["The", " sky", ""]

    assert json.loads(call("/v1/models/llama3.2:latest", None, "GET")[2])["id"] == "llama3.2:latest"
    assert call("/v1/models/nope", None, "GET")[0] == 404
    assert len(json.loads(call("/api/embed", {"model": "all-minilm", "input": ["a", "b"]})[2])["embeddings"]) == 2
    assert len(json.loads(call("/api/embeddings", {"model": "all-minilm", "prompt": "a"})[2])["embedding"]) == 8
    assert json.loads(call("/v1/embeddings", {"model": "all-minilm", "input": "a"})[2])["data"][0]["index"] == 0
    assert json.loads(call("/v1/completions", {"model": "llama3.2", "prompt": "x"})[2])["choices"][0]["text"] == \
        "The sky"
    assert call("/api/nothing", {})[0:2] == (404, "text/plain; charset=utf-8")


def test_streamed_bodies_are_decoded_whole_however_they_arrive_and_keep_the_connection(client, fake_ollama):
    fake_ollama.set_behaviour(tokens=40)
    for _ in range(3):
        response = client.open_raw("POST", "/api/generate", body=b'{"model": "llama3.2", "prompt": "hi"}')
        with client.transport_errors():
            lines = list(iter_lines(iter_body(response)))
        response.close()
        assert [json.loads(line)["done"] for line in lines] == [False] * 40 + [True]
    assert client._pool.num_connections == 1  # each body read to its end gave the connection back


def test_a_body_read_to_its_content_length_gives_the_connection_back(client):
    """What the proxy does with a small answer: one read1 of the whole declared length, no read after."""
    for _ in range(3):
        response = client.open_raw("GET", "/api/tags")
        assert not response.chunked and response.headers.get("Content-Length")
        body = response.read1(1 << 20)
        assert len(body) == int(response.headers["Content-Length"]) and response.closed
        response.close()
    assert client._pool.num_connections == 1 and len(client._pool._idle) == 1


def test_a_response_closed_before_its_end_closes_its_connection(client, fake_ollama):
    fake_ollama.set_behaviour(tokens=40)
    response = client.open_raw("POST", "/api/generate", body=b'{"model": "llama3.2", "prompt": "hi"}')
    with client.transport_errors():
        assert response.read1(5)
    response.close()
    assert client._pool._idle == []
    assert client.version() == "0.6.8"
    assert client._pool.num_connections == 2


def _serve_once(head_and_body_parts, tls: ssl.SSLContext | None = None):
    """Answer one request on a fresh port with these raw bytes (sent piece by piece); return its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer():
        conn, _ = listener.accept()
        with listener:
            if tls is not None:
                try:
                    conn = tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):  # the client refused our certificate
                    conn.close()
                    return
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            received = b""
            while b"\r\n\r\n" not in received:
                received += conn.recv(65536)
            for part in head_and_body_parts:
                conn.sendall(part)
                time.sleep(0.002)  # separate receives on the client's side

    concurrency.spawn(answer)
    return f"{'https' if tls else 'http'}://127.0.0.1:{listener.getsockname()[1]}"


def _tls_server_context(tmp_path):
    cert, key = make_certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return cert, context


def test_an_https_ollama_host_is_spoken_to_over_verified_tls(tmp_path, monkeypatch):
    cert, context = _tls_server_context(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the system's trust store, as a user would add a CA
    ollama = OllamaClient(_serve_once([b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n", b'{"version": "0.6.8"}'],
                                      tls=context))
    assert ollama.version() == "0.6.8"
    ollama.close()


def test_an_https_ollama_host_with_an_untrusted_certificate_is_unreachable_and_says_why(tmp_path):
    _cert, context = _tls_server_context(tmp_path)
    ollama = OllamaClient(_serve_once([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"], tls=context))
    with pytest.raises(OllamaUnavailableError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        ollama.version()
    ollama.close()


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("wire, body", [
    (b"5\r\nhello\r\n0\r\n\r\n", b"hello"),
    (b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", b"hello world"),
    (b"A\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n", b"0123456789"),
    (b"0\r\n\r\n", b""),
])
@pytest.mark.parametrize("piece", [1, 3, 7, 1000])
def test_chunked_bodies_decode_however_the_bytes_are_split(wire, body, piece):
    ollama = OllamaClient(_serve_once([CHUNKED_HEAD] + [wire[i:i + piece] for i in range(0, len(wire), piece)]))
    response = ollama.open_raw("GET", "/api/version")
    with ollama.transport_errors():
        assert b"".join(iter_body(response)) == body
    response.close()
    ollama.close()


@pytest.mark.parametrize("wire", [b"zz\r\n", b"-5\r\n", b"0x5\r\nhello\r\n", b"5\r\nhello"])
def test_malformed_or_cut_chunking_is_a_broken_connection(wire):
    ollama = OllamaClient(_serve_once([CHUNKED_HEAD, wire]))
    response = ollama.open_raw("GET", "/api/version")
    with pytest.raises(OllamaUnavailableError, match="the connection broke mid-response"):
        with ollama.transport_errors():
            for _ in iter_body(response):
                pass
    response.close()
    ollama.close()


def _answer(parts, method="GET"):
    """Open one request against a server that sends `parts`; return (client, response, body read to its end)."""
    ollama = OllamaClient(_serve_once(parts))
    response = ollama.open_raw(method, "/api/version")
    with ollama.transport_errors():
        body = response.read()
    return ollama, response, body


@pytest.mark.parametrize("parts, method, body, reused", [
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"], "HEAD", b"", True),  # a HEAD answer has no body
    ([b"HTTP/1.1 204 No Content\r\n\r\n"], "DELETE", b"", True),
    ([b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"], "GET", b"", True),
    ([b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], "POST", b"ok", True),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"], "GET", b"ok", False),
    ([b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"], "GET", b"ok", False),
    ([b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil ", b"the end"], "GET", b"until the end", False),
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n"], "GET", b"ok", False),  # unasked-for bytes
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], "GET", b"ok", True),
], ids=["HEAD", "204", "304", "100 Continue skipped", "Connection: close", "HTTP/1.0", "body until close",
        "bytes after the answer", "keep-alive"])
def test_each_way_a_response_can_end_is_read_to_its_end_and_reused_only_when_safe(parts, method, body, reused):
    ollama, response, read = _answer(parts, method)
    status = int([part for part in parts if part.startswith(b"HTTP/")][-1][9:12])
    assert (response.status, read, response.closed) == (status, body, True)
    assert len(ollama._pool._idle) == (1 if reused else 0)
    ollama.close()


def test_a_status_and_its_headers_are_parsed_case_insensitively_and_repeats_kept():
    ollama, response, body = _answer([b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
                                      b"X-Seen: 1\r\nX-Seen: 2\r\nContent-Length: 2\r\n\r\n{}"])
    assert (response.status, body) == (404, b"{}")
    assert response.headers["Content-Type"] == response.headers.get("CONTENT-TYPE") == "application/json"
    assert response.headers["x-seen"] == "1, 2" and "content-length" in response.headers
    assert 5 not in response.headers and response.headers.get("Location") is None
    ollama.close()


@pytest.mark.parametrize("parts, method", [
    ([], "GET"),  # hangs up without a word
    ([b"HTTP/1.1 200 OK\r\nContent-Le"], "GET"),  # inside the head
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], "GET"),  # inside the body
    ([b"HTTP/1.1 2000 OK\r\n\r\n"], "GET"),
    ([b"SSH-2.0-OpenSSH_9.6\r\n"], "GET"),  # not HTTP at all
    ([b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok"], "GET"),  # ambiguous framing
    ([b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"], "GET"),
], ids=["no answer", "cut head", "cut body", "bad status", "not HTTP", "two lengths", "unasked-for upgrade"])
def test_a_broken_or_foreign_answer_is_ollama_unavailable_never_a_crash(parts, method):
    with pytest.raises(OllamaUnavailableError, match="not reachable"):
        _answer(parts, method)


def test_lines_that_arrive_together_are_read_together():
    """What the relay writes downstream in one go: all the de-chunked body of one receive."""
    lines = b"".join(b"%X\r\n%s\r\n" % (len(line), line) for line in [b'{"n": %d}\n' % i for i in range(50)])
    ollama = OllamaClient(_serve_once([CHUNKED_HEAD + lines, b"0\r\n\r\n"]))
    response = ollama.open_raw("POST", "/api/generate", body=b"{}")
    with ollama.transport_errors():
        first, rest = response.read1(1 << 16), response.read()
    assert first.count(b"\n") == 50 and rest == b"" and response.closed
    ollama.close()


@pytest.mark.parametrize("peer", ["sends", "hangs up"])
def test_a_pooled_connection_ollama_closed_is_not_reused(client, peer):
    """The pool's liveness check (poll(2)): an idle connection is reused while silent, dropped once
    Ollama hangs up or sends bytes nobody asked for."""
    pool = client._pool
    connection = pool._take()
    ours, theirs = socket.socketpair()
    try:
        connection.sock = ours
        pool._give_back(connection)
        assert pool._take() is connection  # silent: reused
        pool._give_back(connection)
        if peer == "sends":
            theirs.sendall(b"x")
        else:
            theirs.close()
        fresh = pool._take()
        assert fresh is not connection and fresh.sock is None  # a new connection, not yet opened
        assert connection.sock is None  # the dead one was closed
        assert pool._idle == []
    finally:
        ours.close()
        theirs.close()


def test_a_request_after_ollama_closed_the_idle_connection_succeeds(client, fake_ollama):
    assert client.version() == "0.6.8"
    assert client._pool._idle
    for conn in client._pool._idle:  # what a restarted or idle-timing-out Ollama does
        conn.sock.shutdown(socket.SHUT_RDWR)
    assert client.version() == "0.6.8"


class _RecordingSocket:
    """A connected socket that records every send and answers with `answer` (one canned response)."""

    def __init__(self, answer: bytes):
        self.sent: list[bytes] = []
        self._answer = answer
        self._ours, self._theirs = socket.socketpair()  # a real descriptor, silent, for the liveness check

    def sendall(self, data):
        self.sent.append(bytes(data))

    def recv(self, size):
        data, self._answer = self._answer[:size], self._answer[size:]
        return data

    def settimeout(self, timeout):
        pass

    def fileno(self):
        return self._ours.fileno()

    def close(self):
        self._ours.close()
        self._theirs.close()


def _pooled_recorder(client, answer=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"):
    connection = transport.Connection()
    connection.sock = recorder = _RecordingSocket(answer)
    client._pool._idle.append(connection)
    return recorder


@pytest.mark.parametrize("body, sends", [(b'{"model": "m"}', 1), (None, 1), ([b"a", b"", b"b"], 4)],
                         ids=["bytes body: one send", "no body", "streamed body: chunked"])
def test_a_request_with_a_bytes_body_leaves_in_one_send(client, body, sends):
    """Header block and body in one send(): Ollama reads the whole request on one wake-up."""
    recorder = _pooled_recorder(client)
    response = client.open_raw("POST", "/api/generate", body=body, headers={"Content-Type": "application/json"})
    assert response.read() == b"{}"
    assert len(recorder.sent) == sends
    wire = b"".join(recorder.sent)
    head, _, rest = wire.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /api/generate HTTP/1.1"
    assert b"Content-Type: application/json" in lines and b"Accept-Encoding: identity" in lines
    if isinstance(body, bytes):
        assert rest == body and f"Content-Length: {len(body)}".encode() in lines
    elif body is None:
        assert rest == b"" and b"Content-Length: 0" in lines  # a bodiless POST still says so
    else:
        assert rest == b"1\r\na\r\n1\r\nb\r\n0\r\n\r\n" and b"Transfer-Encoding: chunked" in lines
    assert client._pool._idle  # read to its end: back in the pool
    client.close()


@pytest.mark.parametrize("headers", [{"X-A": "a\r\nX-Injected: 1"}, {"X-A": "a\nb"}, {"X-A": "a\x00"},
                                     {"Bad Name": "a"}, {"X-A\r\nB": "a"}, {"Content-Length": "5"},
                                     {"Transfer-Encoding": "chunked"}, {"host": "elsewhere"},
                                     {"Connection": "upgrade"}, {"X-A": "\u20ac"}])
def test_a_header_that_would_change_the_framing_never_reaches_the_wire(client, headers):
    recorder = _pooled_recorder(client)
    with pytest.raises(ValueError):
        client.open_raw("GET", "/api/tags", headers=headers)
    assert recorder.sent == []
    client.close()


def test_a_header_that_cannot_be_sent_is_named():
    pool = transport.Pool("http://127.0.0.1:1")
    with pytest.raises(transport.UnsendableHeader) as raised:
        pool.request("GET", "/api/tags", body=None, headers={"Accept": "*/*", "User-Agent": "a\x00"},
                     timeout=(1, 1))
    assert raised.value.name == "User-Agent"
    assert pool.num_connections == 0  # refused before connecting


def test_a_get_sends_only_what_it_is_given():
    pool = transport.Pool("http://user:secret@ollama.lan:11434/base")
    head = pool.head("GET", "/base/api/tags", None, {"Accept": "*/*", "Accept-Encoding": "gzip"})
    assert head == b"GET /base/api/tags HTTP/1.1\r\nHost: ollama.lan:11434\r\nAccept: */*\r\n" \
                   b"Accept-Encoding: gzip\r\n\r\n"  # no credentials in Host, no second Accept-Encoding
    for target in ("/a b", "/a\x00", "api/tags"):
        with pytest.raises(ValueError):
            pool.head("GET", target, None, {})
