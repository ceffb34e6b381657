"""`python app.py` against the fake Ollama process, watched by the real python-socketio client."""
import json
import signal
import socket
import time

import pytest
import requests
import socketio

from tests.live import start_server, wait_until

pytestmark = pytest.mark.live
BASE = "/api/models/ollama"


@pytest.fixture
def server(tmp_path, fake_ollama):
    # No nvml_lib_dir: the server reports NVML unavailable, which these tests do not need.
    live = start_server(tmp_path, ollama_url=fake_ollama.url)
    yield live
    live.stop(signal.SIGKILL)


@pytest.fixture
def watch(server):
    """Connect a python-socketio client; return the list its progress events land in."""
    clients = []

    def _watch():
        events = []
        client = socketio.Client(reconnection=False)
        client.on("model_download_progress", lambda data: events.append((time.monotonic(), data)))
        client.connect(server.url, auth={"token": server.login()}, transports=["websocket"], wait_timeout=5)
        clients.append(client)
        return events

    yield _watch
    for client in clients:
        client.disconnect()


def test_ollama_by_host_name(tmp_path, fake_ollama):
    """OLLAMA_HOST as a name (the default is localhost): looked up by the C library in a real thread
    (concurrency.resolve_names_in_threads), not by eventlet's greendns."""
    live = start_server(tmp_path, ollama_url=fake_ollama.url.replace("127.0.0.1", "localhost"))
    try:
        response = requests.get(f"{live.url}/ollama/api/tags", headers=live.headers(), timeout=10)
        assert response.status_code == 200 and "models" in response.json()
    finally:
        live.stop(signal.SIGKILL)
    assert "Traceback" not in live.log()


def test_a_socketio_client_watches_a_download_from_start_to_end(server, fake_ollama, watch):
    layers, per_layer, interval_s = [3_000_000_000, 12_000, 500], 40, 0.01
    fake_ollama.set_behaviour(pull={"layers": layers, "lines_per_layer": per_layer, "line_interval_s": interval_s})
    events = watch()
    started = time.monotonic()
    response = requests.post(f"{server.url}{BASE}/download", json={"model_name": "llama3.3:70b"},
                             headers=server.headers(), timeout=10)
    assert (response.status_code, response.json()["message"]) == (202, "Download started")
    wait_until(lambda: events and events[-1][1]["status"] == "complete")
    elapsed = time.monotonic() - started

    payloads = [data for _, data in events]
    assert payloads[0]["message"] == "Download started"
    assert payloads[-1] == {"model_name": "llama3.3:70b", "progress": "100.0%", "percent": 100.0,
                            "status": "complete", "completed_bytes": sum(layers), "total_bytes": sum(layers),
                            "message": "Download complete"}
    percents = [p["percent"] for p in payloads]
    assert percents == sorted(percents)
    lines_in = 1 + len(layers) * (per_layer + 1) + 3
    running = [t for t, p in events if p["status"] == "downloading"]
    assert min(b - a for a, b in zip(running, running[1:])) >= 0.24
    print(f"\nOllama lines in: {lines_in} in {elapsed:.2f} s = {lines_in / elapsed:.0f}/s; "
          f"events out: {len(events)} = {len(events) / elapsed:.1f}/s")

    listed = requests.get(f"{server.url}{BASE}/downloads", headers=server.headers(), timeout=5).json()
    assert [(d["model_name"], d["status"]) for d in listed["downloads"]] == [("llama3.3:70b", "complete")]


def test_a_client_that_leaves_aborts_the_load(server, fake_ollama):
    fake_ollama.set_behaviour(load_delay_s=5.0)
    body = json.dumps({"model_name": "llama3.2"}).encode()
    request = (f"POST {BASE}/load HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Authorization: Bearer {server.login()}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request)
        wait_until(lambda: fake_ollama.count("POST", "/api/generate") == 1)
    left = time.monotonic()
    wait_until(lambda: fake_ollama.state()["aborted_loads"] == ["llama3.2:latest"], timeout_s=2.0)
    assert time.monotonic() - left < 1.0
    assert fake_ollama.state()["loaded"] == []


def test_sigterm_interrupts_a_running_download(server, fake_ollama, watch):
    fake_ollama.set_behaviour(pull={"hang_after_lines": 3})
    events = watch()
    requests.post(f"{server.url}{BASE}/download", json={"model_name": "big:70b"}, headers=server.headers(),
                  timeout=10)
    wait_until(lambda: events)
    started = time.monotonic()
    assert server.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    wait_until(lambda: fake_ollama.cancelled_pulls() == ["big:70b"], timeout_s=2.0)
    assert "download of big:70b failed: interrupted: server shutting down" in server.log()
    # The shutdown hooks run before the server closes its connections, so watchers hear it.
    final = [p for _, p in events if p["model_name"] == "big:70b"][-1]
    assert (final["status"], final["message"]) == ("error", "interrupted: server shutting down")
