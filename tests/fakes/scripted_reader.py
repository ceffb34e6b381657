"""A stand-in for vram.nvml.NvmlReader above the driver: it returns the snapshots it is given.

For tests of the poller, the routes and the sockets, where what NVML says matters and how it is
read does not (tests/fakes/fake_nvml is the fake under the real pynvml for the reader itself).
"""
from vram.snapshot import GpuSnapshot, ProcessSnapshot, VramSnapshot

GPU0 = GpuSnapshot(index=0, name="NVIDIA GeForce RTX 4090", uuid="GPU-0", total_mb=24564, used_mb=6144,
                   free_mb=18420, utilization=37, memory_utilization=12, temperature_c=51, power_w=123.0)
GPU1_LOST = GpuSnapshot(index=1, name="NVIDIA A100", uuid="GPU-1", error="GPU is lost")
PROC = ProcessSnapshot(pid=4242, name="/usr/local/bin/ollama", used_mb=5120, gpu_index=0)
UNAVAILABLE = VramSnapshot(timestamp=1.0, error="NVML unavailable: NVIDIA driver not loaded")


def reading(ts=1000.0, used=6144, gpus=None):
    """Return a one-GPU snapshot taken at `ts` with `used` MiB in use."""
    gpu = GpuSnapshot(**{**GPU0.__dict__, "used_mb": used})
    return VramSnapshot(timestamp=ts, gpus=tuple(gpus or (gpu,)), processes=(PROC,), driver_version="550.54.15")


class ScriptedReader:
    """A reader that returns the snapshots it is given, in order (the last one repeats)."""

    def __init__(self, *snapshots):
        self.snapshots = list(snapshots) or [reading()]
        self.calls = 0

    def read_snapshot(self):
        self.calls += 1
        return self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]

    def shutdown(self):
        return True
