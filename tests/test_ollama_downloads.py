"""Downloads against the fake Ollama: whole-model monotonic progress, throttled events, joins,
cancel, Ollama failing or dying mid-pull, shutdown, and reading jobs back."""
import hashlib
import time
from datetime import datetime

import pytest

import concurrency
from ollama_client.client import OllamaClient
from ollama_client.downloads import DownloadManager
from tests.live import wait_until
from tests.fakes.scripted_reader import ScriptedReader, reading

BASE = "/api/models/ollama"


@pytest.fixture
def nvml_reader():
    return ScriptedReader(reading(ts=1.0))


@pytest.fixture
def config_overrides(fake_ollama):
    return {"ollama_host": fake_ollama.url}



class Recorder:
    """Record every model_download_progress broadcast with its arrival time (and pass it on)."""

    def __init__(self, emit):
        self._emit = emit
        self.events = []  # (monotonic time, payload)

    def __call__(self, event, payload, **kwargs):
        if event == "model_download_progress":
            self.events.append((time.monotonic(), dict(payload)))
        return self._emit(event, payload, **kwargs)

    def payloads(self, model=None):
        return [p for _, p in self.events if model is None or p["model_name"] == model]

    def final(self, model):
        finals = [p for p in self.payloads(model) if p["status"] != "downloading"]
        return finals[-1] if finals else None


@pytest.fixture
def events(services, monkeypatch):
    recorder = Recorder(services.socketio.emit)
    monkeypatch.setattr(services.socketio, "emit", recorder)  # what the hub sends through
    return recorder


def layer(model, index):
    return "pulling " + hashlib.sha256(f"{model}/{index}".encode()).hexdigest()[:12]


def iso_with_zone(text):
    return datetime.fromisoformat(text).tzinfo is not None


# -- the happy path --------------------------------------------------------------------------------

def test_download_reports_whole_model_progress_until_complete(api, fake_ollama, events):
    fake_ollama.set_behaviour(pull={"layers": [1000, 3000], "lines_per_layer": 4, "line_interval_s": 0.01})
    response = api("post", "download", json={"model_name": "tiny:1b"})
    assert (response.status_code, response.get_json()) == (202, {
        "success": True, "message": "Download started", "model_name": "tiny:1b"})
    wait_until(lambda: events.final("tiny:1b"))

    payloads = events.payloads()
    assert payloads[0] == {"model_name": "tiny:1b", "progress": "0.0%", "percent": 0.0, "status": "downloading",
                           "completed_bytes": 0, "total_bytes": 0, "message": "Download started"}
    assert payloads[-1] == {"model_name": "tiny:1b", "progress": "100.0%", "percent": 100.0, "status": "complete",
                            "completed_bytes": 4000, "total_bytes": 4000, "message": "Download complete"}
    assert [p["status"] for p in payloads].count("complete") == 1
    percents = [p["percent"] for p in payloads]
    assert percents == sorted(percents)
    assert all(p["percent"] < 100 for p in payloads[:-1])

    [job] = api("get", "downloads").get_json()["downloads"]
    assert {k: job[k] for k in ("model_name", "status", "progress", "percent", "completed_bytes", "total_bytes",
                                "error")} == {
        "model_name": "tiny:1b", "status": "complete", "progress": "100.0%", "percent": 100.0,
        "completed_bytes": 4000, "total_bytes": 4000, "error": None}
    assert iso_with_zone(job["started_at"]) and iso_with_zone(job["finished_at"])
    assert "tiny:1b" in [m["name"] for m in api("get", "list").get_json()["models"]]
    assert fake_ollama.count("POST", "/api/pull") == 1


