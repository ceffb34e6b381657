"""Users, roles, API keys, audit and usage, on SQLite and on a real PostgreSQL server.

The role × route and scope × route matrices are generated from auth/permissions.py and the URL
map, not hand-picked: a route added without a rule, or a rule that lets the wrong role in, fails.
"""
import itertools

import pytest

from auth.permissions import ROLES, SCOPES, Rule, role_allows, rule_of, scopes_allow
from tests.credentials import PASSWORD, USERNAME

OTHER_PASSWORD = "another-good-password"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path, migrated_sqlite):
    """Every test here runs on both databases the server supports."""
    if request.param == "sqlite":
        import shutil

        path = tmp_path / "dashboard.db"
        shutil.copyfile(migrated_sqlite, path)
        return f"sqlite:///{path}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def config_overrides(fake_ollama):
    return {"ollama_host": fake_ollama.url}


class Team:
    """Make users of each role through the real API and log them in."""

    def __init__(self, client, admin_headers):
        self.client = client
        self.admin = admin_headers
        self._tokens = {}

    def user(self, role: str, name: str | None = None) -> dict:
        name = name or f"{role}-user"
        if name not in self._tokens:
            created = self.client.post("/api/users", headers=self.admin,
                                       json={"username": name, "password": OTHER_PASSWORD, "role": role})
            assert created.status_code == 201, created.get_json()
            login = self.client.post("/api/auth/login", json={"username": name, "password": OTHER_PASSWORD})
            assert login.status_code == 200, login.get_json()
            self._tokens[name] = login.get_json()["token"]
        return {"Authorization": f"Bearer {self._tokens[name]}"}

    def key(self, headers: dict, scopes: list[str] | None = None, **extra) -> str:
        body = {"name": "script", **extra}
        if scopes is not None:
            body["scopes"] = scopes
        response = self.client.post("/api/keys", headers=headers, json=body)
        assert response.status_code == 201, response.get_json()
        return response.get_json()["key"]


@pytest.fixture
def team(client, auth):
    return Team(client, auth.headers())


def protected_routes(app):
    """(method, url, rule) for every protected route of the URL map, with sample arguments."""
    # A forward to an unknown node of a route any credential may use: the node's 404 for every role.
    samples = {"username": "nobody", "key_id": "0000", "rest": "/api/tags", "node": "no-such-node",
               "path": "auth/me"}
    for rule in app.url_map.iter_rules():
        if not (rule.rule.startswith(("/api/", "/ollama")) or rule.rule == "/metrics"):
            continue
        declared = rule_of(app.view_functions[rule.endpoint])
        if declared is None:
            continue  # public
        url = rule.rule
        for argument in rule.arguments:
            for form in (f"<{argument}>", f"<proxy_any:{argument}>", f"<path:{argument}>"):
                url = url.replace(form, samples[argument])
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield method, url, declared


def test_every_protected_route_declares_its_rule(app):
    undeclared = [(m, u) for m, u, rule in protected_routes(app) if not isinstance(rule, Rule)]
    assert undeclared == []


def _call(client, method, url, headers):
    kwargs = {"headers": headers}
    if method in ("POST", "PATCH", "PUT"):
        kwargs["json"] = {}
    return getattr(client, method.lower())(url, **kwargs)


def test_role_by_route_matrix(app, client, team, fake_ollama):
    """Every role against every protected route: 403 exactly where the roles table says."""
    headers = {role: team.user(role) for role in ROLES}
    wrong = []
    for (method, url, rule), role in itertools.product(list(protected_routes(app)), ROLES):
        if url in ("/api/auth/logout",) or (method == "POST" and url == "/api/auth/password"):
            continue  # they end or change the very session used; covered by their own tests
        status = _call(client, method, url, headers[role]).status_code
        allowed = role_allows(role, rule.permission)
        if (status == 403) == allowed or status == 401:
            wrong.append((role, method, url, status))
    assert wrong == []


