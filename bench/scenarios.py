"""The machines the benchmark measures, built from the fake NVML's own scenarios."""
from __future__ import annotations

import dataclasses

from tests.fakes.fake_nvml import Scenario, eight_gpus_fifty_processes, two_gpus

__all__ = ["two_gpus", "eight_gpus_fifty_processes_56k", "SCENARIOS"]


def eight_gpus_fifty_processes_56k() -> Scenario:
    """Return the fake's 8 GPUs x 50 processes with full executable paths, as a busy cluster
    node reports them: the ~56 KB snapshot the issue's fan-out target names."""
    base = eight_gpus_fifty_processes()
    processes = tuple(
        dataclasses.replace(proc, name=(f"/home/svc-llm/.cache/pypoetry/virtualenvs/"
                                        f"serving-gpu{proc.gpu}-Xk3aQ9pL-py3.11/bin/python3"))
        for proc in base.processes)
    return dataclasses.replace(base, processes=processes)


# (label, factory, GPU count)
SCENARIOS = (("2 GPUs", two_gpus, 2), ("8 GPUs x 50 processes", eight_gpus_fifty_processes_56k, 8))
