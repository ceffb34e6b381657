"""4. Idle: server CPU and RSS with no clients for 60 s at the default interval, history recorded.

Alert rules are on: the engine evaluates every rule on every poll whatever the thresholds (the
defaults are 90 %, 85 °C, 10 s). So that the run shows rules doing their work, not only looking,
it sets thresholds the fake's GPU 0 exceeds (25 % VRAM used, 51 °C) and GPU 1 does not, and the
server has no Ollama: vram_high and temperature_high on GPU 0 and ollama_unreachable fire
ALERT_FOR_SECONDS after the first poll (stored, broadcast as vram_alert, no webhook set), and are
re-evaluated every poll after. The alerts firing when the window opens and when it closes are read
back from GET /api/alerts and recorded with the thresholds from GET /api/settings.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import APP_START, SERVER_CPU, Fakes, ProcSampler, log, pinned, start_dashboard, wait_for_gpus
from bench.scenarios import two_gpus
from tests.live import runtime_only_site

DURATION_S = 60.0
TARGET_CPU_PERCENT = 0.2
TARGET_RSS_MB = 80.0
# Below the fake two_gpus()'s GPU 0 (25.0 % used, 51 °C), above its GPU 1 (2.1 %, 38 °C).
# ALERT_FOR_SECONDS: long enough that they fire after the window opens (the first reading comes
# with /health, the window a few seconds later), short enough that they fire well inside it.
ALERT_ENV = {"ALERT_VRAM_PERCENT": "20", "ALERT_TEMPERATURE_C": "50", "ALERT_FOR_SECONDS": "20"}


# What the server imports from its requirements before it builds anything: the floor under its RSS.
# The same start as app.py (greendns off, monkey-patched, names resolved in threads), then the
# libraries its modules import, with SQLite's driver as the default database uses it.
LIBRARIES = ("flask", "flask_socketio", "flask_cors", "sqlalchemy", "sqlalchemy.orm", "sqlalchemy.dialects.sqlite",
             "sqlite3", "pydantic", "prometheus_client", "bcrypt", "urllib3", "pynvml",
             "limits", "dotenv", "yaml")
FLOOR_SCRIPT = APP_START + f"""
import importlib
for name in {LIBRARIES!r}:
    importlib.import_module(name)
print([line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS")][0])
"""


def library_floor_mb(site: Path) -> float:
    """RSS of a process that starts as app.py does and imports the server's libraries, nothing else."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    with pinned(SERVER_CPU):
        out = subprocess.run([sys.executable, "-c", FLOOR_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=60, check=True).stdout
    return int(out.split()[-1]) / 1024


class IdleRun:
    """Start an idle server now; finish() once at least DURATION_S has passed (other work may run)."""

    def __init__(self, fakes: Fakes, workdir: Path):
        # As a user runs it: with the packages of requirements.txt only. The benchmark's own
        # (requests, websocket-client, ...) would otherwise be imported by libraries that look for
        # them (Engine.IO's client imports requests) and count in its RSS (~4 MB).
        self.site = runtime_only_site(workdir / "idle-site")
        self.server = start_dashboard(workdir, fakes.nvml("idle", two_gpus()),
                                      extra={**ALERT_ENV, "PYTHONPATH": str(self.site)})
        wait_for_gpus(self.server, 2)
        self.headers = self.server.headers()
        settings = requests.get(self.server.url + "/api/settings", headers=self.headers, timeout=10).json()
        self.alert_settings = {name: {"value": value, "source": settings["sources"][name]}
                               for name, value in settings["settings"].items() if name.startswith("alert_")}
        time.sleep(2.0)  # let the first requests' work settle before the window opens
        self.history0 = self._history()
        self.firing_at_open = self._firing()
        self.sampler = ProcSampler(self.server.proc.pid)
        self.started = time.monotonic()
        log("idle: window open")

    def _history(self) -> int:
        response = requests.get(self.server.url + "/api/vram/history", headers=self.headers, timeout=10)
        return len(response.json()["samples"])

    def _firing(self) -> list[str]:
        response = requests.get(self.server.url + "/api/alerts", params={"state": "firing"}, headers=self.headers,
                                timeout=10)
        return sorted(f"{a['rule']}" + (f" GPU {a['gpu_index']}" if a["gpu_index"] is not None else "")
                      for a in response.json()["alerts"])

    def sample(self) -> None:
        self.sampler.sample()

    def finish(self) -> dict[str, Any]:
        left = DURATION_S - (time.monotonic() - self.started)
        while left > 0:
            time.sleep(min(left, 1.0))
            self.sampler.sample()
            left = DURATION_S - (time.monotonic() - self.started)
        proc = self.sampler.result()
        floor_mb = library_floor_mb(self.site)
        try:
            samples = self._history() - self.history0
            firing = self._firing()
        finally:
            self.server.stop()
        log(f"idle: CPU {proc['cpu_percent']:.3f}% of a core, RSS {proc['rss_mb']:.1f} MB "
            f"(its libraries alone {floor_mb:.1f} MB), "
            f"{samples} history samples in {proc['seconds']:.0f} s; alerts firing {len(self.firing_at_open)} "
            f"at the start, {len(firing)} at the end ({', '.join(firing)})")
        return {"seconds": proc["seconds"], "cpu_percent": proc["cpu_percent"], "rss_mb": proc["rss_mb"],
                "peak_rss_mb": proc["peak_rss_mb"], "library_floor_mb": floor_mb,
                "runqueue_wait_percent": proc["runqueue_wait_percent"],
                "history_samples_added": samples, "interval_s": 2.0,
                "alert_settings": self.alert_settings, "alerts_firing_at_open": self.firing_at_open,
                "alerts_firing_at_end": firing,
                "rules_verdict": proc["cpu_percent"] <= TARGET_CPU_PERCENT and len(firing) > len(self.firing_at_open),
                "target_cpu_percent": TARGET_CPU_PERCENT, "target_rss_mb": TARGET_RSS_MB,
                "verdict": proc["cpu_percent"] <= TARGET_CPU_PERCENT and proc["peak_rss_mb"] <= TARGET_RSS_MB}
