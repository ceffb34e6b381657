"""NvmlReader over the real pynvml and a fake libnvidia-ml.so.1 (tests/fakes/fake_nvml)."""
from __future__ import annotations

import ctypes.util
import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import eventlet
import pytest

import concurrency
from tests.fakes.fake_nvml import (
    MIB, NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_GPU_IS_LOST, NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    NVML_ERROR_NO_PERMISSION, NVML_ERROR_UNKNOWN, FakeProcess, two_gpus,
)
from vram.nvml import NO_BINDING, NvmlReader
from vram.snapshot import GpuSnapshot, ProcessSnapshot

REPO = Path(__file__).resolve().parents[1]
OsThread = eventlet.patcher.original("threading").Thread   # a real thread even after monkey_patch()


@pytest.fixture
def reader(fake_nvml):
    reader = NvmlReader()
    yield reader
    reader.shutdown()


def by_pid(snapshot) -> dict[tuple[int, int], ProcessSnapshot]:
    return {(p.gpu_index, p.pid): p for p in snapshot.processes}


# -- a healthy machine --------------------------------------------------------------------------

EXPECTED_GPUS = [
    GpuSnapshot(index=0, name="NVIDIA GeForce RTX 4090", uuid="GPU-5a3c1e2f-0d4b-4c6e-9f70-1a2b3c4d5e6f",
                total_mb=24564, used_mb=6144, free_mb=18419,  # 6144 MiB + 1 byte: floors both ways
                utilization=37, memory_utilization=12, temperature_c=51, power_w=123.5),
    GpuSnapshot(index=1, name="NVIDIA RTX A6000", uuid="GPU-9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                total_mb=49140, used_mb=1024, free_mb=48116,
                utilization=5, memory_utilization=1, temperature_c=38, power_w=22.0),
]


@pytest.mark.parametrize("expected", EXPECTED_GPUS, ids=lambda gpu: f"gpu{gpu.index}")
def test_two_gpus_every_field(reader, expected):
    snapshot = reader.read_snapshot()
    assert snapshot.error is None
    assert snapshot.gpus[expected.index] == expected


def test_two_gpus_processes_and_driver(reader):
    before = time.time()
    snapshot = reader.read_snapshot()
    assert snapshot.driver_version == "550.54.15"
    assert before <= snapshot.timestamp <= time.time()
    assert sorted(snapshot.processes, key=lambda p: p.pid) == [
        ProcessSnapshot(pid=1300, name="/usr/lib/xorg/Xorg", used_mb=256, gpu_index=0),
        ProcessSnapshot(pid=4242, name="/usr/local/bin/ollama", used_mb=5120, gpu_index=0),
        ProcessSnapshot(pid=5151, name="python3", used_mb=1000, gpu_index=1),
    ]
    body = snapshot.to_dict()
    assert body["gpu"] == body["gpus"][0] and "error" not in body
    json.dumps(body)  # the poller serialises it as is


# -- what a GPU does not support ----------------------------------------------------------------

@pytest.mark.parametrize("index, fields", [
    (0, ("utilization", "memory_utilization", "temperature_c", "power_w")),
    (1, ("total_mb", "used_mb", "free_mb")),
])
def test_unsupported_fields_are_none(fake_nvml, reader, index, fields):
    fake_nvml.scenario_unsupported_fields()
    gpu = reader.read_snapshot().gpus[index]
    assert gpu.error is None
    for name in fields:
        assert getattr(gpu, name) is None, name
    supported = {f.name for f in dataclasses.fields(GpuSnapshot)} - set(fields) - {"error"}
    expected = EXPECTED_GPUS[index]
    assert {name: getattr(gpu, name) for name in supported} == {name: getattr(expected, name) for name in supported}


@pytest.mark.parametrize("unsupported", [("name", "uuid"), ("processes",)])
def test_more_unsupported_fields(fake_nvml, reader, unsupported):
    fake_nvml.apply(two_gpus().replace_gpu(0, unsupported=unsupported))
    snapshot = reader.read_snapshot()
    gpu = snapshot.gpus[0]
    assert gpu.error is None and gpu.total_mb == 24564
    if "name" in unsupported:
        assert gpu.name is None and gpu.uuid is None
    else:
        assert [p.gpu_index for p in snapshot.processes] == [1]


# -- processes ----------------------------------------------------------------------------------

def test_process_memory_not_available_is_none(fake_nvml, reader):
    fake_nvml.scenario_process_memory_none()
    assert by_pid(reader.read_snapshot()) == {
        (0, 4242): ProcessSnapshot(pid=4242, name="/usr/local/bin/ollama", used_mb=None, gpu_index=0),
        # in both the compute and the graphics list, still one process
        (1, 5151): ProcessSnapshot(pid=5151, name="python3", used_mb=None, gpu_index=1),
    }


