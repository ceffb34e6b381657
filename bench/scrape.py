"""1b. Metrics: GET /metrics against GET /health on one server with 8 GPUs x 50 processes.

As Prometheus scrapes it: an API key with only the `metrics` scope (`Authorization: Bearer vdk_…`),
`Accept-Encoding: gzip`. wrk on the load core, the server alone on the other; per repetition both
paths back to back, order alternating (bench/rest.py's method).

Where a scrape's CPU goes: `python -m bench.scrape --json` (run by the section in a subprocess on
the server core, as bench/attribution.py is) times the scrape view's two halves on the same reading,
outside any request: the collector building the metric families from the poller's snapshot
(metrics.collector.DashboardCollector) and prometheus_client's `generate_latest` writing the text.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import REPO, SERVER_CPU, Fakes, log, start_dashboard, wait_for_gpus
from bench.rest import CONNECTIONS, DURATION_S, REPS, against_health
from bench.scenarios import SCENARIOS

TARGET_RATIO = 0.5
BREAKDOWN_BLOCKS, BREAKDOWN_CALLS = 7, 20
# What Prometheus 2.x sends (scrape_protocols' default order, compressed bodies accepted).
ACCEPT = {"Accept": "application/openmetrics-text;version=1.0.0;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
          "Accept-Encoding": "gzip"}


def metrics_key(server) -> str:
    """Make an API key with the `metrics` scope only, through the real route, and return it."""
    response = requests.post(server.url + "/api/keys", headers=server.headers(), timeout=10,
                             json={"name": "bench prometheus", "scopes": ["metrics"]})
    response.raise_for_status()
    return response.json()["key"]


def run(fakes: Fakes, workdir: Path) -> dict[str, Any]:
    name, make, gpus = SCENARIOS[1]  # 8 GPUs x 50 processes: the machine
    server = start_dashboard(workdir, fakes.nvml("metrics", make()))
    try:
        body = wait_for_gpus(server, gpus)
        key = metrics_key(server)
        auth = {"Authorization": f"Bearer {key}", **ACCEPT}
        scrape = requests.get(server.url + "/metrics", headers=auth, timeout=10, stream=True)
        scrape.raise_for_status()
        wire = scrape.raw.read(decode_content=False)
        text = requests.get(server.url + "/metrics", headers=auth, timeout=10).text
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        content_encoding = scrape.headers.get("Content-Encoding", "identity")
        targets = {"health": (server.url + "/health", ACCEPT), "metrics": (server.url + "/metrics", auth)}
        measured = against_health(server, targets, "metrics", "metrics")
    finally:
        server.stop()
    summary: dict[str, Any] = {
        "scenario": name, "gpus": gpus, "processes": len(body.get("processes", [])), "series": series,
        "body_bytes": len(text.encode()), "wire_bytes": len(wire), "content_encoding": content_encoding,
        "connections": CONNECTIONS, "duration_s": DURATION_S, "repetitions": REPS, "target_ratio": TARGET_RATIO,
        **measured,
    }
    summary["verdict"] = summary["ratio"]["median"] >= TARGET_RATIO and summary["errors"] == 0
    summary["breakdown"] = breakdown(fakes.lib)
    log(f"metrics: collect {summary['breakdown']['collect_us']['median']:.0f} µs + render "
        f"{summary['breakdown']['render_us']['median']:.0f} µs a scrape outside a request "
        f"({summary['breakdown']['samples']} samples)")
    return summary


def breakdown(lib_path: Path) -> dict[str, Any]:
    """This module's main() in a subprocess pinned to the server core, on the run's fake NVML; its figures."""
    result = subprocess.run(["taskset", "-c", str(SERVER_CPU), sys.executable, "-m", "bench.scrape", "--json",
                             f"--lib={lib_path}"],
                            cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"bench.scrape exited {result.returncode}: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    """Time a scrape's parts on one 8 x 50 reading (CPU µs a call): the per-scrape families
    (DashboardCollector: collect, render, both) and the per-poll GPU and process text (GpuCollector),
    which the view writes once a poll."""
    import argparse
    import shutil
    import tempfile

    import eventlet

    parser = argparse.ArgumentParser(prog="python -m bench.scrape", description=main.__doc__)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line (the default)")
    parser.add_argument("--lib", type=Path, help="a compiled fake libnvidia-ml.so.1 (else built in a temp dir)")
    args = parser.parse_args(argv)
    eventlet.monkey_patch()  # as the server runs (the poller's NVML calls in tpool threads)
    from prometheus_client import CollectorRegistry, generate_latest

    from bench.scenarios import eight_gpus_fifty_processes_56k
    from metrics.collector import DashboardCollector, GpuCollector, ProxyCounters
    from tests.fakes.fake_nvml import FakeNvml, build_fake_nvml, install_in_process
    from vram.nvml import NvmlReader
    from vram.poller import VramPoller

    tmp = Path(tempfile.mkdtemp(prefix="bench-scrape-"))
    lib_path = args.lib or build_fake_nvml(tmp)
    lib = install_in_process(lib_path)
    fake = FakeNvml(tmp / "scenario.txt", lib=lib, lib_path=lib_path)
    lib.fake_nvml_set_scenario_path(str(fake.scenario_path).encode())
    fake.apply(eight_gpus_fifty_processes_56k())
    reader = NvmlReader()
    poller = VramPoller(reader, 2.0)
    try:
        poller.tick()
        collector = DashboardCollector(lambda: poller.latest, lambda: 3600.0, lambda: False,
                                       lambda: {"vram_high": 0}, ProxyCounters())
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        body = generate_latest(registry)
        families = list(collector.collect())
        samples = sum(len(family.samples) for family in families)

        class Fixed:  # the same families, already built: generate_latest's own share
            def collect(self):
                return iter(families)

        rendered = CollectorRegistry(auto_describe=False)
        rendered.register(Fixed())
        per_poll = CollectorRegistry(auto_describe=False)
        per_poll.register(GpuCollector(poller.latest))
        gpu_body = generate_latest(per_poll)
        gpu_samples = sum(len(family.samples) for family in GpuCollector(poller.latest).collect())
        timings: dict[str, list[float]] = {"collect": [], "render": [], "scrape": [], "per_poll": []}
        for _ in range(BREAKDOWN_BLOCKS):
            for label, call in (("collect", lambda: list(collector.collect())),
                                ("render", lambda: generate_latest(rendered)),
                                ("scrape", lambda: generate_latest(registry)),
                                ("per_poll", lambda: generate_latest(per_poll))):
                started = time.process_time()
                for _ in range(BREAKDOWN_CALLS):
                    call()
                timings[label].append((time.process_time() - started) / BREAKDOWN_CALLS * 1e6)
    finally:
        reader.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"samples": samples, "families": len(families), "body_bytes": len(body),
                      "gpu_samples": gpu_samples, "gpu_body_bytes": len(gpu_body),
                      "blocks": BREAKDOWN_BLOCKS, "calls_per_block": BREAKDOWN_CALLS,
                      **{f"{label}_us": _spread(values) for label, values in timings.items()},
                      "render_us_per_sample": statistics.median(timings["render"]) / samples}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