def test_progress_never_goes_backwards_when_ollama_rolls_back(api, fake_ollama, events, services):
    services.downloads.min_interval_s = 0  # see every update
    fake_ollama.set_behaviour(pull={"layers": [1000, 1000], "lines_per_layer": 4, "rollback_after_lines": 3})
    api("post", "download", json={"model_name": "tiny"})
    wait_until(lambda: events.final("tiny"))
    progress = [(p["percent"], p["completed_bytes"], p["message"]) for p in events.payloads() if p["total_bytes"]]
    first, second = layer("tiny", 0), layer("tiny", 1)
    # Layer 1: 0, 250, 500, (rolled back to 375: ignored), 750, 1000; then layer 2 grows the total.
    assert progress == [(0.0, 0, first), (25.0, 250, first), (50.0, 500, first), (75.0, 750, first),
                        (99.9, 1000, first), (99.9, 1000, second), (99.9, 1250, second), (99.9, 1500, second),
                        (99.9, 1750, second), (99.9, 2000, second), (99.9, 2000, "verifying sha256 digest"),
                        (99.9, 2000, "writing manifest"), (100.0, 2000, "Download complete")]


def test_events_are_throttled_to_four_per_second(api, fake_ollama, events):
    fake_ollama.set_behaviour(pull={"layers": [10_000_000, 1000], "lines_per_layer": 100, "line_interval_s": 0.004})
    started = time.monotonic()
    api("post", "download", json={"model_name": "throttled"})
    wait_until(lambda: events.final("throttled"), timeout_s=5)
    elapsed = time.monotonic() - started
    times = [t for t, p in events.events]
    running = [t for t, p in events.events if p["status"] == "downloading"]
    gaps = [b - a for a, b in zip(running, running[1:])]
    assert min(gaps) >= 0.24
    assert len(running) <= elapsed / 0.25 + 2
    assert len(times) == len(running) + 1
    assert events.payloads()[-1]["status"] == "complete"  # the final event is never dropped


def test_the_latest_progress_is_flushed_when_ollama_goes_quiet(api, fake_ollama, events):
    # 6 lines arrive at once, then nothing: the throttled update must still go out ~0.25 s later.
    fake_ollama.set_behaviour(pull={"layers": [1000], "lines_per_layer": 10, "hang_after_lines": 6})
    api("post", "download", json={"model_name": "stalls"})
    wait_until(lambda: any(p["completed_bytes"] == 400 for p in events.payloads()), timeout_s=1.0)
    first, last = events.events[0][0], events.events[-1][0]
    assert 0.2 <= last - first <= 0.5
    assert events.payloads()[-1] == {"model_name": "stalls", "progress": "40.0%", "percent": 40.0,
                                     "status": "downloading", "completed_bytes": 400, "total_bytes": 1000,
                                     "message": layer("stalls", 0)}
    api("post", "download/cancel", json={"model_name": "stalls"})


def test_a_running_download_can_be_read_back(api, fake_ollama):
    fake_ollama.set_behaviour(pull={"layers": [1000], "lines_per_layer": 4, "hang_after_lines": 4})
    api("post", "download", json={"model_name": "reload-me"})
    wait_until(lambda: api("get", "downloads").get_json()["downloads"][0]["completed_bytes"] == 500)
    [job] = api("get", "downloads").get_json()["downloads"]
    assert {k: v for k, v in job.items() if k not in ("started_at", "message")} == {
        "model_name": "reload-me", "status": "downloading", "progress": "50.0%", "percent": 50.0,
        "completed_bytes": 500, "total_bytes": 1000, "finished_at": None, "error": None}
    assert iso_with_zone(job["started_at"])
    api("post", "download/cancel", json={"model_name": "reload-me"})


# -- joins -----------------------------------------------------------------------------------------

