"""3c. Fan-out across two processes through Redis: 1,000 clients split 500/500, and the queue's cost.

Two `python app.py` processes form a fleet as deploy/ runs one (tests/test_fleet_live.py starts
them the same way): one real redis-server (REDIS_URL) and one real PostgreSQL database
(DATABASE_URL, shared: a session from one node's login opens sockets on both), each node its own
fake NVML with the same two GPUs, VRAM_POLL_INTERVAL_SECONDS as section 3. Both processes are
pinned to the server core, so together they have the one core the single process of section 3
has; Redis, PostgreSQL and the clients (bench/ws_client.py --fleet, 250 a process) are on the load
core. 500 clients connect to each node.

What each client hears: its own node's `vram_update` (never through the queue: each node's
reading goes to its own sockets, `SocketHub.publish_vram`), and every node's `fleet_update`
through the Socket.IO message queue (sockets/queue.py): the publishing process delivers to its own
sockets first (python-socketio's PubSubManager.emit), then publishes to Redis, whose other
subscriber delivers to its sockets.

The queue is timed at Redis itself: `QueueTap` subscribes to the Socket.IO channel on a raw
socket and stamps each message with the kernel's receive time (SO_TIMESTAMPNS, as the clients
stamp theirs), which is when Redis handed the publish to its subscribers (node-b's listener gets
it at about the same moment). Each client's fleet_update is matched to its publish (the origin node and
the reading's timestamp name it; a reading can be sent twice, one fleet tick apart): the other
process's clients give "publish → delivery", the origin's own clients how long before the publish
they were served, and both together the queue's added latency per broadcast (the other process's
clients minus the origin's, at p50 and p99).

The same run then measures one process with 1,000 clients and no Redis (section 3's fan-out, one
level): vram_update p99 with the fleet against it, seconds apart.
"""
from __future__ import annotations

import json
import signal
import socket
import statistics
import struct
import subprocess
import threading
import time
from bisect import bisect_left, bisect_right
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench import fanout
from bench.common import (LOAD_CPU, REPETITIONS, Fakes, Spread, log, percentile, pinned,
                          start_dashboard, wait_for_gpus)
from bench.fanout import BROADCASTS_PER_REP, PER_PROCESS, Worker, collect, sample_window
from bench.scenarios import SCENARIOS
from bench.ws_client import ANC_SIZE, SO_TIMESTAMPNS
from tests.live import free_port
from tests.servers import PostgresServer, RedisServer

NODES = ("node-a", "node-b")
PER_NODE = 500
INTERVAL_S = fanout.INTERVAL_S
TARGET_P99_MS = fanout.TARGET_P99_MS
TARGET_CADENCE = fanout.TARGET_CADENCE
CHANNEL = "vram-dashboard:socketio"  # fleet.link.PREFIX + sockets.queue.CHANNEL
SLACK_S = 0.005  # a client and the tap read the same publish; either may be stamped first


