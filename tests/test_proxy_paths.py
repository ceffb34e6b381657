"""The proxy's path rules as a table: canonical form, allowlist, management 403, 405."""
import pytest

from ollama_client.proxy import raw_request_path
from ollama_client.proxy_paths import ALLOWED, Refusal, canonical_path, resolve

ALLOWLIST = [
    ("GET", "/ollama", "/"),
    ("GET", "/ollama/", "/"),
    ("GET", "/ollama/api/version", "/api/version"),
    ("GET", "/ollama/api/tags", "/api/tags"),
    ("HEAD", "/ollama/api/tags", "/api/tags"),
    ("GET", "/ollama/api/ps", "/api/ps"),
    ("POST", "/ollama/api/show", "/api/show"),
    ("POST", "/ollama/api/generate", "/api/generate"),
    ("POST", "/ollama/api/chat", "/api/chat"),
    ("POST", "/ollama/api/embed", "/api/embed"),
    ("POST", "/ollama/api/embeddings", "/api/embeddings"),
    ("GET", "/ollama/v1/models", "/v1/models"),
    ("GET", "/ollama/v1/models/llama3.2:latest", "/v1/models/llama3.2:latest"),
    ("GET", "/ollama/v1/models/llama3.2%3A1b", "/v1/models/llama3.2:1b"),
    ("GET", "/ollama/v1/models/qwen2.5-coder", "/v1/models/qwen2.5-coder"),
    ("POST", "/ollama/v1/chat/completions", "/v1/chat/completions"),
    ("POST", "/ollama/v1/completions", "/v1/completions"),
    ("POST", "/ollama/v1/embeddings", "/v1/embeddings"),
]


@pytest.mark.parametrize("method, raw, upstream", ALLOWLIST)
def test_allowlisted_paths_map_to_ollamas_paths(method, raw, upstream):
    assert resolve(raw, method).upstream_path == upstream


def test_the_allowlist_is_exactly_the_contracts():
    assert set(ALLOWED) == {"", "api/version", "api/tags", "api/ps", "api/show", "api/generate", "api/chat",
                            "api/embed", "api/embeddings", "v1/models", "v1/chat/completions",
                            "v1/completions", "v1/embeddings"}


TRAVERSAL = [
    "/ollama/../api/tags", "/ollama/api/../api/tags", "/ollama/./api/tags", "/ollama/api/.",
    "/ollama/%2e%2e/api/tags", "/ollama/%2E%2E/api/pull", "/ollama/.%2e/api/tags", "/ollama/api/%2e",
    "/ollama/api%2ftags", "/ollama/api%2Ftags", "/ollama/api%5ctags", "/ollama/api%5Ctags",
    "/ollama/api\\tags", "/ollama\\api\\tags", "/ollama//api/tags", "/ollama/api//tags", "/ollama///",
    "/ollama/api/tags/", "/ollama/http://evil.example/api/tags", "/ollama/api/tags%00",
    "/ollama/api/tags\x00", "/ollama/api/ta\x01gs", "/ollama/api/tags\x7f", "/ollama/api/tags%0d%0aX:%20y",
    "/ollama/%252e%252e/api/tags", "/ollama/api/%74ags", "/ollama/api/tags%", "/ollama/api/tags%3",
    "/ollama/API/TAGS", "/ollama/api/tags;x", "/ollama/api/tags#frag", "/ollama/api/tägs",
    "/ollama/v1/models/../../api/pull", "/ollama/v1/models/..%2f..%2fapi%2fpull", "/ollama/v1/models/a%2fb",
    "/ollama/v1/models/a/b", "/ollama/v1/models/..", "/ollama/v1/models/a..b", "/ollama/v1/models/",
    "/ollama/v1/models/-x", "/ollama/v1/models/" + "a" * 81, "/ollamaapi/tags", "/ollama/api/pull/../tags",
]


@pytest.mark.parametrize("raw", TRAVERSAL)
def test_unsafe_or_unknown_paths_are_404(raw):
    with pytest.raises(Refusal) as refused:
        resolve(raw, "GET")
    assert refused.value.status == 404


@pytest.mark.parametrize("raw", ["/ollama/api/pull", "/ollama/api/push", "/ollama/api/delete",
                                 "/ollama/api/copy", "/ollama/api/create", "/ollama/api/blobs",
                                 "/ollama/api/blobs/sha256:29fdb92e57cf0827ded04ae6461b5931d01fa595843f55d36f5b275a52087dd2"])
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "HEAD", "PUT"])
def test_model_management_is_403_pointing_at_the_dashboard(raw, method):
    with pytest.raises(Refusal) as refused:
        resolve(raw, method)
    assert refused.value.status == 403
    assert "/api/models/ollama/" in refused.value.message


@pytest.mark.parametrize("method, raw, allow", [
    ("POST", "/ollama/api/tags", {"GET", "HEAD"}),
    ("DELETE", "/ollama", {"GET", "HEAD"}),
    ("GET", "/ollama/api/generate", {"POST"}),
    ("PUT", "/ollama/v1/chat/completions", {"POST"}),
    ("POST", "/ollama/v1/models/llama3.2", {"GET", "HEAD"}),
])
def test_wrong_method_on_an_allowed_path_is_405_with_allow(method, raw, allow):
    with pytest.raises(Refusal) as refused:
        resolve(raw, method)
    assert refused.value.status == 405
    assert set(refused.value.allow) == allow


@pytest.mark.parametrize("environ, raw", [
    ({"RAW_PATH_INFO": "/ollama/api%2ftags", "PATH_INFO": "/ollama/api/tags"}, "/ollama/api%2ftags"),  # eventlet
    ({"RAW_URI": "/ollama/api/tags?x=1", "PATH_INFO": "/ollama/api/tags"}, "/ollama/api/tags"),  # werkzeug, gunicorn
    ({"REQUEST_URI": "/app/ollama/%2e%2e", "SCRIPT_NAME": "/app"}, "/ollama/%2e%2e"),
    ({"PATH_INFO": "/ollama/../x"}, "/ollama/../x"),
])
def test_raw_request_path_prefers_the_undecoded_path(environ, raw):
    assert raw_request_path(environ) == raw


def test_canonical_path_refuses_every_escape_but_colon():
    assert canonical_path("/ollama/v1/models/a%3ab") == "v1/models/a:b"
    assert canonical_path("/ollama/v1/models/a%40b") is None