@pytest.mark.parametrize("scope", SCOPES)
def test_key_scope_by_route_matrix(app, client, team, fake_ollama, scope):
    """An admin's key with one scope: allowed exactly where the scope (and not session-only) says."""
    key = team.key(team.admin, [scope])
    wrong = []
    for method, url, rule in protected_routes(app):
        if url == "/api/auth/logout":
            continue
        status = _call(client, method, url, {"X-API-Key": key}).status_code
        allowed = not rule.session_only and scopes_allow(frozenset({scope}), rule.permission)
        if (status == 403) == allowed or status == 401:
            wrong.append((method, url, status))
    assert wrong == []


# -- users ------------------------------------------------------------------------------------

def test_create_list_update_delete_user(client, auth, team):
    admin = auth.headers()
    created = client.post("/api/users", headers=admin, json={"username": "Ada", "password": OTHER_PASSWORD})
    assert created.status_code == 201
    user = created.get_json()
    assert set(user) == {"username", "role", "disabled", "created_at", "last_login_at", "source"}
    assert (user["role"], user["source"], user["disabled"]) == ("viewer", "database", False)
    listed = client.get("/api/users", headers=admin).get_json()["users"]
    assert {u["username"]: u["source"] for u in listed} == {USERNAME: "environment", "Ada": "database"}
    assert client.post("/api/users", headers=admin,
                       json={"username": "ada", "password": OTHER_PASSWORD}).status_code == 409
    patched = client.patch("/api/users/Ada", headers=admin, json={"role": "operator"})
    assert patched.status_code == 200 and patched.get_json()["role"] == "operator"
    assert client.delete("/api/users/Ada", headers=admin).get_json() == {"success": True}
    assert client.delete("/api/users/Ada", headers=admin).status_code == 404
    assert client.patch("/api/users/nobody", headers=admin, json={"role": "user"}).status_code == 404


@pytest.mark.parametrize("body, field", [
    ({"password": OTHER_PASSWORD}, "username"),
    ({"username": "bad name", "password": OTHER_PASSWORD}, "username"),
    ({"username": "x" * 65, "password": OTHER_PASSWORD}, "username"),
    ({"username": "ok"}, "password"),
    ({"username": "ok", "password": "short"}, "password"),
    ({"username": "ok", "password": "é" * 37}, "password"),
    ({"username": "ok", "password": OTHER_PASSWORD, "role": "root"}, "role"),
])
def test_user_fields_are_validated(client, auth, body, field):
    response = client.post("/api/users", headers=auth.headers(), json=body)
    assert response.status_code == 400 and field in response.get_json()["error"]


def test_the_environment_admin_is_immutable_and_nobody_removes_themselves(client, auth, team):
    admin = auth.headers()
    for change in ({"password": OTHER_PASSWORD}, {"role": "viewer"}, {"disabled": True}):
        response = client.patch(f"/api/users/{USERNAME}", headers=admin, json=change)
        assert response.status_code == 409 and "environment" in response.get_json()["error"]
    assert client.delete(f"/api/users/{USERNAME}", headers=admin).status_code == 409
    second = team.user("admin", "second-admin")
    assert client.delete("/api/users/second-admin", headers=second).status_code == 409  # yourself
    assert client.patch("/api/users/second-admin", headers=second, json={"disabled": True}).status_code == 409


