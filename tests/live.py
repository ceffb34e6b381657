"""Run `python app.py` as a user would, as a subprocess on a free loopback port."""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
from tests.credentials import PASSWORD, PASSWORD_HASH, USERNAME


def free_port() -> int:
    """Return a loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """A running `python app.py`; stop() sends SIGTERM and returns the exit code."""

    url: str
    port: int
    proc: subprocess.Popen
    log_path: Path
    username: str = USERNAME
    password: str = PASSWORD
    _token: str | None = field(default=None, repr=False)

    def login(self) -> str:
        """Log in once through the real route and return the session token."""
        if self._token is None:
            started = time.monotonic()
            try:
                response = requests.post(f"{self.url}/api/auth/login",
                                         json={"username": self.username, "password": self.password}, timeout=10)
            except requests.RequestException as exc:
                # The server's own log says where it was (a stalled start-up, a dead worker, ...).
                raise AssertionError(f"login failed after {time.monotonic() - started:.2f} s: {exc!r}; "
                                     f"server exit code {self.proc.poll()}; its log:\n{self.log()}") from exc
            assert response.status_code == 200, f"login: {response.status_code} {response.text}\n{self.log()}"
            self._token = response.json()["token"]
        return self._token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.login()}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@functools.cache
def migrated_sqlite_template() -> Path:
    """A SQLite database migrated to the newest schema, built once per test process."""
    from db import open_database

    directory = Path(tempfile.mkdtemp(prefix="vram-dashboard-template-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    path = directory / "dashboard.db"
    open_database(f"sqlite:///{path}").dispose()
    return path


def server_env(tmp_path: Path, *, port: int, nvml_lib_dir: Path | None = None,
               nvml_scenario: Path | None = None, ollama_url: str | None = None,
               extra: dict[str, str] | None = None, fresh_database: bool = False) -> dict[str, str]:
    """Build the environment of a test server: the user's variables plus the fakes' hooks.

    Its data directory starts with a copy of a migrated SQLite database, so that the server does
    not run the migrations (a child process, ~1 s) on every start; `fresh_database` leaves the
    directory empty, for the tests of a first start. A DATABASE_URL in `extra` is used as it is.
    """
    database = tmp_path / "data" / "dashboard.db"
    if not fresh_database and "DATABASE_URL" not in (extra or {}) and not database.exists():
        database.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(migrated_sqlite_template(), database)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DASHBOARD_", "OLLAMA_", "PROXY_", "VRAM_", "SESSION_", "CORS_", "FAKE_NVML"))}
    env.update({
        "DASHBOARD_AUTH_USERNAME": USERNAME,
        "DASHBOARD_AUTH_PASSWORD_HASH": PASSWORD_HASH.decode(),
        "DASHBOARD_PORT": str(port),
        "DASHBOARD_HOST": "127.0.0.1",
        "DASHBOARD_DATA_DIR": str(tmp_path / "data"),
        "OLLAMA_HOST": ollama_url or "http://127.0.0.1:9",
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
        "LD_LIBRARY_PATH": str(nvml_lib_dir) if nvml_lib_dir else "",
    })
    if nvml_scenario is not None:
        env["FAKE_NVML_SCENARIO"] = str(nvml_scenario)
    env.update(extra or {})
    return env


def dev_only_modules() -> set[str]:
    """Top-level modules of the distributions requirements-dev.txt adds to requirements.txt."""
    import importlib.metadata
    import re

    def names(path):
        return {re.split(r"[\[=<>~ ;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
                for line in (REPO / path).read_text().splitlines() if line.strip() and not line.startswith(("#", "-"))}

    dev_only = names("requirements-dev.txt") - names("requirements.txt")
    return {module for module, dists in importlib.metadata.packages_distributions().items()
            if {d.lower().replace("_", "-") for d in dists} & dev_only and not module.startswith("_")}


def runtime_only_site(directory: Path) -> Path:
    """Write a sitecustomize.py into `directory` that refuses every module of the test-only packages.

    With `directory` on PYTHONPATH, `python app.py` runs as after `pip install -r requirements.txt`
    alone: a test-only package (requests, pytest, Playwright, ...) it would import fails, and a
    library's optional import of one (Engine.IO's client imports requests) is skipped.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        f"BLOCKED = {sorted(dev_only_modules())!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'{name} is a test-only package (requirements-dev.txt)')\n"
        "sys.meta_path.insert(0, Block())\n")
    return directory


def start_server(tmp_path: Path, *, env: dict[str, str] | None = None, wait: bool = True,
                 command_prefix: tuple[str, ...] = (), **env_kwargs) -> LiveServer:
    """Start `python app.py` in tmp_path (so no developer .env is read) and wait for /health.

    `command_prefix` runs it through another command, e.g. a shell that sets `ulimit` first.
    """
    port = int((env or {}).get("DASHBOARD_PORT") or free_port())
    full_env = env if env is not None else server_env(tmp_path, port=port, **env_kwargs)
    log_path = tmp_path / f"server-{port}.log"
    log_file = open(log_path, "wb")
    proc = subprocess.Popen([*command_prefix, sys.executable, str(REPO / "app.py")], cwd=tmp_path, env=full_env,
                            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log_file.close()
    server = LiveServer(url=f"http://127.0.0.1:{port}", port=port, proc=proc, log_path=log_path)
    if wait:
        wait_until_up(server)
    return server


def wait_for(predicate, timeout: float = 5.0) -> bool:
    """Poll `predicate` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def wait_until(predicate, timeout_s: float = 5.0) -> None:
    """Wait for `predicate` like wait_for, and fail the test when it is not met in time.

    The one helper for "wait until this holds" in every test, in-process and live alike.
    """
    if not wait_for(predicate, timeout_s):
        raise AssertionError(f"condition not met within {timeout_s} s")


def wait_until_up(server: LiveServer, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"server exited with {server.proc.returncode}:\n{server.log()}")
        try:
            if requests.get(f"{server.url}/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"server did not answer /health within {timeout}s:\n{server.log()}")
