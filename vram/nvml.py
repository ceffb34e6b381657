"""The one module that talks to NVML (through pynvml): one reading of every GPU and GPU process.

As in nvitop's libnvml, every per-field call goes through one helper that turns "not supported"
into None instead of an exception. A GPU that fails is one entry with an `error`; NVML itself
failing (no library, no driver) is a snapshot with an `error`, and the next reading retries.
"""
from __future__ import annotations

import logging
import sys
import time
from types import ModuleType
from typing import Any, Callable, TypeVar

import concurrency
from vram.snapshot import GpuSnapshot, ProcessSnapshot, VramSnapshot

log = logging.getLogger(__name__)

T = TypeVar("T")
MIB = 1024 * 1024
NVML_VALUE_NOT_AVAILABLE = 2**64 - 1   # what NVML puts in a process's memory when it cannot tell
GPU_LOST = "GPU is lost"
SHUTDOWN_WAIT_S = 2.0                  # shutdown gives an in-flight reading this long to finish
LIBRARY_NAME = "nvml.dll" if sys.platform.startswith("win") else "libnvidia-ml.so.1"

NO_BINDING = ("NVML unavailable: the Python package nvidia-ml-py (module pynvml) is not installed "
              "(pip install -r requirements.txt)")
CHECK_SMI = "check that nvidia-smi works"

# pynvml error classes by name, so that any module shaped like pynvml works.
_UNSUPPORTED = ("NVMLError_NotSupported", "NVMLError_NoPermission", "NVMLError_FunctionNotFound")
_MEMORY_V2_MISSING = ("NVMLError_FunctionNotFound", "NVMLError_NotSupported",
                      "NVMLError_ArgumentVersionMismatch")
_GPU_LOST = ("NVMLError_GpuIsLost", "NVMLError_Unknown")
# Failures of NVML as a whole: drop the session and nvmlInit again on the next reading.
_NVML_DOWN = ("NVMLError_Uninitialized", "NVMLError_DriverNotLoaded", "NVMLError_LibraryNotFound",
              "NVMLError_LibRmVersionMismatch")
_MISSING_FUNCTION = ("NVMLError_FunctionNotFound", "NVMLLibraryMismatchError")
_PROCESS_CALLS = {
    "compute": ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2"),
    "graphics": ("nvmlDeviceGetGraphicsRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses_v2"),
}


def _classes(nvml: ModuleType, names: tuple[str, ...]) -> tuple[type[BaseException], ...]:
    return tuple(getattr(nvml, name) for name in names if hasattr(nvml, name))


def _text(value: Any) -> str | None:
    """Return NVML's string as str (older bindings answer bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _mib(value: int | None) -> int | None:
    """Convert bytes to whole MiB; None and NVML_VALUE_NOT_AVAILABLE stay unknown."""
    if value is None or value >= NVML_VALUE_NOT_AVAILABLE:
        return None
    return int(value) // MIB


class _Errors:
    """The pynvml exception classes the reader tells apart."""

    def __init__(self, nvml: ModuleType):
        self.any = nvml.NVMLError
        self.unsupported = _classes(nvml, _UNSUPPORTED)
        self.memory_v2_missing = _classes(nvml, _MEMORY_V2_MISSING)
        self.gpu_lost = _classes(nvml, _GPU_LOST)
        self.nvml_down = _classes(nvml, _NVML_DOWN)
        self.missing_function = _classes(nvml, _MISSING_FUNCTION)
        self.insufficient_size = _classes(nvml, ("NVMLError_InsufficientSize",))
        self._nvml = nvml

    def matches(self, exc: BaseException, name: str) -> bool:
        """Return whether `exc` is pynvml's error class `name`."""
        cls = getattr(self._nvml, name, None)
        return cls is not None and isinstance(exc, cls)


