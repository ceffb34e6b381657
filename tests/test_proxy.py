"""The /ollama proxy in-process (Flask test client) against the fake Ollama: credentials, refusals,
limits, errors, headers. Streaming over a real socket is in test_proxy_live.py."""
import io
import json
import time

import pytest


STATIC_TOKEN = "static-proxy-token-0123456789"


@pytest.fixture
def nvml_reader():
    """No GPU needed here: a reader with an empty snapshot."""
    from vram.snapshot import VramSnapshot

    class Reader:
        def read_snapshot(self):
            return VramSnapshot(timestamp=time.time())

        def shutdown(self):
            pass

    return Reader()


@pytest.fixture
def proxy_settings(request):
    """Parametrize indirectly to change the proxy's settings for one test."""
    return getattr(request, "param", {})


@pytest.fixture
def config_overrides(fake_ollama, proxy_settings):
    settings = {"ollama_host": fake_ollama.url, "proxy_auth_enabled": True, "proxy_auth_token": STATIC_TOKEN,
                "max_proxy_request_size": 4096, "proxy_timeout_s": 0.5}
    settings.update(proxy_settings)
    return settings


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def generate_body(size=0):
    return json.dumps({"model": "llama3.2", "prompt": "hi" + " " * size, "stream": False}).encode()


# -- credentials ------------------------------------------------------------------------------

def test_a_session_token_is_accepted(client, auth, fake_ollama):
    response = client.get("/ollama/api/tags", headers=auth.headers())
    assert response.status_code == 200
    assert [m["name"] for m in response.get_json()["models"]][0] == "llama3.2:latest"
    assert fake_ollama.count("GET", "/api/tags") == 1


@pytest.mark.parametrize("headers", [
    {}, bearer("not-a-token"), {"Authorization": "Basic YWRtaW46cGFzc3dvcmQ="}, {"Authorization": "Bearer"},
    {"Authorization": STATIC_TOKEN}, bearer(STATIC_TOKEN + "x"), bearer(STATIC_TOKEN[:-1]),
])
@pytest.mark.parametrize("method, path", [
    ("GET", "/ollama/api/tags"), ("POST", "/ollama/api/generate"), ("GET", "/ollama"),
    # Unauthenticated callers learn nothing: no 403, 404 or 405 before the credential check.
    ("POST", "/ollama/api/pull"), ("GET", "/ollama/api/nope"), ("GET", "/ollama/%2e%2e/api/tags"),
    ("GET", "/ollama//api/tags"), ("DELETE", "/ollama/api/tags"), ("TRACE", "/ollama/api/tags"),
])
def test_missing_or_bad_credentials_are_401_before_anything_else(client, fake_ollama, headers, method, path):
    response = client.open(path, method=method, headers=headers, data=b"{}")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in response.get_json()
    assert fake_ollama.requests() == []


def test_an_expired_session_token_is_401(client, auth, clock, config, fake_ollama):
    headers = auth.headers()
    clock.advance(config.session_expiry_s + 1)
    assert client.get("/ollama/api/tags", headers=headers).status_code == 401
    assert fake_ollama.requests() == []


def test_a_logged_out_token_is_401(client, auth):
    headers = auth.headers()
    assert client.post("/api/auth/logout", headers=headers).status_code == 200
    assert client.get("/ollama/api/tags", headers=headers).status_code == 401


def test_the_static_token_works_on_the_proxy_only(client, fake_ollama):
    response = client.post("/ollama/api/show", headers=bearer(STATIC_TOKEN), json={"model": "llama3.2"})
    assert response.status_code == 200
    assert response.get_json()["details"]["family"] == "llama"
    assert client.get("/api/auth/me", headers=bearer(STATIC_TOKEN)).status_code == 401


@pytest.mark.parametrize("proxy_settings", [{"proxy_auth_enabled": False}], indirect=True)
def test_the_static_token_is_refused_unless_enabled(client, fake_ollama):
    assert client.get("/ollama/api/tags", headers=bearer(STATIC_TOKEN)).status_code == 401
    assert fake_ollama.requests() == []


# -- refusals ---------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("POST", "/ollama/api/pull"), ("POST", "/ollama/api/push"), ("DELETE", "/ollama/api/delete"),
    ("POST", "/ollama/api/copy"), ("POST", "/ollama/api/create"), ("HEAD", "/ollama/api/blobs/sha256:abc"),
    ("POST", "/ollama/api/blobs/sha256:abc"),
])
def test_model_management_is_403(client, auth, fake_ollama, method, path):
    response = client.open(path, method=method, headers=auth.headers(), json={"model": "llama3.2"})
    assert response.status_code == 403
    if method != "HEAD":
        assert "/api/models/ollama/" in response.get_json()["error"]
    assert fake_ollama.requests() == []


