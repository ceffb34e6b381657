"""Snapshot types for what NVML reported at one instant."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class GpuSnapshot:
    """One GPU; a field the GPU does not support is None. `error` is set for a lost GPU."""

    index: int
    name: str | None = None
    uuid: str | None = None
    total_mb: int | None = None
    used_mb: int | None = None
    free_mb: int | None = None
    utilization: int | None = None
    memory_utilization: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "index": self.index, "name": self.name, "uuid": self.uuid,
            "total_mb": self.total_mb, "used_mb": self.used_mb, "free_mb": self.free_mb,
            "utilization": self.utilization, "memory_utilization": self.memory_utilization,
            "temperature_c": self.temperature_c, "power_w": self.power_w,
        }
        if self.error is not None:
            data["error"] = self.error
        return data


@dataclass(frozen=True)
class ProcessSnapshot:
    """A process using a GPU; used_mb is None where the driver does not say.

    `model` is the Ollama model it serves (vram/attribution.py), None when not one or unknown.
    """

    pid: int
    name: str | None
    used_mb: int | None
    gpu_index: int
    model: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name, "used_mb": self.used_mb, "gpu_index": self.gpu_index,
                "model": self.model}


@dataclass(frozen=True)
class VramSnapshot:
    """Every GPU and GPU process at `timestamp`; `error` is set when NVML is unavailable."""

    timestamp: float
    gpus: tuple[GpuSnapshot, ...] = ()
    processes: tuple[ProcessSnapshot, ...] = ()
    driver_version: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def available(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """Return the /api/vram/status body (and the vram_update payload)."""
        gpus = [gpu.to_dict() for gpu in self.gpus]
        data: dict[str, Any] = {
            "gpu": gpus[0] if gpus else None,
            "gpus": gpus,
            "processes": [process.to_dict() for process in self.processes],
            "driver_version": self.driver_version,
            "timestamp": self.timestamp,
        }
        if self.error is not None:
            data["error"] = self.error
        return data
