"""The OpenAPI document against a live server: Schemathesis fuzzes it, Newman runs the collection.

Both drive `python app.py` with the fake NVML (two GPUs) and the fake Ollama, authenticated with a
session token from the real login. Each test gets its own server: the fuzzer's failed logins fill
the login throttle, and its model operations change the fake Ollama (reset for every test).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.fakes.fake_nvml import FakeNvml, two_gpus
from tests.live import REPO, start_server

pytestmark = pytest.mark.live

SCHEMATHESIS_CONFIG = REPO / "tests" / "schemathesis.toml"
NEWMAN = REPO / "node_modules" / ".bin" / "newman"
POSTMAN = REPO / "postman"
# The fuzz lane's budget: a fixed number of examples and a fixed seed, so a run is repeatable
# and bounded (the whole lane stays well under 90 s on two shared cores).
MAX_EXAMPLES = 15
SEED = 20260101
# Session tokens minted before fuzzing (see tests/schemathesis_hooks.py): logout ends one each time.
TOKEN_POOL = 200


@pytest.fixture
def server(tmp_path, fake_nvml_lib, fake_ollama):
    fake = FakeNvml(tmp_path / "scenario.txt", lib_path=fake_nvml_lib)
    fake.apply(two_gpus())
    server = start_server(tmp_path, nvml_lib_dir=fake.lib_path.parent, nvml_scenario=fake.scenario_path,
                          ollama_url=fake_ollama.url)
    yield server
    server.stop(signal.SIGKILL)


def _login(server) -> str:
    response = requests.post(f"{server.url}/api/auth/login",
                             json={"username": server.username, "password": server.password}, timeout=10)
    response.raise_for_status()
    return response.json()["token"]


def _run(command: list[str], timeout_s: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, **kwargs)


def test_schemathesis_finds_no_server_error_or_schema_violation(server, tmp_path):
    """Every operation, fuzzed: no 5xx, every answer matches its schema and a declared status."""
    st = Path(sys.executable).with_name("st")
    tokens = [_login(server) for _ in range(TOKEN_POOL)]
    env = {**os.environ, "SCHEMATHESIS_TOKENS": ",".join(tokens),
           "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks", "NO_COLOR": "1", "COLUMNS": "160"}
    result = _run([str(st), "--config-file", str(SCHEMATHESIS_CONFIG), "run", f"{server.url}/api/openapi.json",
                   "--url", server.url, "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
                   "--generation-deterministic", "--workers", "1", "--request-timeout", "20",
                   "--report", "junit", "--report-dir", str(tmp_path / "schemathesis")],
                  timeout_s=240, env=env)
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-4000:] + server.log()[-4000:]


def test_newman_runs_the_postman_collection(server, tmp_path):
    """The committed collection passes against a live server: login first, then every request."""
    if not NEWMAN.exists():
        pytest.fail("newman is missing: run `npm ci` (scripts/test.sh does)", pytrace=False)
    report = tmp_path / "newman.json"
    result = _run([str(NEWMAN), "run", str(POSTMAN / "vram-dashboard.postman_collection.json"),
                   "--environment", str(POSTMAN / "vram-dashboard.postman_environment.json"),
                   "--env-var", f"baseUrl={server.url}", "--env-var", f"username={server.username}",
                   "--env-var", f"password={server.password}", "--color", "off",
                   "--reporters", "cli,json", "--reporter-json-export", str(report),
                   "--timeout-request", "20000"], timeout_s=120)
    failures = []
    if report.exists():
        run = json.loads(report.read_text())["run"]
        failures = [f"{f['source'].get('name')}: {f['error'].get('test')}: {f['error'].get('message')}"
                    for f in run["failures"]]
        assert run["stats"]["requests"]["total"] == len(json.loads(
            (POSTMAN / "vram-dashboard.postman_collection.json").read_text())["item"])
    assert result.returncode == 0 and not failures, "\n".join(failures) + "\n" + result.stdout[-6000:]
