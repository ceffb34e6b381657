"""VRAM per model and Will it fit? in the browser: the stacked bar, the fit hints, make room.

The live server reads the fake NVML and the fake Ollama (tests/e2e/conftest.py). The fake's
/api/show gives every model a small llama-shaped model_info, so llama3.2:latest (2.0 GB) needs
about 3.2 GB with the default context: it fits on the default GPU 0 (18 GB free), and not on
one GPU with 0.5 GiB free unless the loaded qwen2.5-coder:7b (4.7 GB in VRAM) is unloaded.
The stacked bar needs a process the server can tie to a model: a real, sleeping process whose
command line reads like Ollama's runner, put on GPU 0 of the fake NVML by its PID.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import pytest

from playwright.sync_api import expect

from tests.e2e.conftest import api_get, api_token  # noqa: E402
from tests.fakes.fake_nvml import MIB, FakeGpu, FakeProcess, Scenario, two_gpus  # noqa: E402
from tests.live import wait_until  # noqa: E402

pytestmark = pytest.mark.e2e

GIB = 1024 * MIB
MODEL = "llama3.2:latest"
BIG = "qwen2.5-coder:7b"
BIG_VRAM = 4683087332


def available_row(page, name: str):
    return page.locator(f'#available-rows tr[data-model="{name}"]')


def loaded_row(page, name: str):
    return page.locator(f'#loaded-rows tr[data-model="{name}"]')


def generate_calls(fake_ollama) -> list[tuple[str, object]]:
    """(model, keep_alive) of every load or unload the fake was sent, in order."""
    calls = []
    for record in fake_ollama.requests("/api/generate", "POST"):
        body = json.loads(record["body"] or "{}")
        calls.append((body.get("model"), body.get("keep_alive")))
    return calls


def wait_for_free_mb(server, page, free_mb: int) -> None:
    """Until the poller's reading has GPU 0 at `free_mb` free (the estimate reads that reading)."""
    token = api_token(page)
    wait_until(lambda: api_get(server, "/api/vram/status", token).json()["gpus"][0]["free_mb"] == free_mb,
               timeout_s=10)


def test_the_fit_shows_in_the_download_box_and_before_a_load(dashboard, server, fake_ollama):
    dashboard.get_by_label("Model name").fill(MODEL)
    dashboard.get_by_role("button", name="Will it fit?").click()
    hint = dashboard.locator("#download-fit")
    expect(hint).to_contain_text(f"{MODEL}: fits on GPU 0 — needs ")
    expect(hint).to_contain_text("(weights 2.0 GB, context 4096: ")
    expect(hint).to_have_class("fit-line fits")

    # The Load button asks first; the estimate's message stays on the line while Ollama loads.
    fake_ollama.set_behaviour(load_delay_s=1.5)
    available_row(dashboard, MODEL).get_by_role("button", name=f"Load {MODEL}").click()
    status = dashboard.locator("#available-status")
    expect(status).to_have_text(f"fits on GPU 0: Loading {MODEL}…")
    expect(status).to_have_text(f"Model {MODEL} loaded")
    expect(loaded_row(dashboard, MODEL)).to_be_visible()
    expect(dashboard.locator("#fit-prompt")).to_be_empty()
    assert fake_ollama.count("POST", "/api/show") >= 1
    assert [model for model, _ in generate_calls(fake_ollama)] == [MODEL]