class NvmlReader:
    """Read every GPU and GPU process through pynvml; NVML failures become snapshot state."""

    def __init__(self, nvml: ModuleType | None = None):
        self._nvml = nvml
        self._errors: _Errors | None = None
        self._lock = concurrency.os_lock()  # read_snapshot runs in tpool's OS threads
        self._initialised = False
        self._driver_version: str | None = None
        self._memory_v1_only: set[int] = set()          # GPUs whose driver lacks memory info v2
        self._process_calls: dict[str, tuple[str, ...]] = {}
        self._identity: dict[int, tuple[str | None, str | None]] = {}   # last known name, uuid
        self._identity_read: set[int] = set()            # read in this NVML session
        self._process_names: dict[int, str | None] = {}
        self._logged_error: str | None = None
        self._logged_once = False
        self._gpu_errors: dict[int, str] = {}

    # -- public -------------------------------------------------------------------------------

    def read_snapshot(self) -> VramSnapshot:
        """Read every GPU and process once; blocks in C, so call it through run_in_thread."""
        with self._lock:
            snapshot = self._read_or_error()
            self._log_changes(snapshot)
            return snapshot

    def shutdown(self) -> bool:
        """Release NVML if this reader initialised it; safe to call more than once.

        Return False when a reading is still blocked in the driver (its OS thread cannot be ended).
        """
        if not self._lock.acquire(timeout=SHUTDOWN_WAIT_S):
            log.warning("NVML reading still in progress after %.0f s; not calling nvmlShutdown",
                        SHUTDOWN_WAIT_S)
            return False
        try:
            if self._initialised and self._nvml is not None and self._errors is not None:
                self._initialised = False
                try:
                    self._nvml.nvmlShutdown()
                except self._errors.any as exc:
                    log.warning("nvmlShutdown failed: %s", exc)
        finally:
            self._lock.release()
        return True

    # -- one reading --------------------------------------------------------------------------

    def _module(self) -> ModuleType:
        if self._nvml is None:
            import pynvml  # imported late: the server starts, and says why, without the binding

            self._nvml = pynvml
        if self._errors is None:
            self._errors = _Errors(self._nvml)
        return self._nvml

    def _read_or_error(self) -> VramSnapshot:
        try:
            nvml = self._module()
        except ImportError:
            return VramSnapshot(timestamp=time.time(), error=NO_BINDING)
        errors = self._errors
        assert errors is not None
        try:
            return self._read(nvml, errors)
        except errors.any as exc:
            self._end_session(nvml, errors)
            return VramSnapshot(timestamp=time.time(), error=self._describe(exc, errors))

    def _read(self, nvml: ModuleType, errors: _Errors) -> VramSnapshot:
        if not self._initialised:
            nvml.nvmlInit()
            self._start_session(nvml)
        if self._driver_version is None:
            self._driver_version = _text(self._field(nvml.nvmlSystemGetDriverVersion))
        gpus: list[GpuSnapshot] = []
        # (gpu index, pid) -> the memory each of its NVML entries reported; a PID in both the
        # compute and the graphics list is one process, and NVML reports the process's whole
        # memory in each list, so the entries are not added up (as gpustat and nvitop do).
        process_memory: dict[tuple[int, int], list[int | None]] = {}
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                gpu, processes = self._read_gpu(nvml, index)
            except errors.nvml_down:
                raise
            except errors.gpu_lost:
                gpus.append(self._failed_gpu(index, GPU_LOST))
                continue
            except errors.any as exc:
                gpus.append(self._failed_gpu(index, f"NVML error: {exc}"))
                continue
            gpus.append(gpu)
            for pid, used_bytes in processes:
                process_memory.setdefault((index, pid), []).append(used_bytes)
        names = self._names_for({pid for _, pid in process_memory})
        processes_out = []
        for (index, pid), reported in process_memory.items():
            known = [value for value in reported if value is not None and value < NVML_VALUE_NOT_AVAILABLE]
            used_mb = _mib(max(known)) if known else None
            processes_out.append(ProcessSnapshot(pid=pid, name=names[pid], used_mb=used_mb, gpu_index=index))
        return VramSnapshot(timestamp=time.time(), gpus=tuple(gpus), processes=tuple(processes_out),
                            driver_version=self._driver_version)

    def _read_gpu(self, nvml: ModuleType, index: int) -> tuple[GpuSnapshot, list[tuple[int, int | None]]]:
        # Handles are looked up on every reading, so a GPU that was lost comes back by itself.
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        if index not in self._identity_read:
            name = _text(self._field(nvml.nvmlDeviceGetName, handle))
            uuid = _text(self._field(nvml.nvmlDeviceGetUUID, handle))
            self._identity[index] = (name, uuid)
            self._identity_read.add(index)
        name, uuid = self._identity[index]
        memory = self._memory_info(nvml, index, handle)
        utilization = self._field(nvml.nvmlDeviceGetUtilizationRates, handle)
        temperature = self._field(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU)
        power_mw = self._field(nvml.nvmlDeviceGetPowerUsage, handle)
        processes = [(proc.pid, proc.usedGpuMemory)
                     for kind in ("compute", "graphics")
                     for proc in self._running_processes(nvml, kind, handle)]
        gpu = GpuSnapshot(
            index=index, name=name, uuid=uuid,
            total_mb=_mib(memory.total) if memory is not None else None,
            used_mb=_mib(memory.used) if memory is not None else None,
            free_mb=_mib(memory.free) if memory is not None else None,
            utilization=int(utilization.gpu) if utilization is not None else None,
            memory_utilization=int(utilization.memory) if utilization is not None else None,
            temperature_c=int(temperature) if temperature is not None else None,
            power_w=round(power_mw / 1000, 1) if power_mw is not None else None,
        )
        return gpu, processes

    def _field(self, fn: Callable[..., T], *args: Any) -> T | None:
        """Call one NVML query; "not supported" (or not permitted, or absent) is None."""
        assert self._errors is not None
        try:
            return fn(*args)
        except self._errors.unsupported:
            return None

    def _memory_info(self, nvml: ModuleType, index: int, handle: Any) -> Any:
        """Return memory info v2 (used excludes driver-reserved memory), else v1 on older drivers."""
        assert self._errors is not None
        version = getattr(nvml, "nvmlMemory_v2", None)
        if version is not None and index not in self._memory_v1_only:
            try:
                return nvml.nvmlDeviceGetMemoryInfo(handle, version=version)
            except self._errors.memory_v2_missing as exc:
                # Remembered, so an older driver costs one call per poll, not two.
                log.info("GPU %d: memory info v2 unavailable (%s); using v1", index, exc)
                self._memory_v1_only.add(index)
        return self._field(nvml.nvmlDeviceGetMemoryInfo, handle)

    def _running_processes(self, nvml: ModuleType, kind: str, handle: Any) -> list[Any]:
        """Return one kind of process list, falling back to the older _v2 call where it is absent."""
        assert self._errors is not None
        for name in self._process_calls.get(kind, ()):
            try:
                return list(getattr(nvml, name)(handle))
            except self._errors.missing_function:
                # This driver lacks that version; skip it from now on.
                self._process_calls[kind] = tuple(n for n in self._process_calls[kind] if n != name)
            except self._errors.unsupported:
                return []
            except self._errors.insufficient_size:
                # Processes started between NVML's count and fill calls; the next poll has them.
                return []
        return []

    def _names_for(self, pids: set[int]) -> dict[int, str | None]:
        """Return each PID's name, asking NVML only for PIDs not seen in the previous reading."""
        assert self._nvml is not None and self._errors is not None
        names: dict[int, str | None] = {}
        for pid in pids:
            if pid in self._process_names:
                names[pid] = self._process_names[pid]
                continue
            try:
                names[pid] = _text(self._nvml.nvmlSystemGetProcessName(pid))
            except self._errors.nvml_down:
                raise
            except self._errors.any:
                names[pid] = None   # exited, or not ours to see
        self._process_names = names   # PIDs no longer on a GPU drop out here
        return names

    def _failed_gpu(self, index: int, error: str) -> GpuSnapshot:
        self._identity_read.discard(index)
        name, uuid = self._identity.get(index, (None, None))
        return GpuSnapshot(index=index, name=name, uuid=uuid, error=error)

    # -- NVML session -------------------------------------------------------------------------

    def _start_session(self, nvml: ModuleType) -> None:
        self._initialised = True
        self._driver_version = None
        self._memory_v1_only.clear()
        self._identity_read.clear()
        self._process_calls = {kind: tuple(name for name in names if hasattr(nvml, name))
                               for kind, names in _PROCESS_CALLS.items()}

    def _end_session(self, nvml: ModuleType, errors: _Errors) -> None:
        """Forget the NVML session after a failure, so the next reading calls nvmlInit again."""
        if not self._initialised:
            return
        self._initialised = False
        try:
            nvml.nvmlShutdown()
        except errors.any as exc:
            log.debug("nvmlShutdown after an NVML failure: %s", exc)

    def _describe(self, exc: BaseException, errors: _Errors) -> str:
        """Return what NVML failing means for a person who has to fix it."""
        if errors.matches(exc, "NVMLError_LibraryNotFound"):
            return f"NVML library {LIBRARY_NAME} not found: install the NVIDIA driver ({CHECK_SMI})"
        if errors.matches(exc, "NVMLError_DriverNotLoaded"):
            return ("NVML unavailable: NVIDIA driver not loaded (is an NVIDIA GPU and driver installed? "
                    f"{CHECK_SMI})")
        if errors.matches(exc, "NVMLError_NoPermission"):
            return ("NVML unavailable: no permission to open the NVIDIA devices (run the server as a "
                    f"user that can read /dev/nvidia*; {CHECK_SMI})")
        if errors.matches(exc, "NVMLError_LibRmVersionMismatch"):
            return ("NVML unavailable: the NVML library and the loaded kernel driver are different "
                    "versions (reboot, or reload the nvidia kernel module, after a driver update)")
        if errors.matches(exc, "NVMLError_Uninitialized"):
            return "NVML unavailable: NVML was shut down underneath the server; retrying at the next poll"
        return f"NVML unavailable: {exc} ({CHECK_SMI})"

    # -- logging ------------------------------------------------------------------------------

    def _log_changes(self, snapshot: VramSnapshot) -> None:
        """Log NVML and GPU state changes once, not on every poll."""
        if not self._logged_once or snapshot.error != self._logged_error:
            if snapshot.error is not None:
                log.warning("%s", snapshot.error)
            else:
                log.info("NVML available: %d GPU(s), driver %s", len(snapshot.gpus), snapshot.driver_version)
            self._logged_error = snapshot.error
            self._logged_once = True
        if snapshot.error is not None:
            return
        now = {gpu.index: gpu.error for gpu in snapshot.gpus if gpu.error is not None}
        for index, error in now.items():
            if self._gpu_errors.get(index) != error:
                log.warning("GPU %d: %s", index, error)
        for index in self._gpu_errors.keys() - now.keys():
            log.info("GPU %d reports again", index)
        self._gpu_errors = now