@pytest.mark.parametrize("method, path, allow", [
    ("POST", "/ollama/api/tags", "GET, HEAD"),
    ("GET", "/ollama/api/chat", "POST"),
    ("DELETE", "/ollama/v1/models/llama3.2", "GET, HEAD"),
])
def test_a_wrong_method_is_405_with_allow(client, auth, fake_ollama, method, path, allow):
    response = client.open(path, method=method, headers=auth.headers())
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    assert method in response.get_json()["error"]
    assert fake_ollama.requests() == []


@pytest.mark.parametrize("path", ["/ollama/api/nope", "/ollama/api/tags/", "/ollama/%2e%2e/api/tags",
                                  "/ollama/api%2ftags", "/ollama//api/tags", "/ollama/v1/models/a%2f..%2fb"])
def test_unknown_or_unsafe_paths_are_404_json(client, auth, fake_ollama, path):
    response = client.get(path, headers=auth.headers())
    assert response.status_code == 404
    assert response.is_json and "error" in response.get_json()
    assert fake_ollama.requests() == []


def test_cors_preflight_needs_no_credentials_and_never_reaches_ollama(client, fake_ollama):
    assert client.options("/ollama/api/chat").status_code == 200
    assert fake_ollama.requests() == []


# -- pass-through -----------------------------------------------------------------------------

def test_ollamas_status_body_and_content_type_come_through(client, auth, fake_ollama):
    response = client.post("/ollama/api/show", headers=auth.headers(), json={"model": "no-such-model"})
    assert response.status_code == 404
    assert response.content_type == "application/json; charset=utf-8"
    assert response.get_json() == {"error": "model 'no-such-model' not found"}
    root = client.get("/ollama/", headers=auth.headers())
    assert (root.status_code, root.data, root.content_type) == (200, b"Ollama is running", "text/plain; charset=utf-8")


def test_exactly_one_upstream_request_per_proxied_request(client, auth, fake_ollama):
    headers = auth.headers()
    for _ in range(3):
        assert client.post("/ollama/api/generate", headers=headers, data=generate_body()).status_code == 200
    client.get("/ollama/v1/models", headers=headers)
    assert fake_ollama.counts() == {"POST /api/generate": 3, "GET /v1/models": 1}


def test_credentials_cookies_and_hop_by_hop_headers_never_reach_ollama(client, auth, fake_ollama):
    client.set_cookie("session", "secret-cookie")
    headers = {**auth.headers(), "Cookie": "other=secret", "Proxy-Authorization": "Basic c2VjcmV0",
               "Connection": "keep-alive, X-Secret", "X-Secret": "1", "Keep-Alive": "timeout=5", "TE": "trailers",
               "Trailer": "X-Foo", "Upgrade": "websocket", "Forwarded": "for=1.2.3.4", "X-Forwarded-For": "1.2.3.4",
               "Accept-Encoding": "gzip, br", "User-Agent": "test-agent/1.0", "Accept": "application/x-ndjson"}
    response = client.post("/ollama/api/generate", headers=headers, data=generate_body(),
                           content_type="application/json")
    assert response.status_code == 200
    (record,) = fake_ollama.requests("/api/generate")
    sent = {name.lower(): value for name, value in record["headers"].items()}
    for name in ("authorization", "cookie", "proxy-authorization", "x-secret", "keep-alive", "te", "trailer",
                 "upgrade", "forwarded", "x-forwarded-for"):
        assert name not in sent, name
    assert STATIC_TOKEN not in json.dumps(record) and auth.token not in json.dumps(record)
    assert sent["content-type"] == "application/json"
    assert sent["user-agent"] == "test-agent/1.0"
    assert sent["accept"] == "application/x-ndjson"
    assert sent["accept-encoding"] == "identity"
    assert sent["host"] == fake_ollama.url.split("//")[1]
    # And only Ollama's content headers come back: not its Server line, nor cookies.
    assert "FakeOllama" not in response.headers.get("Server", "")
    assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize("value", ["a\x00b", "a\x01b", "tab\tis fine\x7f", "\u20ac"])
def test_a_forwarded_header_that_cannot_be_sent_as_it_is_is_400_and_never_forwarded(client, auth, fake_ollama, value):
    response = client.get("/ollama/api/tags", headers={**auth.headers(), "User-Agent": value})
    assert response.status_code == 400 and "User-Agent header" in response.get_json()["error"]
    assert fake_ollama.counts() == {}


