"""The /api/models/ollama routes against the fake Ollama over real HTTP: shapes, errors, validation."""
import json
import time

import pytest

from tests.fakes.scripted_reader import ScriptedReader, reading

BASE = "/api/models/ollama"
MODEL_OPS = ["load", "unload", "download", "download/cancel", "delete"]
READ_ROUTES = ["list", "loaded", "downloads"]


@pytest.fixture
def nvml_reader():
    return ScriptedReader(reading(ts=1.0))


@pytest.fixture
def config_overrides(fake_ollama, request):
    """Point the app at the fake; a test may add fields with parametrize(..., indirect=True)."""
    return {"ollama_host": fake_ollama.url, **getattr(request, "param", {})}



def model_api_requests(fake):
    """Requests the fake received on Ollama's API (not its control paths)."""
    return [f"{r['method']} {r['path']}" for r in fake.requests()]


# -- reading -------------------------------------------------------------------------------------

def test_list_has_the_contract_shape_and_cli_sizes(api):
    response = api("get", "list")
    assert response.status_code == 200
    assert response.get_json() == {"count": 3, "models": [
        {"name": "llama3.2:latest", "id": "a80c4f17acd5", "size": "2.0 GB", "size_bytes": 2019393189,
         "modified_at": "2025-01-15T10:20:30.123456789+01:00", "family": "llama", "parameter_size": "3.2B",
         "quantization": "Q4_K_M"},
        {"name": "qwen2.5-coder:7b", "id": "2b0496514337", "size": "4.7 GB", "size_bytes": 4683087332,
         "modified_at": "2025-01-15T10:20:30.123456789+01:00", "family": "qwen2", "parameter_size": "7.6B",
         "quantization": "Q4_K_M"},
        {"name": "all-minilm:latest", "id": "1b226e2802db", "size": "45 MB", "size_bytes": 45960996,
         "modified_at": "2025-01-15T10:20:30.123456789+01:00", "family": "bert", "parameter_size": "23M",
         "quantization": "F16"},
    ]}


def test_loaded_computes_processor_as_ollama_ps(api, fake_ollama):
    fake_ollama.set_models([{"name": "big:70b", "size": 10_000, "digest": "sha256:" + "ab" * 32},
                            {"name": "small", "size": 274_302_450, "digest": "cd" * 32}])
    fake_ollama.set_loaded([{"name": "big:70b", "size_vram": 5_200, "expires_at": "2025-01-01T10:00:00+01:00"},
                            {"name": "small", "size_vram": 0}])
    assert api("get", "loaded").get_json() == {"count": 2, "models": [
        {"name": "big:70b", "id": "abababababab", "size": "10 KB", "processor": "48%/52% CPU/GPU",
         "size_bytes": 10_000, "size_vram_bytes": 5_200, "expires_at": "2025-01-01T10:00:00+01:00",
         "gpus": [], "vram_source": "ollama"},
        {"name": "small:latest", "id": "cdcdcdcdcdcd", "size": "274 MB", "processor": "100% CPU",
         "size_bytes": 274_302_450, "size_vram_bytes": 0, "expires_at": "2318-08-26T02:02:25.402233227+02:00",
         "gpus": [], "vram_source": "ollama"},
    ]}


def test_empty_lists_are_empty_not_errors(api, fake_ollama):
    fake_ollama.set_models([])
    assert api("get", "list").get_json() == {"models": [], "count": 0}
    assert api("get", "loaded").get_json() == {"models": [], "count": 0}
    assert api("get", "downloads").get_json() == {"downloads": []}


