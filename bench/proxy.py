"""2. Proxy: streaming /api/generate through /ollama against direct to the fake, nginx and the bare stack.

Four ways: direct to the fake; nginx; the bare stack (bench/floor_proxy.py: eventlet.wsgi, Flask and
upstream forwarding (ollama_client/transport.py) with nothing of the dashboard's own work, the floor of any proxy built on them);
the dashboard. The fake Ollama and the load generator share the load core; the proxy under test
(the dashboard, nginx or the bare stack) has the other core. Every repetition runs each way in turn, so each ratio compares
figures taken seconds apart.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import (APP_START, LOAD_CPU, REPETITIONS, REPO, SERVER_CPU, Fakes, ProcSampler, Spread, cpu_seconds, log,
                          percentile, pinned, start_dashboard, wait_for)
from tests.fakes.fake_ollama import FakeOllama
from tests.live import free_port

SECONDS = 1.5
TOKENS = 200
PACED_TOKENS = 30
PACED_INTERVAL_S = 0.01       # 100 tokens/s per stream: a fast model, as users see it
# (label, streams, tokens per answer, seconds between tokens): the fake at full speed, then paced.
CASES = (("1", 1, TOKENS, 0.0), ("8", 8, TOKENS, 0.0), ("8 paced", 8, PACED_TOKENS, PACED_INTERVAL_S))
# Added first line at p50: at most nginx's, measured in the same repetition, + this (issue 16).
TARGET_ADDED_P50_MS = 0.5
# The first line's floor, away from the full-speed burst (run_stream_floor): one quiet user at 100
# tokens/s, and one stream at full speed with the fake yielding the load core to the client.
# (label, tokens per answer, seconds between tokens, the fake at SCHED_IDLE)
FLOOR_CASES = (("1 paced", PACED_TOKENS, PACED_INTERVAL_S, False), ("1, the fake yields", TOKENS, 0.0, True))
TARGET_RATIO = 0.9
# Small proxied requests: wrk -c10 GET /api/tags, against this server's own /health in the same run.
TAGS_CONNECTIONS = 10
TAGS_SECONDS = 1
TARGET_TAGS_HEALTH_RATIO = 0.5

NGINX_CONF = """
worker_processes 1;
daemon off;
master_process off;
error_log {dir}/error.log warn;
pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream ollama {{ server 127.0.0.1:{upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port};
        location /ollama/ {{
            proxy_pass http://ollama/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"""


class PinnedProxy:
    """A proxy process on the server core, listening on 127.0.0.1:`port`, serving /ollama/*."""

    def __init__(self, what: str, cmd: list[str], port: int, timeout_s: float):
        with pinned(SERVER_CPU):
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.port = port
        import socket

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited: {self.proc.stderr.read().decode()}")
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(up, timeout_s, what=what)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ollama"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Nginx(PinnedProxy):
    """nginx as a loopback reverse proxy (one process, no master)."""

    def __init__(self, workdir: Path, upstream_port: int):
        self.dir = workdir / "nginx"
        self.dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=self.dir, upstream=upstream_port, port=port))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        super().__init__("nginx", [nginx, "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
                         port, 10)


class BareProxy(PinnedProxy):
    """bench/floor_proxy.py: the libraries the proxy is made of, doing nothing else."""

    def __init__(self, upstream_url: str):
        port = free_port()
        super().__init__("bench/floor_proxy.py", [sys.executable, "-m", "bench.floor_proxy", str(port), upstream_url],
                         port, 30)


def run_load(url: str, streams: int, token: str | None = None, tokens: int = TOKENS) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.stream_client", "--url", url + "/api/generate", "--streams", str(streams),
           "--seconds", str(SECONDS), "--tokens", str(tokens)]
    if token:
        cmd.append(f"--token={token}")  # a token may start with "-"
    with pinned(LOAD_CPU):
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=SECONDS + 90, check=True)
    result = json.loads(out.stdout)
    ttfl = result.pop("ttfl_ms")
    result["ttfl_p50_ms"] = percentile(ttfl, 50)
    result["ttfl_p99_ms"] = percentile(ttfl, 99)
    return result


def alternating(names, rep: int) -> list[str]:
    """The ways in the order repetition `rep` runs them: as given, then reversed, by turns."""
    return list(names) if rep % 2 == 0 else list(reversed(names))


def fake_yields(fake, idle: bool) -> None:
    """Put every thread of the fake Ollama at SCHED_IDLE (or back to the normal policy).

    The fake shares the load core with the client. At full speed it writes an answer's 200 lines in
    one burst of CPU, and a client woken by the proxy's first write then waits for the scheduler to
    take the core off the fake: that wait, not the proxy, is most of the full-speed first line, and
    it moves by milliseconds from one run to the next. At SCHED_IDLE the fake runs only when the
    client has nothing to do, so the client reads a line the moment it arrives. Threads the fake
    starts later inherit the policy of its accepting thread.
    """
    import os

    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    for task in Path(f"/proc/{fake.proc.pid}/task").iterdir():
        try:
            os.sched_setscheduler(int(task.name), policy, os.sched_param(0))
        except ProcessLookupError:  # a handler thread that has just ended
            pass


def run_stream_floor(fake, targets: dict[str, tuple[str, str | None]]) -> dict[str, Any]:
    """One stream's first line where nothing but the way under test can delay it (FLOOR_CASES).

    The full-speed one-stream case measures the client's wait behind the fake's burst as much as
    the proxy; these two measure the first line without it, each way in turn, order alternating:
    a single user at 100 tokens/s (the fake sleeps between tokens, so the load core is free), and
    full speed with the fake yielding the core (fake_yields). The bare stack's figure here is the
    streamed first line's floor: eventlet.wsgi, Flask and the upstream connection layer with nothing of the dashboard's.
    """
    result: dict[str, Any] = {}
    for label, tokens, interval, idle in FLOOR_CASES:
        fake.set_behaviour(tokens=tokens, token_interval_s=interval)
        fake_yields(fake, idle)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        try:
            for rep in range(REPETITIONS):
                for name in alternating(targets, rep):
                    url, token = targets[name]
                    runs[name].append(run_load(url, 1, token, tokens))
        finally:
            fake_yields(fake, False)
        row: dict[str, Any] = {}
        for name, values in runs.items():
            row[name] = {"ttfl_p50_ms": Spread.of(v["ttfl_p50_ms"] for v in values).to_json(),
                         "lines_per_s": Spread.of(v["lines_per_s"] for v in values).to_json(),
                         "errors": sum(v["error_count"] for v in values)}
            if name != "direct":
                row[name]["added_p50_ms"] = Spread.of(v["ttfl_p50_ms"] - d["ttfl_p50_ms"]
                                                      for v, d in zip(values, runs["direct"])).to_json()
        result[label] = row
        log(f"proxy stream floor, {label}: " + ", ".join(
            f"{n} +{r['added_p50_ms']['median']:.2f} ms" for n, r in row.items() if n != "direct"))
    return result


def run_tags(fake, server, targets: dict[str, tuple[str, str | None]], pids: dict[str, int]) -> dict[str, Any]:
    """Small proxied requests: GET /api/tags through each way, and the dashboard's own /health.

    `pids`: the processes whose CPU time a request is counted (the dashboard's ways, the bare stack).
    """
    from bench.rest import run_wrk

    ways = {name: (url + "/api/tags", {"Authorization": f"Bearer {token}"} if token else {})
            for name, (url, token) in targets.items()}
    ways["health"] = (server.url + "/health", {})
    pids = {**pids, "health": server.proc.pid}
    relayed = [name for name in ways if name not in ("direct", "health")]
    for url, headers in ways.values():  # warm up
        run_wrk(url, headers, duration_s=1, connections=TAGS_CONNECTIONS)
    reps: list[dict[str, Any]] = []
    for rep in range(REPETITIONS):
        order = alternating(ways, rep)
        result: dict[str, Any] = {}
        for name in order:
            cpu_before = cpu_seconds(pids[name]) if name in pids else 0.0
            before = fake.count("GET", "/api/tags")
            result[name] = run_wrk(*ways[name], duration_s=TAGS_SECONDS, connections=TAGS_CONNECTIONS)
            result[name]["upstream_requests"] = fake.count("GET", "/api/tags") - before
            if name in pids:
                result[name]["cpu_us_per_request"] = ((cpu_seconds(pids[name]) - cpu_before) * 1e6
                                                      / max(result[name]["requests"], 1))
        for name in relayed:
            result[name]["ratio"] = result[name]["rps"] / result["direct"]["rps"]
            result[name]["health_ratio"] = result[name]["rps"] / result["health"]["rps"]
        reps.append(result)
        log(f"proxy tags rep {rep + 1}: " + ", ".join(f"{n} {r['rps']:.0f} req/s" for n, r in result.items())
            + "; " + ", ".join(f"{n}/health {result[n]['health_ratio']:.2f}" for n in relayed if n != "nginx"))
    summary: dict[str, Any] = {"connections": TAGS_CONNECTIONS, "seconds": TAGS_SECONDS,
                               "target_health_ratio": TARGET_TAGS_HEALTH_RATIO, "reps": reps,
                               "floor": run_floor(ways), "client": run_client(fake.url)}
    for name in ways:
        row = {metric: Spread.of(r[name][metric] for r in reps).to_json() for metric in ("rps", "p50_ms", "p99_ms")}
        row["non_2xx"] = sum(r[name]["non_2xx"] for r in reps)
        row["requests"] = sum(r[name]["requests"] for r in reps)
        row["upstream_requests"] = sum(r[name]["upstream_requests"] for r in reps)
        if name in pids:
            row["cpu_us_per_request"] = Spread.of(r[name]["cpu_us_per_request"] for r in reps).to_json()
        if name in relayed:
            row["ratio"] = Spread.of(r[name]["ratio"] for r in reps).to_json()
            row["health_ratio"] = Spread.of(r[name]["health_ratio"] for r in reps).to_json()
        summary[name] = row
    return summary


CLIENT_REQUESTS = 2000
CLIENT_SCRIPT = APP_START.replace("{", "{{").replace("}", "}}") + """
import time
from ollama_client.client import OllamaClient, iter_body
client = OllamaClient({url!r})
def one():
    response = client.open_raw("GET", "/api/tags", headers={{"Accept-Encoding": "identity"}})
    with client.transport_errors():
        for _ in iter_body(response):
            pass
    response.close()
for _ in range(100):
    one()
started = time.process_time()
for _ in range({n}):
    one()
print((time.process_time() - started) / {n} * 1e6)
"""


def run_client(url: str) -> dict[str, Any]:
    """The client half of a proxied request alone: CPU of one `GET /api/tags` sent through the
    server's own OllamaClient (ollama_client/transport.py, httptools), in a process started as app.py is, on the
    server's core, one request at a time, the body read to its end.

    A proxied request is two HTTP exchanges in Python, the one it serves and the one it makes;
    `/health` costs the first alone. If the second costs about as much, proxied ÷ `/health` req/s
    cannot reach much above 0.5 whatever the proxy's own work.
    """
    values = []
    for _ in range(REPETITIONS):
        with pinned(SERVER_CPU):
            out = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT.format(url=url, n=CLIENT_REQUESTS)],
                                 capture_output=True, text=True, timeout=120, check=True).stdout
        values.append(float(out.split()[-1]))
    return {"requests": CLIENT_REQUESTS, "cpu_us_per_request": Spread.of(values).to_json()}


