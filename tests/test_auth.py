"""Login, sessions, the /api guard, throttling and expiry."""
import pytest

import concurrency

from tests.credentials import PASSWORD, USERNAME

# Every /api route of the contract; each must refuse a request without valid credentials.
API_ROUTES = [
    ("POST", "/api/auth/logout"), ("GET", "/api/auth/me"),
    ("GET", "/api/vram/status"), ("GET", "/api/vram/history"),
    ("GET", "/api/models/ollama/list"), ("GET", "/api/models/ollama/loaded"),
    ("POST", "/api/models/ollama/load"), ("POST", "/api/models/ollama/unload"),
    ("POST", "/api/models/ollama/download"), ("GET", "/api/models/ollama/downloads"),
    ("POST", "/api/models/ollama/download/cancel"), ("POST", "/api/models/ollama/delete"),
    ("GET", "/api/no-such-route"),
]


def assert_401(response):
    assert response.status_code == 401
    assert response.is_json and isinstance(response.get_json()["error"], str)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_login_returns_a_bearer_token(client):
    response = client.post("/api/auth/login", json={"username": USERNAME, "password": PASSWORD})
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"token", "token_type", "expires_at", "username", "role"}
    assert body["role"] == "admin"
    assert body["token_type"] == "bearer" and body["username"] == USERNAME
    assert len(body["token"]) >= 43  # token_urlsafe(32): 256 bits
    assert body["expires_at"].endswith("+00:00")
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("username, password", [
    (USERNAME, "wrong-password"), ("nobody", PASSWORD), ("", ""), (USERNAME, "x" * 73),
    (USERNAME, "é" * 100), (USERNAME.upper(), PASSWORD), (USERNAME, PASSWORD + " "),
    (USERNAME, "x" * 5000), ("u" * 5000, PASSWORD), (USERNAME, PASSWORD + "x" * 100_000),
])
def test_wrong_credentials_get_one_message(client, username, password):
    response = client.post("/api/auth/login", json={"username": username, "password": password})
    assert_401(response)
    assert response.get_json() == {"error": "invalid username or password"}


@pytest.mark.parametrize("kwargs, field", [
    ({"json": {"password": PASSWORD}}, "username"),
    ({"json": {"username": USERNAME}}, "password"),
    ({"json": {"username": 1, "password": PASSWORD}}, "username"),
    ({"json": {"username": USERNAME, "password": ["x"]}}, "password"),
    ({"json": []}, "object"),
    ({"data": "{not json", "content_type": "application/json"}, "JSON"),
    ({"data": '{"a":' * 100_000 + "1" + "}" * 100_000, "content_type": "application/json"}, "JSON"),
    ({"data": "username=admin", "content_type": "application/x-www-form-urlencoded"}, "JSON"),
])
def test_malformed_login_is_400_naming_the_problem(client, kwargs, field):
    response = client.post("/api/auth/login", **kwargs)
    assert response.status_code == 400
    assert field in response.get_json()["error"]


@pytest.mark.parametrize("method, path", API_ROUTES)
def test_every_api_route_needs_a_token(client, clock, auth, method, path):
    assert_401(client.open(path, method=method))
    assert_401(client.open(path, method=method, headers={"Authorization": "Bearer not-a-token"}))
    assert_401(client.open(path, method=method, headers={"Authorization": "Basic YWRtaW46eA=="}))
    headers = auth.headers()
    clock.advance(24 * 3600 + 1)
    assert_401(client.open(path, method=method, headers=headers))


def test_token_in_query_string_is_not_accepted(client, auth):
    token = auth.headers()["Authorization"].split()[1]
    assert_401(client.get(f"/api/auth/me?token={token}"))


def test_me_and_logout(client, auth):
    headers = auth.headers()
    me = client.get("/api/auth/me", headers=headers)
    assert me.status_code == 200 and set(me.get_json()) == {"username", "role", "expires_at", "auth"}
    assert me.get_json()["username"] == USERNAME
    assert client.post("/api/auth/logout", headers=headers).get_json() == {"success": True}
    assert_401(client.get("/api/auth/me", headers=headers))
    assert_401(client.post("/api/auth/logout", headers=headers))


def test_session_expires_after_configured_hours(client, clock, auth):
    headers = auth.headers()
    clock.advance(24 * 3600 - 5)
    assert client.get("/api/auth/me", headers=headers).status_code == 200
    clock.advance(10)
    assert_401(client.get("/api/auth/me", headers=headers))