def test_concurrent_requests_share_one_pull(app, auth, fake_ollama, events):
    fake_ollama.set_behaviour(pull={"layers": [1000], "lines_per_layer": 4, "line_interval_s": 0.05})
    headers = auth.headers()
    answers = []

    def request(name):
        response = app.test_client().post(f"{BASE}/download", json={"model_name": name}, headers=headers)
        answers.append((response.status_code, response.get_json()["message"]))

    names = ["shared", "shared:latest", "library/shared", "registry.ollama.ai/library/shared:latest", "SHARED"]
    threads = [concurrency.spawn(request, name) for name in names]
    for thread in threads:
        thread.wait()
    assert sorted(answers) == [(202, "Download already in progress; joined it")] * 4 + [(202, "Download started")]
    wait_until(lambda: events.final("shared"))
    assert fake_ollama.count("POST", "/api/pull") == 1
    assert [p["status"] for p in events.payloads()].count("complete") == 1


def test_a_finished_download_can_be_started_again(api, fake_ollama, events):
    fake_ollama.set_behaviour(pull={"layers": [10], "lines_per_layer": 1})
    for _ in range(2):
        assert api("post", "download", json={"model_name": "again"}).get_json()["message"] == "Download started"
        wait_until(lambda: events.final("again"))
        events.events.clear()
    assert fake_ollama.count("POST", "/api/pull") == 2
    assert len(api("get", "downloads").get_json()["downloads"]) == 1


# -- cancel ----------------------------------------------------------------------------------------

def test_cancel_closes_the_upstream_pull(api, fake_ollama, events):
    fake_ollama.set_behaviour(pull={"layers": [1000], "lines_per_layer": 10, "hang_after_lines": 3})
    api("post", "download", json={"model_name": "big:70b"})
    response = api("post", "download/cancel", json={"model_name": "big:70b"})
    assert (response.status_code, response.get_json()) == (200, {
        "success": True, "message": "Download cancelled", "model_name": "big:70b"})
    wait_until(lambda: fake_ollama.cancelled_pulls() == ["big:70b"])
    final = events.payloads()[-1]
    assert (final["status"], final["message"]) == ("cancelled", "Download cancelled")
    time.sleep(0.3)  # nothing may follow the final event (no late flush)
    assert events.payloads()[-1] == final
    assert api("get", "downloads").get_json()["downloads"][0]["status"] == "cancelled"

    response = api("post", "download/cancel", json={"model_name": "big:70b"})
    message = "no download of big:70b is running"
    assert (response.status_code, response.get_json()) == (404, {
        "error": message, "success": False, "message": message, "model_name": "big:70b"})


def test_cancel_when_nothing_runs_is_404(api, fake_ollama):
    response = api("post", "download/cancel", json={"model_name": "llama3.2"})
    assert response.status_code == 404
    assert response.get_json()["error"] == "no download of llama3.2 is running"
    assert fake_ollama.requests() == []


# -- failures ----------------------------------------------------------------------------------------

def test_unknown_model_is_an_error_event_with_ollamas_message(api, fake_ollama, events):
    assert api("post", "download", json={"model_name": "does-not-exist"}).status_code == 202
    wait_until(lambda: events.final("does-not-exist"))
    message = "Ollama: pull model manifest: file does not exist"
    assert events.payloads()[-1] == {"model_name": "does-not-exist", "progress": "0.0%", "percent": 0.0,
                                     "status": "error", "completed_bytes": 0, "total_bytes": 0, "message": message}
    [job] = api("get", "downloads").get_json()["downloads"]
    assert (job["status"], job["error"]) == ("error", message)
    assert iso_with_zone(job["finished_at"])


def test_an_error_line_mid_pull_ends_the_job_with_that_message(api, fake_ollama, events):
    fake_ollama.set_behaviour(pull={"error_after_lines": 4, "error": "max retries exceeded: unexpected EOF"})
    api("post", "download", json={"model_name": "flaky"})
    wait_until(lambda: events.final("flaky"))
    final = events.payloads()[-1]
    assert (final["status"], final["message"]) == ("error", "Ollama: max retries exceeded: unexpected EOF")
    assert [p["status"] for p in events.payloads()].count("error") == 1


