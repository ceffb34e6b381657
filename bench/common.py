"""What every benchmark shares: servers on pinned cores, /proc sampling, statistics, the machine."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import requests

from tests.fakes.fake_nvml import FakeNvml, Scenario, build_fake_nvml
from tests.live import PASSWORD, USERNAME, LiveServer, free_port, wait_until_up

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
ALL_CPUS = sorted(os.sched_getaffinity(0))
# Two cores: the server under test on the last, load generators and fakes on the first.
SERVER_CPU = ALL_CPUS[-1]
LOAD_CPU = ALL_CPUS[0]
REPETITIONS = int(os.environ.get("BENCH_REPETITIONS", "5"))


# How a benchmark's helper process starts, as app.py does: eventlet's warning filtered, greendns
# off, monkey-patched, names resolved in threads, the repository importable.
APP_START = f"""
import os, sys, warnings
warnings.filterwarnings("ignore", message=r"\\s*Eventlet is deprecated")
os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")
import eventlet
eventlet.monkey_patch()
sys.path.insert(0, {str(REPO)!r})
import concurrency
concurrency.resolve_names_in_threads()
import config
if not config.redis_url_given():
    sys.modules["redis"] = None  # as app.py does: python-socketio then does without redis-py
"""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- statistics ------------------------------------------------------------------------------

def percentile(values: Iterable[float], q: float) -> float:
    """Return the q-th percentile (0-100) by linear interpolation, as numpy's default does."""
    data = sorted(values)
    if not data:
        return float("nan")
    k = (len(data) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


@dataclass(frozen=True)
class Spread:
    """The median of repeated measurements, with their minimum and maximum."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> "Spread":
        data = [v for v in values if v == v]  # drop NaN
        if not data:
            return cls(float("nan"), float("nan"), float("nan"), 0)
        return cls(statistics.median(data), min(data), max(data), len(data))

    def fmt(self, digits: int = 2, unit: str = "") -> str:
        if self.n == 0:
            return "n/a"
        return f"{self.median:.{digits}f}{unit} ({self.low:.{digits}f}–{self.high:.{digits}f})"

    def to_json(self) -> dict[str, float]:
        return {"median": self.median, "min": self.low, "max": self.high, "n": self.n}


# -- processes -------------------------------------------------------------------------------

@contextlib.contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """Run the body with this process on `cpu`, so that children started there inherit it."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pin_tree(pid: int, cpu: int) -> None:
    """Pin every thread of `pid` (tpool threads included) to `cpu`."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), {cpu})


def cpu_seconds(pid: int) -> float:
    """Return user + system CPU seconds `pid` has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    """Return the resident set size of `pid` in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def runqueue_wait_seconds(pid: int) -> float:
    """Return how long `pid`'s threads have waited for a CPU while runnable (/proc schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


class ProcSampler:
    """CPU share, run-queue wait and peak RSS of one process over a window.

    The run-queue wait shows how much other work on the machine delayed the server: time it was
    ready to run but another process had its core.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.t0 = time.monotonic()
        self.cpu0 = cpu_seconds(pid)
        self.wait0 = runqueue_wait_seconds(pid)
        self.peak_rss_mb = rss_mb(pid)

    def sample(self) -> None:
        self.peak_rss_mb = max(self.peak_rss_mb, rss_mb(self.pid))

    def result(self) -> dict[str, float]:
        self.sample()
        elapsed = time.monotonic() - self.t0
        return {"cpu_percent": 100.0 * (cpu_seconds(self.pid) - self.cpu0) / elapsed,
                "runqueue_wait_percent": 100.0 * (runqueue_wait_seconds(self.pid) - self.wait0) / elapsed,
                "rss_mb": rss_mb(self.pid), "peak_rss_mb": self.peak_rss_mb, "seconds": elapsed}


# -- the server and its fakes ------------------------------------------------------------------

class Fakes:
    """The compiled fake NVML and a scenario file, shared by every server of one run."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.lib = build_fake_nvml(workdir / "fake_nvml")

    def nvml(self, name: str, scenario: Scenario) -> FakeNvml:
        fake = FakeNvml(self.workdir / f"scenario-{name}.txt", lib_path=self.lib)
        fake.apply(scenario)
        return fake


def server_environment(workdir: Path, port: int, nvml: FakeNvml | None, *, ollama_url: str | None = None,
                       extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment of a benchmark server (as tests.live.server_env, plain password)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DASHBOARD_", "OLLAMA_", "PROXY_", "VRAM_", "SESSION_", "CORS_", "FAKE_NVML"))}
    env.update({
        "DASHBOARD_AUTH_USERNAME": USERNAME,
        "DASHBOARD_AUTH_PASSWORD": PASSWORD,
        "DASHBOARD_PORT": str(port),
        "DASHBOARD_HOST": "127.0.0.1",
        "DASHBOARD_DATA_DIR": str(workdir / f"data-{port}"),
        "OLLAMA_HOST": ollama_url or "http://127.0.0.1:9",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        "LD_LIBRARY_PATH": "",
        # Every load client connects from 127.0.0.1: the per-address cap (256) would refuse the
        # fan-out's thousands of websockets.
        "DASHBOARD_MAX_CONNECTIONS_PER_CLIENT": "100000",
    })
    if nvml is not None:
        env.update(nvml.env())
    env.update(extra or {})
    return env


def start_dashboard(workdir: Path, nvml: FakeNvml | None, *, cpu: int | None = SERVER_CPU,
                    ollama_url: str | None = None, extra: dict[str, str] | None = None,
                    stock_broadcast: bool = False, port: int | None = None) -> LiveServer:
    """Start `python app.py` (as tests.live does) pinned to `cpu` and wait until /health answers.

    stock_broadcast runs it through bench/variant_server.py: the same app with python-socketio's
    own broadcast path. `port` is for a server whose own URL must be known before it starts (a
    fleet node's DASHBOARD_PUBLIC_URL); a free one otherwise.
    """
    port = port or free_port()
    run_dir = workdir / f"server-{port}"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = server_environment(run_dir, port, nvml, ollama_url=ollama_url, extra=extra)
    env["BENCH_STOCK_BROADCAST"] = "1" if stock_broadcast else ""
    variant = stock_broadcast or "BENCH_MEMORY_DUMP" in (extra or {})
    script = REPO / "bench" / "variant_server.py" if variant else REPO / "app.py"
    log_path = run_dir / "server.log"
    with open(log_path, "wb") as log_file, (pinned(cpu) if cpu is not None else contextlib.nullcontext()):
        proc = subprocess.Popen([sys.executable, str(script)], cwd=run_dir, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = LiveServer(url=f"http://127.0.0.1:{port}", port=port, proc=proc, log_path=log_path)
    wait_until_up(server)
    return server


def wait_for(predicate, timeout_s: float, step_s: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step_s)
    raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")


def wait_for_gpus(server: LiveServer, count: int, timeout_s: float = 15.0) -> dict[str, Any]:
    """Wait until the server's snapshot shows `count` GPUs (a scenario change reached the poller)."""
    seen: dict[str, Any] = {}

    def ready() -> bool:
        response = requests.get(server.url + "/api/vram/status", headers=server.headers(), timeout=5)
        if response.status_code == 200:
            seen.update(response.json())
            return len(seen.get("gpus", [])) == count
        return False

    wait_for(ready, timeout_s, 0.1, f"{count} GPUs in /api/vram/status")
    return seen


# -- the machine -------------------------------------------------------------------------------

def _version(cmd: list[str]) -> str:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (result.stdout + result.stderr).strip().splitlines()
    return text[0] if text else "?"


def machine() -> dict[str, Any]:
    """Describe the machine and the software the figures came from."""
    from importlib import metadata

    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = f"{int(line.split()[1]) / 1024 / 1024:.1f}"
    packages = {}
    for name in ("flask", "flask-socketio", "python-socketio", "python-engineio", "eventlet", "greenlet",
                 "werkzeug", "requests", "urllib3", "nvidia-ml-py"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    return {
        "cpus": os.cpu_count(), "cpus_usable": len(ALL_CPUS), "cpu_model": model, "memory_gib": mem_gib,
        "kernel": platform.release(), "os": _os_release(), "python": platform.python_version(),
        "packages": packages, "wrk": _version(["wrk", "--version"]),
        "nginx": _version(["nginx", "-v"]), "loadavg_start": os.getloadavg(),
    }


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


def ensure_tools() -> None:
    """Install wrk and nginx, and the fleet section's redis-server and PostgreSQL (found as
    tests/servers.py finds them), from Debian when they are missing (the run needs root for that)."""
    from tests.servers import find_postgres_bindir, find_redis_server

    missing = [pkg for tool, pkg in (("wrk", "wrk"), ("nginx", "nginx-light")) if shutil.which(tool) is None]
    missing += ["redis-server"] if find_redis_server() is None else []
    missing += ["postgresql"] if find_postgres_bindir() is None else []
    if not missing:
        return
    log(f"installing {', '.join(missing)} with apt-get")
    apt = ["apt-get"] if os.geteuid() == 0 else ["sudo", "-n", "apt-get"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(apt + ["update", "-qq"], check=True, env=env)
    subprocess.run(apt + ["install", "-y", "-qq", *missing], check=True, env=env)


def tempdir() -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="run-", dir=OUT))


def dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str))


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk_duration_ms(text: str) -> float:
    """Parse wrk's '1.23ms' / '850.00us' into milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"cannot parse wrk duration {text!r}")
    return float(match.group(1)) * _WRK_UNITS[match.group(2)]
