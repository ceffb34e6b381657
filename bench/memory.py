"""3b. Fan-out memory: what one websocket client costs the server, and where the bytes go.

The server as shipped (websockets owned by one epoll loop, sockets/owner.py) and, for comparison,
the stock one (python-engineio's and eventlet's own handling: bench/variant_server.py with
BENCH_STOCK_BROADCAST=1), each measured twice, 2 fake GPUs, default interval shortened to 1 s: a
plain server for RSS (no tracing overhead) and one tracing allocations (tracemalloc, from just
before the clients connect) for the breakdown. Each gets CLIENTS raw websocket clients
(bench/ws_client.py, authenticated Socket.IO over Engine.IO 4); before they connect and after a few
broadcasts, RSS (and its anonymous part, /proc/<pid>/smaps_rollup) is read and
bench/variant_server.py dumps a tracemalloc snapshot, the count of live objects by type and the
green threads with the bytes of C stack greenlet saved for them. Per connection = (after − before)
/ CLIENTS. Each traced allocation is put in one component (COMPONENTS) by the frames of its
traceback: the allocating library, or for eventlet's primitives (queues, events, timers, green
threads) the library that asked for them.
"""
from __future__ import annotations

import ast
import functools
import os
import pickle
import re
import signal
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, Fakes, ProcSampler, log, rss_mb, start_dashboard, wait_for, wait_for_gpus
from bench.fanout import PER_PROCESS, Worker
from bench.scenarios import SCENARIOS

CLIENTS = 1000
SETTLE_S = 3.0
TOP = 14
TRACE_FRAMES = 12
VARIANTS = ("owned", "stock")

# The breakdown's rows, in the order the report shows them.
COMPONENTS = {
    "stacks": "green threads: the C stack greenlet saved for each (its switch)",
    "threads": "green threads: their objects, hub timers and listeners, events, queues, locks",
    "files": "eventlet.wsgi's buffered files (`rfile` 8 KiB, `wfile` 16 KiB buffers)",
    "websocket": "eventlet's websocket object",
    "request": "the HTTP request: environ, parsed headers, eventlet's protocol object",
    "engineio": "Engine.IO's session (socket, queue, ping task, writer)",
    "socketio": "python-socketio and Flask-SocketIO's session (rooms, environ copy, request context)",
    "socket": "the connection's socket (eventlet's GreenSocket, the OS socket object)",
    "server": "this server (websocket owner, socket hub, connection slots)",
    "other": "everything else",
}
# eventlet's primitives: an allocation there is put on whoever asked for it (the next frame out).
_PRIMITIVES = ("eventlet/queue.py", "eventlet/event.py", "eventlet/semaphore.py", "eventlet/greenthread.py",
               "eventlet/timeout.py", "eventlet/hubs/", "eventlet/green/", "eventlet/greenpool.py",
               "engineio/async_drivers/")
_PACKAGES = (("engineio/", "engineio"), ("socketio/", "socketio"), ("flask_socketio/", "socketio"),
             ("eventlet/websocket.py", "websocket"), ("eventlet/wsgi.py", "request"),
             ("werkzeug/", "socketio"), ("flask/", "socketio"),
             ("/sockets/", "server"), ("/server.py", "server"), ("/concurrency.py", "server"))


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
    """Name an allocation site by package and module (.venv and this checkout's paths shortened)."""
    name = frame.filename
    repo = str(REPO) + "/"
    if name.startswith(repo):
        name = name[len(repo):]
    at = name.find("site-packages/")
    if at >= 0:
        name = name[at + len("site-packages/"):]
    else:
        name = re.sub(r"^.*/lib/python3\.\d+/", "", name)  # the standard library: its module path
    return f"{name}:{frame.lineno}"


@functools.lru_cache(maxsize=None)
def _functions(filename: str) -> list[tuple[int, int, str]]:
    """(first line, last line, name) of every function in a source file, innermost last."""
    try:
        tree = ast.parse(Path(filename).read_text())
    except (OSError, SyntaxError, ValueError):
        return []
    return sorted(((node.lineno, node.end_lineno or node.lineno, node.name) for node in ast.walk(tree)
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))), key=lambda f: (f[0], -f[1]))


def _function(frame) -> str | None:
    inner = None
    for first, last, name in _functions(frame.filename):
        if first <= frame.lineno <= last:
            inner = name
    return inner