@pytest.mark.parametrize("entries, expected_mb", [
    ([("compute", 100 * MIB)], 100),
    ([("compute", 100 * MIB), ("graphics", 100 * MIB)], 100),
    ([("compute", 100 * MIB), ("graphics", 28 * MIB)], 100),
    ([("compute", 100 * MIB), ("graphics", None)], 100),
    ([("compute", None), ("graphics", None)], None),
    ([("graphics", MIB - 1)], 0),
], ids=["compute", "both-same", "both-differ", "one-unknown", "both-unknown", "floor"])
def test_compute_and_graphics_merge_per_pid(fake_nvml, reader, entries, expected_mb):
    processes = tuple(FakeProcess(pid=77, name="app", gpu=0, used_bytes=used, kind=kind) for kind, used in entries)
    fake_nvml.apply(dataclasses.replace(two_gpus(), processes=processes))
    assert reader.read_snapshot().processes == (
        ProcessSnapshot(pid=77, name="app", used_mb=expected_mb, gpu_index=0),)


def test_same_pid_on_two_gpus_is_one_entry_per_gpu(fake_nvml, reader):
    processes = (FakeProcess(pid=9, name="trainer", gpu=0, used_bytes=10 * MIB),
                 FakeProcess(pid=9, name="trainer", gpu=1, used_bytes=20 * MIB, kind="both"))
    fake_nvml.apply(dataclasses.replace(two_gpus(), processes=processes))
    assert {k: p.used_mb for k, p in by_pid(reader.read_snapshot()).items()} == {(0, 9): 10, (1, 9): 20}


def test_process_names_are_cached_per_pid_and_evicted(fake_nvml, reader):
    base = two_gpus()
    fake_nvml.apply(dataclasses.replace(base, processes=base.processes + (
        FakeProcess(pid=6000, name=None, gpu=1, used_bytes=MIB),)))   # NVML has no name for it
    names = {p.pid: p.name for p in reader.read_snapshot().processes}
    assert names == {4242: "/usr/local/bin/ollama", 1300: "/usr/lib/xorg/Xorg", 5151: "python3", 6000: None}
    assert fake_nvml.call_count("nvmlSystemGetProcessName") == 4

    fake_nvml.reset_counts()
    reader.read_snapshot()
    assert fake_nvml.call_count("nvmlSystemGetProcessName") == 0   # all cached

    fake_nvml.apply(base)   # pid 6000 exits
    reader.read_snapshot()
    fake_nvml.apply(dataclasses.replace(base, processes=(FakeProcess(pid=6000, name="reborn", gpu=1),)))
    fake_nvml.reset_counts()
    assert [p.name for p in reader.read_snapshot().processes] == ["reborn"]   # evicted, asked again
    assert fake_nvml.call_count("nvmlSystemGetProcessName") == 1


# -- a GPU that falls off the bus -----------------------------------------------------------------

@pytest.mark.parametrize("error, handle_too", [
    (NVML_ERROR_GPU_IS_LOST, True),
    (NVML_ERROR_GPU_IS_LOST, False),   # the handle still resolves, every query fails
    (NVML_ERROR_UNKNOWN, True),
])
def test_lost_gpu_is_one_entry_then_comes_back(fake_nvml, reader, error, handle_too):
    assert reader.read_snapshot().gpus == tuple(EXPECTED_GPUS)
    lost = dict(error=error, handle_error=error if handle_too else None)
    fake_nvml.apply(fake_nvml.scenario.replace_gpu(1, **lost))

    snapshot = reader.read_snapshot()
    assert snapshot.error is None
    assert snapshot.gpus == (EXPECTED_GPUS[0], GpuSnapshot(
        index=1, name="NVIDIA RTX A6000", uuid="GPU-9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", error="GPU is lost"))
    assert {p.gpu_index for p in snapshot.processes} == {0}
    assert snapshot.to_dict()["gpus"][1]["error"] == "GPU is lost"

    fake_nvml.scenario_gpu_back()
    assert reader.read_snapshot().gpus == tuple(EXPECTED_GPUS)


def test_gpu_lost_before_first_reading_has_no_name(fake_nvml, reader):
    fake_nvml.scenario_gpu_lost(0)
    gpus = reader.read_snapshot().gpus
    assert gpus[0] == GpuSnapshot(index=0, error="GPU is lost")
    assert gpus[1] == EXPECTED_GPUS[1]


# -- no driver, and recovery --------------------------------------------------------------------

