"""5. Isolation: REST latency while every NVML call blocks its OS thread for 300 ms."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import (LOAD_CPU, REPETITIONS, REPO, Fakes, ProcSampler, Spread, log, percentile, pinned,
                          start_dashboard, wait_for_gpus)
from bench.scenarios import two_gpus

DELAY_MS = 300
INTERVAL_S = 0.5      # polls back to back: NVML is always busy while the requests run
RATE_PER_S = 100      # a paced client: latency as a user sees it, not a saturated queue
DURATION_S = 1.0
REPS = max(REPETITIONS, 10)   # short and finely interleaved: bursts of load hit both servers alike
TARGET_P95_MS = 20.0


def sample_latency(url: str, headers: dict[str, str]) -> dict[str, float]:
    """Send GETs at RATE_PER_S over one keep-alive connection (pinned to the load core)."""
    cmd = [sys.executable, "-m", "bench.paced_client", "--url", url, "--rate", str(RATE_PER_S),
           "--seconds", str(DURATION_S)]
    for name, value in headers.items():
        cmd += ["--header", f"{name}: {value}"]
    with pinned(LOAD_CPU):
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    result = json.loads(out)
    latencies = result.pop("latencies_ms")
    result.update({"p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
                   "p99_ms": percentile(latencies, 99), "max_ms": max(latencies)})
    return result


def run(fakes: Fakes, workdir: Path, idle=None) -> dict[str, Any]:
    normal = fakes.nvml("isolation-normal", two_gpus())
    slow = fakes.nvml("isolation-slow", two_gpus())
    extra = {"VRAM_POLL_INTERVAL_SECONDS": str(INTERVAL_S)}
    servers = {"normal": start_dashboard(workdir, normal, extra=extra)}
    try:
        wait_for_gpus(servers["normal"], 2)
        servers["slow"] = start_dashboard(workdir, slow, extra=extra)
        wait_for_gpus(servers["slow"], 2)
        slow.scenario_slow_calls(DELAY_MS)
        reps = []
        for rep in range(REPS):
            result = {}
            for name in (("normal", "slow") if rep % 2 == 0 else ("slow", "normal")):
                server = servers[name]
                sampler = ProcSampler(server.proc.pid)
                result[name] = {"status": sample_latency(server.url + "/api/vram/status", server.headers()),
                                "health": sample_latency(server.url + "/health", {})}
                result[name]["runqueue_wait_percent"] = sampler.result()["runqueue_wait_percent"]
                if idle is not None:
                    idle.sample()
            result["ratio"] = result["slow"]["status"]["p95_ms"] / result["normal"]["status"]["p95_ms"]
            reps.append(result)
            log(f"isolation rep {rep + 1}: status p95 {result['normal']['status']['p95_ms']:.2f} ms normal, "
                f"{result['slow']['status']['p95_ms']:.2f} ms with NVML at {DELAY_MS} ms a call")
    finally:
        for server in servers.values():
            server.stop()
    summary: dict[str, Any] = {"delay_ms": DELAY_MS, "interval_s": INTERVAL_S, "rate_per_s": RATE_PER_S, "repetitions": REPS,
                               "duration_s": DURATION_S, "target_p95_ms": TARGET_P95_MS, "reps": reps}
    for name in ("normal", "slow"):
        for path in ("status", "health"):
            for metric in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
                summary[f"{name}_{path}_{metric}"] = Spread.of(r[name][path][metric] for r in reps).to_json()
        summary[f"{name}_runqueue_wait_percent"] = Spread.of(r[name]["runqueue_wait_percent"] for r in reps).to_json()
    summary["ratio"] = Spread.of(r["ratio"] for r in reps).to_json()
    summary["errors"] = sum(r[n][p]["non_2xx"] for r in reps for n in ("normal", "slow") for p in ("status", "health"))
    summary["verdict"] = summary["slow_status_p95_ms"]["median"] < TARGET_P95_MS
    return summary