def test_a_forwarded_header_past_ascii_goes_as_it_came(client, auth, fake_ollama):
    assert client.get("/ollama/api/tags", headers={**auth.headers(), "User-Agent": "caf\u00e9"}).status_code == 200
    (record,) = fake_ollama.requests("/api/tags")
    assert {name.lower(): value for name, value in record["headers"].items()}["user-agent"] == "caf\u00e9"


def test_the_query_string_is_dropped(client, auth, fake_ollama):
    assert client.get("/ollama/api/tags?limit=1&redirect=http://evil", headers=auth.headers()).status_code == 200
    (record,) = fake_ollama.requests("/api/tags")
    assert record["query"] == ""
    assert "Content-Type" not in record["headers"]  # no body, no content type


# -- limits -----------------------------------------------------------------------------------

def test_a_declared_body_over_the_limit_is_413_and_never_forwarded(client, auth, fake_ollama):
    response = client.post("/ollama/api/generate", headers=auth.headers(), data=generate_body(5000),
                           content_type="application/json")
    assert response.status_code == 413
    assert "MAX_PROXY_REQUEST_SIZE" in response.get_json()["error"]
    assert fake_ollama.requests() == []


def test_a_chunked_body_over_the_limit_is_413_and_never_forwarded(client, auth, fake_ollama):
    response = client.post("/ollama/api/generate", input_stream=io.BytesIO(generate_body(5000)),
                           headers={**auth.headers(), "Transfer-Encoding": "chunked",
                                    "Content-Type": "application/json"})
    assert response.status_code == 413
    assert fake_ollama.requests() == []


@pytest.mark.parametrize("proxy_settings", [{"max_proxy_request_size": 104857600}], indirect=True)
def test_bodies_above_the_apis_1_mib_limit_pass_whole(client, auth, fake_ollama, app):
    body = json.dumps({"model": "all-minilm", "input": ["x" * 3_000_000]}).encode()
    assert len(body) > app.config["MAX_CONTENT_LENGTH"]
    response = client.post("/ollama/api/embed", headers=auth.headers(), data=body, content_type="application/json")
    assert response.status_code == 200
    assert len(response.get_json()["embeddings"]) == 1
    (record,) = fake_ollama.requests("/api/embed")
    assert len(record["body"]) == len(body)


def test_a_small_body_goes_up_with_its_length(client, auth, fake_ollama):
    body = generate_body()
    client.post("/ollama/api/generate", headers=auth.headers(), data=body, content_type="application/json")
    (record,) = fake_ollama.requests("/api/generate")
    assert record["headers"]["Content-Length"] == str(len(body))
    assert record["body"].encode() == body


# -- Ollama down or silent --------------------------------------------------------------------

@pytest.mark.parametrize("proxy_settings", [{"ollama_host": "http://127.0.0.1:9"}], indirect=True)
def test_an_unreachable_ollama_is_502(client, auth):
    response = client.post("/ollama/api/chat", headers=auth.headers(), json={"model": "llama3.2"})
    assert response.status_code == 502
    assert "OLLAMA_HOST" in response.get_json()["error"]


def test_ollama_silent_before_the_first_byte_is_504(client, auth, fake_ollama):
    fake_ollama.set_behaviour(delay_s={"/api/tags": 3.0})
    started = time.monotonic()
    response = client.get("/ollama/api/tags", headers=auth.headers())
    assert response.status_code == 504
    assert time.monotonic() - started < 2.0
    assert "error" in response.get_json()
    assert fake_ollama.count("GET", "/api/tags") == 1


@pytest.mark.parametrize(("path", "allow"), [("/ollama/api/chat", "OPTIONS, POST"),
                                             ("/ollama/api/tags", "GET, HEAD, OPTIONS"),
                                             ("/ollama/v1/models/llama3.2:latest", "GET, HEAD, OPTIONS"),
                                             ("/ollama/api/pull", "OPTIONS")])
def test_options_lists_only_the_methods_the_allowlist_forwards(client, path, allow):
    """Found by Schemathesis: OPTIONS listed the catch-all rule's methods (PUT, DELETE...), which are 405."""
    assert client.options(path).headers["Allow"] == allow


def test_an_answer_complete_in_its_first_receive_goes_as_one_body(client, auth, fake_ollama, monkeypatch):
    """/api/tags arrives whole: it is sent as a body with its length, not relayed as a stream."""
    from ollama_client import proxy

    def no_relay(*args, **kwargs):
        raise AssertionError("relayed as a stream")

    monkeypatch.setattr(proxy, "_relay", no_relay)
    response = client.get("/ollama/api/tags", headers=auth.headers())
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.get_data()) and response.get_json()["models"]
