"""`python app.py` as a user runs it, with the fake libnvidia-ml, over loopback."""
import contextlib
import json
import signal
import socket
import statistics
import threading
import time

import pytest
import requests
import socketio

from tests.fakes.fake_nvml import two_gpus
from tests.live import start_server, wait_for

pytestmark = pytest.mark.live


@pytest.fixture
def start(tmp_path, live_nvml):
    servers = []

    def _start(**env):
        server = start_server(tmp_path, nvml_lib_dir=live_nvml.lib_path.parent,
                              nvml_scenario=live_nvml.scenario_path,
                              extra={k: str(v) for k, v in env.items()})
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.stop(signal.SIGKILL)


def connect_client(server, token, events):
    client = socketio.Client(reconnection=False)

    @client.on("vram_update")
    def on_update(data):
        events.append((time.monotonic(), data))

    client.connect(server.url, auth={"token": token} if token else None, transports=["websocket"],
                   wait_timeout=5)
    return client


def test_status_from_the_fake_driver(start):
    server = start()
    body = requests.get(f"{server.url}/api/vram/status", headers=server.headers(), timeout=5).json()
    assert [gpu["index"] for gpu in body["gpus"]] == [0, 1]
    assert body["gpu"]["total_mb"] == two_gpus().gpus[0].total_bytes // (1024 * 1024)
    health = requests.get(f"{server.url}/health", timeout=5).json()
    assert health["nvml"] is True and health["ollama"] is False and health["status"] == "degraded"


@pytest.mark.parametrize("token", [None, "forged-token"])
def test_socket_refused_without_a_valid_token(start, token):
    server = start()
    with pytest.raises(socketio.exceptions.ConnectionError):
        connect_client(server, token, [])


def test_vram_update_on_connect_and_at_the_interval(start):
    server = start(VRAM_POLL_INTERVAL_SECONDS=0.2)
    events = []
    client = connect_client(server, server.login(), events)
    try:
        assert wait_for(lambda: len(events) >= 8)
    finally:
        client.disconnect()
    first = events[0][1]
    assert [gpu["index"] for gpu in first["gpus"]] == [0, 1]
    gaps = [b[0] - a[0] for a, b in zip(events[1:], events[2:])]
    assert 0.15 < statistics.median(gaps) < 0.3


def test_logout_disconnects_the_live_socket(start):
    server = start()
    token = server.login()
    client = connect_client(server, token, [])
    assert client.connected
    assert requests.post(f"{server.url}/api/auth/logout", headers=server.headers(), timeout=5).status_code == 200
    assert wait_for(lambda: not client.connected)


@pytest.mark.parametrize("origin, status", [("http://evil.example", 400), (None, 200), ("same", 200)])
def test_cross_origin_socket_refused(start, origin, status):
    server = start()
    headers = {}
    if origin == "same":
        headers["Origin"] = server.url
    elif origin:
        headers["Origin"] = origin
    response = requests.get(f"{server.url}/socket.io/?EIO=4&transport=polling", headers=headers, timeout=5)
    assert response.status_code == status


def test_rest_answers_while_every_nvml_call_blocks_for_300_ms(start, live_nvml):
    """The poller reads NVML in a real thread: requests are served meanwhile, from the last reading.

    How fast they are is measured, not timed here: bench/isolation.py (BENCHMARKS.md, "isolation").
    """
    live_nvml.scenario_slow_calls(300)
    server = start(VRAM_POLL_INTERVAL_SECONDS=0.5)
    headers = server.headers()
    session = requests.Session()
    answers = [session.get(f"{server.url}/api/vram/status", headers=headers, timeout=5) for _ in range(20)]
    assert [r.status_code for r in answers] == [200] * 20
    assert len({r.json()["timestamp"] for r in answers}) < 20  # the stored reading, not one per request


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_stop_within_five_seconds(start, sig):
    server = start(VRAM_POLL_INTERVAL_SECONDS=0.2)
    client = connect_client(server, server.login(), [])
    started = time.monotonic()
    code = server.stop(sig, timeout=5)
    elapsed = time.monotonic() - started
    client.disconnect()
    log = server.log()
    assert code == 0, log
    assert elapsed < 5
    assert "Traceback" not in log
    assert server.password not in log and server.login() not in log


