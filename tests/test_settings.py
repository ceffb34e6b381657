"""GET/PATCH /api/settings: validation, who sees and changes what, applied at once, kept across restarts."""
from __future__ import annotations

import pytest

from tests.fakes.scripted_reader import ScriptedReader
OTHER_PASSWORD = "another-good-password"


@pytest.fixture
def nvml_reader():
    return ScriptedReader()


@pytest.fixture
def config_overrides():
    return {"alert_vram_percent": 80.0}


def make_user(client, headers, role):
    assert client.post("/api/users", headers=headers,
                       json={"username": role, "password": OTHER_PASSWORD, "role": role}).status_code == 201
    token = client.post("/api/auth/login", json={"username": role, "password": OTHER_PASSWORD}).get_json()["token"]
    return {"Authorization": f"Bearer {token}"}


def test_defaults_environment_and_api_sources(client, auth):
    body = client.get("/api/settings", headers=auth.headers()).get_json()
    assert body["settings"] == {"alert_vram_percent": 80.0, "alert_temperature_c": 85.0, "alert_for_seconds": 10.0,
                                "alert_webhook_url": None, "vram_poll_interval_s": 2.0, "load_keep_alive": -1}
    assert body["sources"]["alert_vram_percent"] == "environment"
    assert body["sources"]["alert_temperature_c"] == "default"
    changed = client.patch("/api/settings", headers=auth.headers(), json={"alert_temperature_c": 70}).get_json()
    assert changed["settings"]["alert_temperature_c"] == 70 and changed["sources"]["alert_temperature_c"] == "api"


@pytest.mark.parametrize("field, value", [
    ("vram_poll_interval_s", 0.05), ("vram_poll_interval_s", 3601), ("vram_poll_interval_s", "fast"),
    ("alert_vram_percent", 0), ("alert_vram_percent", 101), ("alert_vram_percent", True),
    ("alert_for_seconds", -1), ("alert_webhook_url", "ftp://example.com/x"), ("alert_webhook_url", "hooks"),
    ("alert_webhook_url", 5), ("load_keep_alive", "soon"), ("load_keep_alive", None), ("nope", 1),
])
def test_invalid_values_are_400s_naming_the_field(client, auth, services, field, value):
    response = client.patch("/api/settings", headers=auth.headers(), json={field: value, "alert_temperature_c": 60})
    assert response.status_code == 400
    assert field in response.get_json()["error"]
    assert services.settings.value("alert_temperature_c") == 85.0  # all or nothing


def test_an_empty_body_is_a_400(client, auth):
    assert client.patch("/api/settings", headers=auth.headers(), json={}).status_code == 400


def test_the_webhook_url_is_for_admins_only_and_the_audit_hides_its_path(client, auth, services):
    url = "https://hooks.example.com/services/SECRET-TOKEN"
    assert client.patch("/api/settings", headers=auth.headers(), json={"alert_webhook_url": url}).status_code == 200
    assert client.get("/api/settings", headers=auth.headers()).get_json()["settings"]["alert_webhook_url"] == url
    viewer = make_user(client, auth.headers(), "viewer")
    seen = client.get("/api/settings", headers=viewer).get_json()
    assert seen["settings"]["alert_webhook_url"] is None and seen["sources"]["alert_webhook_url"] == "api"
    entry = services.audit.entries(action="settings_update")[0]
    assert entry["username"] and entry["target"] == "alert_webhook_url"
    assert "SECRET-TOKEN" not in entry["detail"] and "hooks.example.com" in entry["detail"]
    assert client.patch("/api/settings", headers=auth.headers(), json={"alert_webhook_url": ""}
                        ).get_json()["settings"]["alert_webhook_url"] is None


def test_only_an_admins_session_may_patch(client, auth):
    operator = make_user(client, auth.headers(), "operator")
    assert client.patch("/api/settings", headers=operator, json={"alert_for_seconds": 1}).status_code == 403
    key = client.post("/api/keys", headers=auth.headers(), json={"name": "k", "scopes": ["read"]}).get_json()["key"]
    as_key = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/settings", headers=as_key).status_code == 200
    assert client.patch("/api/settings", headers=as_key, json={"alert_for_seconds": 1}).status_code == 403
    assert client.get("/api/settings").status_code == 401


def test_the_interval_reschedules_the_poller_at_once(client, auth, services):
    import concurrency

    poller = services.poller
    task = concurrency.spawn(poller.run)
    try:
        concurrency.sleep(0.05)
        reads = services.nvml.calls
        # The poller sleeps 2 s; the new interval wakes it.
        assert client.patch("/api/settings", headers=auth.headers(), json={"vram_poll_interval_s": 0.1}
                            ).status_code == 200
        concurrency.sleep(0.5)
        assert services.nvml.calls - reads >= 3
        assert poller.interval_s == 0.1
    finally:
        poller.stop()
        task.kill()


def test_load_uses_the_keep_alive_setting(client, auth, services, monkeypatch):
    seen = []
    monkeypatch.setattr(services.ollama, "load", lambda name, keep_alive: seen.append(keep_alive))
    client.patch("/api/settings", headers=auth.headers(), json={"load_keep_alive": "5m"})
    response = client.post("/api/models/ollama/load", headers=auth.headers(), json={"model_name": "llama3.2:1b"})
    assert response.status_code == 200, response.get_json()
    assert seen == ["5m"]


def test_settings_survive_a_restart_and_win_over_the_environment(config, clock, database, client, auth, services):
    from app import create_app

    assert client.patch("/api/settings", headers=auth.headers(),
                        json={"alert_vram_percent": 55, "vram_poll_interval_s": 7.5}).status_code == 200
    restarted = create_app(config, nvml_reader=ScriptedReader(), database=database, clock=clock)
    try:
        again = restarted.extensions["dashboard"]
        values, sources = again.settings.snapshot()
        assert (values["alert_vram_percent"], sources["alert_vram_percent"]) == (55.0, "api")
        assert again.poller.interval_s == 7.5
        assert values["alert_temperature_c"] == 85.0
    finally:
        restarted.extensions["dashboard"].shutdown()
