"""Alert rules driven through poller.tick() with scripted readings and the injected clock."""
from __future__ import annotations

import pytest

from tests.fakes.scripted_reader import GPU0, GPU1_LOST, UNAVAILABLE, ScriptedReader, reading
from vram.snapshot import GpuSnapshot

TOTAL_MB = GPU0.total_mb


@pytest.fixture
def nvml_reader():
    return ScriptedReader(reading(used=1000))


@pytest.fixture
def config_overrides(fake_ollama):
    return {"ollama_host": fake_ollama.url, "alert_for_seconds": 10.0, "alert_vram_percent": 90.0}


@pytest.fixture
def events(app, client, auth, services):
    """The vram_alert events an authenticated socket receives (a callable that drains them)."""
    sio = services.socketio.test_client(app, flask_test_client=client, auth={"token": auth.headers()["Authorization"][7:]})
    assert sio.is_connected()

    def drain():
        return [e["args"][0] for e in sio.get_received() if e["name"] == "vram_alert"]

    drain()
    yield drain
    sio.disconnect()


def used(percent: float) -> int:
    return int(TOTAL_MB * percent / 100) + 1


def poll(services, nvml_reader, clock, *, percent=None, snapshot=None, advance=2.0):
    clock.advance(advance)
    nvml_reader.snapshots = [snapshot if snapshot is not None else reading(used=used(percent))]
    services.poller.tick()


def test_vram_high_fires_only_after_the_duration_then_resolves(services, nvml_reader, clock, events, client, auth):
    poll(services, nvml_reader, clock, percent=95)
    for _ in range(4):  # 8 s of 10: pending
        poll(services, nvml_reader, clock, percent=95)
    assert events() == []
    poll(services, nvml_reader, clock, percent=95)  # 10 s
    fired = events()
    assert len(fired) == 1
    alert = fired[0]
    assert alert["rule"] == "vram_high" and alert["gpu_index"] == 0 and alert["state"] == "firing"
    assert alert["threshold"] == 90.0 and 95 <= alert["value"] < 96 and alert["resolved_at"] is None
    assert set(alert) == {"id", "rule", "gpu_index", "state", "value", "threshold", "started_at", "resolved_at",
                          "message"}
    for _ in range(3):
        poll(services, nvml_reader, clock, percent=97)  # still firing: no second event
    assert events() == []
    assert services.alerts.firing_counts()["vram_high"] == 1
    poll(services, nvml_reader, clock, percent=10)  # gone for one reading: not yet resolved
    assert events() == []
    poll(services, nvml_reader, clock, percent=10)  # gone for a full poll
    resolved = events()
    assert [(a["state"], a["id"]) for a in resolved] == [("resolved", alert["id"])]
    assert resolved[0]["resolved_at"] is not None
    stored = client.get("/api/alerts", headers=auth.headers()).get_json()["alerts"]
    assert [(a["id"], a["state"]) for a in stored] == [(alert["id"], "resolved")]
    assert services.alerts.firing_counts()["vram_high"] == 0


def test_a_flapping_value_neither_fires_nor_toggles(services, nvml_reader, clock, events):
    for step in range(20):  # above, below, above, ... every 2 s for 40 s
        poll(services, nvml_reader, clock, percent=95 if step % 2 == 0 else 50)
    assert events() == []
    for _ in range(6):
        poll(services, nvml_reader, clock, percent=95)
    assert [a["state"] for a in events()] == ["firing"]
    for step in range(20):  # a firing alert whose value dips for single readings stays firing
        poll(services, nvml_reader, clock, percent=50 if step % 2 == 0 else 95)
    assert events() == []


def test_for_zero_fires_at_once(services, nvml_reader, clock, events, client, auth):
    services.settings.update({"alert_for_seconds": 0}, username="admin")
    poll(services, nvml_reader, clock, percent=99)
    assert [a["rule"] for a in events()] == ["vram_high"]


def test_temperature_and_threshold_changes_apply_at_once(services, nvml_reader, clock, events):
    hot = reading(gpus=(GpuSnapshot(**{**GPU0.__dict__, "temperature_c": 88}),))
    services.settings.update({"alert_for_seconds": 0}, username="admin")
    poll(services, nvml_reader, clock, snapshot=hot)
    assert [(a["rule"], a["value"], a["threshold"]) for a in events()] == [("temperature_high", 88.0, 85.0)]
    services.settings.update({"alert_temperature_c": 95}, username="admin")
    poll(services, nvml_reader, clock, snapshot=hot)
    poll(services, nvml_reader, clock, snapshot=hot)
    assert [a["state"] for a in events()] == ["resolved"]