def run_floor(ways: dict[str, tuple[str, dict[str, str]]]) -> dict[str, Any]:
    """One request at a time (wrk -c1): what a round trip through this server costs at all.

    `/health` minus direct `GET /api/tags` is the latency any request served by this Python stack
    (eventlet.wsgi, Flask, the hooks) adds with no upstream at all: the floor under the proxy's
    added first line, which nginx's C does not pay. Proxied minus direct is the same small request
    through the proxy; bare minus direct, through the bare stack (bench/floor_proxy.py).
    """
    from bench.rest import run_wrk

    p50: dict[str, list[float]] = {name: [] for name in ("direct", "bare", "proxy", "health")}
    for rep in range(REPETITIONS):
        for name in alternating(p50, rep):
            p50[name].append(run_wrk(*ways[name], duration_s=TAGS_SECONDS, connections=1)["p50_ms"])
    floor = {f"{name}_p50_ms": Spread.of(values).to_json() for name, values in p50.items()}
    floor["health_added_ms"] = Spread.of(h - d for h, d in zip(p50["health"], p50["direct"])).to_json()
    floor["proxy_added_ms"] = Spread.of(x - d for x, d in zip(p50["proxy"], p50["direct"])).to_json()
    floor["bare_added_ms"] = Spread.of(x - d for x, d in zip(p50["bare"], p50["direct"])).to_json()
    return floor


