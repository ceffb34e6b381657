"""A fake libnvidia-ml.so.1 (C) under the real pynvml, and the Python side that drives it.

In-process: `install_in_process(build_fake_nvml(dir))` points pynvml at the fake; a `FakeNvml`
writes scenario files that the library re-reads on its next call.
Subprocess (`python app.py`): `LD_LIBRARY_PATH=<dir of the fake>` and
`FAKE_NVML_SCENARIO=<scenario file>` are all it takes (`FakeNvml.env()` builds both).
The scenario format is documented at the top of fake_nvml.c.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("fake_nvml.c")
LIB_NAME = "libnvidia-ml.so.1"
SCENARIO_ENV = "FAKE_NVML_SCENARIO"
MIB = 1024 * 1024
GIB = 1024 * MIB

# NVML error codes a scenario may name (init_error=, gpu.<i>.error=, gpu.<i>.handle_error=).
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_UNKNOWN = 999

UNSUPPORTABLE = ("name", "uuid", "memory", "utilization", "temperature", "power", "processes")
MEMORY_V2_MODES = ("ok", "function_not_found", "not_supported", "version_mismatch")


def build_fake_nvml(out_dir: str | os.PathLike) -> Path:
    """Compile fake_nvml.c into <out_dir>/libnvidia-ml.so.1 unless it is already up to date."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / LIB_NAME
    if target.exists() and target.stat().st_mtime >= SOURCE.stat().st_mtime:
        return target
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc not found: the fake NVML library is built from C (apt-get install gcc)")
    # Build under a temporary name and rename: parallel test workers never see half a library.
    fd, tmp_name = tempfile.mkstemp(prefix=".libnvidia-ml.", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        result = subprocess.run(
            [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-pthread",
             f"-Wl,-soname,{LIB_NAME}", "-o", tmp_name, str(SOURCE)],
            capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"building the fake NVML library failed:\n{result.stderr}")
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def _configure(lib: ctypes.CDLL) -> ctypes.CDLL:
    lib.fake_nvml_set_scenario_path.argtypes = [ctypes.c_char_p]
    lib.fake_nvml_set_scenario_path.restype = None
    lib.fake_nvml_call_count.argtypes = [ctypes.c_char_p]
    lib.fake_nvml_call_count.restype = ctypes.c_long
    for name in ("fake_nvml_reload", "fake_nvml_reset", "fake_nvml_reset_counts"):
        getattr(lib, name).argtypes = []
        getattr(lib, name).restype = None
    lib.fake_nvml_init_refcount.restype = ctypes.c_int
    return lib


def install_in_process(lib_path: str | os.PathLike) -> ctypes.CDLL:
    """Make the real pynvml in this process call the fake library; return the loaded library."""
    import pynvml

    lib = _configure(ctypes.CDLL(str(lib_path)))
    # pynvml loads libnvidia-ml.so.1 only while nvmlLib is None, and caches symbols by name:
    # replace both so every pynvml function from here on resolves into the fake.
    with pynvml.libLoadLock:
        pynvml.nvmlLib = lib
        pynvml._nvmlGetFunctionPointer_cache.clear()
    return lib


def uninstall_in_process(previous: ctypes.CDLL | None = None) -> None:
    """Point pynvml back at `previous` (None: load the system library on the next nvmlInit)."""
    import pynvml

    with pynvml.libLoadLock:
        pynvml.nvmlLib = previous
        pynvml._nvmlGetFunctionPointer_cache.clear()


@dataclass(frozen=True)
class FakeProcess:
    """One process on one GPU; used_bytes None is NVML_VALUE_NOT_AVAILABLE; name None: no name."""

    pid: int
    name: str | None
    gpu: int = 0
    used_bytes: int | None = 0
    kind: str = "compute"  # compute | graphics | both


@dataclass(frozen=True)
class FakeGpu:
    """What one fake GPU reports."""

    name: str = "NVIDIA GeForce RTX 4090"
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    total_bytes: int = 24564 * MIB
    used_bytes: int = 0
    reserved_bytes: int = 0
    utilization: int = 0
    memory_utilization: int = 0
    temperature_c: int = 40
    power_mw: int = 30000
    unsupported: tuple[str, ...] = ()
    memory_v2: str = "ok"
    lost: bool = False
    error: int | None = None
    handle_error: int | None = None


@dataclass(frozen=True)
class Scenario:
    """A whole fake machine: the driver, its GPUs and their processes."""

    gpus: tuple[FakeGpu, ...] = ()
    processes: tuple[FakeProcess, ...] = ()
    driver_loaded: bool = True
    init_error: int | None = None
    driver_version: str = "550.54.15"
    delay_ms: int = 0
    delay_only: tuple[str, ...] = ()
    missing_functions: tuple[str, ...] = ()

    def replace_gpu(self, index: int, **changes) -> Scenario:
        """Return a copy with GPU `index` changed."""
        gpus = list(self.gpus)
        gpus[index] = dataclasses.replace(gpus[index], **changes)
        return dataclasses.replace(self, gpus=tuple(gpus))

    def render(self) -> str:
        """Return the scenario file text the C library parses."""
        lines = ["# fake NVML scenario (format: tests/fakes/fake_nvml/fake_nvml.c)",
                 f"driver_loaded={int(self.driver_loaded)}",
                 f"driver_version={self.driver_version}",
                 f"delay_ms={int(self.delay_ms)}",
                 f"gpus={len(self.gpus)}"]
        if self.init_error is not None:
            lines.append(f"init_error={self.init_error}")
        if self.delay_only:
            lines.append("delay_only=" + ",".join(self.delay_only))
        if self.missing_functions:
            lines.append("missing_functions=" + ",".join(self.missing_functions))
        for index, gpu in enumerate(self.gpus):
            unknown = set(gpu.unsupported) - set(UNSUPPORTABLE)
            if unknown or gpu.memory_v2 not in MEMORY_V2_MODES:
                raise ValueError(f"GPU {index}: unknown unsupported={sorted(unknown)} or memory_v2={gpu.memory_v2!r}")
            prefix = f"gpu.{index}."
            lines += [prefix + f"name={gpu.name}", prefix + f"uuid={gpu.uuid}",
                      prefix + f"total_bytes={gpu.total_bytes}", prefix + f"used_bytes={gpu.used_bytes}",
                      prefix + f"reserved_bytes={gpu.reserved_bytes}",
                      prefix + f"utilization={gpu.utilization}",
                      prefix + f"memory_utilization={gpu.memory_utilization}",
                      prefix + f"temperature_c={gpu.temperature_c}", prefix + f"power_mw={gpu.power_mw}",
                      prefix + "unsupported=" + ",".join(gpu.unsupported),
                      prefix + f"memory_v2={gpu.memory_v2}", prefix + f"lost={int(gpu.lost)}"]
            if gpu.error is not None:
                lines.append(prefix + f"error={gpu.error}")
            if gpu.handle_error is not None:
                lines.append(prefix + f"handle_error={gpu.handle_error}")
        for proc in self.processes:
            used = "unknown" if proc.used_bytes is None else str(proc.used_bytes)
            lines.append(f"proc={proc.gpu} {proc.pid} {used} {proc.kind} {proc.name or ''}".rstrip())
        return "\n".join(lines) + "\n"


def two_gpus() -> Scenario:
    """Return an RTX 4090 running Ollama and Xorg, and an RTX A6000 running a Python job."""
    return Scenario(
        gpus=(
            FakeGpu(name="NVIDIA GeForce RTX 4090", uuid="GPU-5a3c1e2f-0d4b-4c6e-9f70-1a2b3c4d5e6f",
                    # 6144 MiB plus one byte: the MiB conversion must floor, not round.
                    total_bytes=24564 * MIB, used_bytes=6144 * MIB + 1, utilization=37,
                    memory_utilization=12, temperature_c=51, power_mw=123456),
            FakeGpu(name="NVIDIA RTX A6000", uuid="GPU-9b8a7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                    total_bytes=49140 * MIB, used_bytes=1024 * MIB, utilization=5,
                    memory_utilization=1, temperature_c=38, power_mw=22000),
        ),
        processes=(
            FakeProcess(pid=4242, name="/usr/local/bin/ollama", gpu=0, used_bytes=5120 * MIB),
            FakeProcess(pid=1300, name="/usr/lib/xorg/Xorg", gpu=0, used_bytes=256 * MIB, kind="graphics"),
            FakeProcess(pid=5151, name="python3", gpu=1, used_bytes=1000 * MIB),
        ),
    )


def unsupported_fields() -> Scenario:
    """Return two GPUs where GPU 0 lacks temperature, power and utilization, GPU 1 memory info."""
    scenario = two_gpus()
    scenario = scenario.replace_gpu(0, unsupported=("temperature", "power", "utilization"))
    return scenario.replace_gpu(1, unsupported=("memory",))


def process_memory_none() -> Scenario:
    """Return two GPUs whose processes' memory NVML cannot tell (NVML_VALUE_NOT_AVAILABLE)."""
    return dataclasses.replace(two_gpus(), processes=(
        FakeProcess(pid=4242, name="/usr/local/bin/ollama", gpu=0, used_bytes=None),
        FakeProcess(pid=5151, name="python3", gpu=1, used_bytes=None, kind="both"),
    ))


def eight_gpus_fifty_processes() -> Scenario:
    """Return 8 GPUs with 50 processes each (400 PIDs): the benchmark machine."""
    gpus = tuple(
        FakeGpu(name="NVIDIA H100 80GB HBM3", uuid=f"GPU-{index:08d}-0000-4000-8000-000000000000",
                total_bytes=81559 * MIB, used_bytes=50 * 1000 * MIB, utilization=90,
                memory_utilization=40, temperature_c=60 + index, power_mw=350000 + index)
        for index in range(8))
    processes = tuple(
        FakeProcess(pid=10000 + gpu * 100 + n, name=f"python3 worker-{gpu}-{n}", gpu=gpu,
                    used_bytes=1000 * MIB, kind="both" if n % 10 == 0 else "compute")
        for gpu in range(8) for n in range(50))
    return Scenario(gpus=gpus, processes=processes)


class FakeNvml:
    """Drive the fake library: write scenarios (atomically) and read its call counters."""

    def __init__(self, scenario_path: str | os.PathLike, lib: ctypes.CDLL | None = None,
                 lib_path: str | os.PathLike | None = None):
        self.scenario_path = Path(scenario_path)
        self.lib = lib
        self.lib_path = Path(lib_path) if lib_path is not None else None
        self.scenario = Scenario()

    def apply(self, scenario: Scenario) -> Scenario:
        """Write `scenario` for the library to pick up on its next call; return it."""
        text = scenario.render()
        fd, tmp_name = tempfile.mkstemp(prefix=".scenario.", dir=self.scenario_path.parent)
        with os.fdopen(fd, "w") as tmp:
            tmp.write(text)
        # A rename gives the file a new inode, so the library sees the change even when the size
        # and the (coarse) mtime are the same as before.
        os.replace(tmp_name, self.scenario_path)
        self.scenario = scenario
        if self.lib is not None:
            self.lib.fake_nvml_reload()
        return scenario

    def env(self) -> dict[str, str]:
        """Return the environment a subprocess needs to load this fake through pynvml."""
        if self.lib_path is None:
            raise ValueError("FakeNvml was made without lib_path")
        return {"LD_LIBRARY_PATH": str(self.lib_path.parent), SCENARIO_ENV: str(self.scenario_path)}

    def call_count(self, function: str | None = None) -> int:
        """Return how often the library's `function` (None: any) ran since the last reset."""
        if self.lib is None:
            raise ValueError("call counts need the library loaded in this process")
        count = self.lib.fake_nvml_call_count(None if function is None else function.encode())
        if count < 0:
            raise ValueError(f"the fake does not implement {function}")
        return count

    def reset_counts(self) -> None:
        """Zero the call counters."""
        if self.lib is not None:
            self.lib.fake_nvml_reset_counts()

    @property
    def init_refcount(self) -> int:
        """Return how many nvmlInit calls are not yet matched by nvmlShutdown."""
        if self.lib is None:
            raise ValueError("the refcount needs the library loaded in this process")
        return self.lib.fake_nvml_init_refcount()

    # Named scenarios, as gpustat's tests name them.

    def scenario_two_gpus(self) -> Scenario:
        return self.apply(two_gpus())

    def scenario_unsupported_fields(self) -> Scenario:
        return self.apply(unsupported_fields())

    def scenario_process_memory_none(self) -> Scenario:
        return self.apply(process_memory_none())

    def scenario_gpu_lost(self, index: int = 1, error: int = NVML_ERROR_GPU_IS_LOST) -> Scenario:
        """Make GPU `index` fall off the bus (every call answers `error`) in the current scenario."""
        if error == NVML_ERROR_GPU_IS_LOST:
            return self.apply(self.scenario.replace_gpu(index, lost=True))
        return self.apply(self.scenario.replace_gpu(index, error=error, handle_error=error))

    def scenario_gpu_back(self, index: int | None = None) -> Scenario:
        """Bring GPU `index` (None: every GPU) back."""
        scenario = self.scenario
        for i in range(len(scenario.gpus)) if index is None else (index,):
            scenario = scenario.replace_gpu(i, lost=False, error=None, handle_error=None)
        return self.apply(scenario)

    def scenario_no_driver(self, init_error: int | None = None) -> Scenario:
        """Unload the driver (or make nvmlInit fail with `init_error`) in the current scenario."""
        return self.apply(dataclasses.replace(self.scenario, driver_loaded=False, init_error=init_error))

    def scenario_driver_appears(self) -> Scenario:
        """Load the driver again."""
        return self.apply(dataclasses.replace(self.scenario, driver_loaded=True, init_error=None))

    def scenario_memory_v2_missing(self, mode: str = "function_not_found") -> Scenario:
        """Make every GPU's nvmlDeviceGetMemoryInfo_v2 fail as an older driver does."""
        scenario = self.scenario
        for i in range(len(scenario.gpus)):
            scenario = scenario.replace_gpu(i, memory_v2=mode)
        return self.apply(scenario)

    def scenario_slow_calls(self, ms: int, functions: tuple[str, ...] = ()) -> Scenario:
        """Make every call (or only `functions`) sleep `ms` in C, as a stuck driver does."""
        return self.apply(dataclasses.replace(self.scenario, delay_ms=ms, delay_only=tuple(functions)))

    def scenario_eight_gpus_fifty_processes(self) -> Scenario:
        return self.apply(eight_gpus_fifty_processes())


__all__ = [
    "FakeGpu", "FakeNvml", "FakeProcess", "Scenario", "build_fake_nvml", "install_in_process",
    "uninstall_in_process", "two_gpus", "unsupported_fields", "process_memory_none",
    "eight_gpus_fifty_processes", "LIB_NAME", "SCENARIO_ENV", "MIB", "GIB",
]
