"""Will it fit? in the browser: the hint before a load and in the download box, and make room.

The live server reads the fake NVML and the fake Ollama (tests/e2e/conftest.py). The fake's
/api/show gives every model a small llama-shaped model_info, so llama3.2:latest (2.0 GB) needs
about 3.2 GB with the default context: it fits on the default GPU 0 (18 GB free), and not on
one GPU with 0.5 GiB free unless the loaded qwen2.5-coder:7b (4.7 GB in VRAM) is unloaded.
"""
from __future__ import annotations

import json
import os

import pytest

try:
    from playwright.sync_api import expect
except ImportError:
    if os.environ.get("CI"):
        raise  # on CI the browser tests must run
    pytest.skip("Playwright for Python is not installed (pip install playwright)", allow_module_level=True)

from tests.e2e.conftest import api_get, api_token  # noqa: E402
from tests.fakes.fake_nvml import MIB, FakeGpu, Scenario  # noqa: E402
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