def test_a_disabled_user_cannot_log_in_and_loses_sessions_keys_and_sockets(app, client, auth, team, services):
    viewer = team.user("viewer", "vic")
    key = team.key(viewer)
    token = viewer["Authorization"].split()[1]
    socket = services.socketio.test_client(app, flask_test_client=client, auth={"token": token})
    key_socket = services.socketio.test_client(app, flask_test_client=client, auth={"token": key})
    assert socket.is_connected() and key_socket.is_connected()
    assert client.patch("/api/users/vic", headers=auth.headers(), json={"disabled": True}).status_code == 200
    assert not socket.is_connected() and not key_socket.is_connected()
    assert client.get("/api/auth/me", headers=viewer).status_code == 401
    assert client.get("/api/auth/me", headers={"X-API-Key": key}).status_code == 401
    login = client.post("/api/auth/login", json={"username": "vic", "password": OTHER_PASSWORD})
    assert login.status_code == 401 and login.get_json()["error"] == "invalid username or password"
    assert client.patch("/api/users/vic", headers=auth.headers(), json={"disabled": False}).status_code == 200
    assert client.post("/api/auth/login", json={"username": "vic", "password": OTHER_PASSWORD}).status_code == 200


def test_deleting_a_user_ends_their_sessions_and_keys(client, auth, team):
    headers = team.user("user", "del")
    key = team.key(headers)
    assert client.delete("/api/users/del", headers=auth.headers()).status_code == 200
    assert client.get("/api/auth/me", headers=headers).status_code == 401
    assert client.get("/api/vram/history", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_a_role_change_takes_effect_at_the_next_request(client, auth, team, fake_ollama):
    headers = team.user("viewer", "promoted")
    assert client.post("/api/models/ollama/unload", headers=headers, json={"model_name": "x"}).status_code == 403
    client.patch("/api/users/promoted", headers=auth.headers(), json={"role": "operator"})
    assert client.post("/api/models/ollama/unload", headers=headers, json={"model_name": "x"}).status_code != 403
    assert client.get("/api/auth/me", headers=headers).get_json()["role"] == "operator"


def test_the_last_admin_cannot_be_demoted(client, auth, team, services):
    second = team.user("admin", "boss")
    # The environment admin is admin by definition; demoting the other is fine while one remains.
    assert client.patch("/api/users/boss", headers=auth.headers(), json={"role": "user"}).status_code == 200
    assert services.accounts.count_admins() == 1
    assert second  # (its session stays valid with the new role)


def test_two_admins_editing_one_user_at_once_lose_nothing(client, auth, team):
    team.user("viewer", "both")
    other_admin = team.user("admin", "admin2")
    assert client.patch("/api/users/both", headers=auth.headers(), json={"role": "operator"}).status_code == 200
    assert client.patch("/api/users/both", headers=other_admin, json={"disabled": True}).status_code == 200
    user = next(u for u in client.get("/api/users", headers=auth.headers()).get_json()["users"]
                if u["username"] == "both")
    assert (user["role"], user["disabled"]) == ("operator", True)


def test_change_own_password_ends_other_sessions_keeps_this_one_and_keys(client, auth, team):
    headers = team.user("user", "pat")
    key = team.key(headers)
    other = client.post("/api/auth/login", json={"username": "pat", "password": OTHER_PASSWORD}).get_json()["token"]
    wrong = client.post("/api/auth/password", headers=headers,
                        json={"current_password": "nope-nope-nope", "new_password": "brand-new-password"})
    assert wrong.status_code == 401
    short = client.post("/api/auth/password", headers=headers,
                        json={"current_password": OTHER_PASSWORD, "new_password": "short"})
    assert short.status_code == 400 and "new_password" in short.get_json()["error"]
    done = client.post("/api/auth/password", headers=headers,
                       json={"current_password": OTHER_PASSWORD, "new_password": "brand-new-password"})
    assert done.status_code == 200 and done.get_json() == {"success": True}
    assert client.get("/api/auth/me", headers=headers).status_code == 200
    assert client.get("/api/auth/me", headers={"Authorization": f"Bearer {other}"}).status_code == 401
    assert client.get("/api/auth/me", headers={"X-API-Key": key}).status_code == 200
    assert client.post("/api/auth/login", json={"username": "pat", "password": "brand-new-password"}).status_code == 200


def test_an_admin_resetting_a_password_ends_that_users_sessions_and_keys(client, auth, team):
    headers = team.user("user", "reset")
    key = team.key(headers)
    assert client.patch("/api/users/reset", headers=auth.headers(), json={"password": "reset-by-admin"}).status_code == 200
    assert client.get("/api/auth/me", headers=headers).status_code == 401
    assert client.get("/api/auth/me", headers={"X-API-Key": key}).status_code == 401


# -- API keys -------------------------------------------------------------------------------------

def test_key_lifecycle(client, auth, team):
    headers = team.user("user", "kim")
    created = client.post("/api/keys", headers=headers, json={"name": "Prometheus", "expires_in_days": 30})
    assert created.status_code == 201
    key = created.get_json()
    assert set(key) == {"id", "name", "prefix", "scopes", "username", "created_at", "expires_at",
                        "last_used_at", "key"}
    secret = key["key"]
    assert secret.startswith("vdk_") and len(secret) == 4 + 43 and key["prefix"] == secret[:12]
    assert key["scopes"] == ["read", "proxy"] and key["username"] == "kim"
    for header in ({"Authorization": f"Bearer {secret}"}, {"X-API-Key": secret}):
        me = client.get("/api/auth/me", headers=header)
        assert me.status_code == 200 and me.get_json()["auth"] == "api_key"
    listed = client.get("/api/keys", headers=headers).get_json()["keys"]
    assert [k["id"] for k in listed] == [key["id"]] and "key" not in listed[0]
    assert client.get("/api/keys", headers=auth.headers()).get_json()["keys"][0]["id"] == key["id"]  # admin sees all
    stranger = team.user("user", "other")
    assert client.delete(f"/api/keys/{key['id']}", headers=stranger).status_code == 404
    assert client.delete(f"/api/keys/{key['id']}", headers=headers).get_json() == {"success": True}
    assert client.get("/api/auth/me", headers={"X-API-Key": secret}).status_code == 401


def test_key_scopes_follow_the_owners_role(client, team):
    viewer = team.user("viewer", "v")
    created = client.post("/api/keys", headers=viewer, json={"name": "k"})
    assert created.get_json()["scopes"] == ["read"]
    refused = client.post("/api/keys", headers=viewer, json={"name": "k", "scopes": ["models"]})
    assert refused.status_code == 400 and "scopes" in refused.get_json()["error"]


@pytest.mark.parametrize("body, field", [
    ({}, "name"), ({"name": ""}, "name"), ({"name": "x" * 101}, "name"), ({"name": "a\nb"}, "name"),
    ({"name": "k", "scopes": ["root"]}, "scopes"), ({"name": "k", "scopes": "read"}, "scopes"),
    ({"name": "k", "expires_in_days": 0}, "expires_in_days"),
    ({"name": "k", "expires_in_days": 3651}, "expires_in_days"),
    ({"name": "k", "expires_in_days": "7"}, "expires_in_days"),
])
def test_key_fields_are_validated(client, auth, body, field):
    response = client.post("/api/keys", headers=auth.headers(), json=body)
    assert response.status_code == 400 and field in response.get_json()["error"]


def test_an_expired_key_is_401(client, auth, team, clock):
    secret = team.key(auth.headers(), expires_in_days=1)
    assert client.get("/api/vram/history", headers={"X-API-Key": secret}).status_code == 200
    clock.advance(86400 + 1)
    assert client.get("/api/vram/history", headers={"X-API-Key": secret}).status_code == 401


def test_keys_never_use_session_only_routes(client, auth, team):
    secret = team.key(auth.headers(), ["read", "models", "proxy", "metrics"])
    headers = {"X-API-Key": secret}
    for method, url in [("get", "/api/users"), ("post", "/api/keys"), ("get", "/api/keys"),
                        ("get", "/api/audit"), ("post", "/api/auth/password"), ("post", "/api/auth/logout")]:
        response = getattr(client, method)(url, headers=headers, json={} if method == "post" else None)
        assert response.status_code == 403, (method, url)


def test_a_credential_in_the_query_string_is_refused(client, auth, team):
    secret = team.key(auth.headers())
    response = client.get(f"/api/vram/history?api_key={secret}", headers={"X-API-Key": secret})
    assert response.status_code == 401 and "URL" in response.get_json()["error"]
    assert client.get(f"/api/vram/history?token={auth.token}").status_code == 401


def test_key_last_used_at_is_written(client, auth, team, services):
    secret = team.key(auth.headers())
    client.get("/api/vram/history", headers={"X-API-Key": secret})
    services.accounts.flush_key_use()
    assert client.get("/api/keys", headers=auth.headers()).get_json()["keys"][0]["last_used_at"] is not None


# -- audit and usage ----------------------------------------------------------------------------

def test_actions_are_audited_without_secrets(client, auth, team, fake_ollama):
    admin = auth.headers()
    client.post("/api/auth/login", json={"username": USERNAME, "password": "wrong-password-1"})
    team.user("operator", "olga")
    key = team.key(admin)
    client.post("/api/models/ollama/unload", headers=admin, json={"model_name": "llama3.2"})
    entries = client.get("/api/audit", headers=admin).get_json()["entries"]
    actions = [e["action"] for e in entries]
    for expected in ("login", "login_failed", "user_create", "key_create", "model_unload"):
        assert expected in actions
    assert set(entries[0]) == {"id", "timestamp", "username", "action", "target", "success", "source_ip", "detail"}
    failed = next(e for e in entries if e["action"] == "login_failed")
    assert (failed["username"], failed["success"], failed["source_ip"]) == (USERNAME, False, "127.0.0.1")
    text = repr(entries)
    for secret in (PASSWORD, OTHER_PASSWORD, "wrong-password-1", key, auth.token):
        assert secret not in text
    only = client.get("/api/audit?action=user_create&limit=5", headers=admin).get_json()["entries"]
    assert [e["target"] for e in only] == ["olga"]
    assert client.get("/api/audit?username=olga", headers=admin).get_json()["entries"][0]["action"] == "login"
    for bad in ("limit=0", "limit=1001", "limit=x", "action=rm"):
        assert client.get(f"/api/audit?{bad}", headers=admin).status_code == 400


def test_old_audit_entries_and_usage_rows_are_deleted(client, auth, services, clock):
    auth.headers()
    clock.advance(91 * 86400)
    assert services.audit.purge() >= 1
    assert services.audit.entries() == []


def test_proxied_requests_are_counted_per_user_and_model(client, auth, team, fake_ollama, services):
    user = team.user("user", "uma")
    response = client.post("/ollama/api/generate", headers=user, json={"model": "llama3.2", "prompt": "hi"})
    assert response.status_code == 200
    response.get_data()
    client.post("/ollama/api/generate", headers=user, json={"model": "nonexistent", "prompt": "hi"}).get_data()
    from tests.live import wait_until

    wait_until(lambda: len(client.get("/api/usage", headers=auth.headers()).get_json()["rows"]) >= 1)
    wait_until(lambda: client.get("/api/usage", headers=auth.headers()).get_json()["rows"][-1]["requests"] >= 2)
    rows = client.get("/api/usage?group_by=user", headers=auth.headers()).get_json()["rows"]
    uma = next(r for r in rows if r["user"] == "uma")
    assert uma["requests"] == 2 and uma["errors"] == 1
    assert uma["prompt_tokens"] > 0 and uma["completion_tokens"] > 0
    models = client.get("/api/usage?group_by=model", headers=user).get_json()["rows"]
    assert any(r["model"].startswith("llama3.2") for r in models)
    days = client.get("/api/usage?group_by=day", headers=user).get_json()
    assert set(days) == {"since", "until", "group_by", "rows"} and len(days["rows"]) == 1
    # A user sees their own rows only; operators and admins everyone's.
    viewer = team.user("viewer", "vera")
    assert client.get("/api/usage", headers=viewer).get_json()["rows"] == []
    for bad in ("group_by=week", "since=yesterday", "since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z"):
        assert client.get(f"/api/usage?{bad}", headers=user).status_code == 400


def test_a_proxied_listing_is_counted_without_a_model(client, auth, team, fake_ollama):
    """/api/tags names every installed model: it is a request of its caller, not a use of the first one."""
    from tests.live import wait_until

    user = team.user("user", "ulla")
    response = client.get("/ollama/api/tags", headers=user)
    assert response.status_code == 200 and '"model"' in response.get_data(as_text=True)
    wait_until(lambda: client.get("/api/usage?group_by=model", headers=user).get_json()["rows"])
    rows = client.get("/api/usage?group_by=model", headers=user).get_json()["rows"]
    assert [(r["model"], r["requests"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [("", 1, 0, 0)]


def test_usage_names_each_request_by_its_route_and_a_long_value_never_wedges_the_log(
        client, team, services, fake_ollama):
    """The endpoint of a usage row (and the Prometheus label) is one of a fixed set, whatever the path
    asked; a long model name in a forwarded path or in Ollama's answer is no row PostgreSQL refuses
    (VARCHAR lengths), which would keep the whole batch, other users' rows too, out of the table."""
    from sqlalchemy import select

    from usage.log import Usage
    from usage.models import UsageRecord

    user = team.user("user", "ursula")
    long_name = "m" * 80 + ":" + "t" * 80  # the longest name the allowlist forwards: 161 characters
    asked = [("get", f"/ollama/v1/models/{long_name}", 404),  # forwarded; the fake knows no such model
             ("get", "/ollama/api/" + "x" * 300, 404),       # not an Ollama path: refused here
             ("post", "/ollama/api/tags", 405),
             ("post", "/ollama/api/pull", 403),
             ("get", "/ollama/api/tags", 200)]
    for method, path, status in asked:
        assert getattr(client, method)(path, headers=user).status_code == status, path
    services.usage.record_later(Usage("ursula", None, "/api/chat", "n" * 400, 200, 0.1, 1, 2))
    services.usage.flush()
    rows = services.database.run(lambda s: [(r.endpoint, r.status, r.model) for r in s.scalars(
        select(UsageRecord).where(UsageRecord.username == "ursula").order_by(UsageRecord.id))])
    assert [(endpoint, status) for endpoint, status, _ in rows] == [
        ("/v1/models/{model}", 404), ("(other)", 404), ("/api/tags", 405), ("/api/pull", 403), ("/api/tags", 200),
        ("/api/chat", 200)]
    assert rows[-1][2] == "n" * 300  # cut to the column, not refused
    assert services.usage.flush() == 0  # nothing left behind for a retry


# -- persistence and faults -----------------------------------------------------------------------

def test_sessions_and_download_history_survive_a_new_app_on_the_same_database(
        config, clock, nvml_reader, database_url, client, auth, fake_ollama):
    from app import create_app
    from db import Database

    token = auth.headers()
    second_db = Database(database_url)
    second = create_app(config, nvml_reader=nvml_reader, database=second_db, clock=clock)
    try:
        assert second.test_client().get("/api/auth/me", headers=token).status_code == 200
    finally:
        second.extensions["dashboard"].shutdown()


def test_database_down_is_a_503_naming_it_and_vram_still_answers(client, auth, services, monkeypatch):
    from sqlalchemy.exc import OperationalError

    headers = auth.headers()
    services.poller.tick()

    def broken(work):
        raise OperationalError("SELECT 1", {}, Exception("database is locked"))

    monkeypatch.setattr(services.database, "_run_locked", broken)
    response = client.get("/api/users", headers=headers)
    assert response.status_code == 503 and "database" in response.get_json()["error"]
    assert "DATABASE_URL" in response.get_json()["error"]
    assert client.get("/api/vram/status", headers=headers).status_code == 200  # cached credentials
    assert client.get("/health").status_code == 200
