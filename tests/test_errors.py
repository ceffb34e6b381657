"""Every error is JSON with the right status; security headers on every response."""
import pytest


def test_unknown_route_is_json_404(client):
    response = client.get("/no/such/page")
    assert response.status_code == 404 and response.is_json
    assert "/no/such/page" in response.get_json()["error"]


@pytest.mark.parametrize("path", ["/api//vram/status", "/api/vram//status", "/api/models//ollama/list"])
def test_doubled_slash_is_json_404_not_an_html_redirect(client, auth, path):
    response = client.get(path, headers=auth.headers())
    assert response.status_code == 404 and response.is_json
    assert client.get(path).status_code == 401


@pytest.mark.parametrize("path", ["/api/vram/status", "/api/auth/login", "/health", "/ollama/api/chat", "/"])
def test_options_answers_allow_without_an_html_content_type(client, path):
    response = client.options(path)
    assert response.status_code == 200 and response.data == b""
    assert response.headers["Allow"]
    assert "Content-Type" not in response.headers
    assert "Content-Security-Policy" not in response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_wrong_method_is_json_405(client, auth):
    response = client.delete("/api/vram/status", headers=auth.headers())
    assert response.status_code == 405 and response.is_json
    assert "GET" in response.headers["Allow"]
    assert client.get("/api/auth/login").status_code == 405


def test_body_over_api_limit_is_json_413(client):
    response = client.post("/api/auth/login", data=b"{" + b" " * (1024 * 1024 + 10) + b"}",
                           content_type="application/json")
    assert response.status_code == 413 and response.is_json
    assert "too large" in response.get_json()["error"]


@pytest.mark.parametrize("path", ["/health", "/api/auth/me", "/nope"])
def test_security_headers_everywhere(client, path):
    response = client.get(path)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_unexpected_errors_are_json_500_without_traceback(client, auth, services, monkeypatch):
    headers = auth.headers()
    monkeypatch.setattr(services, "poller", None)  # break the app on purpose
    response = client.get("/api/vram/status", headers=headers)
    monkeypatch.undo()
    assert response.status_code == 500 and response.get_json() == {"error": "internal server error"}


def test_query_string_that_is_not_utf8_is_json_400(client, auth):
    # As a WSGI server passes a raw 0xFF byte on: a latin-1 str.
    response = client.get("/api/vram/history", environ_overrides={"QUERY_STRING": "limit=\xff"},
                          headers=auth.headers())
    assert response.status_code == 400
    assert "query string" in response.get_json()["error"]


@pytest.mark.parametrize("path, headers, message", [
    ("/socket.io/", {}, "The client is using an unsupported version of the Socket.IO or Engine.IO protocols"),
    ("/socket.io/?EIO=4&transport=polling", {"Origin": "http://evil.example"}, "Not an accepted origin."),
    ("/socket.io/?EIO=4&transport=polling&sid=nope", {}, "Invalid session nope"),
])
def test_socketio_errors_are_json_with_security_headers(client, path, headers, message):
    """Socket.IO answers these itself, below Flask's after_request hooks."""
    response = client.get(path, headers=headers)
    assert response.status_code == 400
    assert response.get_json() == {"error": message}
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_socketio_handshake_keeps_its_body_and_gains_security_headers(client):
    response = client.get("/socket.io/?EIO=4&transport=polling")
    assert response.status_code == 200 and response.data.startswith(b"0{")
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("config_overrides", [{"cors_allowed_origins": ("http://ok.example",)}])
@pytest.mark.parametrize("origin, allowed", [("http://ok.example", True), ("http://evil.example", False)])
def test_cors_preflight_allows_configured_origins_only(client, config_overrides, origin, allowed):
    response = client.options("/api/vram/status", headers={
        "Origin": origin, "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Authorization"})
    assert response.status_code == 200
    assert (response.headers.get("Access-Control-Allow-Origin") == origin) is allowed