def component(frames) -> str:
    """Name the COMPONENTS row of an allocation from its traceback (frames oldest first)."""
    innermost = frames[-1]
    if innermost.filename.endswith("eventlet/hubs/hub.py") and _function(innermost) == "switch":
        return "stacks"  # greenlet copies a parked green thread's C stack to the heap as it switches
    asked = False  # an eventlet primitive allocated it, for the frame that is next
    for frame in reversed(frames):
        name = frame.filename
        if name.endswith("eventlet/greenio/base.py"):
            return "files" if _function(frame) == "makefile" else "socket"
        if name.endswith("sockets/owner.py") and _function(frame) == "_slim_environ":
            return "socketio"  # the environ python-socketio keeps (Flask-SocketIO's copy, slimmed)
        if "site-packages" not in name and "/lib/python3" in name:
            if "/email/" in name or "/http/" in name:
                return "request"  # the parsed request head
            continue  # the standard library: who called it decides (unless nobody else is there)
        if any(marker in name for marker in _PRIMITIVES):
            asked = True
            continue
        for marker, row in _PACKAGES:
            if marker in name:
                # The HTTP server's request green threads (its pool's spawn) are green threads.
                return "threads" if row == "server" and asked and not name.endswith("/owner.py") else row
        return "other"
    names = [frame.filename for frame in frames]
    if any(marker in name for name in names for marker in _PRIMITIVES):
        return "threads"
    if any(name.endswith("/socket.py") for name in names):
        return "socket"
    return "other"


def measure(fakes: Fakes, workdir: Path, *, traced: bool, clients: int = CLIENTS,
            stock: bool = False) -> dict[str, Any]:
    dumps = workdir / f"memory-dumps-{'stock' if stock else 'owned'}-{'traced' if traced else 'plain'}"
    dumps.mkdir(parents=True, exist_ok=True)
    extra = {"VRAM_POLL_INTERVAL_SECONDS": "1", "BENCH_MEMORY_DUMP": str(dumps)}
    if traced:
        extra["BENCH_TRACEMALLOC"] = str(TRACE_FRAMES)
    nvml = fakes.nvml("memory", SCENARIOS[0][1]())
    server = start_dashboard(workdir, nvml, extra=extra, stock_broadcast=stock)
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
        "clients": clients, "traced": traced, "stock": stock, "rss_before_mb": rss0, "rss_after_mb": rss1, "peak_rss_mb": peak,
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
        by_component = dict.fromkeys(COMPONENTS, 0)
        sites_by_component: dict[str, dict[str, int]] = {name: {} for name in COMPONENTS}
        for stat in diff:
            frames = list(stat.traceback)
            row = component(frames)
            by_component[row] += stat.size_diff
            sites = sites_by_component[row]
            sites[_where(frames[-1])] = sites.get(_where(frames[-1]), 0) + stat.size_diff
            # Name each allocation by the innermost frame outside the standard library's plumbing.
            site = next((f for f in reversed(frames) if "/lib/python3" not in f.filename or "site-packages" in f.filename),
                        frames[-1])
            key = f"{_where(site)} (from {_where(frames[-1])})" if site is not frames[-1] else _where(site)
            by_site[key] = by_site.get(key, 0) + stat.size_diff
        result["traced_sites_per_client_bytes"] = sorted(
            ((site, size / clients) for site, size in by_site.items()), key=lambda item: -item[1])[:TOP]
        result["components_per_client_bytes"] = {name: size / clients for name, size in by_component.items()}
        result["component_sites_per_client_bytes"] = {
            name: sorted(((site, size / clients) for site, size in sites.items()), key=lambda item: -item[1])[:3]
            for name, sites in sites_by_component.items()}
    return result


def run(fakes: Fakes, workdir: Path, clients: int = CLIENTS) -> dict[str, Any]:
    results: dict[str, Any] = {"clients": clients, "components": COMPONENTS}
    for variant in VARIANTS:
        stock = variant == "stock"
        label = " (stock Engine.IO)" if stock else ""
        plain = measure(fakes, workdir, traced=False, clients=clients, stock=stock)
        log(f"memory{label}: {clients} clients: RSS {plain['rss_before_mb']:.0f} → {plain['rss_after_mb']:.0f} MB, "
            f"{plain['rss_per_client_kb']:.1f} KiB a client ({plain['anon_per_client_kb']:.1f} KiB anonymous), "
            f"{plain['greenlets_per_client']:.2f} green threads a client, "
            f"{plain['greenlet_stack_per_client_kb']:.1f} KiB of saved C stack a client")
        traced = measure(fakes, workdir, traced=True, clients=clients, stock=stock)
        log(f"memory{label} (traced): {traced.get('traced_per_client_kb', 0):.1f} KiB of Python allocations a client")
        for name, size in traced.get("components_per_client_bytes", {}).items():
            sites = ", ".join(f"{site} {bytes_:.0f}" for site, bytes_ in
                              traced["component_sites_per_client_bytes"][name])
            log(f"  {size:8.0f} B  {name}: {sites}")
        if stock:
            results["stock"] = {"plain": plain, "traced": traced}
        else:
            results.update(plain=plain, traced=traced)  # the server as shipped (what the summary reads)
    return results


if __name__ == "__main__":
    import json
    import sys

    from bench.common import tempdir

    workdir = tempdir()
    count = int(sys.argv[1]) if len(sys.argv) > 1 else CLIENTS
    print(json.dumps(run(Fakes(workdir), workdir, count), indent=1, default=str))
