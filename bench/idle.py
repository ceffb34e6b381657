"""4. Idle: server CPU and RSS with no clients for 60 s at the default interval, history recorded."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests

from bench.common import Fakes, ProcSampler, log, start_dashboard, wait_for_gpus
from bench.scenarios import two_gpus

DURATION_S = 60.0
TARGET_CPU_PERCENT = 0.2
TARGET_RSS_MB = 80.0


class IdleRun:
    """Start an idle server now; finish() once at least DURATION_S has passed (other work may run)."""

    def __init__(self, fakes: Fakes, workdir: Path):
        self.server = start_dashboard(workdir, fakes.nvml("idle", two_gpus()))
        wait_for_gpus(self.server, 2)
        self.headers = self.server.headers()
        time.sleep(2.0)  # let the first requests' work settle before the window opens
        self.history0 = self._history()
        self.sampler = ProcSampler(self.server.proc.pid)
        self.started = time.monotonic()
        log("idle: window open")

    def _history(self) -> int:
        response = requests.get(self.server.url + "/api/vram/history", headers=self.headers, timeout=10)
        return len(response.json()["samples"])

    def sample(self) -> None:
        self.sampler.sample()

    def finish(self) -> dict[str, Any]:
        left = DURATION_S - (time.monotonic() - self.started)
        while left > 0:
            time.sleep(min(left, 1.0))
            self.sampler.sample()
            left = DURATION_S - (time.monotonic() - self.started)
        proc = self.sampler.result()
        try:
            samples = self._history() - self.history0
        finally:
            self.server.stop()
        log(f"idle: CPU {proc['cpu_percent']:.3f}% of a core, RSS {proc['rss_mb']:.1f} MB, "
            f"{samples} history samples in {proc['seconds']:.0f} s")
        return {"seconds": proc["seconds"], "cpu_percent": proc["cpu_percent"], "rss_mb": proc["rss_mb"],
                "peak_rss_mb": proc["peak_rss_mb"], "runqueue_wait_percent": proc["runqueue_wait_percent"],
                "history_samples_added": samples, "interval_s": 2.0,
                "target_cpu_percent": TARGET_CPU_PERCENT, "target_rss_mb": TARGET_RSS_MB,
                "verdict": proc["cpu_percent"] <= TARGET_CPU_PERCENT and proc["peak_rss_mb"] <= TARGET_RSS_MB}