@pytest.mark.parametrize("route", ["list", "loaded"])
def test_read_routes_map_ollama_failures(api, fake_ollama, services, route):
    upstream = {"list": "/api/tags", "loaded": "/api/ps"}[route]
    fake_ollama.set_behaviour(fail={upstream: {"status": 500, "error": "out of file handles"}})
    response = api("get", route)
    assert (response.status_code, response.get_json()) == (502, {"error": "Ollama: out of file handles"})

    fake_ollama.set_behaviour(fail={}, delay_s={upstream: 2.0})
    services.ollama.timeout = (1.0, 0.2)
    response = api("get", route)
    assert response.status_code == 504
    assert "did not answer within 0.2 s (OLLAMA_HOST)" in response.get_json()["error"]

    fake_ollama.stop()
    response = api("get", route)
    assert response.status_code == 503
    assert response.get_json()["error"] == (f"Ollama is not reachable at {fake_ollama.url}: connection refused. "
                                            "Start Ollama (`ollama serve`) or set OLLAMA_HOST to its address.")


@pytest.mark.parametrize("route", READ_ROUTES)
def test_routes_need_credentials(client, route):
    assert client.get(f"{BASE}/{route}").status_code == 401


@pytest.mark.parametrize("route", MODEL_OPS)
def test_model_ops_need_credentials(client, route, fake_ollama):
    assert client.post(f"{BASE}/{route}", json={"model_name": "llama3.2"}).status_code == 401
    assert model_api_requests(fake_ollama) == []


# -- malformed bodies and bad names, on every model operation -----------------------------------------

BAD_BODIES = [
    ({"data": "model_name=llama3", "content_type": "application/x-www-form-urlencoded"},
     "request body must be JSON (Content-Type: application/json)", ""),
    ({"data": "{not json", "content_type": "application/json"}, "request body is not valid JSON", ""),
    ({"json": []}, "request body must be a JSON object", ""),
    ({"json": ["llama3"]}, "request body must be a JSON object", ""),
    ({"json": {}}, "missing field: model_name", ""),
    ({"json": {"model": "llama3"}}, "missing field: model_name", ""),
    ({"json": {"model_name": None}}, "missing field: model_name", ""),
    ({"json": {"model_name": 3}}, "field model_name must be a string", ""),
    ({"json": {"model_name": ["llama3"]}}, "field model_name must be a string", ""),
    ({"json": {"model_name": ""}}, "field model_name must not be empty", ""),
    # Deeper than json.loads recurses: a RecursionError, which silent=True does not cover.
    ({"data": "[" * 100_000 + "]" * 100_000, "content_type": "application/json"}, "request body is not valid JSON", ""),
]

BAD_NAMES = [
    ("../../etc/passwd", "'..' is not allowed"),
    ("llama3 --insecure", "spaces are not allowed"),
    ("llama3;reboot", "character ';' is not allowed"),
    ("llama3\r\nHost: x", "control character '\\r' is not allowed"),
    ("модель", "non-ASCII character 'м' is not allowed"),
    ("evil.example/x/y", "registry 'evil.example' is not allowed "
                         "(OLLAMA_ALLOWED_REGISTRIES: registry.ollama.ai, hf.co)"),
    ("m" * 81, "the model part is too long (81 characters; at most 80)"),
    ("x" * 2000, "field model_name is too long (at most 593 characters)"),
]


@pytest.mark.parametrize("route", MODEL_OPS)
@pytest.mark.parametrize("kwargs,message,echo", BAD_BODIES)
def test_malformed_bodies_are_400_naming_the_problem(api, fake_ollama, route, kwargs, message, echo):
    response = api("post", route, **kwargs)
    assert response.status_code == 400
    assert response.get_json() == {"error": message, "success": False, "message": message, "model_name": echo}
    assert model_api_requests(fake_ollama) == []


@pytest.mark.parametrize("route", MODEL_OPS)
def test_body_over_the_limit_is_413_in_the_model_operation_shape(api, fake_ollama, route):
    message = "request body too large (limit 1048576 bytes)"
    response = api("post", route, data=b'{"model_name": "' + b"a" * (1024 * 1024) + b'"}',
                   content_type="application/json")
    assert response.status_code == 413
    assert response.get_json() == {"error": message, "success": False, "message": message, "model_name": ""}
    assert model_api_requests(fake_ollama) == []