def exchange_raw(server, data: bytes) -> bytes:
    """Send bytes as they are on a new connection; return all the server sent back until it closed."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def send_raw(server, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; return the status, headers (lower-cased names) and body of the reply."""
    head, _, body = exchange_raw(server, data).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


def test_header_names_go_out_as_the_app_wrote_them(start):
    """eventlet re-cases names by default (ETag -> Etag, WWW-Authenticate -> Www-Authenticate); we turn that off."""
    server = start()
    host = f"Host: 127.0.0.1:{server.port}\r\nConnection: close\r\n"
    sent = {}
    for name, request in (("status", f"GET /api/vram/status HTTP/1.1\r\n{host}Authorization: Bearer {server.login()}\r\n\r\n"),
                          ("refused", f"GET /api/vram/status HTTP/1.1\r\n{host}\r\n")):
        head = exchange_raw(server, request.encode()).partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
        sent[name] = {line.partition(":")[0] for line in head}
    assert {"ETag", "X-Reading-Age", "Content-Type", "X-Content-Type-Options"} <= sent["status"]
    assert "WWW-Authenticate" in sent["refused"]


def test_requests_the_http_server_refuses_get_json_errors_too(start):
    """Refused before any app code runs: no HTML page, no bare header-less reply."""
    server = start()
    cases = [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 505),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n", 400),
        (b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
        (b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ]
    for request, expected in cases:
        status, headers, body = send_raw(server, request)
        assert status == expected, request[:40]
        assert headers["content-type"] == "application/json"
        assert json.loads(body)["error"]
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"


def test_chunked_json_bodies_are_read_and_limited(start):
    """A JSON body sent chunked (no Content-Length) is read like any other, and still capped at 1 MiB."""
    server = start()

    def chunks(body: bytes, size: int = 1000):
        for i in range(0, len(body), size):
            yield body[i:i + size]

    login = json.dumps({"username": server.username, "password": server.password}).encode()
    response = requests.post(f"{server.url}/api/auth/login", data=chunks(login),
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 200 and response.json()["token"]
    huge = b'{"model_name": "' + b"a" * (2 * 1024 * 1024) + b'"}'
    response = requests.post(f"{server.url}/api/models/ollama/load", data=chunks(huge, 65536),
                             headers={**server.headers(), "Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 413 and "too large" in response.json()["error"]


@pytest.mark.parametrize("route", ["load", "proxied stream"])
def test_stop_within_five_seconds_while_a_request_is_in_flight(start, fake_ollama, route):
    """A model load or a streamed generate still running does not hold the stop past 5 s."""
    fake_ollama.set_behaviour(load_delay_s=60, tokens=1000, token_interval_s=0.5)
    server = start(OLLAMA_HOST=fake_ollama.url)
    headers = server.headers()

    def call():
        with contextlib.suppress(requests.RequestException):
            if route == "load":
                requests.post(f"{server.url}/api/models/ollama/load", json={"model_name": "llama3.2"},
                              headers=headers, timeout=30)
            else:
                response = requests.post(f"{server.url}/ollama/api/generate", headers=headers, timeout=30,
                                         json={"model": "llama3.2", "prompt": "hi"}, stream=True)
                for _ in response.iter_lines():
                    pass

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    assert wait_for(lambda: fake_ollama.count("POST", "/api/generate") >= 1)
    started = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=10)
    assert time.monotonic() - started < 5
    assert code == 0
    assert "Traceback" not in server.log()


def test_signal_delivered_twice_stops_cleanly(start):
    """`timeout` and some supervisors signal the process and its group: one stop, no traceback."""
    server = start()
    server.login()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=5) == 0
    assert "Traceback" not in server.log()


def test_sigterm_during_start_up_exits_cleanly(tmp_path, live_nvml):
    server = start_server(tmp_path, wait=False, nvml_lib_dir=live_nvml.lib_path.parent,
                          nvml_scenario=live_nvml.scenario_path)
    time.sleep(0.3)  # importing and wiring; the port is not open yet
    code = server.stop(signal.SIGTERM, timeout=5)
    assert code in (0, -signal.SIGTERM)  # -15: the signal came before Python installed handlers
    assert "Traceback" not in server.log()