def run(fakes: Fakes, workdir: Path) -> dict[str, Any]:
    with pinned(LOAD_CPU):
        fake = FakeOllama().start()
    servers = {}
    nginx = bare = None
    try:
        fake.set_behaviour(tokens=TOKENS, token_interval_s=0.0)
        servers["proxy"] = start_dashboard(workdir, None, ollama_url=fake.url)
        nginx = Nginx(workdir, fake.port)
        bare = BareProxy(fake.url)
        targets = {"direct": (fake.url, None), "nginx": (nginx.url, None), "bare": (bare.url, None)}
        for name, server in servers.items():
            targets[name] = (server.url + "/ollama", server.login())
        # Whose CPU time a request is counted: the dashboard's, and the bare stack's beside it.
        pids = {"bare": bare.proc.pid, **{name: server.proc.pid for name, server in servers.items()}}
        for url, token in targets.values():  # warm up: connections, imports, caches
            run_load(url, 1, token)
        reps: dict[str, list[dict[str, Any]]] = {case[0]: [] for case in CASES}
        upstream = {name: [0, 0] for name in targets if name != "direct"}   # [client requests, upstream requests]
        samplers = {name: ProcSampler(s.proc.pid) for name, s in servers.items()}
        for rep in range(REPETITIONS):
            for case, streams, tokens, interval in CASES:
                fake.set_behaviour(tokens=tokens, token_interval_s=interval)
                result: dict[str, Any] = {}
                order = alternating(targets, rep)
                for name in order:
                    before = fake.count("POST", "/api/generate")
                    url, token = targets[name]
                    pid = pids.get(name)
                    cpu_before = cpu_seconds(pid) if pid else 0.0
                    result[name] = run_load(url, streams, token, tokens)
                    if pid:
                        # The proxy's own CPU time per proxied request: immune to waiting.
                        result[name]["cpu_us_per_request"] = ((cpu_seconds(pid) - cpu_before) * 1e6
                                                              / max(result[name]["requests"], 1))
                    if name in upstream:
                        upstream[name][0] += result[name]["requests"]
                        upstream[name][1] += fake.count("POST", "/api/generate") - before
                for name in targets:
                    if name != "direct":
                        result[name]["ratio"] = result[name]["lines_per_s"] / result["direct"]["lines_per_s"]
                        result[name]["added_p50_ms"] = result[name]["ttfl_p50_ms"] - result["direct"]["ttfl_p50_ms"]
                        result[name]["added_p99_ms"] = result[name]["ttfl_p99_ms"] - result["direct"]["ttfl_p99_ms"]
                reps[case].append(result)
                log(f"proxy rep {rep + 1}, {case} stream(s): " + ", ".join(
                    f"{n} {r['lines_per_s']:.0f} lines/s ttfl p50 {r['ttfl_p50_ms']:.2f} ms" for n, r in result.items()))
        procs = {name: sampler.result() for name, sampler in samplers.items()}
        stream_floor = run_stream_floor(fake, targets)
        fake.set_behaviour(tokens=TOKENS, token_interval_s=0.0)
        tags = run_tags(fake, servers["proxy"], targets, pids)
    finally:
        for server in servers.values():
            server.stop()
        if nginx is not None:
            nginx.stop()
        if bare is not None:
            bare.stop()
        fake.stop()
    summary: dict[str, Any] = {"seconds": SECONDS, "tokens": TOKENS, "paced_tokens": PACED_TOKENS,
                               "paced_interval_s": PACED_INTERVAL_S, "cases": [c[0] for c in CASES],
                               "target_added_p50_ms": TARGET_ADDED_P50_MS, "target_ratio": TARGET_RATIO,
                               "upstream_requests": upstream, "server": procs, "by_streams": {},
                               "tags": tags, "stream_floor": stream_floor}
    for case, results in reps.items():
        row: dict[str, Any] = {"reps": results}
        for name in targets:
            row[name] = {metric: Spread.of(r[name][metric] for r in results).to_json()
                         for metric in ("lines_per_s", "ttfl_p50_ms", "ttfl_p99_ms")}
            row[name]["errors"] = sum(r[name]["error_count"] for r in results)
            row[name]["error_samples"] = sorted({e for r in results for e in r[name]["errors"]})[:5]
            if name in pids:
                row[name]["cpu_us_per_request"] = Spread.of(r[name]["cpu_us_per_request"] for r in results).to_json()
            if name != "direct":
                for metric in ("ratio", "added_p50_ms", "added_p99_ms"):
                    row[name][metric] = Spread.of(r[name][metric] for r in results).to_json()
        summary["by_streams"][case] = row
    return summary