@pytest.mark.parametrize("config_overrides", [{"session_expiry_hours": 0.5}])
def test_fractional_expiry(client, clock, auth, config_overrides):
    headers = auth.headers()
    clock.advance(1799)
    assert client.get("/api/auth/me", headers=headers).status_code == 200
    clock.advance(2)
    assert_401(client.get("/api/auth/me", headers=headers))


def test_five_failures_then_429_with_retry_after(client):
    for _ in range(5):
        assert client.post("/api/auth/login", json={"username": USERNAME, "password": "nope"}).status_code == 401
    response = client.post("/api/auth/login", json={"username": USERNAME, "password": PASSWORD})
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert "error" in response.get_json()
    # Another client address is not affected.
    other = client.post("/api/auth/login", json={"username": USERNAME, "password": PASSWORD},
                        environ_base={"REMOTE_ADDR": "10.0.0.7"})
    assert other.status_code == 200


def test_successful_logins_do_not_count_as_failures(client):
    for _ in range(8):
        assert client.post("/api/auth/login", json={"username": USERNAME, "password": PASSWORD}).status_code == 200
    for _ in range(4):
        assert client.post("/api/auth/login", json={"username": USERNAME, "password": "nope"}).status_code == 401
    assert client.post("/api/auth/login", json={"username": USERNAME, "password": PASSWORD}).status_code == 200


def test_thirty_concurrent_wrong_logins_get_at_most_five_checked(app, client, monkeypatch):
    # bcrypt made slow and green, so all 30 are in the route at once: a limit that counted a
    # failure only once it was known would let every one of them be checked.
    import auth.routes
    checking = {"now": 0, "most": 0}

    from auth.passwords import check_password

    def slow_check(*args):
        checking["now"] += 1
        checking["most"] = max(checking["most"], checking["now"])
        concurrency.sleep(0.05)
        checking["now"] -= 1
        return check_password(*args)

    monkeypatch.setattr(auth.routes, "check_password_async", slow_check)

    def wrong_login():
        return client.post("/api/auth/login", json={"username": USERNAME, "password": "nope"})

    threads = [concurrency.spawn(wrong_login) for _ in range(30)]
    responses = [thread.wait() for thread in threads]
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [401] * 5 + [429] * 25
    assert checking["most"] == 5
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1 and "error" in refused.get_json()
    # Once they are settled, the five failures hold the address back for the window.
    late = client.post("/api/auth/login", json={"username": USERNAME, "password": PASSWORD})
    assert late.status_code == 429 and int(late.headers["Retry-After"]) > 60


@pytest.mark.parametrize("config_overrides", [{"login_max_user_failures": 7}])
def test_failures_for_one_user_name_are_capped_across_addresses(client, config_overrides):
    def login(address, username=USERNAME, password="nope"):
        return client.post("/api/auth/login", json={"username": username, "password": password},
                           environ_base={"REMOTE_ADDR": address})

    assert [login(f"10.0.0.{i % 2 + 1}").status_code for i in range(7)] == [401] * 7
    refused = login("10.0.0.3", password=PASSWORD)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert login("10.0.0.3", username="someone-else").status_code == 401  # other names are unaffected


def test_login_does_not_need_a_token_and_health_is_public(client):
    health = client.get("/health")
    assert health.status_code == 200
    body = health.get_json()
    assert set(body) == {"status", "nvml", "ollama", "stale", "version"}
    assert body["status"] in ("ok", "degraded")


def test_password_never_logged(client, caplog):
    caplog.set_level("DEBUG")
    client.post("/api/auth/login", json={"username": USERNAME, "password": PASSWORD})
    client.post("/api/auth/login", json={"username": USERNAME, "password": "wrong-secret-123"})
    assert PASSWORD not in caplog.text and "wrong-secret-123" not in caplog.text


@pytest.fixture
def low_bcrypt_cost(monkeypatch):
    monkeypatch.setattr("auth.passwords.BCRYPT_ROUNDS", 4)


@pytest.mark.parametrize("config_overrides", [{"auth_password_hash": None, "auth_password": PASSWORD}])
def test_plain_password_is_hashed_once_at_app_creation(low_bcrypt_cost, app, client, config_overrides):
    accounts = app.extensions["dashboard"].accounts
    hashed = accounts.user_by_name(USERNAME).password_hash
    assert hashed.startswith(b"$2b$04$")  # the injected cost
    assert client.post("/api/auth/login", json={"username": USERNAME, "password": PASSWORD}).status_code == 200
    assert client.post("/api/auth/login", json={"username": USERNAME, "password": "wrong"}).status_code == 401
    assert accounts.user_by_name(USERNAME).password_hash == hashed