@pytest.mark.parametrize("route", MODEL_OPS)
@pytest.mark.parametrize("name,problem", BAD_NAMES)
def test_bad_names_are_400_before_anything_reaches_ollama(api, fake_ollama, route, name, problem):
    response = api("post", route, json={"model_name": name})
    message = problem if problem.startswith("field") else f"invalid model_name: {problem}"
    assert response.status_code == 400
    assert response.get_json() == {"error": message, "success": False, "message": message, "model_name": name}
    assert model_api_requests(fake_ollama) == []


@pytest.mark.parametrize("route", MODEL_OPS)
def test_wrong_method_is_405(api, route):
    response = api("get", route)
    assert response.status_code == 405
    assert response.get_json() == {"error": f"method GET not allowed on {BASE}/{route}"}


@pytest.mark.parametrize("keep_alive,message", [
    ([], "field keep_alive must be a duration string (5m, 1h) or a number of seconds"),
    ({"m": 5}, "field keep_alive must be a duration string (5m, 1h) or a number of seconds"),
    (True, "field keep_alive must be a duration string (5m, 1h) or a number of seconds"),
    ("forever", "field keep_alive must be a duration such as 5m, 1h, or seconds (-1 = forever), not 'forever'"),
    ("5 m", "field keep_alive must be a duration such as 5m, 1h, or seconds (-1 = forever), not '5 m'"),
])
def test_load_refuses_a_bad_keep_alive(api, fake_ollama, keep_alive, message):
    response = api("post", "load", json={"model_name": "llama3.2", "keep_alive": keep_alive})
    assert (response.status_code, response.get_json()["error"]) == (400, message)
    assert model_api_requests(fake_ollama) == []


# -- load and unload -----------------------------------------------------------------------------------

def test_load_sends_no_prompt_and_the_configured_keep_alive(api, fake_ollama):
    response = api("post", "load", json={"model_name": "llama3.2"})
    assert (response.status_code, response.get_json()) == (200, {
        "success": True, "message": "Model llama3.2 loaded", "model_name": "llama3.2"})
    response = api("post", "load", json={"model_name": "qwen2.5-coder:7b", "keep_alive": "10m"})
    assert response.get_json()["message"] == "Model qwen2.5-coder:7b loaded"
    assert [json.loads(r["body"]) for r in fake_ollama.requests("/api/generate")] == [
        {"model": "llama3.2", "keep_alive": -1, "stream": False},
        {"model": "qwen2.5-coder:7b", "keep_alive": "10m", "stream": False},
    ]
    assert [m["name"] for m in api("get", "loaded").get_json()["models"]] == ["llama3.2:latest", "qwen2.5-coder:7b"]


@pytest.mark.parametrize("config_overrides", [{"ollama_load_keep_alive": "30m"}], indirect=True)
def test_load_keep_alive_defaults_to_ollama_load_keep_alive(api, fake_ollama):
    api("post", "load", json={"model_name": "llama3.2", "keep_alive": None})
    assert json.loads(fake_ollama.requests("/api/generate")[0]["body"])["keep_alive"] == "30m"


def test_load_of_a_model_not_downloaded_is_404(api):
    response = api("post", "load", json={"model_name": "ghost:1b"})
    message = "model ghost:1b is not downloaded; download it first (Ollama: model 'ghost:1b' not found)"
    assert (response.status_code, response.get_json()) == (404, {
        "error": message, "success": False, "message": message, "model_name": "ghost:1b"})


