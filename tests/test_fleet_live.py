"""A fleet of `python app.py` processes: one real Redis, one real PostgreSQL, different fake GPUs."""
from __future__ import annotations

import dataclasses
import signal
import threading
import time

import pytest
import requests
import socketio

from tests.fakes.fake_nvml import FakeGpu, FakeNvml, Scenario, two_gpus
from tests.live import free_port, server_env, start_server, wait_for, wait_until, wait_until_up

pytestmark = [pytest.mark.live, pytest.mark.services]
INTERVAL_S = 0.2
ONE_GPU = Scenario(gpus=(FakeGpu(name="NVIDIA A100-SXM4-80GB", uuid="GPU-11111111-0000-0000-0000-000000000001",
                                 total_bytes=81920 * 1024 * 1024),))
THREE_GPUS = dataclasses.replace(two_gpus(), gpus=two_gpus().gpus + (
    dataclasses.replace(two_gpus().gpus[1], uuid="GPU-22222222-0000-0000-0000-000000000002"),))


@pytest.fixture
def fleet(tmp_path, fake_nvml_lib, redis_url, postgres_url):
    """start(name, scenario, **env): a node of one fleet (the first one migrates the database)."""
    servers = []

    def start(name: str, scenario: Scenario = two_gpus(), *, wait: bool = True, **env):
        home = tmp_path / name
        home.mkdir()
        fake = FakeNvml(home / "scenario.txt", lib_path=fake_nvml_lib)
        fake.apply(scenario)
        port = free_port()
        variables = {"REDIS_URL": redis_url, "DATABASE_URL": postgres_url, "DASHBOARD_NODE_NAME": name,
                     "DASHBOARD_PUBLIC_URL": f"http://127.0.0.1:{port}", "VRAM_POLL_INTERVAL_SECONDS": str(INTERVAL_S)}
        variables.update({k: str(v) for k, v in env.items()})
        server = start_server(home, env=server_env(home, port=port, nvml_lib_dir=fake_nvml_lib.parent,
                                                   nvml_scenario=fake.scenario_path, extra=variables), wait=wait)
        servers.append(server)
        return server

    def start_many(*specs):
        """Each spec (name, scenario?, env?); the others start together once the first is up."""
        first = start(*specs[0][:2], **(specs[0][2] if len(specs[0]) > 2 else {}))
        rest = [start(*spec[:2], wait=False, **(spec[2] if len(spec) > 2 else {})) for spec in specs[1:]]
        for server in rest:
            wait_until_up(server)
        return [first, *rest]

    start.many = start_many
    yield start
    for server in servers:
        server.stop(signal.SIGKILL)


def listen(server, token, *events):
    """A connected python-socketio client recording `events` as (name, payload)."""
    client = socketio.Client(reconnection=False)
    heard: list[tuple[str, dict]] = []
    for event in events:
        client.on(event, lambda data, event=event: heard.append((event, data)))
    client.connect(server.url, auth={"token": token}, transports=["websocket"], wait_timeout=5)
    return client, heard


def test_an_event_from_one_node_reaches_a_client_of_another(fleet):
    a, b = fleet.many(("node-a",), ("node-b", ONE_GPU))
    client, heard = listen(b, a.login(), "fleet_update", "vram_update")  # a's session, b's socket
    try:
        wait_until(lambda: any(e == "fleet_update" and d["node"] == "node-a" for e, d in heard), 5)
        wait_until(lambda: any(e == "vram_update" for e, _ in heard), 5)
    finally:
        client.disconnect()
    from_a = next(d for e, d in heard if e == "fleet_update" and d["node"] == "node-a")
    assert len(from_a["status"]["gpus"]) == 2
    # vram_update stays the reading of the node the socket is on.
    assert {d["node"] for e, d in heard if e == "vram_update"} == {"node-b"}
    assert {len(d["gpus"]) for e, d in heard if e == "vram_update"} == {1}


def test_logout_on_one_node_cuts_a_socket_on_another(fleet):
    a, b = fleet.many(("node-a",), ("node-b", ONE_GPU))
    token = a.login()
    client, _ = listen(b, token, "vram_update")
    gone = threading.Event()
    client.on("disconnect", lambda *args: gone.set())
    assert requests.get(f"{b.url}/api/auth/me", headers=a.headers(), timeout=5).status_code == 200
    assert requests.post(f"{a.url}/api/auth/logout", headers=a.headers(), timeout=5).status_code == 200
    try:
        assert gone.wait(3), "the socket on node-b outlived the logout on node-a"
    finally:
        client.disconnect()
    assert requests.get(f"{b.url}/api/auth/me", headers={"Authorization": f"Bearer {token}"},
                        timeout=5).status_code == 401


def test_the_login_throttle_counts_across_processes(fleet):
    a, b = fleet.many(("node-a",), ("node-b", ONE_GPU))
    wrong = {"username": a.username, "password": "wrong-password"}
    codes = [requests.post(f"{server.url}/api/auth/login", json=wrong, timeout=10).status_code
             for server in (a, b, a, b, a)]
    assert codes == [401] * 5
    for server in (a, b):
        refused = requests.post(f"{server.url}/api/auth/login", json=wrong, timeout=10)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1


