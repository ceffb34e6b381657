"""Start-up and stop of `python app.py`: the port opens before NVML answers, signals at any
moment are a clean exit 0, a taken port is one line, no duplicate first sample."""
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from tests.live import REPO, dev_only_modules, free_port, runtime_only_site, server_env, start_server, wait_for

pytestmark = pytest.mark.live


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _spawn(tmp_path, live_nvml, **extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = server_env(tmp_path, port=port, nvml_lib_dir=live_nvml.lib_path.parent,
                     nvml_scenario=live_nvml.scenario_path, extra={k: str(v) for k, v in extra.items()})
    return start_server(tmp_path, env=env, wait=False)


def _seconds_until_port_opens(server, timeout: float = 15.0) -> float:
    started = time.monotonic()
    assert wait_for(lambda: _port_open(server.port) or server.proc.poll() is not None, timeout)
    assert server.proc.poll() is None, server.log()
    return time.monotonic() - started


def test_port_opens_before_a_hanging_driver_answers(tmp_path, live_nvml):
    """The first reading is taken after the bind: a 300 ms-a-call driver does not delay the port."""
    fast = _spawn(tmp_path / "fast", live_nvml)
    try:
        fast_s = _seconds_until_port_opens(fast)
    finally:
        fast.stop()
    live_nvml.scenario_slow_calls(300)
    slow = _spawn(tmp_path / "slow", live_nvml)
    try:
        slow_s = _seconds_until_port_opens(slow)
        # A request before the first reading waits briefly, then is told to retry (or gets it).
        started = time.monotonic()
        response = requests.get(f"{slow.url}/api/vram/status", headers=slow.headers(), timeout=10)
        waited = time.monotonic() - started
        assert response.status_code in (200, 503), response.text
        if response.status_code == 503:
            assert "first NVML poll" in response.json()["error"] and response.headers["Retry-After"]
        assert waited < 3.5
        assert "serving on" in slow.log()
    finally:
        assert slow.stop() == 0
    # Before, the first reading came first: 30 calls at 300 ms held the port back ~9 s.
    assert slow_s - fast_s < 3.0, f"port opened after {slow_s:.2f} s with a slow driver, {fast_s:.2f} s without"
    assert "Traceback" not in slow.log()


def test_sigterm_during_the_first_reading_exits_0_without_traceback(tmp_path, live_nvml):
    """Every NVML call takes 2 s: the signal lands while the first reading is in C."""
    live_nvml.scenario_slow_calls(2000)
    server = _spawn(tmp_path, live_nvml)
    _seconds_until_port_opens(server)
    assert wait_for(lambda: "serving on" in server.log(), 5)
    time.sleep(0.3)  # the poller is now inside its first (2 s) nvmlInit
    started = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=8)
    assert code == 0, server.log()
    assert time.monotonic() - started < 5.0
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("delay_s", [0.05, 0.3, 0.6])
def test_sigterm_at_any_moment_of_start_up_exits_0(tmp_path, live_nvml, delay_s):
    """Importing, wiring, binding: whenever the signal arrives it is exit 0 and no traceback."""
    server = _spawn(tmp_path, live_nvml)
    time.sleep(delay_s)
    code = server.stop(signal.SIGTERM, timeout=8)
    # -15: the signal came before Python itself had started (the interpreter's default action).
    assert code in (0, -signal.SIGTERM), server.log()
    assert "Traceback" not in server.log()


def test_a_taken_port_is_one_line_and_exit_1(tmp_path, live_nvml):
    """No SO_REUSEPORT: a second server on the same port does not start and share it silently."""
    first = _spawn(tmp_path / "a", live_nvml)
    try:
        _seconds_until_port_opens(first)
        env = server_env(tmp_path, port=first.port, nvml_lib_dir=live_nvml.lib_path.parent,
                         nvml_scenario=live_nvml.scenario_path)
        (tmp_path / "b").mkdir()
        second = subprocess.run([sys.executable, str(REPO / "app.py")], cwd=tmp_path / "b", env=env,
                                capture_output=True, text=True, timeout=20)
        assert second.returncode == 1
        errors = [line for line in second.stderr.splitlines() if "ERROR" in line]
        assert len(errors) == 1 and "cannot listen on 127.0.0.1:" in errors[0]
        assert "already in use" in errors[0] and "DASHBOARD_PORT" in errors[0]
        assert "serving on" not in second.stderr and "Traceback" not in second.stderr
    finally:
        first.stop()


def test_no_duplicate_history_sample_at_start(tmp_path, live_nvml):
    server = _spawn(tmp_path, live_nvml, VRAM_POLL_INTERVAL_SECONDS=0.5)
    try:
        _seconds_until_port_opens(server)
        headers = server.headers()
        assert wait_for(lambda: len(requests.get(f"{server.url}/api/vram/history", headers=headers,
                                                 timeout=5).json()["samples"]) >= 3, 5)
        samples = requests.get(f"{server.url}/api/vram/history", headers=headers, timeout=5).json()["samples"]
        gaps = [b["timestamp"] - a["timestamp"] for a, b in zip(samples, samples[1:])]
        assert min(gaps) > 0.25, gaps
    finally:
        server.stop()


def test_the_server_starts_with_the_runtime_requirements_alone(tmp_path):
    """`pip install -r requirements.txt` is what a user installs: no module of the test-only
    packages (requests, pytest, Playwright, ...) may be needed to start and serve."""
    assert {"requests", "pytest"} <= dev_only_modules()
    site = runtime_only_site(tmp_path / "site")
    port = free_port()
    env = server_env(tmp_path, port=port, extra={"PYTHONPATH": str(site)})
    server = start_server(tmp_path, env=env, wait=False)
    try:
        assert wait_for(lambda: server.proc.poll() is not None or _answers(server.url), timeout=30), server.log()
        assert server.proc.poll() is None, server.log()
        # Every blueprint is loaded at app creation; the fleet view answers a logged-in user.
        token = server.login()
        fleet = requests.get(server.url + "/api/fleet", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert fleet.status_code == 200 and fleet.json()["nodes"], fleet.text
    finally:
        server.stop()


def test_a_server_without_redis_url_never_imports_redis(tmp_path):
    """python-socketio imports redis-py for its RedisManager; without REDIS_URL app.py refuses that
    import (3.1 MB of memory). PYTHONPROFILEIMPORTTIME writes every module imported to the log."""
    port = free_port()
    env = server_env(tmp_path, port=port, extra={"PYTHONPROFILEIMPORTTIME": "1"})
    server = start_server(tmp_path, env=env)
    try:
        token = server.login()  # the login throttle (which can use Redis) runs too
        assert requests.get(server.url + "/api/fleet", headers={"Authorization": f"Bearer {token}"},
                            timeout=5).status_code == 200
    finally:
        server.stop()
    imported = {line.rsplit("|", 1)[1].strip() for line in server.log().splitlines() if line.startswith("import time:")}
    assert {"socketio.redis_manager", "flask_socketio", "limits"} <= imported, sorted(imported)[:50]
    # A refused import is listed too, alone; redis-py's own modules (redis.client, ...) only when loaded.
    assert not {name for name in imported if name.startswith("redis.")}


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/health", timeout=1).status_code in (200, 503)
    except requests.RequestException:
        return False
