"""The OpenAPI document against the code: valid 3.1, the URL map and the document agree both ways."""
from __future__ import annotations

import hashlib
import json
import re

import pytest
from openapi_spec_validator import validate

import openapi_doc
from ollama_client.proxy_paths import ALLOWED, PREFIX
from tests.live import REPO

# Flask's automatic answers on every rule, not operations of their own.
AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}
PROXY_ENDPOINT = "ollama_proxy.forward"
# The proxy's one catch-all rule stands for these paths (proxy_paths.resolve's allowlist).
PROXY_MODEL_PATH = f"{PREFIX}/v1/models/{{name}}"


def url_map_operations(app) -> set[tuple[str, str]]:
    """(METHOD, OpenAPI path) for every route the app serves, the proxy expanded to its allowlist."""
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue  # files, not API operations
        methods = set(rule.methods or ()) - AUTOMATIC_METHODS
        if rule.endpoint == PROXY_ENDPOINT:
            for path, allowed in ALLOWED.items():
                operations |= {(m, f"{PREFIX}/{path}") for m in set(allowed) - AUTOMATIC_METHODS}
            operations.add(("GET", PROXY_MODEL_PATH))
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        operations |= {(method, path) for method in methods}
    return operations


def document_operations(document) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items()
            for method in item if method in openapi_doc.METHODS}


