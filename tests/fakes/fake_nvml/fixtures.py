"""pytest fixtures for the fake NVML: the compiled library, and a controller installed in-process."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.fake_nvml import SCENARIO_ENV, FakeNvml, build_fake_nvml, install_in_process, uninstall_in_process


@pytest.fixture(scope="session")
def fake_nvml_lib(tmp_path_factory) -> Path:
    """Build the fake libnvidia-ml.so.1 once per session; return its path."""
    return build_fake_nvml(tmp_path_factory.mktemp("fake_nvml"))


@pytest.fixture
def fake_nvml(fake_nvml_lib, tmp_path, monkeypatch):
    """Point this process's pynvml at the fake, with a fresh scenario file (two GPUs)."""
    import pynvml

    previous = pynvml.nvmlLib
    lib = install_in_process(fake_nvml_lib)
    scenario_path = tmp_path / "fake_nvml_scenario.txt"
    # Subprocesses find the scenario through the environment; this process's copy of the
    # library is told directly, so a test never depends on C seeing os.environ changes.
    monkeypatch.setenv(SCENARIO_ENV, str(scenario_path))
    lib.fake_nvml_reset()
    fake = FakeNvml(scenario_path, lib=lib, lib_path=fake_nvml_lib)
    fake.scenario_two_gpus()
    lib.fake_nvml_set_scenario_path(str(scenario_path).encode())
    yield fake
    lib.fake_nvml_set_scenario_path(None)
    lib.fake_nvml_reset()
    uninstall_in_process(previous)


@pytest.fixture
def live_nvml(fake_nvml_lib, tmp_path) -> FakeNvml:
    """A scenario file (two GPUs) for a `python app.py` subprocess's own copy of the fake library."""
    from tests.fakes.fake_nvml import two_gpus

    fake = FakeNvml(tmp_path / "scenario.txt", lib_path=fake_nvml_lib)
    fake.apply(two_gpus())
    return fake