def test_the_fleet_lists_every_node_and_marks_a_killed_one_stale(fleet):
    a, b, c = fleet.many(("node-a",), ("node-b", ONE_GPU), ("node-c", THREE_GPUS))

    def nodes():
        return {n["name"]: n for n in requests.get(f"{a.url}/api/fleet", headers=a.headers(), timeout=5).json()["nodes"]}

    def all_read():  # each node's first entry may come before its first reading (status null)
        listed = nodes()
        return set(listed) == {"node-a", "node-b", "node-c"} and all(n["status"] for n in listed.values())

    wait_until(all_read, 5)
    listed = nodes()
    assert {name: len(n["status"]["gpus"]) for name, n in listed.items()} == {"node-a": 2, "node-b": 1, "node-c": 3}
    assert not any(n["stale"] for n in listed.values())
    assert listed["node-b"]["url"] == b.url and listed["node-b"]["nvml"] is True
    assert listed["node-b"]["ollama"] is False and isinstance(listed["node-b"]["last_seen"], float)
    c.stop(signal.SIGKILL)
    wait_until(lambda: nodes()["node-c"]["stale"], 3)
    assert not nodes()["node-a"]["stale"] and not nodes()["node-b"]["stale"]


def test_a_model_operation_on_another_node_acts_on_its_ollama(fleet, fake_ollama):
    a, b = fleet.many(("node-a",), ("node-b", ONE_GPU, {"OLLAMA_HOST": fake_ollama.url}))  # a has no Ollama
    answer = requests.post(f"{a.url}/api/nodes/node-b/models/ollama/load", headers=a.headers(),
                           json={"model_name": "llama3.2"}, timeout=15)
    assert answer.status_code == 200, answer.text
    assert answer.json()["success"] is True and answer.headers["X-Fleet-Node"] == "node-b"
    assert fake_ollama.count("POST", "/api/generate") == 1
    # The same route on node-a itself reaches no Ollama: the operation ran on the other node.
    assert requests.post(f"{a.url}/api/models/ollama/load", headers=a.headers(), json={"model_name": "llama3.2"},
                         timeout=15).status_code == 503
    status = requests.get(f"{a.url}/api/nodes/node-b/vram/status", headers=a.headers(), timeout=5)
    assert status.status_code == 200 and len(status.json()["gpus"]) == 1
    assert requests.get(f"{a.url}/api/nodes/node-x/vram/status", headers=a.headers(), timeout=5).status_code == 404
    assert requests.get(f"{a.url}/api/nodes/node-b/nodes/node-a/vram/status", headers=a.headers(),
                        timeout=5).status_code == 404
    assert requests.get(f"{a.url}/api/nodes/node-b/vram/status", timeout=5).status_code == 401
    b.stop(signal.SIGKILL)
    gone = requests.get(f"{a.url}/api/nodes/node-b/vram/status", headers=a.headers(), timeout=10)
    assert gone.status_code == 503 and "node-b" in gone.json()["error"]


def test_redis_killed_and_restarted_mid_run(fleet, redis_server):
    a, b = fleet.many(("node-a",), ("node-b", ONE_GPU))
    client, heard = listen(a, a.login(), "vram_update", "fleet_update")
    try:
        wait_until(lambda: any(e == "fleet_update" and d["node"] == "node-b" for e, d in heard), 5)
        wait_until(lambda: len(requests.get(f"{a.url}/api/fleet", headers=a.headers(), timeout=5).json()["nodes"]) == 2,
                   5)  # node-a has read node-b's entry: it knows whom it will lose sight of
        redis_server.kill()
        time.sleep(0.1)
        wait_until(lambda: "is unreachable" in a.log(), 3)
        time.sleep(4 * INTERVAL_S)
        heard.clear()
        # node-a keeps serving its own clients and readings.
        assert requests.get(f"{a.url}/api/vram/status", headers=a.headers(), timeout=5).status_code == 200
        wait_until(lambda: sum(e == "vram_update" for e, _ in heard) >= 3, 3)
        fleet_now = requests.get(f"{a.url}/api/fleet", headers=a.headers(), timeout=5).json()["nodes"]
        assert {n["name"]: n["stale"] for n in fleet_now} == {"node-a": False, "node-b": True}
        assert not any(e == "fleet_update" and d["node"] == "node-b" for e, d in heard)
        redis_server.start()
        wait_until(lambda: any(e == "fleet_update" and d["node"] == "node-b" for e, d in heard), 10)
    finally:
        client.disconnect()
    assert a.log().count("is unreachable") == 1, a.log()
    assert "reachable again" in a.log()


def test_redis_down_at_start_is_one_line_and_exit_2(tmp_path):
    port = free_port()
    env = server_env(tmp_path, port=port, extra={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                                                 "DASHBOARD_PUBLIC_URL": f"http://127.0.0.1:{port}"})
    server = start_server(tmp_path, env=env, wait=False)
    assert server.proc.wait(timeout=15) == 2
    lines = server.log().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: REDIS_URL: cannot reach redis://127.0.0.1:")
    assert "Traceback" not in server.log()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/health", timeout=1)


def test_redis_without_a_public_url_is_a_configuration_error(tmp_path):
    env = server_env(tmp_path, port=free_port(), extra={"REDIS_URL": "redis://127.0.0.1:1/0"})
    server = start_server(tmp_path, env=env, wait=False)
    assert server.proc.wait(timeout=15) == 2
    assert "DASHBOARD_PUBLIC_URL: required when REDIS_URL is set" in server.log()