class QueueTap(threading.Thread):
    """SUBSCRIBE to the Socket.IO channel on a raw socket; keep (kernel receive time, message)."""

    def __init__(self, port: int, channel: str = CHANNEL):
        super().__init__(name="queue-tap", daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.sendall(f"*2\r\n$9\r\nSUBSCRIBE\r\n${len(channel)}\r\n{channel}\r\n".encode())
        self.sock.settimeout(0.5)
        self.messages: list[tuple[float, bytes]] = []
        self._buf = bytearray()
        self._stopping = False

    def run(self) -> None:
        while not self._stopping:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(1 << 20, ANC_SIZE)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            stamp = time.time()
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    stamp = sec + nsec / 1e9
            self._buf += data
            while (item := self._parse()) is not None:
                if len(item) == 3 and item[0] == b"message":
                    self.messages.append((stamp, item[2]))

    def _parse(self) -> list[bytes] | None:
        """Take one RESP array of bulk strings (a pub/sub push) off the buffer, or None."""
        buf, at = self._buf, 0
        if not buf.startswith(b"*"):
            return None
        end = buf.find(b"\r\n")
        if end < 0:
            return None
        count, at, items = int(buf[1:end]), end + 2, []
        for _ in range(count):
            end = buf.find(b"\r\n", at)
            if end < 0:
                return None
            if buf[at:at + 1] == b":":  # the subscription count of the SUBSCRIBE reply
                items.append(buf[at + 1:end])
                at = end + 2
                continue
            size = int(buf[at + 1:end])
            if len(buf) < end + 2 + size + 2:
                return None
            items.append(bytes(buf[end + 2:end + 2 + size]))
            at = end + 2 + size + 2
        del buf[:at]
        return items

    def publishes(self) -> dict[tuple[str, float], list[float]]:
        """{(origin node, reading timestamp): [receive times]} of every fleet_update published."""
        found: dict[tuple[str, float], list[float]] = defaultdict(list)
        for stamp, raw in self.messages:
            message = json.loads(raw)
            if message.get("method") == "emit" and message.get("event") == "fleet_update":
                body = message["data"][0]
                status = body.get("status") or {}
                if "timestamp" in status:
                    found[(body["node"], float(status["timestamp"]))].append(stamp)
        return {key: sorted(times) for key, times in found.items()}

    def stop(self) -> None:
        self._stopping = True
        self.join(timeout=2)
        self.sock.close()


def match(publishes: dict[tuple[str, float], list[float]], origin: str, local: list[list], remote: list[list],
          since: float) -> list[dict[str, Any]]:
    """Group one origin's fleet_update deliveries by the publish they came from, in time order.

    The origin's own clients were served before its publish (the next one of that reading); the
    other process's after it (the last one before the delivery).
    """
    broadcasts: dict[float, tuple[list[float], list[float], float]] = {}
    for side, samples in ((0, local), (1, remote)):
        for server_ts, kernel_ts, _app_ts, _size, _tag in samples:
            times = publishes.get((origin, server_ts))
            if not times or server_ts < since:
                continue
            if side == 0:
                at = bisect_left(times, kernel_ts - SLACK_S)
                published = times[at] if at < len(times) else None
            else:
                at = bisect_right(times, kernel_ts + SLACK_S) - 1
                published = times[at] if at >= 0 else None
            if published is not None:
                broadcasts.setdefault(published, ([], [], server_ts))[side].append((kernel_ts - published) * 1000)
    rows = []
    for published in sorted(broadcasts):
        near, far, server_ts = broadcasts[published]
        if near and far:  # the window's edges may cut a broadcast in half
            rows.append({"published": published, "reading_age_ms": (published - server_ts) * 1000,
                         "local": near, "remote": far})
    return rows


def queue_reps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cut one origin's broadcasts into repetitions of BROADCASTS_PER_REP, as section 3 does."""
    reps = []
    for rep in range(REPETITIONS):
        chunk = rows[rep * BROADCASTS_PER_REP:(rep + 1) * BROADCASTS_PER_REP]
        if not chunk:
            break
        near = [v for row in chunk for v in row["local"]]
        far = [v for row in chunk for v in row["remote"]]
        reps.append({
            "broadcasts": len(chunk), "local_deliveries": len(near), "remote_deliveries": len(far),
            # Relative to the publish reaching Redis's subscribers: the origin's clients (negative:
            # before it) and the other process's.
            "local_p50_ms": percentile(near, 50), "local_last_ms": max(near),
            "remote_first_ms": statistics.median(min(row["remote"]) for row in chunk),
            "remote_p50_ms": percentile(far, 50), "remote_p99_ms": percentile(far, 99),
            "added_p50_ms": percentile(far, 50) - percentile(near, 50),
            "added_p99_ms": percentile(far, 99) - percentile(near, 99),
            "reading_age_ms": statistics.median(row["reading_age_ms"] for row in chunk),
        })
    return reps


def _start_workers(workers: list[Worker], server, token: str, clients: int, fleet: bool) -> None:
    """Start every ws_client process for one server at once (into `workers`, so that a failure
    leaves them to the caller's clean-up), then wait until all are connected."""
    start = len(workers)
    for at in range(0, clients, PER_PROCESS):
        workers.append(Worker(server.port, token, min(PER_PROCESS, clients - at), deflate=False, fleet=fleet))
    for worker in workers[start:]:
        ready, failed = worker.wait_ready()
        if failed or ready != worker.count:
            raise RuntimeError(f"only {ready} of {worker.count} clients connected ({failed} failed)")


def _stop_all(workers: list[Worker], servers: list) -> None:
    """Tell every client process to quit, then every server to stop, and wait for them all together."""
    for worker in workers:
        if worker.proc.poll() is None:
            try:
                worker.proc.stdin.write("quit\n")
                worker.proc.stdin.flush()
            except OSError:
                pass
    for worker in workers:
        worker.quit()  # waits (the second "quit" is not read); kills one that does not end
    for server in servers:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
    for server in servers:
        try:
            server.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


def measure_fleet(fakes: Fakes, workdir: Path, redis_server: RedisServer, database_url: str) -> dict[str, Any]:
    name, make, gpus = SCENARIOS[0]
    servers: dict[str, Any] = {}
    workers: dict[str, list[Worker]] = {}
    tap = None
    try:
        t0 = time.monotonic()
        for node in NODES:  # the first migrates the database; the second finds it migrated
            port = free_port()
            servers[node] = start_dashboard(workdir, fakes.nvml(f"fleet-{node}", make()), port=port, extra={
                "REDIS_URL": redis_server.url, "DATABASE_URL": database_url, "DASHBOARD_NODE_NAME": node,
                "DASHBOARD_PUBLIC_URL": f"http://127.0.0.1:{port}", "VRAM_POLL_INTERVAL_SECONDS": str(INTERVAL_S)})
        for server in servers.values():
            wait_for_gpus(server, gpus)
        token = servers[NODES[0]].login()  # one session, valid on both (the shared database)
        log(f"fleet: {len(NODES)} nodes up ({time.monotonic() - t0:.1f}s)")
        t0 = time.monotonic()
        for node, server in servers.items():
            _start_workers(workers.setdefault(node, []), server, token, PER_NODE, fleet=True)
        log(f"fleet: {PER_NODE} clients on each node ({time.monotonic() - t0:.1f}s)")
        tap = QueueTap(redis_server.port)
        tap.start()
        time.sleep(INTERVAL_S * 1.5)
        for node in NODES:
            collect(workers[node])  # drop what came before the window
        since = time.time()
        procs = sample_window({**{node: server.proc.pid for node, server in servers.items()},
                               "redis": redis_server.proc.pid}, INTERVAL_S)
        heard = {node: collect(workers[node]) for node in NODES}
    finally:
        t0 = time.monotonic()
        if tap is not None:
            tap.stop()
        _stop_all([w for node_workers in workers.values() for w in node_workers], list(servers.values()))
        log(f"fleet: clients and nodes stopped ({time.monotonic() - t0:.1f}s)")
    nodes = {}
    for node in NODES:
        samples, status = heard[node]
        vram = [s[:4] for s in samples if s[4] == "vram_update"]
        result = fanout.analyse(vram, PER_NODE, since, INTERVAL_S)
        result.update({"clients": PER_NODE, "alive": status["alive"], "server": procs[node],
                       "fleet_updates_heard": {tag.split(":", 1)[1]: sum(1 for s in samples if s[4] == tag)
                                               for tag in sorted({s[4] for s in samples}) if tag != "vram_update"}})
        nodes[node] = result
    publishes = tap.publishes()
    if not publishes:
        raise RuntimeError(f"the tap on {CHANNEL} saw no fleet_update ({len(tap.messages)} messages)")
    queue: dict[str, Any] = {}
    for origin in NODES:
        other = next(node for node in NODES if node != origin)
        tag = f"fleet_update:{origin}"
        rows = match(publishes, origin, [s for s in heard[origin][0] if s[4] == tag],
                     [s for s in heard[other][0] if s[4] == tag], since)
        queue[origin] = {"broadcasts": len(rows), "reps": queue_reps(rows),
                         "readings_sent_twice": sum(len(t) > 1 for (o, _), t in publishes.items() if o == origin)}
    every_rep = [rep for origin in NODES for rep in queue[origin]["reps"]]
    summary = {
        "nodes": nodes, "queue": queue, "scenario": name, "gpus": gpus, "clients_per_node": PER_NODE,
        "interval_s": INTERVAL_S, "tap_messages": len(tap.messages),
        # The verdict's figures: the worse node's median over repetitions.
        "p99_ms": max((n["p99_ms"] for n in nodes.values()), key=lambda s: s["median"]),
        "cadence_deviation": max((n["cadence_deviation"] for n in nodes.values()), key=lambda s: s["median"]),
        "cadence_worst_deviation": max(n["cadence_worst_deviation"] for n in nodes.values()),
        "delivered_fraction": min(n["delivered_fraction"] for n in nodes.values()),
        "server_cpu_percent": sum(procs[node]["cpu_percent"] for node in NODES), "redis": procs["redis"],
    }
    for key in every_rep[0] if every_rep else ():
        if key.endswith("_ms"):
            summary[f"queue_{key}"] = Spread.of(r[key] for r in every_rep).to_json()
    return summary


def measure_single(fakes: Fakes, workdir: Path) -> dict[str, Any]:
    """Section 3's fan-out at one level: one process, 1,000 clients, no Redis."""
    name, make, gpus = SCENARIOS[0]
    clients = PER_NODE * len(NODES)
    t0 = time.monotonic()
    server = start_dashboard(workdir, fakes.nvml("fleet-single", make()),
                             extra={"VRAM_POLL_INTERVAL_SECONDS": str(INTERVAL_S)})
    workers: list[Worker] = []
    try:
        wait_for_gpus(server, gpus)
        log(f"fleet baseline: one process up ({time.monotonic() - t0:.1f}s)")
        t0 = time.monotonic()
        _start_workers(workers, server, server.login(), clients, fleet=False)
        log(f"fleet baseline: {clients} clients ({time.monotonic() - t0:.1f}s)")
        time.sleep(INTERVAL_S * 1.5)
        collect(workers)
        since = time.time()
        proc = sample_window({"server": server.proc.pid}, INTERVAL_S)["server"]
        samples, status = collect(workers)
    finally:
        _stop_all(workers, [server])
    result = fanout.analyse(samples, clients, since, INTERVAL_S)
    result.update({"clients": clients, "alive": status["alive"], "server": proc})
    return result


def run(fakes: Fakes, workdir: Path) -> dict[str, Any]:
    """The fleet (500 + 500 clients through Redis), then one process with 1,000 clients."""
    t0 = time.monotonic()
    with pinned(LOAD_CPU):  # Redis and PostgreSQL (and the backends it forks) on the load core
        redis_server = RedisServer().start()
        postgres = PostgresServer()
        try:
            postgres.start()
        except Exception:
            redis_server.close()
            raise
    try:
        log(f"fleet: redis-server and PostgreSQL up ({time.monotonic() - t0:.1f}s)")
        result = measure_fleet(fakes, workdir, redis_server, postgres.create_database())
    finally:
        redis_server.close()
        postgres.stop()
    t0 = time.monotonic()
    single = result["single"] = measure_single(fakes, workdir)
    log(f"fleet baseline, one process, 1000 clients: vram_update p99 {single['p99_ms']['median']:.1f} ms, "
        f"cadence {single['cadence_deviation']['median'] * 100:.1f}% ({time.monotonic() - t0:.1f}s)")
    result.update({"p99_vs_single_ms": result["p99_ms"]["median"] - single["p99_ms"]["median"],
                   "target_p99_ms": TARGET_P99_MS, "target_cadence": TARGET_CADENCE})
    result["verdict"] = (result["p99_ms"]["median"] <= TARGET_P99_MS
                         and result["cadence_deviation"]["median"] <= TARGET_CADENCE
                         and result["delivered_fraction"] >= 0.99)
    for node, y in result["nodes"].items():
        log(f"fleet {node}: vram_update p50 {y['p50_ms']['median']:.1f} ms, p99 {y['p99_ms']['median']:.1f} ms, "
            f"cadence {y['cadence_deviation']['median'] * 100:.1f}%, delivered {y['delivered_fraction']:.3f}, "
            f"CPU {y['server']['cpu_percent']:.0f}% (runqueue wait {y['server']['runqueue_wait_percent']:.0f}%), "
            f"fleet_update heard {y['fleet_updates_heard']}")
    if "queue_added_p50_ms" in result:
        log(f"fleet: publish -> other process's clients p50 {result['queue_remote_p50_ms']['median']:.1f} ms "
            f"(first {result['queue_remote_first_ms']['median']:.1f} ms); origin's own clients served "
            f"{-result['queue_local_last_ms']['median']:.1f} ms before it at the latest; queue adds p50 "
            f"{result['queue_added_p50_ms']['median']:+.1f} ms, p99 {result['queue_added_p99_ms']['median']:+.1f} ms; "
            f"reading {result['queue_reading_age_ms']['median']:.0f} ms old when published; "
            f"redis-server CPU {result['redis']['cpu_percent']:.1f}%")
    return result
