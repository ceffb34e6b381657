"""A fleet of `python app.py` processes: one real Redis, one real PostgreSQL, different fake GPUs."""
from __future__ import annotations

import dataclasses
import signal
import threading
import time

import pytest
import requests
import socketio

from ollama_client.download_owners import OWNER_TTL_S
from ollama_client.downloads import ORPHANED_MESSAGE, SWEEP_EVERY_S
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
    """start(name, scenario, **env): a process of one fleet (the first one migrates the database).

    Processes given the same name are one node: several processes of one GPU host.
    """
    servers = []

    def start(name: str, scenario: Scenario = two_gpus(), *, wait: bool = True, **env):
        home = tmp_path / f"{name}-{len(servers)}"
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


# -- downloads shared by the processes of one node --------------------------------------------------

DOWNLOADS = "/api/models/ollama"


def downloads(server, headers=None):
    answer = requests.get(f"{server.url}{DOWNLOADS}/downloads", headers=headers or server.headers(), timeout=5)
    assert answer.status_code == 200, answer.text
    return answer.json()["downloads"]


def download_of(server, model, headers=None):
    """The model's entry in the server's GET downloads (None when it lists none)."""
    return next((d for d in downloads(server, headers) if d["model_name"] == model), None)


def model_operation(server, route, model, headers=None):
    return requests.post(f"{server.url}{DOWNLOADS}/{route}", headers=headers or server.headers(),
                         json={"model_name": model}, timeout=15)


def progress(heard):
    return [d for e, d in heard if e == "model_download_progress"]


def ended(heard):
    return [d for d in progress(heard) if d["status"] != "downloading"]


def one_node(fleet, fake_ollama, count=2):
    """`count` processes of one node, gpu-box (one Ollama: the fake)."""
    return fleet.many(*[("gpu-box", ONE_GPU, {"OLLAMA_HOST": fake_ollama.url})] * count)


def test_a_download_requested_on_another_process_joins_the_running_one(fleet, fake_ollama):
    fake_ollama.set_behaviour(pull={"layers": [1000], "lines_per_layer": 10, "line_interval_s": 0.15})
    a, b = one_node(fleet, fake_ollama)
    on_a, heard_a = listen(a, a.login(), "model_download_progress")
    on_b, heard_b = listen(b, a.login(), "model_download_progress")  # one session, valid on both
    try:
        started = model_operation(a, "download", "shared")
        assert (started.status_code, started.json()) == (202, {
            "success": True, "message": "Download started", "model_name": "shared"})
        joined = model_operation(b, "download", "shared:latest")  # the same model, spelled otherwise
        assert (joined.status_code, joined.json()) == (202, {
            "success": True, "message": "Download already in progress; joined it", "model_name": "shared:latest"})
        assert download_of(a, "shared")["status"] == "downloading"  # it was running when b joined
        # b lists a's download while it runs, from the state a renews in Redis.
        wait_until(lambda: (download_of(b, "shared") or {}).get("completed_bytes", 0) > 0, 5)
        running_a, running_b = download_of(a, "shared"), download_of(b, "shared")
        assert running_b["status"] == "downloading" and running_b["started_at"] == running_a["started_at"]
        assert running_b["percent"] <= running_a["percent"]
        wait_until(lambda: ended(heard_a) and ended(heard_b), 10)
    finally:
        on_a.disconnect()
        on_b.disconnect()
    assert fake_ollama.count("POST", "/api/pull") == 1  # b started no pull of its own
    # b's client heard a's whole download through the queue: every event, in order, the final one once.
    assert progress(heard_b) == progress(heard_a)
    events = progress(heard_b)
    assert events[0]["message"] == "Download started" and len(events) >= 3
    assert [e["percent"] for e in events] == sorted(e["percent"] for e in events)
    assert [e["status"] for e in events].count("complete") == 1
    assert events[-1] == {"model_name": "shared", "progress": "100.0%", "percent": 100.0, "status": "complete",
                          "completed_bytes": 1000, "total_bytes": 1000, "message": "Download complete"}
    assert downloads(a) == downloads(b) and downloads(a)[0]["status"] == "complete"


