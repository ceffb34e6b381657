"""3. Fan-out: vram_update to 100, 500 and 1,000 authenticated websocket clients.

The clients are bench/ws_client.py processes (at most PER_PROCESS connections each) on the load
core; the server has the other core to itself. Latency is the snapshot's own `timestamp` (taken
when the NVML reading finished) to the moment the client's kernel received the message's last
byte; the same clock on one machine.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.common import (LOAD_CPU, REPETITIONS, REPO, Fakes, ProcSampler, Spread, log, percentile, pinned,
                          start_dashboard, wait_for_gpus)
from bench.scenarios import SCENARIOS

INTERVAL_S = 1.0
LEVELS = (100, 500, 1000)
PER_PROCESS = 250
BROADCASTS_PER_REP = 3
TARGET_P99_MS = 80.0
TARGET_CADENCE = 0.05
TARGET_RSS_MB = 100.0


def _worker_sizes(levels) -> list[int]:
    """Return worker sizes (each ≤ PER_PROCESS) whose running sums hit every level exactly."""
    sizes, total = [], 0
    for level in sorted(levels):
        while total < level:
            sizes.append(min(PER_PROCESS, level - total))
            total += sizes[-1]
    return sizes


class Worker:
    """One ws_client process."""

    def __init__(self, port: int, token: str, count: int, deflate: bool, fleet: bool = False):
        with pinned(LOAD_CPU):
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench.ws_client", "--port", str(port), f"--token={token}",
                 "--count", str(count)] + (["--deflate"] if deflate else []) + (["--fleet"] if fleet else []),
                cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.count = count

    def wait_ready(self, timeout_s: float = 120.0) -> tuple[int, int]:
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "READY":
            raise RuntimeError(f"ws_client did not start: {line}")
        return int(line[1]), int(line[2])

    def report(self) -> dict[str, Any]:
        self.proc.stdin.write("report\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def quit(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def sample_window(pids: dict[str, int], interval_s: float) -> dict[str, dict[str, float]]:
    """Sample these processes' CPU through one measuring window (REPETITIONS x BROADCASTS_PER_REP
    polls and a half of `interval_s`); return each one's ProcSampler result by name."""
    samplers = {name: ProcSampler(pid) for name, pid in pids.items()}
    deadline = time.monotonic() + interval_s * (REPETITIONS * BROADCASTS_PER_REP + 1.5)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        for sampler in samplers.values():
            sampler.sample()
    return {name: sampler.result() for name, sampler in samplers.items()}


def collect(workers: list[Worker]) -> tuple[list[list], dict[str, int]]:
    samples: list[list] = []
    status = {"alive": 0, "failed": 0}
    for worker in workers:
        report = worker.report()
        samples += report["samples"]
        status["alive"] += report["alive"]
        status["failed"] += report["failed"]
    return samples, status


def analyse(samples: list[list], clients: int, since: float, interval_s: float) -> dict[str, Any]:
    """Group deliveries by broadcast (server timestamp) and cut them into repetitions."""
    by_broadcast: dict[float, list[list]] = defaultdict(list)
    for server_ts, kernel_ts, app_ts, size in samples:
        if server_ts >= since:
            by_broadcast[server_ts].append((kernel_ts - server_ts, app_ts - server_ts, size))
    stamps = sorted(by_broadcast)
    # Cadence: the spacing of broadcasts (server stamps) and of their median receipt.
    receipt = {ts: ts + percentile([d[0] for d in by_broadcast[ts]], 50) for ts in stamps}
    reps = []
    for rep in range(REPETITIONS):
        lo, hi = rep * BROADCASTS_PER_REP, (rep + 1) * BROADCASTS_PER_REP
        chunk = stamps[lo:hi]
        if not chunk:
            break
        kernel = [d[0] * 1000 for ts in chunk for d in by_broadcast[ts]]
        app = [d[1] * 1000 for ts in chunk for d in by_broadcast[ts]]
        spaced = stamps[max(lo - 1, 0):hi]   # the gap into this repetition counts too
        gaps = [b - a for a, b in zip(spaced, spaced[1:])] + \
               [receipt[b] - receipt[a] for a, b in zip(spaced, spaced[1:])]
        reps.append({
            "broadcasts": len(chunk), "deliveries": len(kernel),
            "delivered_fraction": len(kernel) / (len(chunk) * clients),
            "p50_ms": percentile(kernel, 50), "p99_ms": percentile(kernel, 99), "max_ms": max(kernel),
            "first_ms": min(kernel), "app_p99_ms": percentile(app, 99),
            "cadence_deviation": max((abs(g - interval_s) / interval_s for g in gaps), default=float("nan")),
        })
    stamp_gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    receipt_gaps = [receipt[b] - receipt[a] for a, b in zip(stamps, stamps[1:])]
    worst = max((abs(g - interval_s) / interval_s for g in stamp_gaps + receipt_gaps), default=float("nan"))
    sizes = [d[2] for ts in stamps for d in by_broadcast[ts]]
    return {
        "reps": reps, "broadcasts": len(stamps),
        "payload_bytes": int(percentile(sizes, 50)) if sizes else 0,
        "p50_ms": Spread.of(r["p50_ms"] for r in reps).to_json(),
        "p99_ms": Spread.of(r["p99_ms"] for r in reps).to_json(),
        "max_ms": Spread.of(r["max_ms"] for r in reps).to_json(),
        "first_ms": Spread.of(r["first_ms"] for r in reps).to_json(),
        "app_p99_ms": Spread.of(r["app_p99_ms"] for r in reps).to_json(),
        "delivered_fraction": min((r["delivered_fraction"] for r in reps), default=0.0),
        "cadence_gap_s": Spread.of(stamp_gaps).to_json(),
        "receipt_gap_s": Spread.of(receipt_gaps).to_json(),
        "cadence_worst_deviation": worst,
        # Per repetition, the worst gap's deviation; the median over repetitions is the verdict's.
        "cadence_deviation": Spread.of(r["cadence_deviation"] for r in reps).to_json(),
    }


