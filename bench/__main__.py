"""Run every benchmark and rewrite BENCHMARKS.md: `.venv/bin/python -m bench` (or bench/run.sh).

    python -m bench                      everything (~10 minutes), then BENCHMARKS.md
    python -m bench --only rest,fanout   some sections; BENCHMARKS.md is left alone
    python -m bench --only attribution   poller tick CPU with VRAM attribution ÷ without (~1 minute)
    python -m bench --only metrics       /metrics ÷ /health req/s, 8 GPUs × 50 processes (~40 s)
    python -m bench --only fleet         fan-out through Redis, 2 processes × 500 clients (~1.5 minutes)
    python -m bench --only idle          idle CPU and RSS, alert rules firing (~1 minute)
    python -m bench --only proxy --merge rerun some sections into bench/out/results.json, then BENCHMARKS.md
    python -m bench --report             re-render BENCHMARKS.md from bench/out/results.json

All load stays on 127.0.0.1, every step is bounded in count and time, and every process the run
starts is stopped before it ends. Figures go to bench/out/results.json as well.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback

from bench import common
from bench.common import OUT, REPO, Fakes, log

SECTIONS = ("rest", "metrics", "proxy", "fanout", "fleet", "memory", "idle", "isolation", "progress",
            "attribution")
RESULTS = OUT / "results.json"
COMMAND = "bench/run.sh"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    parser.add_argument("--merge", action="store_true",
                        help="with --only: replace those sections in bench/out/results.json and re-render "
                             "BENCHMARKS.md, which names the rerun sections and when they ran")
    parser.add_argument("--report", action="store_true", help="only re-render BENCHMARKS.md")
    args = parser.parse_args(argv)
    if args.merge and not args.only:
        parser.error("--merge replaces the sections named by --only")
    if args.merge and not RESULTS.exists():
        parser.error(f"--merge needs a full run's {RESULTS.relative_to(REPO)} to merge into")
    from bench import report

    if args.report:
        report.write(json.loads(RESULTS.read_text()), REPO / "BENCHMARKS.md")
        return 0
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    unknown = only - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    common.ensure_tools()
    workdir = common.tempdir()
    started = time.time()
    results: dict = {"command": COMMAND, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                     "machine": common.machine(), "repetitions": common.REPETITIONS,
                     "server_cpu": common.SERVER_CPU, "load_cpu": common.LOAD_CPU, "errors": {}}
    fakes = Fakes(workdir)
    log(f"machine: {results['machine']['cpus']} CPUs ({results['machine']['cpu_model']}), "
        f"Python {results['machine']['python']}; server on CPU {common.SERVER_CPU}, load on CPU {common.LOAD_CPU}")

    def section(name: str, fn, *args, **kwargs) -> None:
        if name not in only:
            return
        log(f"== {name} ==")
        t0 = time.monotonic()
        try:
            results[name] = fn(*args, **kwargs)
        except Exception as exc:  # one broken section must not lose the others' figures
            log(f"{name} failed: {exc!r}")
            results["errors"][name] = traceback.format_exc()
        results.setdefault("durations_s", {})[name] = time.monotonic() - t0

    from bench import fleet, idle, isolation, memory, progress, proxy, rest, scrape

    section("rest", rest.run, fakes, workdir)
    section("metrics", scrape.run, fakes, workdir)
    section("proxy", proxy.run, fakes, workdir)
    section("fanout", run_fanout, fakes, workdir)
    section("fleet", fleet.run, fakes, workdir)
    section("memory", memory.run, fakes, workdir)
    idle_run = None
    if "idle" in only:
        # The idle server's window overlaps the two light sections below; its own CPU time is
        # what is measured, and it is pinned like every server under test.
        try:
            idle_run = idle.IdleRun(fakes, workdir)
        except Exception:
            results["errors"]["idle"] = traceback.format_exc()
    section("isolation", isolation.run, fakes, workdir, idle=idle_run)
    section("progress", progress.run, fakes, workdir, idle=idle_run)
    if idle_run is not None:
        section("idle", idle_run.finish)
    from bench import attribution  # the measuring itself runs in a pinned subprocess

    section("attribution", attribution.run, fakes, workdir)
    results["seconds"] = time.time() - started
    results["machine"]["loadavg_end"] = os.getloadavg()
    OUT.mkdir(parents=True, exist_ok=True)
    full = only == set(SECTIONS)
    target = RESULTS if full or args.merge else OUT / "results-partial.json"
    written = merge(json.loads(RESULTS.read_text()), results, only) if args.merge and not full else results
    target.write_text(json.dumps(written, indent=1, default=str))
    log(f"figures in {target.relative_to(REPO)} ({results['seconds']:.0f} s)")
    if full or args.merge:
        report.write(written, REPO / "BENCHMARKS.md")
        log("BENCHMARKS.md rewritten")
    shutil.rmtree(workdir, ignore_errors=True)
    for name, error in results["errors"].items():
        print(f"--- {name} failed ---\n{error}", file=sys.stderr)
    return 1 if results["errors"] else 0


def merge(whole: dict, rerun: dict, sections: set[str]) -> dict:
    """Return `whole` (a full run's figures) with `sections` replaced by those of `rerun`.

    A section's figures, its error and its duration are replaced together; `reruns` records when
    each replaced section ran, so that the report says which figures come from a later run.
    """
    merged = dict(whole, errors=dict(whole.get("errors", {})), durations_s=dict(whole.get("durations_s", {})),
                  reruns=dict(whole.get("reruns", {})))
    for name in sections:
        merged.pop(name, None)
        merged["errors"].pop(name, None)
        if name in rerun:
            merged[name] = rerun[name]
        if name in rerun.get("errors", {}):
            merged["errors"][name] = rerun["errors"][name]
        if name in rerun.get("durations_s", {}):
            merged["durations_s"][name] = rerun["durations_s"][name]
        merged["reruns"][name] = rerun["started"]
    return merged


def run_fanout(fakes, workdir):
    """The encode-once hub at 100/500/1,000 clients; then, for scale, the stock path and browsers."""
    from bench import fanout
    from bench.scenarios import SCENARIOS

    return {
        "main": fanout.run(fakes, workdir),
        # python-socketio's own per-recipient broadcast (what the hub did before), same run.
        "stock": fanout.run(fakes, workdir, levels=(1000,), scenarios=SCENARIOS[:1], stock_broadcast=True,
                            label=" (stock python-socketio)"),
        # Browsers offer permessage-deflate: one compressed frame per broadcast serves them all.
        "deflate": fanout.run(fakes, workdir, levels=(500,), scenarios=SCENARIOS[1:], deflate=True,
                              label=" (permessage-deflate clients)"),
    }


if __name__ == "__main__":
    sys.exit(main())