def test_a_download_is_cancelled_through_another_process(fleet, fake_ollama):
    fake_ollama.set_behaviour(pull={"layers": [1000], "lines_per_layer": 10, "hang_after_lines": 4})
    a = fleet("gpu-box", ONE_GPU, OLLAMA_HOST=fake_ollama.url)
    assert model_operation(a, "download", "big:70b").status_code == 202
    wait_until(lambda: download_of(a, "big:70b")["completed_bytes"] == 200, 5)
    # A process that starts while another's download runs leaves it running (it is not a leftover).
    b = fleet("gpu-box", ONE_GPU, OLLAMA_HOST=fake_ollama.url)
    b_up = time.monotonic()
    on_a, heard_a = listen(a, a.login(), "model_download_progress")
    on_b, heard_b = listen(b, a.login(), "model_download_progress")
    try:
        wait_until(lambda: (download_of(b, "big:70b") or {}).get("completed_bytes") == 200, 5)
        # Who may not cancel gets b's 403, and the pull goes on.
        admin = {"Authorization": f"Bearer {a.login()}"}
        created = requests.post(f"{a.url}/api/users", headers=admin, timeout=10,
                                json={"username": "inference", "password": a.password, "role": "user"})
        assert created.status_code == 201, created.text
        login = requests.post(f"{b.url}/api/auth/login", json={"username": "inference", "password": a.password},
                              timeout=10)
        as_user = {"Authorization": f"Bearer {login.json()['token']}"}
        refused = model_operation(b, "download/cancel", "big:70b", as_user)
        assert refused.status_code == 403 and "operator role" in refused.json()["error"], refused.text
        key = requests.post(f"{a.url}/api/keys", headers=admin, json={"name": "reader", "scopes": ["read"]},
                            timeout=10).json()["key"]
        refused = model_operation(b, "download/cancel", "big:70b", {"X-API-Key": key})
        assert refused.status_code == 403 and "'models' scope" in refused.json()["error"], refused.text
        time.sleep(max(0.0, 2.5 * SWEEP_EVERY_S - (time.monotonic() - b_up)))  # b has swept it twice
        assert download_of(b, "big:70b")["status"] == download_of(a, "big:70b")["status"] == "downloading"
        assert fake_ollama.cancelled_pulls() == [] and ended(heard_a) == ended(heard_b) == []

        asked = time.monotonic()
        cancelled = model_operation(b, "download/cancel", "big:70b")
        assert (cancelled.status_code, cancelled.json()) == (200, {
            "success": True, "message": "Download cancelled", "model_name": "big:70b"})
        assert time.monotonic() - asked < 3
        # The pull stopped on a: the fake Ollama saw a's connection close.
        wait_until(lambda: fake_ollama.cancelled_pulls() == ["big:70b"], 5)
        wait_until(lambda: ended(heard_a) and ended(heard_b), 5)
        time.sleep(0.3)  # nothing may follow the final event
    finally:
        on_a.disconnect()
        on_b.disconnect()
    for heard in (heard_a, heard_b):
        assert progress(heard)[-1] == {"model_name": "big:70b", "progress": "20.0%", "percent": 20.0,
                                       "status": "cancelled", "completed_bytes": 200, "total_bytes": 1000,
                                       "message": "Download cancelled"}
        assert len(ended(heard)) == 1
    assert downloads(a) == downloads(b) and downloads(b)[0]["status"] == "cancelled"
    again = model_operation(b, "download/cancel", "big:70b")
    assert (again.status_code, again.json()["error"]) == (404, "no download of big:70b is running")
    assert fake_ollama.count("POST", "/api/pull") == 1


def test_scenario_owner_process_killed_mid_download(fleet, fake_ollama):
    fake_ollama.set_behaviour(pull={"layers": [1000], "lines_per_layer": 10, "hang_after_lines": 4})
    a, b = one_node(fleet, fake_ollama)
    on_b, heard_b = listen(b, a.login(), "model_download_progress")
    try:
        assert model_operation(a, "download", "doomed").status_code == 202
        wait_until(lambda: (download_of(b, "doomed") or {}).get("completed_bytes") == 200, 5)
        a.stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: fake_ollama.cancelled_pulls() == ["doomed"], 5)  # the pull died with a
        # b stops listing it as running once a's lease expires, and ends it in the history: error.
        wait_until(lambda: (download_of(b, "doomed") or {}).get("status") not in (None, "downloading"),
                   OWNER_TTL_S + 3 * SWEEP_EVERY_S + 2)
        noticed_s = time.monotonic() - killed
        wait_until(lambda: ended(heard_b), 2)
    finally:
        on_b.disconnect()
    entry = download_of(b, "doomed")
    assert (entry["status"], entry["error"], entry["message"]) == ("error", ORPHANED_MESSAGE, ORPHANED_MESSAGE)
    assert (entry["percent"], entry["completed_bytes"]) == (20.0, 200)  # the last state a wrote
    assert entry["finished_at"] is not None
    # b's clients hear the end once, with the progress they last saw (never backwards).
    [final] = ended(heard_b)
    assert final == {"model_name": "doomed", "progress": "20.0%", "percent": 20.0, "status": "error",
                     "completed_bytes": 200, "total_bytes": 1000, "message": ORPHANED_MESSAGE}
    assert progress(heard_b)[-1] == final
    assert noticed_s < OWNER_TTL_S + 3 * SWEEP_EVERY_S + 2
    # The model is free again: b runs the next request for it itself.
    fake_ollama.set_behaviour(pull={"layers": [10], "lines_per_layer": 1, "hang_after_lines": None})
    again = model_operation(b, "download", "doomed")
    assert (again.status_code, again.json()["message"]) == (202, "Download started")
    wait_until(lambda: download_of(b, "doomed")["status"] == "complete", 5)
    assert fake_ollama.count("POST", "/api/pull") == 2