def test_gpu_lost_and_nvml_unavailable(services, nvml_reader, clock, events, client, auth):
    services.settings.update({"alert_for_seconds": 0}, username="admin")
    poll(services, nvml_reader, clock, snapshot=reading(gpus=(GPU0, GPU1_LOST)))
    assert [(a["rule"], a["gpu_index"], a["value"]) for a in events()] == [("gpu_lost", 1, None)]
    poll(services, nvml_reader, clock, snapshot=UNAVAILABLE)
    fired = events()
    assert [(a["rule"], a["gpu_index"]) for a in fired] == [("nvml_unavailable", None)]
    poll(services, nvml_reader, clock, snapshot=UNAVAILABLE)
    assert events() == []  # the lost GPU's alert keeps its state while NVML says nothing
    poll(services, nvml_reader, clock, snapshot=reading(gpus=(GPU0, GPU1_LOST)))
    poll(services, nvml_reader, clock, snapshot=reading(gpus=(GPU0, GPU1_LOST)))
    assert [(a["rule"], a["state"]) for a in events()] == [("nvml_unavailable", "resolved")]
    firing = client.get("/api/alerts?state=firing", headers=auth.headers()).get_json()["alerts"]
    assert [(a["rule"], a["gpu_index"]) for a in firing] == [("gpu_lost", 1)]


def test_ollama_unreachable_uses_the_cached_check(services, nvml_reader, clock, events):
    import concurrency

    services.settings.update({"alert_for_seconds": 0}, username="admin")
    services.ollama._reachable = (concurrency.monotonic(), False)  # the client's cached answer: down
    services.ollama.reachable_cache_s = 3600.0
    poll(services, nvml_reader, clock, percent=10)
    assert [(a["rule"], a["gpu_index"]) for a in events()] == [("ollama_unreachable", None)]
    assert services.alerts.ollama_up is False
    services.ollama._reachable = (concurrency.monotonic(), True)
    poll(services, nvml_reader, clock, percent=10)
    poll(services, nvml_reader, clock, percent=10)
    assert [(a["rule"], a["state"]) for a in events()] == [("ollama_unreachable", "resolved")]


def test_alerts_route_filters_orders_and_validates(services, nvml_reader, clock, client, auth):
    services.settings.update({"alert_for_seconds": 0}, username="admin")
    poll(services, nvml_reader, clock, snapshot=reading(gpus=(GPU0, GPU1_LOST)))
    poll(services, nvml_reader, clock, percent=99)  # GPU 1 gone from the list: its alert stays
    headers = auth.headers()
    alerts = client.get("/api/alerts", headers=headers).get_json()["alerts"]
    assert [a["rule"] for a in alerts] == ["vram_high", "gpu_lost"]  # newest started_at first
    assert len(client.get("/api/alerts?limit=1", headers=headers).get_json()["alerts"]) == 1
    assert client.get("/api/alerts?state=resolved", headers=headers).get_json()["alerts"] == []
    for bad in ("state=open", "limit=0", "limit=x", "limit=1001"):
        response = client.get(f"/api/alerts?{bad}", headers=headers)
        assert response.status_code == 400 and bad.split("=")[0] in response.get_json()["error"]
    assert client.get("/api/alerts").status_code == 401


def test_a_restart_takes_up_firing_alerts_without_a_duplicate(config, clock, database, events, services,
                                                              nvml_reader):
    from app import create_app

    services.settings.update({"alert_for_seconds": 0}, username="admin")
    poll(services, nvml_reader, clock, percent=99)
    first = events()
    assert len(first) == 1
    again = ScriptedReader(reading(used=used(99)))
    second = create_app(config, nvml_reader=again, database=database, clock=clock)
    try:
        engine = second.extensions["dashboard"].alerts
        assert engine.firing_counts()["vram_high"] == 1
        second.extensions["dashboard"].poller.tick()
        assert engine.alerts(state="firing")[0]["id"] == first[0]["id"]
        assert len(engine.alerts()) == 1
    finally:
        second.extensions["dashboard"].shutdown()


def test_the_poller_calls_nvml_once_per_tick_with_rules_on(services, nvml_reader, clock):
    before = nvml_reader.calls
    for _ in range(5):
        poll(services, nvml_reader, clock, percent=95)
    assert nvml_reader.calls - before == 5