@pytest.mark.parametrize("how", ["die_after_lines", "exit_after_lines"])
def test_scenario_ollama_dies_mid_pull(api, fake_ollama, events, how):
    fake_ollama.set_behaviour(pull={"layers": [1000], "lines_per_layer": 10, how: 4})
    api("post", "download", json={"model_name": "doomed"})
    wait_until(lambda: events.final("doomed"))
    final = events.payloads()[-1]
    assert final["status"] == "error"
    assert final["message"] == (f"Ollama is not reachable at {fake_ollama.url}: the connection broke "
                                "mid-response (Ollama stopped or restarted?). Start Ollama (`ollama serve`) "
                                "or set OLLAMA_HOST to its address.")
    assert final["completed_bytes"] == 200  # what had arrived is kept
    assert api("get", "downloads").get_json()["downloads"][0]["status"] == "error"
    assert fake_ollama.running is (how == "die_after_lines")


def test_download_when_ollama_is_down_is_503(api, fake_ollama, events):
    fake_ollama.stop()
    response = api("post", "download", json={"model_name": "llama3.2"})
    assert response.status_code == 503
    body = response.get_json()
    assert (body["success"], body["model_name"]) == (False, "llama3.2")
    assert body["error"] == (f"Ollama is not reachable at {fake_ollama.url}: connection refused. "
                             "Start Ollama (`ollama serve`) or set OLLAMA_HOST to its address.")
    assert events.payloads()[-1]["status"] == "error"


def test_pull_refused_by_ollama_is_502(api, fake_ollama):
    fake_ollama.set_behaviour(fail={"/api/pull": {"status": 500, "error": "no space left on device"}})
    response = api("post", "download", json={"model_name": "llama3.2"})
    assert (response.status_code, response.get_json()["error"]) == (502, "Ollama: no space left on device")


# -- shutdown and retention --------------------------------------------------------------------------

def test_shutdown_marks_running_downloads_interrupted(api, fake_ollama, events, services):
    fake_ollama.set_behaviour(pull={"hang_after_lines": 3})
    api("post", "download", json={"model_name": "interrupted"})
    started = time.monotonic()
    services.downloads.shutdown()
    assert time.monotonic() - started < 0.5
    final = events.payloads()[-1]
    assert (final["status"], final["message"]) == ("error", "interrupted: server shutting down")
    assert api("get", "downloads").get_json()["downloads"][0]["error"] == "interrupted: server shutting down"
    wait_until(lambda: fake_ollama.cancelled_pulls() == ["interrupted"])
    response = api("post", "download", json={"model_name": "later"})
    assert (response.status_code, response.get_json()["error"]) == (503, "the server is shutting down")


def test_finished_downloads_are_listed_for_an_hour(fake_ollama, clock):
    published = []
    ollama = OllamaClient(fake_ollama.url)
    manager = DownloadManager(ollama, lambda event, payload: published.append(payload), clock=clock)
    fake_ollama.set_behaviour(pull={"layers": [10], "lines_per_layer": 1})
    manager.start("key", "hourly")
    wait_until(lambda: published and published[-1]["status"] == "complete")
    clock.advance(3600)
    assert [d["model_name"] for d in manager.list()] == ["hourly"]
    clock.advance(1)
    assert manager.list() == []
    ollama.close()


def test_authenticated_sockets_receive_progress(app, client, auth, services, fake_ollama):
    fake_ollama.set_behaviour(pull={"layers": [100], "lines_per_layer": 2})
    token = auth.headers()["Authorization"].split()[1]
    listener = services.socketio.test_client(app, flask_test_client=client, auth={"token": token})
    stranger = services.socketio.test_client(app, flask_test_client=client)
    assert listener.is_connected() and not stranger.is_connected()
    client.post(f"{BASE}/download", json={"model_name": "watched"}, headers=auth.headers())
    wait_until(lambda: services.downloads.list()[0]["status"] == "complete")
    received = [e["args"][0] for e in listener.get_received() if e["name"] == "model_download_progress"]
    assert received[0]["message"] == "Download started"
    assert received[-1]["status"] == "complete"
    listener.disconnect()
