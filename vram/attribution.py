"""Which Ollama model each GPU process serves, from its command line; never an extra NVML call.

An Ollama model runner names its model's blob on its command line:

    current:  .../lib/ollama/llama-server --model <models>/blobs/sha256-<hex> --ctx-size ...
    older:    ollama runner [--ollama-engine] --model <models>/blobs/sha256-<hex> ...
    MLX:      ollama runner --mlx-engine --model <model name>

A runner started without --model is a discovery probe and serves nothing. `/proc/<pid>/cmdline`
is read once per process (cached by PID until the PID leaves NVML's list); a process in another
PID namespace, one that exited, or one we may not read gives None, never an error.

>>> runner_model(["/usr/lib/ollama/llama-server", "--model", "/m/blobs/sha256-" + "a" * 64, "--port", "1"])
('blob', 'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa')
>>> runner_model(["ollama", "runner", "--ollama-engine", "--port", "40001"]) is None  # a probe
True
>>> runner_model(["python3", "train.py", "--model", "/m/blobs/sha256-" + "a" * 64]) is None
True
"""
from __future__ import annotations

import dataclasses
import os
import re
import threading
from typing import Callable, Iterable, Sequence

from vram.snapshot import VramSnapshot

_BLOB = re.compile(r"sha256[-:]([0-9a-f]{64})")
_MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/\-]{0,400}")
MAX_CMDLINE_BYTES = 64 * 1024

RunnerModel = tuple[str, str]  # ("blob", "sha256:<hex>") or ("name", "<model name>")


def runner_model(argv: Sequence[str]) -> RunnerModel | None:
    """Return what an Ollama runner's argv says it serves, or None when it is not one."""
    if not argv:
        return None
    program = os.path.basename(argv[0])
    if program in ("ollama", "ollama.exe"):
        if len(argv) < 2 or argv[1] != "runner":
            return None  # `ollama serve`, `ollama run` ...: the server or a CLI, not a runner
    elif program not in ("llama-server", "llama-server.exe"):
        return None
    value = _option(argv, "--model")
    if value is None:
        return None  # a discovery probe
    match = _BLOB.fullmatch(os.path.basename(value))
    if match:
        return "blob", "sha256:" + match.group(1)
    if not value.startswith(("/", ".", "~")) and _MODEL_NAME.fullmatch(value) and ".." not in value:
        return "name", value  # not a path: a runner (MLX) that names the model itself
    return None


def _option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv[1:], start=1):
        if arg == name:
            return argv[i + 1] if i + 1 < len(argv) else None
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return None


def read_cmdline(pid: int, proc_root: str = "/proc") -> list[str] | None:
    """Return /proc/<pid>/cmdline as argv, or None (gone, other namespace, no permission, kernel thread)."""
    try:
        with open(f"{proc_root}/{pid}/cmdline", "rb") as f:
            raw = f.read(MAX_CMDLINE_BYTES)
    except OSError:
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode("utf-8", errors="replace").split("\0")


class Attributor:
    """Map a snapshot to one whose processes carry `model`: call it with the snapshot.

    `name_for(blob_digest)` answers from an in-memory index (never Ollama); `on_unknown`, if
    given, is told about a runner whose blob the index does not know yet (so it can refresh in
    the background). `read_argv` is injectable for tests.
    """

    def __init__(self, name_for: Callable[[str], str | None],
                 read_argv: Callable[[int], Sequence[str] | None] = read_cmdline,
                 on_unknown: Callable[[str], None] | None = None):
        self._name_for = name_for
        self._read_argv = read_argv
        self._on_unknown = on_unknown
        self._lock = threading.Lock()
        self._runner_by_pid: dict[int, RunnerModel | None] = {}
        self._runners: dict[int, RunnerModel] = {}   # the runners among them
        self._last_pids: set[int] = set()

    def runner_of(self, pid: int) -> RunnerModel | None:
        """What the process's command line says it serves (read once, then cached)."""
        with self._lock:
            if pid in self._runner_by_pid:
                return self._runner_by_pid[pid]
        argv = self._read_argv(pid)
        found = runner_model(argv) if argv else None
        with self._lock:
            self._runner_by_pid[pid] = found
        return found

    def _model(self, runner: RunnerModel) -> str | None:
        kind, value = runner
        if kind == "name":
            return value
        name = self._name_for(value)
        if name is None and self._on_unknown is not None:
            self._on_unknown(value)
        return name

    def model_of(self, pid: int) -> str | None:
        """The model the process serves, or None."""
        runner = self.runner_of(pid)
        return self._model(runner) if runner is not None else None

    def forget_except(self, pids: Iterable[int]) -> None:
        """Drop cached command lines of PIDs no longer on a GPU (a PID may be reused later)."""
        keep = pids if isinstance(pids, (set, frozenset)) else set(pids)
        with self._lock:
            gone = [p for p in self._runner_by_pid if p not in keep]
            for pid in gone:
                del self._runner_by_pid[pid]

    def __call__(self, snapshot: VramSnapshot) -> VramSnapshot:
        # Per tick this is one set of PIDs compared with the last one: /proc is read for new PIDs
        # only, and only runners are looked up (a poll with hundreds of processes stays cheap).
        pids = {p.pid for p in snapshot.processes}
        if pids != self._last_pids:
            self.forget_except(pids)
            for pid in pids:
                self.runner_of(pid)
            with self._lock:
                self._runners = {pid: r for pid, r in self._runner_by_pid.items() if r is not None}
            self._last_pids = pids
        runners = self._runners
        if not runners:
            return snapshot
        models = {pid: self._model(r) for pid, r in runners.items()}
        processes = tuple(
            process if models.get(process.pid, process.model) == process.model
            else dataclasses.replace(process, model=models[process.pid])
            for process in snapshot.processes)
        return dataclasses.replace(snapshot, processes=processes)