@pytest.mark.parametrize("init_error, words", [
    (NVML_ERROR_DRIVER_NOT_LOADED, ["NVIDIA driver not loaded", "nvidia-smi"]),
    (NVML_ERROR_NO_PERMISSION, ["permission", "/dev/nvidia"]),
    (NVML_ERROR_LIB_RM_VERSION_MISMATCH, ["kernel driver", "reboot"]),
])
def test_nvml_unavailable_is_a_snapshot_with_an_actionable_error(fake_nvml, reader, init_error, words):
    fake_nvml.scenario_no_driver(init_error=init_error)
    snapshot = reader.read_snapshot()
    assert not snapshot.available
    assert snapshot.gpus == () and snapshot.processes == () and snapshot.driver_version is None
    for word in words:
        assert word in snapshot.error
    body = snapshot.to_dict()
    assert body["gpu"] is None and body["gpus"] == [] and body["error"] == snapshot.error


def test_driver_appears_and_the_same_reader_recovers(fake_nvml, reader):
    fake_nvml.scenario_no_driver()
    assert not reader.read_snapshot().available
    assert not reader.read_snapshot().available
    fake_nvml.scenario_driver_appears()
    assert reader.read_snapshot().gpus == tuple(EXPECTED_GPUS)
    assert fake_nvml.call_count("nvmlInitWithFlags") == 3   # retried on every reading until it worked
    reader.shutdown()
    reader.shutdown()
    assert fake_nvml.init_refcount == 0 and fake_nvml.call_count("nvmlShutdown") == 1


@pytest.mark.parametrize("break_nvml", ["driver_unloaded", "uninitialized"])
def test_failure_mid_session_reinitialises_on_the_next_reading(fake_nvml, reader, break_nvml):
    assert reader.read_snapshot().available
    if break_nvml == "driver_unloaded":
        fake_nvml.scenario_no_driver()
    else:
        fake_nvml.lib.fake_nvml_reset()   # NVML forgets our nvmlInit: every call says Uninitialized
    assert not reader.read_snapshot().available
    fake_nvml.scenario_driver_appears()
    fake_nvml.reset_counts()
    assert reader.read_snapshot().gpus == tuple(EXPECTED_GPUS)
    assert fake_nvml.call_count("nvmlInitWithFlags") == 1
    assert fake_nvml.init_refcount == 1   # the failed session was closed, not leaked


def test_state_changes_are_logged_once(fake_nvml, reader, caplog):
    caplog.set_level(logging.INFO, logger="vram.nvml")
    fake_nvml.scenario_no_driver()
    for _ in range(3):
        reader.read_snapshot()
    fake_nvml.scenario_driver_appears()
    for _ in range(3):
        reader.read_snapshot()
    fake_nvml.scenario_gpu_lost(1)
    for _ in range(3):
        reader.read_snapshot()
    fake_nvml.scenario_gpu_back()
    reader.read_snapshot()
    assert [(r.levelname, r.getMessage().split(":")[0]) for r in caplog.records] == [
        ("WARNING", "NVML unavailable"), ("INFO", "NVML available"),
        ("WARNING", "GPU 1"), ("INFO", "GPU 1 reports again")]


def test_missing_binding_is_a_snapshot_not_an_exception(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)   # import pynvml raises ImportError
    snapshot = NvmlReader().read_snapshot()
    assert snapshot.error == NO_BINDING


# -- older drivers ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["function_not_found", "not_supported", "version_mismatch"])
def test_memory_v2_missing_falls_back_to_v1_once_per_gpu(fake_nvml, reader, mode):
    # v1 counts driver-reserved memory as used; v2 does not: that tells which call answered.
    fake_nvml.apply(two_gpus().replace_gpu(0, reserved_bytes=512 * MIB))
    assert reader.read_snapshot().gpus[0].used_mb == 6144

    fresh = NvmlReader()
    try:
        fake_nvml.scenario_memory_v2_missing(mode)
        fake_nvml.reset_counts()
        for _ in range(3):
            gpu = fresh.read_snapshot().gpus[0]
            assert (gpu.total_mb, gpu.used_mb, gpu.free_mb) == (24564, 6144 + 512, 17907)
        assert fake_nvml.call_count("nvmlDeviceGetMemoryInfo_v2") == 2   # once per GPU, then remembered
        assert fake_nvml.call_count("nvmlDeviceGetMemoryInfo") == 6
    finally:
        fresh.shutdown()


def test_v2_memory_is_one_call_per_gpu(fake_nvml, reader):
    reader.read_snapshot()
    assert fake_nvml.call_count("nvmlDeviceGetMemoryInfo_v2") == 2
    assert fake_nvml.call_count("nvmlDeviceGetMemoryInfo") == 0


def test_process_lists_fall_back_to_v2_on_drivers_without_v3(fake_nvml, reader):
    fake_nvml.apply(dataclasses.replace(two_gpus(), missing_functions=(
        "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3")))
    for _ in range(2):
        assert {p.pid for p in reader.read_snapshot().processes} == {4242, 1300, 5151}
    assert fake_nvml.call_count("nvmlDeviceGetComputeRunningProcesses_v3") == 1   # then remembered
    assert fake_nvml.call_count("nvmlDeviceGetGraphicsRunningProcesses_v3") == 1