def run(fakes: Fakes, workdir: Path, *, levels=LEVELS, deflate: bool = False, stock_broadcast: bool = False,
        scenarios=SCENARIOS, interval_s: float = INTERVAL_S, label: str = "") -> dict[str, Any]:
    """Ramp the clients up through `levels` with the first scenario, then back down with the next."""
    nvml = fakes.nvml("fanout", scenarios[0][1]())
    server = start_dashboard(workdir, nvml, stock_broadcast=stock_broadcast,
                             extra={"VRAM_POLL_INTERVAL_SECONDS": str(interval_s)})
    workers: list[Worker] = []
    results = []
    try:
        wait_for_gpus(server, scenarios[0][2])
        token = server.login()
        # Up the levels with the first scenario, then down them with the others: one scenario
        # switch per pass, and the first scenario's RSS is not inflated by larger snapshots sent
        # before it. Workers are sized so that every level is a whole number of them.
        sizes = _worker_sizes(levels)
        plan = [(level, scenarios[0]) for level in levels]
        for index, scenario in enumerate(scenarios[1:]):
            plan += [(level, scenario) for level in (reversed(levels) if index % 2 == 0 else levels)]
        current = None
        for level, (name, make, gpus) in plan:
            t0 = time.monotonic()
            while sum(w.count for w in workers) < level:
                count = sizes[len(workers)]
                workers.append(Worker(server.port, token, count, deflate))
                ready, failed = workers[-1].wait_ready()
                if failed or ready != count:
                    raise RuntimeError(f"only {ready} of {count} clients connected ({failed} failed)")
            while sum(w.count for w in workers) > level:
                workers.pop().quit()
            connected = sum(w.count for w in workers)
            log(f"fan-out{label}: {connected} clients connected ({time.monotonic() - t0:.1f}s)")
            if current != name:
                nvml.apply(make())
                wait_for_gpus(server, gpus)
                current = name
            time.sleep(interval_s * 1.5)
            collect(workers)  # drop what came before this level and scenario
            since = time.time()
            proc = sample_window({"server": server.proc.pid}, interval_s)["server"]
            samples, status = collect(workers)
            result = analyse(samples, level, since, interval_s)
            result.update({"clients": level, "scenario": name, "gpus": gpus, "server": proc,
                           "alive": status["alive"], "interval_s": interval_s})
            results.append(result)
            log(f"fan-out{label} {level} clients, {name}: p50 {result['p50_ms']['median']:.1f} ms, "
                f"p99 {result['p99_ms']['median']:.1f} ms, CPU {proc['cpu_percent']:.0f}%, "
                f"RSS {proc['peak_rss_mb']:.0f} MB, delivered {result['delivered_fraction']:.3f}, "
                f"cadence {result['cadence_deviation']['median'] * 100:.1f}% "
                f"(worst {result['cadence_worst_deviation'] * 100:.1f}%)")
    finally:
        for worker in workers:
            worker.quit()
        server.stop()
    return {"interval_s": interval_s, "per_process": PER_PROCESS, "broadcasts_per_rep": BROADCASTS_PER_REP,
            "deflate": deflate, "stock_broadcast": stock_broadcast, "label": label, "results": results}
