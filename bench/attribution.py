"""Poller tick CPU with and without attribution: `.venv/bin/python -m bench.attribution [--json]`.

8 GPUs x 50 processes on the fake NVML (the REST benchmark's machine), 8 of them real processes
whose command lines read like Ollama runners. Alternates blocks of ticks with and without the
Attributor (so drift on a shared machine hits both), and prints CPU per tick (process time,
tpool threads included) as median (min-max) of the blocks, and the ratio. `python -m bench` runs
it as a subprocess pinned to the server core (`run`): the measuring monkey-patches the process
(as the server does), which the driver must not be. `--json` prints the figures as one JSON object.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BLOCKS, TICKS = 7, 200
TARGET_RATIO = 1.10


def run(fakes=None, workdir=None) -> dict:
    """The `python -m bench` section: this module in a subprocess on the server core; its figures."""
    from bench.common import REPO, SERVER_CPU

    result = subprocess.run(["taskset", "-c", str(SERVER_CPU), sys.executable, "-m", "bench.attribution", "--json"],
                            cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"bench.attribution exited {result.returncode}: {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def main(argv: list[str] | None = None) -> int:
    as_json = "--json" in (sys.argv[1:] if argv is None else argv)
    import eventlet

    eventlet.monkey_patch()  # as the server runs the poller (tpool threads for NVML)
    from tests.fakes.fake_nvml import FakeNvml, build_fake_nvml, eight_gpus_fifty_processes, install_in_process
    from vram.attribution import Attributor
    from vram.nvml import NvmlReader
    from vram.poller import VramPoller

    tmp = Path(tempfile.mkdtemp(prefix="bench-attribution-"))
    lib_path = build_fake_nvml(tmp)
    lib = install_in_process(lib_path)
    fake = FakeNvml(tmp / "scenario.txt", lib=lib, lib_path=lib_path)
    lib.fake_nvml_set_scenario_path(str(fake.scenario_path).encode())
    (tmp / "runner").write_text("import time\ntime.sleep(600)\n")
    runners, names = [], {}
    for gpu in range(8):
        digest = f"sha256:{gpu:064x}"
        names[digest] = f"model{gpu}:latest"
        runners.append(subprocess.Popen(
            ["/usr/local/bin/ollama", "runner", "--model", f"/m/blobs/{digest.replace(':', '-')}"],
            executable=sys.executable, cwd=tmp, stdin=subprocess.DEVNULL))
    time.sleep(0.5)
    scenario = eight_gpus_fifty_processes()
    procs = list(scenario.processes)
    # The scenario's made-up PIDs (10000-10749) can be a runner's real one on a busy machine: move
    # those out of the way, or a runner would be listed twice and counted as 9 attributed.
    real = {proc.pid for proc in runners}
    spare = (pid for pid in range(900_000, 1_000_000) if pid not in real)
    procs = [dataclasses.replace(p, pid=next(spare)) if p.pid in real else p for p in procs]
    for gpu, proc in enumerate(runners):
        procs[gpu * 50] = dataclasses.replace(procs[gpu * 50], pid=proc.pid)
    fake.apply(dataclasses.replace(scenario, processes=tuple(procs)))
    reader = NvmlReader()
    plain = VramPoller(reader, 2.0)
    attributed = VramPoller(reader, 2.0, annotate=Attributor(names.get))
    try:
        seen = {p["pid"]: p["model"] for p in attributed.tick().body["processes"] if p["model"] is not None}
        expected = {proc.pid for proc in runners}
        assert set(seen) == expected, f"attributed {seen}, runners {sorted(expected)}"
        results: dict[str, list[float]] = {"without": [], "with": []}
        for _ in range(BLOCKS):
            for label, poller in (("without", plain), ("with", attributed)):
                started = time.process_time()
                for _ in range(TICKS):
                    poller.tick()
                results[label].append((time.process_time() - started) / TICKS * 1e6)
    finally:
        reader.shutdown()
        for proc in runners:
            proc.kill()
            proc.wait()
    ratios = [w / wo for w, wo in zip(results["with"], results["without"])]
    figures = {"gpus": 8, "processes": len(procs), "runners": len(runners), "blocks": BLOCKS,
               "ticks_per_block": TICKS, "cpu": sorted(os.sched_getaffinity(0)),
               "without_us_per_tick": _spread(results["without"]), "with_us_per_tick": _spread(results["with"]),
               "ratio": _spread(ratios), "target_ratio": TARGET_RATIO,
               "verdict": statistics.median(ratios) <= TARGET_RATIO}
    if as_json:
        print(json.dumps(figures))
        return 0
    for label, values in results.items():
        print(f"{label:>8} attribution: {statistics.median(values):7.0f} us CPU a tick "
              f"({min(values):.0f}-{max(values):.0f})")
    print(f"   ratio: {statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f}), "
          f"target <= {TARGET_RATIO:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