# -- a slow driver --------------------------------------------------------------------------------

def test_slow_call_blocks_the_os_thread(fake_nvml, reader):
    reader.read_snapshot()
    fake_nvml.scenario_slow_calls(200, functions=("nvmlDeviceGetCount_v2",))
    elapsed = []

    def read() -> None:
        start = time.monotonic()
        reader.read_snapshot()
        elapsed.append(time.monotonic() - start)

    thread = OsThread(target=read)
    thread.start()
    thread.join()
    assert elapsed[0] >= 0.19


def test_slow_read_in_run_in_thread_leaves_the_hub_running(fake_nvml, reader):
    reader.read_snapshot()
    fake_nvml.scenario_slow_calls(200, functions=("nvmlDeviceGetCount_v2",))
    ticks = []

    def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            eventlet.sleep(0.01)

    handle = eventlet.spawn(ticker)
    eventlet.sleep(0.02)
    try:
        # On the hub itself the C call stalls every green thread ...
        before = len(ticks)
        reader.read_snapshot()
        assert len(ticks) == before
        # ... through run_in_thread the hub keeps running them while C sleeps.
        before = len(ticks)
        start = time.monotonic()
        snapshot = concurrency.run_in_thread(reader.read_snapshot)
        assert time.monotonic() - start >= 0.19
        assert snapshot.gpus == tuple(EXPECTED_GPUS)
        assert len(ticks) - before >= 8
    finally:
        handle.kill()


def test_concurrent_readings_are_serialised(fake_nvml, reader):
    fake_nvml.scenario_slow_calls(50, functions=("nvmlDeviceGetCount_v2",))
    pool = [eventlet.spawn(concurrency.run_in_thread, reader.read_snapshot) for _ in range(3)]
    assert [p.wait().gpus for p in pool] == [tuple(EXPECTED_GPUS)] * 3
    assert fake_nvml.init_refcount == 1


# -- the benchmark machine ----------------------------------------------------------------------

def test_eight_gpus_fifty_processes_cost_per_poll(fake_nvml, reader):
    fake_nvml.scenario_eight_gpus_fifty_processes()
    snapshot = reader.read_snapshot()
    assert len(snapshot.gpus) == 8 and len(snapshot.processes) == 400
    assert all(p.used_mb == 1000 for p in snapshot.processes)
    fake_nvml.reset_counts()
    reader.read_snapshot()
    # count + per GPU: handle, memory, utilization, temperature, power, 2x compute, 2x graphics
    assert fake_nvml.call_count() == 1 + 8 * 9


# -- the real loader in a fresh process ---------------------------------------------------------

READ_TWICE = """
import eventlet
eventlet.monkey_patch()
import json, sys
import concurrency
from vram.nvml import NvmlReader
reader = NvmlReader()
for _ in range(int(sys.argv[1])):
    print(json.dumps(concurrency.run_in_thread(reader.read_snapshot).to_dict()), flush=True)
    sys.stdin.readline()
reader.shutdown()
"""


def run_reader(env: dict[str, str], readings: int = 1) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "FAKE_NVML_SCENARIO")}
    full_env.update(env, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    return subprocess.Popen([sys.executable, "-c", READ_TWICE, str(readings)], cwd=REPO, env=full_env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.skipif(ctypes.util.find_library("nvidia-ml") is not None,
                    reason="this machine has a real libnvidia-ml")
def test_no_library_in_a_fresh_process_is_an_unavailable_snapshot():
    process = run_reader({"LD_LIBRARY_PATH": ""})
    out, err = process.communicate("\n", timeout=30)
    assert process.returncode == 0, err
    body = json.loads(out.splitlines()[0])
    assert body["error"] == ("NVML library libnvidia-ml.so.1 not found: install the NVIDIA driver "
                             "(check that nvidia-smi works)")
    assert body["gpu"] is None and body["gpus"] == [] and body["processes"] == []


def test_subprocess_loads_the_fake_through_ld_library_path(fake_nvml):
    process = run_reader(fake_nvml.env(), readings=2)
    try:
        first = json.loads(process.stdout.readline())
        assert [gpu["name"] for gpu in first["gpus"]] == ["NVIDIA GeForce RTX 4090", "NVIDIA RTX A6000"]
        fake_nvml.scenario_gpu_lost(1)   # the library in the other process re-reads the file
        process.stdin.write("\n")
        process.stdin.flush()
        second = json.loads(process.stdout.readline())
        assert second["gpus"][1]["error"] == "GPU is lost" and "error" not in second["gpus"][0]
        out, err = process.communicate("\n", timeout=30)
        assert process.returncode == 0, err
    finally:
        if process.poll() is None:
            process.kill()
