"""The /ollama proxy on a running `python app.py`, driven by the official clients and raw sockets:
streaming as tokens are made, SSE, wire-level path attacks, chunked limits, timeouts, disconnects."""
import json
import socket
import time

import ollama
import openai
import pytest
import requests

from tests.live import start_server, wait_until

pytestmark = pytest.mark.live

STATIC_TOKEN = "static-proxy-token-0123456789"
LIMIT_BYTES = 150_000  # above the 2 x 64 KiB the proxy reads before contacting Ollama
TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory, fake_ollama_server):
    live = start_server(tmp_path_factory.mktemp("proxy-live"), ollama_url=fake_ollama_server.url,
                        extra={"PROXY_AUTH_ENABLED": "true", "PROXY_AUTH_TOKEN": STATIC_TOKEN,
                               "MAX_PROXY_REQUEST_SIZE": str(LIMIT_BYTES),
                               "PROXY_TIMEOUT_SECONDS": str(TIMEOUT_S)})
    yield live
    live.stop()


@pytest.fixture
def fake(fake_ollama, server):
    """The fake Ollama, reset; the server is up (its own start-up requests are already recorded)."""
    fake_ollama.reset()
    return fake_ollama


@pytest.fixture
def client(server):
    return ollama.Client(host=f"{server.url}/ollama", headers=server.headers())


def raw_request(server, request_line: bytes, headers: dict[str, str] | None = None, body: bytes = b"") -> int:
    """Send bytes exactly as given (no client-side path normalisation); return the status code."""
    lines = [request_line, b"Host: 127.0.0.1", b"Connection: close"]
    lines += [f"{k}: {v}".encode() for k, v in (headers or {}).items()]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        reply = b""
        while b"\r\n" not in reply:
            data = sock.recv(4096)
            if not data:
                break
            reply += data
    return int(reply.split(b" ", 2)[1])


# -- the official ollama client ---------------------------------------------------------------

def test_official_client_list_ps_show(client, fake):
    fake.set_loaded([{"name": "llama3.2"}])
    assert [m.model for m in client.list().models] == ["llama3.2:latest", "qwen2.5-coder:7b", "all-minilm:latest"]
    assert [m.model for m in client.ps().models] == ["llama3.2:latest"]
    assert client.show("llama3.2").details.family == "llama"
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("no-such-model")
    assert missing.value.status_code == 404 and "not found" in missing.value.error


def test_official_client_generate_streams_token_by_token(client, fake):
    fake.set_behaviour(tokens=6, token_interval_s=0.15)
    arrivals, text = [], []
    started = time.monotonic()
    for part in client.generate(model="llama3.2", prompt="Why is the sky blue?", stream=True):
        arrivals.append(time.monotonic() - started)
        text.append(part.response)
        if part.done:
            assert part.eval_count == 6
    assert "".join(text) == "The sky is blue because of"
    assert len(arrivals) == 7
    # Each token comes when the fake makes it, not all at the end.
    assert arrivals[0] < 0.1
    assert arrivals[-1] - arrivals[0] > 0.6
    gaps = [b - a for a, b in zip(arrivals[:5], arrivals[1:6])]
    assert min(gaps) > 0.08, gaps


def test_a_full_speed_stream_arrives_whole_and_in_order(client, fake):
    fake.set_behaviour(tokens=3000, token_interval_s=0)
    parts = list(client.generate(model="llama3.2", prompt="go", stream=True))
    assert len(parts) == 3001 and parts[-1].done and parts[-1].eval_count == 3000
    words = ["The", " sky", " is", " blue", " because", " of", " Rayleigh", " scattering", "."]
    assert [p.response for p in parts[:-1]] == [words[i % len(words)] for i in range(3000)]


