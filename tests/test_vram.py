"""The poller (tick, history, schedule) and the /api/vram routes, over a scripted reader."""
import gzip
import json

import pytest

import concurrency
from vram import routes as vram_routes
from vram.poller import VramPoller
from tests.fakes.scripted_reader import GPU0, GPU1_LOST, UNAVAILABLE, ScriptedReader, reading


@pytest.fixture
def nvml_reader():
    return ScriptedReader(reading())


def test_tick_keeps_latest_and_serialises_once():
    published = []
    poller = VramPoller(ScriptedReader(reading(ts=5.0)), 2.0, publish=published.append)
    assert poller.latest is None
    polled = poller.tick()
    assert poller.latest is polled and published == [polled.body]
    assert json.loads(polled.json_bytes) == polled.body
    assert polled.body["gpu"] == polled.body["gpus"][0]
    assert polled.body["processes"] == [{"pid": 4242, "name": "/usr/local/bin/ollama", "used_mb": 5120,
                                         "gpu_index": 0, "model": None}]


def test_history_ring_holds_an_hour_and_returns_oldest_first():
    poller = VramPoller(ScriptedReader(*[reading(ts=float(i), used=i) for i in range(5)]), 2.0)
    assert poller.history_capacity >= 1800
    for _ in range(5):
        poller.tick()
    samples = poller.history()
    assert [s["timestamp"] for s in samples] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert samples[-1]["gpus"] == [{"index": 0, "used_mb": 4, "total_mb": 24564, "utilization": 37}]
    assert [s["timestamp"] for s in poller.history(2)] == [3.0, 4.0]
    assert VramPoller(ScriptedReader(), 0.1).history_capacity >= 36000


def test_unavailable_readings_are_not_history():
    poller = VramPoller(ScriptedReader(reading(ts=1.0), UNAVAILABLE, reading(ts=3.0)), 2.0)
    for _ in range(3):
        poller.tick()
    assert [s["timestamp"] for s in poller.history()] == [1.0, 3.0]


def test_run_schedules_against_a_deadline(monkeypatch):
    """A 0.3 s read still gives a 2 s period: the sleep shrinks instead of the period growing."""
    now = [100.0]
    sleeps = []
    monkeypatch.setattr(concurrency, "monotonic", lambda: now[0])

    def fake_sleep(seconds):
        sleeps.append(round(seconds, 6))
        now[0] += seconds

    monkeypatch.setattr(VramPoller, "_sleep", lambda self, s: fake_sleep(s) or False)
    poller = VramPoller(ScriptedReader(), 2.0)

    def slow_tick():
        now[0] += 0.3
        if len(sleeps) == 4:
            poller._stopping = True

    poller.tick = slow_tick
    poller.run()
    assert sleeps == [1.7, 1.7, 1.7, 1.7]


def test_run_skips_missed_slots_instead_of_bursting(monkeypatch):
    now = [0.0]
    sleeps = []
    monkeypatch.setattr(concurrency, "monotonic", lambda: now[0])
    monkeypatch.setattr(VramPoller, "_sleep", lambda self, s: (sleeps.append(round(s, 6)), now.__setitem__(0, now[0] + s))
                        and False)
    poller = VramPoller(ScriptedReader(), 2.0)
    durations = [5.0, 0.5]

    def tick():
        now[0] += durations.pop(0) if durations else 0.0
        if len(sleeps) == 2:
            poller._stopping = True

    poller.tick = tick
    poller.run()
    # 5 s read: the next slot is the next multiple of 2 s (6.0), not an immediate catch-up burst.
    assert sleeps == [1.0, 1.5]


def test_run_survives_a_failing_tick(monkeypatch, caplog):
    monkeypatch.setattr(VramPoller, "_sleep", lambda self, s: False)
    poller = VramPoller(ScriptedReader(), 2.0)
    calls = []

    def tick():
        calls.append(1)
        if len(calls) == 3:
            poller._stopping = True
        raise RuntimeError("driver exploded")

    poller.tick = tick
    poller.run()
    assert len(calls) == 3 and "VRAM poll failed" in caplog.text


def test_status_is_the_latest_snapshot(client, auth, services):
    services.poller.tick()
    response = client.get("/api/vram/status", headers=auth.headers())
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["gpu", "gpus", "processes", "driver_version", "timestamp"]
    assert 0 <= float(response.headers["X-Reading-Age"]) < 2 and response.headers["X-Reading-Stale"] == "false"
    assert body["gpu"] == {"index": 0, "name": "NVIDIA GeForce RTX 4090", "uuid": "GPU-0", "total_mb": 24564,
                           "used_mb": 6144, "free_mb": 18420, "utilization": 37, "memory_utilization": 12,
                           "temperature_c": 51, "power_w": 123.0}
    assert body["driver_version"] == "550.54.15" and body["timestamp"] == 1000.0


def test_status_never_calls_nvml(client, auth, services, nvml_reader):
    services.poller.tick()
    calls = nvml_reader.calls
    for _ in range(5):
        assert client.get("/api/vram/status", headers=auth.headers()).status_code == 200
    assert nvml_reader.calls == calls


def test_status_before_first_poll_is_503(client, auth):
    response = client.get("/api/vram/status", headers=auth.headers())
    assert response.status_code == 503
    assert response.get_json()["gpus"] == [] and response.headers["Retry-After"] == "1"