@pytest.fixture
def document(client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    return response.get_json()


def test_document_is_public_valid_openapi_3_1(client, document):
    assert document["openapi"].startswith("3.1.")
    validate(document)
    assert client.get("/api/openapi.json").mimetype == "application/json"


def test_every_route_is_described(app, document):
    missing = url_map_operations(app) - document_operations(document)
    assert not missing, f"routes without an entry in an openapi.yaml fragment: {sorted(missing)}"


def test_every_described_route_exists(app, document):
    extra = document_operations(document) - url_map_operations(app)
    assert not extra, f"described but not served: {sorted(extra)}"


def test_every_operation_has_a_summary_an_id_and_error_responses(document):
    ids = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            label = f"{method.upper()} {path}"
            assert operation.get("summary"), label
            ids.append(operation["operationId"])
            codes = set(operation["responses"])
            assert any(code.startswith("2") for code in codes), label
            public = operation.get("security") == []
            if not public:
                assert "401" in codes, f"{label}: needs a credential, so it documents the 401"
            if "requestBody" in operation:
                assert {"400", "413"} <= codes or path.startswith(PREFIX), label
    assert len(ids) == len(set(ids)), "operationId must be unique"


def _extends_error(document, schema) -> bool:
    """Is `schema` the Error schema, or an allOf that includes it (through $refs)?"""
    ref = schema.get("$ref", "")
    if ref == "#/components/schemas/Error":
        return True
    if ref:
        return _extends_error(document, document["components"]["schemas"][ref.rsplit("/", 1)[1]])
    return any(_extends_error(document, part) for part in schema.get("allOf", ()))


def test_errors_use_the_error_schema(document):
    """Every 4xx/5xx answer of ours is (or extends) #/components/schemas/Error."""
    responses = document["components"]["responses"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for code, response in operation["responses"].items():
                if code[0] not in "45":
                    continue
                response = responses[response["$ref"].rsplit("/", 1)[1]] if "$ref" in response else response
                schema = response["content"]["application/json"]["schema"]
                assert _extends_error(document, schema), f"{method.upper()} {path} {code}"


def test_security_schemes_and_which_routes_need_them(document):
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKeyAuth"]["in"] == "header" and schemes["apiKeyAuth"]["name"] == "X-API-Key"
    assert document["security"] == [{"bearerAuth": []}, {"apiKeyAuth": []}]
    public = {(m.upper(), p) for p, item in document["paths"].items() for m, op in item.items()
              if op.get("security") == []}
    assert public == {("POST", "/api/auth/login"), ("GET", "/api/openapi.json"), ("GET", "/health"),
                      ("GET", "/docs"), ("GET", "/")}


def test_public_routes_answer_without_a_credential(client, document):
    for path in ("/api/openapi.json", "/docs", "/health", "/"):
        assert client.get(path).status_code == 200, path
    assert client.get("/api/auth/me").status_code == 401


def test_socketio_events_are_described(document):
    events = document["x-socketio"]["events"]
    assert set(events) >= {"vram_update", "model_download_progress"}
    for event in events.values():
        ref = event["payload"]["$ref"].rsplit("/", 1)[1]
        assert ref in document["components"]["schemas"]


def test_every_component_reference_resolves(document):
    text = repr(document)
    for kind, name in re.findall(r"'#/components/(\w+)/([\w.-]+)'", text):
        assert name in document["components"][kind], f"#/components/{kind}/{name}"


def test_a_duplicate_operation_in_two_fragments_is_refused():
    document = {"paths": {"/health": {"get": {}}}}
    with pytest.raises(openapi_doc.OpenApiFragmentError, match="GET /health"):
        openapi_doc.merge_fragment(document, {"paths": {"/health": {"get": {}}}}, source="x/openapi.yaml")
    with pytest.raises(openapi_doc.OpenApiFragmentError, match="only paths and components"):
        openapi_doc.merge_fragment(document, {"info": {}}, source="x/openapi.yaml")


def test_docs_page_is_html_within_the_csp_and_names_only_served_files(client):
    response = client.get("/docs")
    assert response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    html = response.get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert "<style" not in html and not re.search(r"\sstyle=", html)
    for path in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        assert client.get(path).status_code == 200, path


@pytest.mark.parametrize("name", [
    "llama3.2", "llama3.2:latest", "library/llama3:8b", "registry.ollama.ai/library/llama3:8b",
    "HF.CO/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "_a", "a" * 80, "a" * 81, "a:" + "b" * 81,
    "a..b", "a/b/c", "evil.com/x/y", "a b", "a\n", "a;b", "-a", ".a", "a/", "/a", "a//b", "a:b:c",
    "a/b/c/d", "ns-1/m_2.x:t-3", "ns.x/m", "é", "a@sha256:00", "", ":tag", "a:", "hf.co/a/b/c"])
def test_model_name_pattern_in_the_document_agrees_with_the_validator(document, name):
    from ollama_client.names import InvalidModelName, parse_model_name

    pattern = document["components"]["schemas"]["ModelName"]["pattern"]
    try:
        parse_model_name(name)
        valid = True
    except InvalidModelName:
        valid = False
    assert bool(re.search(pattern, name)) is valid


@pytest.mark.parametrize("raw", ["-1", "0", "300", "1.5", "5m", "1h30m", "-1s", " 5m\n", "٥m", "５",
                                 "5", "5x", "m", "1e3", "", "--1", "1.", ".5", "1h 30m", "10µs"])
def test_keep_alive_pattern_in_the_document_agrees_with_the_parser(document, raw):
    from config import parse_keep_alive

    load = document["paths"]["/api/models/ollama/load"]["post"]
    schema = load["requestBody"]["content"]["application/json"]["schema"]["properties"]["keep_alive"]
    pattern = next(s["pattern"] for s in schema["anyOf"] if s.get("type") == "string")
    try:
        parse_keep_alive(raw)
        valid = True
    except ValueError:
        valid = False
    assert bool(re.search(pattern, raw)) is valid


def test_vendored_swagger_ui_is_the_pinned_release():
    """The files under vendor/swagger-ui are the ones the vendor README lists (and package.json pins)."""
    vendor = REPO / "dashboard" / "static" / "vendor"
    readme = (vendor / "README.md").read_text()
    pinned = json.loads((REPO / "package.json").read_text())["devDependencies"]["swagger-ui-dist"]
    assert f"swagger-ui-dist@{pinned}" in readme
    listed = dict((path, digest) for digest, path in re.findall(r"^([0-9a-f]{64})  (swagger-ui/\S+)$", readme, re.M))
    assert set(listed) == {"swagger-ui/swagger-ui-bundle.js", "swagger-ui/swagger-ui.css"}
    for path, digest in listed.items():
        assert hashlib.sha256((vendor / path).read_bytes()).hexdigest() == digest, path
