"""GET /metrics: every contracted name and label, base units, nothing for unsupported fields, auth."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from usage.log import Usage

CONTRACT = {
    "vram_dashboard_gpu_memory_total_bytes": {"gpu", "uuid", "name"},
    "vram_dashboard_gpu_memory_used_bytes": {"gpu", "uuid", "name"},
    "vram_dashboard_gpu_memory_free_bytes": {"gpu", "uuid", "name"},
    "vram_dashboard_gpu_utilization_ratio": {"gpu", "uuid"},
    "vram_dashboard_gpu_memory_utilization_ratio": {"gpu", "uuid"},
    "vram_dashboard_gpu_temperature_celsius": {"gpu", "uuid"},
    "vram_dashboard_gpu_power_watts": {"gpu", "uuid"},
    "vram_dashboard_gpu_up": {"gpu", "uuid"},
    "vram_dashboard_process_gpu_memory_bytes": {"gpu", "pid", "process", "model"},
    "vram_dashboard_ollama_model_vram_bytes": {"model"},
    "vram_dashboard_nvml_up": set(),
    "vram_dashboard_ollama_up": set(),
    "vram_dashboard_proxy_requests_total": {"endpoint", "status"},
    "vram_dashboard_proxy_tokens_total": {"model", "kind"},
    "vram_dashboard_alerts_firing": {"rule"},
}


def scrape(client, headers=None) -> dict[str, list]:
    response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def record_usage(services):
    services.usage.record(Usage("admin", None, "api/chat", "llama3.2:latest", 200, 0.5, 12, 34))
    services.usage.record(Usage("admin", None, "api/chat", "llama3.2:latest", 502, 0.1, None, None))


def test_every_contracted_metric_with_its_labels(client, auth, services, fake_nvml):
    services.poller.tick()
    record_usage(services)
    # A model process, as attribution would name it.
    latest = services.poller.latest
    import dataclasses

    snapshot = latest.snapshot
    processes = tuple(dataclasses.replace(p, model="llama3.2:latest") for p in snapshot.processes)
    services.poller._latest = dataclasses.replace(latest, snapshot=dataclasses.replace(snapshot, processes=processes))
    samples = scrape(client, auth.headers())
    for name, labels in CONTRACT.items():
        assert name in samples, name
        for sample in samples[name]:
            assert set(sample.labels) == labels, (name, sample.labels)
    gpus = {s.labels["gpu"]: s for s in samples["vram_dashboard_gpu_memory_total_bytes"]}
    assert set(gpus) == {"0", "1"}
    gpu0 = snapshot.gpus[0]
    assert gpus["0"].value == gpu0.total_mb * 1024 * 1024
    ratio = next(s.value for s in samples["vram_dashboard_gpu_utilization_ratio"] if s.labels["gpu"] == "0")
    assert ratio == gpu0.utilization / 100 and 0 <= ratio <= 1
    assert samples["vram_dashboard_nvml_up"][0].value == 1
    requests = {(s.labels["endpoint"], s.labels["status"]): s.value for s in samples["vram_dashboard_proxy_requests_total"]}
    assert requests == {("api/chat", "200"): 1, ("api/chat", "502"): 1}
    tokens = {(s.labels["model"], s.labels["kind"]): s.value for s in samples["vram_dashboard_proxy_tokens_total"]}
    assert tokens == {("llama3.2:latest", "prompt"): 12, ("llama3.2:latest", "completion"): 34}
    assert {s.labels["rule"] for s in samples["vram_dashboard_alerts_firing"]} == {
        "vram_high", "temperature_high", "gpu_lost", "nvml_unavailable", "ollama_unreachable"}
    assert samples["vram_dashboard_ollama_model_vram_bytes"][0].labels == {"model": "llama3.2:latest"}


def test_a_scrape_never_calls_nvml(client, auth, services, fake_nvml):
    services.poller.tick()
    fake_nvml.reset_counts()
    for _ in range(3):
        scrape(client, auth.headers())
    assert fake_nvml.call_count() == 0


def test_unsupported_fields_are_left_out(client, auth, services, fake_nvml):
    fake_nvml.scenario_unsupported_fields()
    services.poller.tick()
    snapshot = services.poller.latest.snapshot
    samples = scrape(client, auth.headers())
    for name, field in (("vram_dashboard_gpu_temperature_celsius", "temperature_c"),
                        ("vram_dashboard_gpu_power_watts", "power_w")):
        exported = {s.labels["gpu"] for s in samples.get(name, [])}
        expected = {str(g.index) for g in snapshot.gpus if getattr(g, field) is not None}
        assert exported == expected, name


def test_a_lost_gpu_is_up_0_with_no_readings(client, auth, services, fake_nvml):
    fake_nvml.scenario_gpu_lost(1)
    services.poller.tick()
    samples = scrape(client, auth.headers())
    up = {s.labels["gpu"]: s.value for s in samples["vram_dashboard_gpu_up"]}
    assert up == {"0": 1, "1": 0}
    assert {s.labels["gpu"] for s in samples["vram_dashboard_gpu_memory_used_bytes"]} == {"0"}


def test_no_gpu_series_while_nvml_is_unavailable(client, auth, services, fake_nvml):
    fake_nvml.scenario_no_driver()
    services.poller.tick()
    samples = scrape(client, auth.headers())
    assert samples["vram_dashboard_nvml_up"][0].value == 0
    assert not [name for name in samples if name.startswith("vram_dashboard_gpu_")]
    assert "vram_dashboard_process_gpu_memory_bytes" not in samples


def test_a_reading_that_turns_stale_mid_scrape_is_judged_once(client, auth, services, fake_nvml, monkeypatch):
    """nvml_up and the GPU series come from one look at the reading: a scrape never says NVML is up
    and shows no GPU, or down with GPU series, when the reading crosses the stale boundary."""
    from vram.poller import PolledSnapshot

    services.poller.tick()
    headers = auth.headers()
    looks = []

    def is_stale(self, stale_after_s):  # fresh at the first look of a scrape, stale after it
        looks.append(stale_after_s)
        return len(looks) > 1

    monkeypatch.setattr(PolledSnapshot, "is_stale", is_stale)
    samples = scrape(client, headers)
    assert looks, "the scrape never judged the reading"
    assert samples["vram_dashboard_nvml_up"][0].value == 1
    assert {s.labels["gpu"] for s in samples["vram_dashboard_gpu_memory_used_bytes"]} == {"0", "1"}


def test_auth_needs_a_session_or_a_metrics_key(client, auth, services):
    services.poller.tick()
    assert client.get("/metrics").status_code == 401
    headers = auth.headers()
    read_key = client.post("/api/keys", headers=headers, json={"name": "r", "scopes": ["read"]}).get_json()["key"]
    metrics_key = client.post("/api/keys", headers=headers, json={"name": "m", "scopes": ["metrics"]}).get_json()["key"]
    assert client.get("/metrics", headers={"Authorization": f"Bearer {read_key}"}).status_code == 403
    assert client.get("/metrics", headers={"Authorization": f"Bearer {metrics_key}"}).status_code == 200
    assert client.get("/metrics", headers={"X-API-Key": metrics_key}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": "Bearer vdk_nope"}).status_code == 401


@pytest.mark.parametrize("config_overrides", [{"metrics_auth": False}], indirect=True)
def test_metrics_auth_false_makes_it_public(client, services):
    services.poller.tick()
    assert "vram_dashboard_nvml_up" in scrape(client)
    assert client.get("/api/alerts").status_code == 401  # only /metrics


def test_gpu_series_are_written_once_a_poll_and_follow_the_next_one(client, auth, services, fake_nvml):
    from tests.fakes.fake_nvml import MIB, two_gpus

    services.poller.tick()
    first = client.get("/metrics", headers=auth.headers()).data
    record_usage(services)  # per-scrape families change between polls: the scrape shows them at once
    again = scrape(client, auth.headers())
    assert sum(s.value for s in again["vram_dashboard_proxy_requests_total"]) == 2
    used = {s.labels["gpu"]: s.value for s in again["vram_dashboard_gpu_memory_used_bytes"]}
    fake_nvml.apply(two_gpus().replace_gpu(0, used_bytes=1000 * MIB))
    assert {s.labels["gpu"]: s.value for s in scrape(client, auth.headers())["vram_dashboard_gpu_memory_used_bytes"]} \
        == used  # the same poll: the same figures
    services.poller.tick()
    after = scrape(client, auth.headers())
    assert {s.labels["gpu"]: s.value for s in after["vram_dashboard_gpu_memory_used_bytes"]}["0"] == 1000 * MIB
    # Each family appears once (the two parts of the body never repeat one).
    names = [line.split()[2] for line in first.decode().splitlines() if line.startswith("# TYPE")]
    assert len(names) == len(set(names)) and "vram_dashboard_gpu_up" in names