@pytest.mark.parametrize("nvml_reader", [ScriptedReader(UNAVAILABLE)])
def test_status_without_nvml_is_503_with_contract_body(client, auth, services, nvml_reader):
    services.poller.tick()
    response = client.get("/api/vram/status", headers=auth.headers())
    assert response.status_code == 503
    assert response.get_json() == {"error": "NVML unavailable: NVIDIA driver not loaded",
                                   "gpu": None, "gpus": [], "processes": []}
    health = client.get("/health").get_json()
    assert health["nvml"] is False and health["status"] == "degraded"


@pytest.mark.parametrize("nvml_reader", [ScriptedReader(reading(gpus=(GPU0, GPU1_LOST)))])
def test_lost_gpu_is_an_entry_with_error(client, auth, services, nvml_reader):
    services.poller.tick()
    body = client.get("/api/vram/status", headers=auth.headers()).get_json()
    assert body["gpus"][0]["used_mb"] == 6144
    assert body["gpus"][1]["error"] == "GPU is lost" and body["gpus"][1]["used_mb"] is None


def test_history_route(client, auth, services):
    for _ in range(3):
        services.poller.tick()
    body = client.get("/api/vram/history?limit=2", headers=auth.headers()).get_json()
    assert len(body["samples"]) == 2
    assert set(body["samples"][0]) == {"timestamp", "gpus"}
    assert len(client.get("/api/vram/history", headers=auth.headers()).get_json()["samples"]) == 3


@pytest.mark.parametrize("limit", ["0", "-1", "abc", "1.5", "", "\uff11", "\u0663", "+1", " 1"])
def test_history_rejects_bad_limit(client, auth, limit):
    response = client.get(f"/api/vram/history?limit={limit}", headers=auth.headers())
    assert response.status_code == 400 and "limit" in response.get_json()["error"]


def test_a_small_status_goes_uncompressed(client, auth, services):
    polled = services.poller.tick()
    assert len(polled.json_bytes) <= vram_routes.GZIP_MIN_BYTES
    response = client.get("/api/vram/status", headers={**auth.headers(), "Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in response.headers and response.data == polled.json_bytes
    # It never varies with Accept-Encoding, so it says none; caches are told no-store anyway.
    assert "Vary" not in response.headers and response.headers["Cache-Control"] == "no-store"


def test_status_is_gzipped_for_clients_that_accept_it(client, auth, services, monkeypatch):
    monkeypatch.setattr(vram_routes, "GZIP_MIN_BYTES", 0)
    polled = services.poller.tick()
    plain = client.get("/api/vram/status", headers=auth.headers())
    assert "Content-Encoding" not in plain.headers and plain.headers["Vary"] == "Accept-Encoding"
    response = client.get("/api/vram/status", headers={**auth.headers(), "Accept-Encoding": "br, gzip"})
    assert response.status_code == 200 and response.headers["Content-Encoding"] == "gzip"
    assert response.headers["Vary"] == "Accept-Encoding" and response.mimetype == "application/json"
    assert gzip.decompress(response.data) == plain.data == polled.json_bytes
    # Built once a poll: the next request is handed the same bytes.
    assert polled.gzip_bytes is polled.gzip_bytes
    refused = client.get("/api/vram/status", headers={**auth.headers(), "Accept-Encoding": "gzip;q=0, br"})
    assert "Content-Encoding" not in refused.headers and refused.data == polled.json_bytes


@pytest.mark.parametrize("accept", ["", "gzip"])
def test_a_prepared_status_goes_out_with_exact_length_and_every_contract_header_once(client, auth, services,
                                                                                      monkeypatch, accept):
    # vram.routes.PreparedResponse serves its headers without Werkzeug's fix-up copy: what it
    # sends must still be complete, each header once, the length that of the bytes sent.
    monkeypatch.setattr(vram_routes, "GZIP_MIN_BYTES", 0)
    services.poller.tick()
    headers = {**auth.headers(), "Accept-Encoding": accept}
    response = client.get("/api/vram/status", headers=headers)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.data) > 0
    names = [name.lower() for name, _ in response.headers]
    for name in ("content-type", "content-length", "etag", "x-content-type-options", "referrer-policy",
                 "cache-control", "x-reading-age", "x-reading-stale", "vary"):
        assert names.count(name) == 1, name
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer" and response.headers["Cache-Control"] == "no-store"
    head = client.head("/api/vram/status", headers=headers)
    assert head.status_code == 200 and head.data == b""
    assert head.headers["Content-Length"] == response.headers["Content-Length"]
    assert head.headers["ETag"] == response.headers["ETag"]


def test_the_etag_names_the_poll_and_if_none_match_gets_304(client, auth, services):
    services.poller.tick()
    first = client.get("/api/vram/status", headers=auth.headers())
    etag = first.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    for sent in (etag, f'W/{etag}', f'"other", {etag}', "*"):
        again = client.get("/api/vram/status", headers={**auth.headers(), "If-None-Match": sent,
                                                          "Accept-Encoding": "gzip"})
        assert again.status_code == 304 and again.data == b"", sent
        assert again.headers["ETag"] == etag and "Content-Type" not in again.headers
    services.poller.tick()  # a new poll is a new representation, even with the same timestamp
    fresh = client.get("/api/vram/status", headers={**auth.headers(), "If-None-Match": etag})
    assert fresh.status_code == 200 and fresh.headers["ETag"] != etag and fresh.get_json()["gpus"]


def test_if_none_match_without_credentials_is_still_401(client, auth, services):
    services.poller.tick()
    etag = client.get("/api/vram/status", headers=auth.headers()).headers["ETag"]
    response = client.get("/api/vram/status", headers={"If-None-Match": etag})
    assert response.status_code == 401 and "ETag" not in response.headers