def test_official_client_chat_and_embed(client, fake):
    answer = client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
    assert answer.message.content == "The sky is blue because"
    streamed = "".join(part.message.content for part in
                       client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert streamed == "The sky is blue because"
    embedded = client.embed(model="all-minilm", input=["a", "b"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 8


def test_official_client_with_the_static_token(server, fake):
    static = ollama.Client(host=f"{server.url}/ollama", headers={"Authorization": f"Bearer {STATIC_TOKEN}"})
    assert static.list().models
    (record,) = fake.requests("/api/tags")
    assert "Authorization" not in record["headers"]


def test_official_client_without_credentials_gets_401(server, fake):
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=f"{server.url}/ollama").list()
    assert refused.value.status_code == 401
    assert fake.requests() == []


# -- OpenAI-compatible ------------------------------------------------------------------------

def test_openai_chat_completions_stream_as_server_sent_events(server, fake):
    fake.set_behaviour(tokens=4, token_interval_s=0.15)
    started = time.monotonic()
    with requests.post(f"{server.url}/ollama/v1/chat/completions", headers=server.headers(), stream=True,
                       json={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": True},
                       timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "text/event-stream"
        events = []
        for line in response.iter_lines():
            if line:
                events.append((time.monotonic() - started, line.decode()))
    assert events[-1][1] == "data: [DONE]"
    deltas = [json.loads(line[len("data: "):])["choices"][0]["delta"]["content"] for _, line in events[:-1]]
    assert "".join(deltas) == "The sky is blue"
    assert events[1][0] - events[0][0] > 0.1  # one event per token, as made


def test_openai_package_models_and_streamed_chat(server, fake):
    api = openai.OpenAI(base_url=f"{server.url}/ollama/v1", api_key=server.login(), max_retries=0)
    assert [m.id for m in api.models.list()] == ["llama3.2:latest", "qwen2.5-coder:7b", "all-minilm:latest"]
    assert api.models.retrieve("llama3.2:latest").id == "llama3.2:latest"
    stream = api.chat.completions.create(model="llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == "The sky is blue because"
    assert api.embeddings.create(model="all-minilm", input="x").data[0].embedding
    static = openai.OpenAI(base_url=f"{server.url}/ollama/v1", api_key=STATIC_TOKEN, max_retries=0)
    assert static.completions.create(model="llama3.2", prompt="hi").choices[0].text == "The sky is blue because"


def test_get_v1_models_with_requests(server, fake):
    response = requests.get(f"{server.url}/ollama/v1/models", headers=server.headers(), timeout=5)
    assert response.status_code == 200
    assert response.json()["object"] == "list"
    assert fake.count("GET", "/v1/models") == 1


# -- on the wire: paths no client would normalise ---------------------------------------------

WIRE_TRAVERSAL = [
    b"GET /ollama/../api/tags HTTP/1.1", b"GET /ollama/api/../api/tags HTTP/1.1", b"GET /ollama/./api/tags HTTP/1.1",
    b"GET /ollama/%2e%2e/api/tags HTTP/1.1", b"POST /ollama/%2E%2E/api/pull HTTP/1.1",
    b"GET /ollama/.%2e/.%2e/api/tags HTTP/1.1", b"GET /ollama/api%2ftags HTTP/1.1", b"GET /ollama/api%2Ftags HTTP/1.1",
    b"GET /ollama/api%5ctags HTTP/1.1", b"GET /ollama/api\\tags HTTP/1.1", b"GET /ollama\\api\\tags HTTP/1.1",
    b"GET /ollama//api/tags HTTP/1.1", b"GET /ollama/api//tags HTTP/1.1",
    b"GET /ollama/api/tags/ HTTP/1.1", b"GET /ollama/http://127.0.0.1:9/api/tags HTTP/1.1",
    b"GET /ollama/api/tags%00 HTTP/1.1", b"GET /ollama/api/ta\x01gs HTTP/1.1", b"GET /ollama/api/tags\x7f HTTP/1.1",
    b"GET /ollama/api/tags%0d%0aX-Injected:%201 HTTP/1.1", b"GET /ollama/%252e%252e/api/tags HTTP/1.1",
    b"GET /ollama/api/%74ags HTTP/1.1", b"GET /ollama/API/TAGS HTTP/1.1",
    b"GET /ollama/v1/models/..%2f..%2fapi%2ftags HTTP/1.1", b"GET /ollama/v1/models/../../api/tags HTTP/1.1",
    b"GET /ollama/v1/models/a%2fb HTTP/1.1",
    b"GET /%6fllama/api/tags HTTP/1.1", b"GET /ollama%2fapi%2ftags HTTP/1.1", b"GET /ollama/api/tags\xc3\xa4 HTTP/1.1",
]


@pytest.mark.parametrize("request_line", WIRE_TRAVERSAL, ids=lambda line: line.decode("latin1"))
def test_unsafe_paths_on_the_wire_are_404_and_never_reach_ollama(server, fake, request_line):
    assert raw_request(server, request_line, server.headers()) == 404
    assert fake.requests() == []


def test_unsafe_paths_without_credentials_are_401(server, fake):
    for line in WIRE_TRAVERSAL[:6]:
        assert raw_request(server, line) == 401
    assert fake.requests() == []


def test_the_same_raw_socket_reaches_ollama_for_a_clean_path(server, fake):
    assert raw_request(server, b"GET /ollama/api/tags?x=1 HTTP/1.1", server.headers()) == 200
    assert raw_request(server, b"HEAD /ollama/api/version HTTP/1.1", server.headers()) == 200
    # Not collapsed to /ollama/api/ps (as http.server would): the path as sent is no route.
    # (An absolute-form target, `GET http://host/ollama/…`, is a 400: tests/test_hardening.py.)
    assert raw_request(server, b"GET //ollama/api/ps HTTP/1.1", server.headers()) == 404
    assert fake.counts() == {"GET /api/tags": 1, "HEAD /api/version": 1}


# -- limits -----------------------------------------------------------------------------------

def test_a_chunked_body_over_the_limit_is_413_and_ollama_never_gets_it_whole(server, fake):
    piece = b"x" * 16_384
    total = 40 * len(piece)

    def chunks():
        yield b'{"model": "llama3.2", "prompt": "'
        for _ in range(40):
            yield piece
        yield b'"}'

    response = requests.post(f"{server.url}/ollama/api/generate", headers=server.headers(), data=chunks(),
                             timeout=10)
    assert response.status_code == 413
    assert "MAX_PROXY_REQUEST_SIZE" in response.json()["error"]
    for record in fake.requests():
        assert len(record["body"]) <= LIMIT_BYTES < total
        assert not record["body"].endswith('"}')


def test_a_malformed_chunked_body_is_400_and_never_forwarded(server, fake):
    headers = {**server.headers(), "Transfer-Encoding": "chunked", "Content-Type": "application/json"}
    lines = [b"POST /ollama/api/generate HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [f"{k}: {v}".encode() for k, v in headers.items()]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\nzz-not-hex\r\n{}\r\n0\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.split(b" ", 2)[1] == b"400"
    assert fake.requests() == []


def test_a_declared_body_over_the_limit_is_413(server, fake):
    body = json.dumps({"model": "llama3.2", "prompt": "x" * LIMIT_BYTES}).encode()
    response = requests.post(f"{server.url}/ollama/api/generate", headers=server.headers(), data=body, timeout=10)
    assert response.status_code == 413
    assert fake.requests() == []


def test_a_chunked_body_under_the_limit_streams_up_whole(server, fake):
    text = "y" * 140_000

    def chunks():
        data = json.dumps({"model": "all-minilm", "input": text}).encode()
        for start in range(0, len(data), 10_000):
            yield data[start:start + 10_000]

    response = requests.post(f"{server.url}/ollama/api/embed", headers=server.headers(), data=chunks(), timeout=10)
    assert response.status_code == 200
    (record,) = fake.requests("/api/embed")
    assert json.loads(record["body"])["input"] == text


# -- silence, disconnects, failures -----------------------------------------------------------

def test_silence_before_the_first_byte_is_504(server, fake):
    fake.set_behaviour(delay_s={"/api/generate": 3.0})
    started = time.monotonic()
    response = requests.post(f"{server.url}/ollama/api/generate", headers=server.headers(), timeout=10,
                             json={"model": "llama3.2", "prompt": "hi"})
    assert response.status_code == 504
    assert TIMEOUT_S <= time.monotonic() - started < TIMEOUT_S + 1.0
    assert "error" in response.json()


def test_silence_after_streaming_began_ends_the_stream_cleanly(server, fake):
    fake.set_behaviour(tokens=3, token_interval_s=TIMEOUT_S + 1.0)
    with requests.post(f"{server.url}/ollama/api/generate", headers=server.headers(), stream=True, timeout=10,
                       json={"model": "llama3.2", "prompt": "hi"}) as response:
        assert response.status_code == 200
        lines = list(response.iter_lines())  # a clean end: no ChunkedEncodingError
    assert [json.loads(line)["response"] for line in lines] == ["The"]
    wait_until(lambda: fake.requests("/api/generate")[0]["disconnected"], 3)


def test_a_client_that_leaves_mid_stream_stops_ollama(server, fake):
    fake.set_behaviour(tokens=500, token_interval_s=0.02)
    response = requests.post(f"{server.url}/ollama/api/generate", headers=server.headers(), stream=True,
                             timeout=10, json={"model": "llama3.2", "prompt": "hi"})
    lines = response.iter_lines()
    for _ in range(3):
        next(lines)
    response.close()
    left_at = time.time()
    # The proxy must not keep the upstream request open.
    wait_until(lambda: fake.requests("/api/generate")[0]["disconnected"], 3)
    record = fake.requests("/api/generate")[0]
    assert record["finished_at"] - left_at < 1.0  # long before the 10 s the 500 tokens would take
    assert fake.count("POST", "/api/generate") == 1


def test_an_unreachable_ollama_is_502(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    live = start_server(tmp_path, ollama_url=f"http://127.0.0.1:{closed_port}")
    try:
        response = requests.get(f"{live.url}/ollama/api/tags", headers=live.headers(), timeout=10)
        assert response.status_code == 502
        assert "OLLAMA_HOST" in response.json()["error"]
        with pytest.raises(ollama.ResponseError) as failed:
            ollama.Client(host=f"{live.url}/ollama", headers=live.headers()).list()
        assert failed.value.status_code == 502
    finally:
        live.stop()
