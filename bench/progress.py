"""6. Progress relay: model_download_progress events out per download against Ollama's pull lines in.

The fake Ollama streams a pull (three layers) at a fixed line rate; a python-socketio client
(websocket) records every event. The final event's lateness is its receipt time minus the moment
the fake finished writing the pull's `success` line (both on this machine's clock).
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import requests
import socketio

from bench.common import LOAD_CPU, REPETITIONS, Fakes, Spread, log, pinned, start_dashboard, wait_for
from tests.fakes.fake_ollama import FakeOllama

LINES_PER_LAYER = 200
LINE_INTERVAL_S = 0.005        # ~200 lines/s from Ollama: a fast pull on a fast link
LAYERS = [2_000_000_000, 12_000, 500]
MAX_EVENTS_PER_S = 4.0         # the contract: at most ~4 progress events per second per model
TARGET_FINAL_LATE_MS = 250.0   # the final event is never held back by the throttle


def lines_in(layers=LAYERS, lines_per_layer=LINES_PER_LAYER) -> int:
    """Lines the fake sends for one pull: manifest, each layer's steps, verify, write, success."""
    return 1 + len(layers) * (lines_per_layer + 1) + 2 + 1


def run(fakes: Fakes, workdir: Path, idle=None) -> dict[str, Any]:
    with pinned(LOAD_CPU):
        fake = FakeOllama().start()
    server = None
    events: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    lock = threading.Lock()
    sio = socketio.Client(reconnection=False)

    @sio.on("model_download_progress")
    def on_progress(data):
        with lock:
            events[data.get("model_name", "?")].append((time.time(), data))

    reps = []
    try:
        fake.set_behaviour(pull={"layers": LAYERS, "lines_per_layer": LINES_PER_LAYER,
                                 "line_interval_s": LINE_INTERVAL_S})
        server = start_dashboard(workdir, None, ollama_url=fake.url)
        token = server.login()
        sio.connect(server.url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
        for rep in range(REPETITIONS):
            name = f"bench-pull-{rep}:latest"
            response = requests.post(server.url + "/api/models/ollama/download", json={"model_name": name},
                                     headers=server.headers(), timeout=10)
            response.raise_for_status()

            def finished() -> bool:
                with lock:
                    got = events.get(name, [])
                    return bool(got) and got[-1][1].get("status") != "downloading"

            wait_for(finished, 60, 0.02, f"the final event of {name}")
            if idle is not None:
                idle.sample()
            pulls = [r for r in fake.requests("/api/pull", "POST") if name.split(":")[0] in r["body"]]
            record = pulls[-1]
            with lock:
                got = list(events[name])
            reps.append(summarise(name, record, got))
            r = reps[-1]
            log(f"progress {name}: {r['lines_in_per_s']:.0f} lines/s in, {r['events_per_s']:.2f} events/s out "
                f"(max {r['max_events_in_1s']} in any 1 s), final event {r['final_late_ms']:.1f} ms late")
    finally:
        if sio.connected:
            sio.disconnect()
        if server is not None:
            server.stop()
        fake.stop()
    summary: dict[str, Any] = {"lines_per_layer": LINES_PER_LAYER, "line_interval_s": LINE_INTERVAL_S,
                               "layers": LAYERS, "max_events_per_s": MAX_EVENTS_PER_S,
                               "target_final_late_ms": TARGET_FINAL_LATE_MS, "reps": reps}
    for metric in ("lines_in_per_s", "events_per_s", "final_late_ms", "events", "max_events_in_1s"):
        summary[metric] = Spread.of(r[metric] for r in reps).to_json()
    summary["all_monotonic"] = all(r["monotonic"] for r in reps)
    summary["all_complete"] = all(r["final_status"] == "complete" and r["final_percent"] == 100 for r in reps)
    summary["verdict"] = (summary["all_monotonic"] and summary["all_complete"]
                          and summary["max_events_in_1s"]["max"] <= MAX_EVENTS_PER_S + 1
                          and summary["final_late_ms"]["median"] <= TARGET_FINAL_LATE_MS)
    return summary


def summarise(name: str, record: dict[str, Any], got: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    started, finished = record["started_at"], record["finished_at"]
    stamps = [t for t, _ in got]
    percents = [e.get("percent", 0) for _, e in got]
    # Events in any one-second window (a sliding window over the receipt times).
    most = 0
    j = 0
    for i, t in enumerate(stamps):
        while stamps[j] < t - 1.0:
            j += 1
        most = max(most, i - j + 1)
    final_t, final = got[-1]
    in_seconds = max(finished - started, 1e-9)
    return {
        "model": name, "lines_in": lines_in(), "seconds_in": in_seconds,
        "lines_in_per_s": lines_in() / in_seconds, "events": len(got),
        "events_per_s": len(got) / max(final_t - started, 1e-9), "max_events_in_1s": most,
        "final_late_ms": (final_t - finished) * 1000, "final_status": final.get("status"),
        "final_percent": final.get("percent"),
        "monotonic": all(b >= a for a, b in zip(percents, percents[1:])),
    }