def test_load_failures_keep_the_model_op_shape(api, fake_ollama, services):
    fake_ollama.set_behaviour(fail={"/api/generate": {
        "status": 500, "error": "model requires more system memory (12.4 GiB) than is available (3.1 GiB)"}})
    response = api("post", "load", json={"model_name": "llama3.2"})
    message = "Ollama: model requires more system memory (12.4 GiB) than is available (3.1 GiB)"
    assert (response.status_code, response.get_json()) == (502, {
        "error": message, "success": False, "message": message, "model_name": "llama3.2"})

    fake_ollama.set_behaviour(fail={}, load_delay_s=2.0)
    services.ollama.load_timeout = (1.0, 0.3)
    response = api("post", "load", json={"model_name": "llama3.2"})
    assert response.status_code == 504
    assert response.get_json()["model_name"] == "llama3.2"

    fake_ollama.stop()
    response = api("post", "load", json={"model_name": "llama3.2"})
    assert response.status_code == 503
    assert "OLLAMA_HOST" in response.get_json()["error"]
    assert response.get_json()["success"] is False


def test_load_waits_for_ollama_to_finish_loading(api, fake_ollama):
    fake_ollama.set_behaviour(load_delay_s=0.4)
    started = time.monotonic()
    response = api("post", "load", json={"model_name": "llama3.2"})
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.4


def test_unload_sends_keep_alive_zero(api, fake_ollama):
    fake_ollama.set_loaded([{"name": "llama3.2"}])
    response = api("post", "unload", json={"model_name": "registry.ollama.ai/library/llama3.2:latest"})
    assert (response.status_code, response.get_json()) == (200, {
        "success": True, "message": "Model registry.ollama.ai/library/llama3.2:latest unloaded",
        "model_name": "registry.ollama.ai/library/llama3.2:latest"})
    assert [json.loads(r["body"]) for r in fake_ollama.requests("/api/generate")] == [
        {"model": "registry.ollama.ai/library/llama3.2:latest", "keep_alive": 0, "stream": False}]
    assert api("get", "loaded").get_json()["count"] == 0


def test_unload_of_a_model_not_loaded_succeeds_saying_so(api, fake_ollama):
    for name in ("llama3.2", "never-downloaded:1b"):
        response = api("post", "unload", json={"model_name": name})
        assert (response.status_code, response.get_json()) == (200, {
            "success": True, "message": f"Model {name} was not loaded", "model_name": name})
    assert model_api_requests(fake_ollama) == ["GET /api/ps", "GET /api/ps"]


def test_unload_when_ollama_is_down_is_503(api, fake_ollama):
    fake_ollama.stop()
    response = api("post", "unload", json={"model_name": "llama3.2"})
    assert response.status_code == 503
    assert response.get_json()["success"] is False


# -- delete --------------------------------------------------------------------------------------------

def test_delete(api, fake_ollama):
    response = api("post", "delete", json={"model_name": "all-minilm"})
    assert (response.status_code, response.get_json()) == (200, {
        "success": True, "message": "Model all-minilm deleted", "model_name": "all-minilm"})
    assert [m["name"] for m in api("get", "list").get_json()["models"]] == ["llama3.2:latest", "qwen2.5-coder:7b"]

    response = api("post", "delete", json={"model_name": "all-minilm"})
    message = "model all-minilm is not downloaded (Ollama: model 'all-minilm' not found)"
    assert (response.status_code, response.get_json()) == (404, {
        "error": message, "success": False, "message": message, "model_name": "all-minilm"})


def test_delete_failure_is_502_with_ollamas_message(api, fake_ollama):
    fake_ollama.set_behaviour(fail={"/api/delete": {"status": 500, "error": "permission denied"}})
    response = api("post", "delete", json={"model_name": "all-minilm"})
    assert (response.status_code, response.get_json()["error"]) == (502, "Ollama: permission denied")


def test_delete_while_downloading_is_409(api, fake_ollama):
    fake_ollama.set_behaviour(pull={"hang_after_lines": 2})
    assert api("post", "download", json={"model_name": "big:70b"}).status_code == 202
    response = api("post", "delete", json={"model_name": "big:70b"})
    message = "a download of big:70b is running; cancel it first"
    assert (response.status_code, response.get_json()) == (409, {
        "error": message, "success": False, "message": message, "model_name": "big:70b"})
    assert api("post", "download/cancel", json={"model_name": "big:70b"}).status_code == 200
