"""3b. Fan-out memory: what one websocket client costs the server, and where the bytes go.

Two servers in turn, 2 fake GPUs, default interval shortened to 1 s: a plain one for RSS (no
tracing overhead) and one tracing allocations (tracemalloc, from just before the clients connect)
for the breakdown. Each gets CLIENTS raw
websocket clients (bench/ws_client.py, authenticated Socket.IO over Engine.IO 4); before they
connect and after a few broadcasts, RSS (and its anonymous part, /proc/<pid>/smaps_rollup) is
read and bench/variant_server.py dumps a tracemalloc snapshot, the count of live objects by type
and the green threads with the bytes of C stack greenlet saved for them. Per connection =
(after − before) / CLIENTS.
"""
from __future__ import annotations

import os
import pickle
import signal
import time
from pathlib import Path
from typing import Any

from bench.common import Fakes, ProcSampler, log, rss_mb, start_dashboard, wait_for, wait_for_gpus
from bench.fanout import PER_PROCESS, Worker
from bench.scenarios import SCENARIOS

CLIENTS = 1000
SETTLE_S = 3.0
TOP = 14


def smaps_kb(pid: int) -> dict[str, int]:
    """Return /proc/<pid>/smaps_rollup's fields in KiB (Rss, Anonymous, Private_Dirty, ...)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[name] = int(parts[0])
    return fields


def _dump(server, directory: Path) -> dict[str, Any]:
    index = len(list(directory.glob("dump-*.pickle")))
    os.kill(server.proc.pid, signal.SIGUSR1)
    target = directory / f"dump-{index}.pickle"
    wait_for(target.exists, 60, step_s=0.1, what="memory dump")
    return pickle.loads(target.read_bytes())


def _where(frame) -> str:
    """Name an allocation site by package and module (.venv paths shortened)."""
    name = frame.filename
    for marker in ("site-packages/", "lib/python3", "/bench/", "/i16-perf/"):
        at = name.find(marker)
        if at >= 0:
            name = name[at + len(marker):]
            break
    return f"{name}:{frame.lineno}"


def measure(fakes: Fakes, workdir: Path, *, traced: bool, clients: int = CLIENTS) -> dict[str, Any]:
    dumps = workdir / f"memory-dumps-{'traced' if traced else 'plain'}"
    dumps.mkdir(parents=True, exist_ok=True)
    extra = {"VRAM_POLL_INTERVAL_SECONDS": "1", "BENCH_MEMORY_DUMP": str(dumps)}
    if traced:
        extra["BENCH_TRACEMALLOC"] = "6"
    nvml = fakes.nvml("memory", SCENARIOS[0][1]())
    server = start_dashboard(workdir, nvml, extra=extra)
    workers: list[Worker] = []
    try:
        wait_for_gpus(server, SCENARIOS[0][2])
        token = server.login()
        time.sleep(SETTLE_S)
        before = _dump(server, dumps)
        rss0, smaps0 = rss_mb(server.proc.pid), smaps_kb(server.proc.pid)
        while sum(w.count for w in workers) < clients:
            workers.append(Worker(server.port, token, min(PER_PROCESS, clients - sum(w.count for w in workers)), False))
            ready, failed = workers[-1].wait_ready()
            if failed:
                raise RuntimeError(f"{failed} clients failed to connect")
        sampler = ProcSampler(server.proc.pid)
        time.sleep(SETTLE_S)   # a few broadcasts: queues, frames and send buffers in their steady state
        after = _dump(server, dumps)
        rss1, smaps1 = rss_mb(server.proc.pid), smaps_kb(server.proc.pid)
        peak = sampler.result()["peak_rss_mb"]
    finally:
        for worker in workers:
            worker.quit()
        server.stop()
    result: dict[str, Any] = {
        "clients": clients, "traced": traced, "rss_before_mb": rss0, "rss_after_mb": rss1, "peak_rss_mb": peak,
        "rss_per_client_kb": (rss1 - rss0) * 1024 / clients,
        "anon_per_client_kb": (smaps1.get("Anonymous", 0) - smaps0.get("Anonymous", 0)) / clients,
        "greenlets_per_client": (after["greenlets"] - before["greenlets"]) / clients,
        "greenlet_stack_per_client_kb": (after["greenlet_stack_bytes"] - before["greenlet_stack_bytes"]) / 1024 / clients,
        "objects_per_client": {name: (after["types"].get(name, 0) - before["types"].get(name, 0)) / clients
                               for name in sorted(after["types"], key=lambda n: before["types"].get(n, 0) - after["types"][n])[:TOP]},
    }
    if traced and before["tracemalloc"] is not None:
        diff = after["tracemalloc"].compare_to(before["tracemalloc"], "traceback")
        total = sum(d.size_diff for d in diff)
        result["traced_per_client_kb"] = total / 1024 / clients
        by_site: dict[str, int] = {}
        for stat in diff:
            frames = list(stat.traceback)
            # Name each allocation by the innermost frame outside the standard library's plumbing.
            site = next((f for f in reversed(frames) if "lib/python3.11/" not in f.filename or "site-packages" in f.filename),
                        frames[-1])
            key = f"{_where(site)} (from {_where(frames[-1])})" if site is not frames[-1] else _where(site)
            by_site[key] = by_site.get(key, 0) + stat.size_diff
        result["traced_sites_per_client_bytes"] = sorted(
            ((site, size / clients) for site, size in by_site.items()), key=lambda item: -item[1])[:TOP]
    return result


def run(fakes: Fakes, workdir: Path, clients: int = CLIENTS) -> dict[str, Any]:
    plain = measure(fakes, workdir, traced=False, clients=clients)
    log(f"memory: {clients} clients: RSS {plain['rss_before_mb']:.0f} → {plain['rss_after_mb']:.0f} MB, "
        f"{plain['rss_per_client_kb']:.1f} KiB a client ({plain['anon_per_client_kb']:.1f} KiB anonymous), "
        f"{plain['greenlets_per_client']:.2f} green threads a client, "
        f"{plain['greenlet_stack_per_client_kb']:.1f} KiB of saved C stack a client")
    traced = measure(fakes, workdir, traced=True, clients=clients)
    log(f"memory (traced): {traced.get('traced_per_client_kb', 0):.1f} KiB of Python allocations a client")
    for site, size in traced.get("traced_sites_per_client_bytes", []):
        log(f"  {size:8.0f} B  {site}")
    return {"clients": clients, "plain": plain, "traced": traced}


if __name__ == "__main__":
    import json
    import sys

    from bench.common import tempdir

    workdir = tempdir()
    count = int(sys.argv[1]) if len(sys.argv) > 1 else CLIENTS
    print(json.dumps(run(Fakes(workdir), workdir, count), indent=1, default=str))