def test_make_room_and_load_unloads_then_loads_in_one_click(dashboard, server, nvml, fake_ollama):
    nvml.apply(Scenario(gpus=(FakeGpu(total_bytes=8 * GIB, used_bytes=8 * GIB - 512 * MIB),)))
    fake_ollama.set_loaded([{"name": BIG, "size_vram": BIG_VRAM, "expires_at": "2030-01-01T00:00:00Z"}])
    wait_for_free_mb(server, dashboard, 512)

    available_row(dashboard, MODEL).get_by_role("button", name=f"Load {MODEL}").click()
    prompt = dashboard.locator("#fit-prompt")
    expect(prompt).to_contain_text(f"{MODEL}: needs ")
    expect(prompt).to_contain_text(f"more — unload {BIG}? (needs ")
    make_room = prompt.get_by_role("button", name="Make room and load")
    expect(make_room).to_be_focused()
    expect(prompt.get_by_role("button", name="Load anyway")).to_be_visible()
    assert generate_calls(fake_ollama) == []  # nothing unloaded or loaded before the click

    make_room.click()
    expect(dashboard.locator("#available-status")).to_have_text(f"Model {MODEL} loaded (unloaded {BIG} to make room)")
    expect(prompt).to_be_empty()
    expect(loaded_row(dashboard, MODEL)).to_be_visible()
    expect(loaded_row(dashboard, BIG)).to_have_count(0)
    calls = generate_calls(fake_ollama)
    assert [model for model, _ in calls] == [BIG, MODEL], calls
    assert calls[0][1] == 0 and calls[1][1] != 0  # keep_alive 0 unloads; the load keeps the default
    assert fake_ollama.state()["loaded"] == [MODEL]


def test_cancel_leaves_everything_loaded(dashboard, server, nvml, fake_ollama):
    nvml.apply(Scenario(gpus=(FakeGpu(total_bytes=8 * GIB, used_bytes=8 * GIB - 512 * MIB),)))
    fake_ollama.set_loaded([{"name": BIG, "size_vram": BIG_VRAM, "expires_at": "2030-01-01T00:00:00Z"}])
    wait_for_free_mb(server, dashboard, 512)

    available_row(dashboard, MODEL).get_by_role("button", name=f"Load {MODEL}").click()
    prompt = dashboard.locator("#fit-prompt")
    prompt.get_by_role("button", name="Cancel").click()
    expect(prompt).to_be_empty()
    assert generate_calls(fake_ollama) == []
    assert fake_ollama.state()["loaded"] == [BIG]


@pytest.fixture
def runner(tmp_path):
    """A sleeping process whose command line reads like Ollama's runner serving llama3.2:latest.

    The blob is the one the fake's /api/show names in that model's FROM line.
    """
    (tmp_path / "runner").write_text("import time\ntime.sleep(60)\n")
    blob = "sha256-" + hashlib.sha256(f"blob:{MODEL}".encode()).hexdigest()
    proc = subprocess.Popen(["/usr/local/bin/ollama", "runner", "--model",
                             f"/usr/share/ollama/.ollama/models/blobs/{blob}", "--port", "41001"],
                            executable=sys.executable, cwd=tmp_path, stdin=subprocess.DEVNULL)
    yield proc.pid
    proc.kill()
    proc.wait()


def test_gpu_card_stacks_vram_by_model_from_the_runner(dashboard, nvml, runner):
    scenario = two_gpus()
    processes = (FakeProcess(pid=runner, name="/usr/local/bin/ollama", gpu=0, used_bytes=3000 * MIB),
                 *scenario.processes[1:])
    nvml.apply(dataclasses.replace(scenario, processes=processes))
    card = dashboard.locator('.gpu-card[data-gpu-index="0"]')
    legend = card.get_by_role("list", name="GPU 0 VRAM by model")
    expect(legend).to_be_visible()
    expect(legend.locator("li").first).to_have_text(f"{MODEL} 3,000 MiB")
    expect(legend.locator("li").last).to_have_text("other 3,144 MiB")  # 6,144 used in all
    segment = card.locator(".bar-seg")
    expect(segment).to_have_count(1)
    expect(segment).to_have_attribute("title", f"{MODEL}: 3,000 MiB")
    width = segment.evaluate("el => parseFloat(el.style.width)")
    assert abs(width - 100 * 3000 / 24564) < 0.01, width
    expect(dashboard.locator(f'#process-rows tr[data-pid="{runner}"] .proc-model')).to_have_text(MODEL)
    expect(dashboard.locator('#process-rows tr[data-pid="1300"] .proc-model')).to_have_text("—")
    expect(dashboard.locator('.gpu-card[data-gpu-index="1"] .vram-legend')).to_be_hidden()
