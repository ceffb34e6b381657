"""The dashboard in headless Chromium against `python app.py` with the fake NVML and fake Ollama."""
from __future__ import annotations

import os
import time

import pytest
import requests

from playwright.sync_api import expect

from tests.e2e.conftest import ARTIFACTS, VIEWPORT, api_get, api_token, log_in  # noqa: E402
from tests.fakes.fake_nvml import MIB, two_gpus  # noqa: E402
from tests.live import REPO, wait_until  # noqa: E402

pytestmark = pytest.mark.e2e

SLOW_PULL = {"layers": [2_000_000_000, 12_000, 500], "lines_per_layer": 10, "line_interval_s": 0.05}


def gpu_card(page, index: int):
    return page.locator(f'.gpu-card[data-gpu-index="{index}"]')


def job(page, name: str):
    return page.locator(f'#download-jobs li[data-model="{name}"]')


def available_row(page, name: str):
    return page.locator(f'#available-rows tr[data-model="{name}"]')


def loaded_row(page, name: str):
    return page.locator(f'#loaded-rows tr[data-model="{name}"]')


def test_login_rejects_a_wrong_password_then_shows_both_gpus(page, server):
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.locator("#login-form").get_by_label("User name").fill(server.username)
    page.locator("#login-form").get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#login-error")).to_have_text("invalid username or password")
    expect(page.locator("#dashboard-view")).to_be_hidden()

    log_in(page, server)
    expect(page.locator("#user-name")).to_have_text(server.username)
    first, second = gpu_card(page, 0), gpu_card(page, 1)
    expect(first.locator(".gpu-name")).to_have_text("NVIDIA GeForce RTX 4090")
    expect(first.locator(".vram-text")).to_have_text("6,144 / 24,564 MiB (25%)")
    expect(first.locator(".gpu-util")).to_have_text("37%")
    expect(first.locator(".gpu-mem-util")).to_have_text("12%")
    expect(first.locator(".gpu-temp")).to_have_text("51 °C")
    expect(first.locator(".gpu-power")).to_have_text("123.5 W")
    expect(first.get_by_role("meter")).to_have_attribute("aria-valuenow", "6144")
    expect(second.locator(".gpu-name")).to_have_text("NVIDIA RTX A6000")
    expect(second.locator(".vram-text")).to_have_text("1,024 / 49,140 MiB (2%)")
    expect(second.locator(".gpu-util")).to_have_text("5%")
    expect(second.locator(".gpu-temp")).to_have_text("38 °C")
    expect(second.locator(".gpu-power")).to_have_text("22.0 W")
    expect(page.locator("#driver-version")).to_have_text("Driver 550.54.15")

    rows = page.locator("#process-rows tr")
    expect(rows).to_have_count(3)
    expect(rows.nth(0)).to_have_text("4242/usr/local/bin/ollama—5,1200")  # no model: not a runner
    expect(page.locator('#process-rows tr[data-pid="5151"]')).to_contain_text("python3")


def test_chart_is_seeded_from_history_then_follows_live_updates(page, server, nvml):
    time.sleep(0.5)  # a few polls, so the server has some history
    history = requests.get(server.url + "/api/vram/history", headers=server.headers(), timeout=10).json()
    log_in(page, server)
    dashboard = page
    figure = dashboard.locator("#chart-figure")
    # Seeded from /api/vram/history before the first live update arrives.
    wait_until(lambda: int(figure.get_attribute("data-samples")) >= len(history["samples"]) > 1)
    expect(dashboard.locator("#vram-chart canvas")).to_be_visible()
    samples = lambda: int(figure.get_attribute("data-samples"))  # noqa: E731
    before = samples()
    canvas_before = dashboard.locator("#vram-chart canvas").screenshot()
    nvml.apply(two_gpus().replace_gpu(0, used_bytes=18_000 * MIB))
    expect(gpu_card(dashboard, 0).locator(".vram-text")).to_have_text("18,000 / 24,564 MiB (73%)")
    # The legend shows the newest reading while the pointer is off the chart.
    expect(dashboard.locator(".u-legend .u-series").nth(1)).to_contain_text("18,000 MiB")
    wait_until(lambda: samples() >= before + 5)
    assert dashboard.locator("#vram-chart canvas").screenshot() != canvas_before


FORMAT_CASES = [
    ("formatBytes", 0, "0 B"), ("formatBytes", 999, "999 B"), ("formatBytes", 45_960_996, "45 MB"),
    ("formatBytes", 2_019_393_189, "2.0 GB"), ("formatBytes", 4_683_087_332, "4.7 GB"),
    ("formatBytes", 274_302_450, "274 MB"), ("formatBytes", 1_000_000_000, "1 GB"), ("formatBytes", 1500, "1.5 KB"),
    ("formatBytes", 12_500_000_000_000, "12 TB"),
    ("formatBytes", 12_000_000_000, "12 GB"), ("formatBytes", None, "—"),
    ("formatMiB", 24564, "24,564 MiB"), ("formatMiB", None, "n/a"),
    ("formatMiBShort", 512, "512 MiB"), ("formatMiBShort", 16384, "16 GiB"), ("formatMiBShort", 1536, "1.5 GiB"),
    ("formatPercent", 25.01, "25%"), ("formatPercent", None, "n/a"),
    ("formatTemperature", None, "n/a"), ("formatPower", 123.456, "123.5 W"), ("formatPower", None, "n/a"),
    ("formatUntil", "2318-08-26T02:02:25.402233227+02:00", "until unloaded"),
]


def test_live_updates_come_over_a_websocket_the_server_owns(page, server):
    """The page's Socket.IO client upgrades from long-polling to a websocket, and Chromium accepts the
    permessage-deflate answer the websocket owner needs (no context takeover in either direction)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    answers = []
    cdp.on("Network.webSocketHandshakeResponseReceived", lambda event: answers.append(event["response"]))
    frames: list = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(payload)))
    log_in(page, server)
    for _ in range(50):  # Playwright delivers its events while it runs: wait through it
        if any(isinstance(f, str) and f.startswith('42["vram_update"') for f in frames):
            break
        page.wait_for_timeout(100)
    else:
        raise AssertionError(f"no vram_update over the websocket in 5 s: {frames[:5]}")
    assert "3probe" in frames  # the upgrade's probe answer: the events after it came over the websocket
    headers = {name.lower(): value for name, value in answers[0]["headers"].items()}
    extensions = headers.get("sec-websocket-extensions", "")
    assert "permessage-deflate" in extensions and "server_no_context_takeover" in extensions \
        and "client_no_context_takeover" in extensions, headers
    assert "Failed websocket upgrade" not in server.log()


def test_format_helpers(page):
    """The page's pure formatting helpers, as a table (run in the browser, where they live)."""
    results = page.evaluate("""async (cases) => {
        const format = await import('/static/js/format.js');
        return cases.map(([fn, input]) => format[fn](input));
    }""", [[fn, value] for fn, value, _ in FORMAT_CASES])
    assert results == [expected for _, _, expected in FORMAT_CASES]


def test_lost_gpu_and_missing_driver_are_shown_plainly(dashboard, nvml):
    nvml.scenario_gpu_lost(1)
    lost = gpu_card(dashboard, 1)
    expect(lost.locator(".gpu-error")).to_have_text("No readings: GPU is lost")
    expect(lost.locator(".gpu-readings")).to_be_hidden()
    expect(gpu_card(dashboard, 0).locator(".vram-text")).to_have_text("6,144 / 24,564 MiB (25%)")

    nvml.scenario_gpu_back(1)
    expect(lost.locator(".vram-text")).to_have_text("1,024 / 49,140 MiB (2%)")

    nvml.scenario_no_driver()
    expect(dashboard.locator("#nvml-error")).to_be_visible()
    expect(dashboard.locator("#nvml-error")).to_contain_text("GPU readings unavailable")
    expect(dashboard.locator(".gpu-card")).to_have_count(0)
    expect(dashboard.locator("#process-rows")).to_contain_text("Unavailable")
    # The models keep working without NVML.
    expect(available_row(dashboard, "llama3.2:latest")).to_be_visible()

    nvml.scenario_driver_appears()
    expect(gpu_card(dashboard, 0).locator(".vram-text")).to_have_text("6,144 / 24,564 MiB (25%)", timeout=15_000)
    expect(dashboard.locator("#nvml-error")).to_be_hidden()


def test_load_and_unload_a_model(dashboard, fake_ollama):
    row = available_row(dashboard, "llama3.2:latest")
    expect(row.locator(".model-details")).to_contain_text("Family: llama · Parameters: 3.2B · Quantization: Q4_K_M")
    expect(row).to_contain_text("2.0 GB")
    expect(loaded_row(dashboard, "llama3.2:latest")).to_have_count(0)
    row.get_by_role("button", name="Load llama3.2:latest").click()

    loaded = loaded_row(dashboard, "llama3.2:latest")
    expect(loaded).to_be_visible()
    expect(loaded).to_contain_text("100% GPU")
    expect(loaded).to_contain_text("until unloaded")
    expect(row.locator(".badge")).to_have_text("loaded")
    assert fake_ollama.state()["loaded"] == ["llama3.2:latest"]

    loaded.get_by_role("button", name="Unload llama3.2:latest").click()
    expect(loaded_row(dashboard, "llama3.2:latest")).to_have_count(0)
    expect(dashboard.locator("#loaded-rows")).to_contain_text("No model is loaded.")
    expect(dashboard.locator("#loaded-count")).to_have_text("(0)")
    assert fake_ollama.state()["loaded"] == []


def test_download_reaches_100_percent_and_lists_the_model(dashboard, fake_ollama):
    fake_ollama.set_behaviour(pull=SLOW_PULL)
    dashboard.get_by_label("Model name").fill("tinyllama:1.1b")
    dashboard.get_by_role("button", name="Download", exact=True).click()

    entry = job(dashboard, "tinyllama:1.1b")
    expect(entry).to_be_visible()
    seen = set()

    def complete():
        seen.add(entry.locator("progress").evaluate("el => el.value"))
        return entry.get_attribute("data-status") == "complete"

    wait_until(complete, timeout_s=15)
    assert any(0 < value < 100 for value in seen), seen  # the bar moved on the way
    expect(entry.locator(".job-status")).to_have_text("Complete")
    expect(entry.locator(".job-percent")).to_have_text("100.0%")
    expect(entry.locator(".job-bytes")).to_have_text("2.0 GB of 2.0 GB")
    assert entry.locator("progress").evaluate("el => el.value") == 100
    expect(entry.get_by_role("button", name="Cancel download of tinyllama:1.1b")).to_be_hidden()
    expect(available_row(dashboard, "tinyllama:1.1b")).to_be_visible()


def test_download_errors_are_shown_where_they_happen(dashboard, fake_ollama):
    name_box = dashboard.get_by_label("Model name")
    name_box.fill("../etc/passwd")
    dashboard.get_by_role("button", name="Download", exact=True).click()
    expect(dashboard.locator("#download-error")).not_to_be_empty()
    expect(name_box).to_have_attribute("aria-invalid", "true")

    name_box.fill("does-not-exist")
    dashboard.get_by_role("button", name="Download", exact=True).click()
    entry = job(dashboard, "does-not-exist")
    expect(entry).to_have_attribute("data-status", "error")
    expect(entry.locator(".job-error")).to_contain_text("file does not exist")
    expect(dashboard.locator("#download-error")).to_be_empty()


def test_cancel_a_download(dashboard, fake_ollama):
    fake_ollama.set_behaviour(pull={**SLOW_PULL, "hang_after_lines": 4})
    dashboard.get_by_label("Model name").fill("phi3:mini")
    dashboard.get_by_role("button", name="Download", exact=True).click()
    entry = job(dashboard, "phi3:mini")
    expect(entry).to_have_attribute("data-status", "downloading")
    entry.get_by_role("button", name="Cancel download of phi3:mini").click()
    expect(entry).to_have_attribute("data-status", "cancelled")
    expect(entry.locator(".job-status")).to_have_text("Cancelled")
    wait_until(lambda: "phi3:mini" in fake_ollama.cancelled_pulls())
    expect(available_row(dashboard, "phi3:mini")).to_have_count(0)


def test_delete_asks_first(dashboard, fake_ollama):
    row = available_row(dashboard, "all-minilm:latest")
    row.get_by_role("button", name="Delete all-minilm:latest").click()
    dialog = dashboard.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Delete all-minilm:latest?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(row).to_be_visible()
    assert "all-minilm:latest" in [m["name"] for m in fake_ollama.state()["models"]]

    row.get_by_role("button", name="Delete all-minilm:latest").click()
    dialog.get_by_role("button", name="Delete").click()
    expect(available_row(dashboard, "all-minilm:latest")).to_have_count(0)
    expect(dashboard.locator("#available-count")).to_have_text("(2)")
    assert "all-minilm:latest" not in [m["name"] for m in fake_ollama.state()["models"]]


def test_reload_mid_download_finds_the_job_again(dashboard, fake_ollama, nvml, server):
    fake_ollama.set_behaviour(pull={**SLOW_PULL, "hang_after_lines": 9})
    fake_ollama.set_loaded([{"name": "qwen2.5-coder:7b"}])
    dashboard.get_by_label("Model name").fill("mistral:7b")
    dashboard.get_by_role("button", name="Download", exact=True).click()
    entry = job(dashboard, "mistral:7b")
    expect(entry.locator(".job-percent")).not_to_have_text("0.0%")
    before = float(entry.locator(".job-percent").inner_text().rstrip("%"))

    dashboard.reload()
    expect(dashboard.locator("#dashboard-view")).to_be_visible()  # still logged in
    entry = job(dashboard, "mistral:7b")
    expect(entry).to_have_attribute("data-status", "downloading")
    expect(entry.locator(".job-percent")).not_to_have_text("0.0%")
    assert float(entry.locator(".job-percent").inner_text().rstrip("%")) >= before
    assert entry.locator("progress").evaluate("el => el.value") >= before
    expect(entry.get_by_role("button", name="Cancel download of mistral:7b")).to_be_visible()

    # Let the chart gather some movement, then keep a picture of the dashboard for the README.
    for step in range(12):
        used = 6144 + 900 * step + (600 if step % 3 == 0 else 0)
        nvml.apply(two_gpus().replace_gpu(0, used_bytes=used * MIB, utilization=30 + 4 * step)
                   .replace_gpu(1, used_bytes=(1024 + 400 * step) * MIB))
        time.sleep(0.25)
    expect(gpu_card(dashboard, 0).locator(".vram-text")).to_contain_text(f"{used:,}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = dashboard.screenshot()
    (ARTIFACTS / "dashboard-1280x800.png").write_bytes(shot)
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        (REPO / "docs" / "screenshot.png").write_bytes(shot)
    assert dashboard.viewport_size == VIEWPORT

    entry.get_by_role("button", name="Cancel download of mistral:7b").click()
    expect(entry).to_have_attribute("data-status", "cancelled")


def test_ollama_unreachable_banner_while_gpus_keep_working(dashboard, fake_ollama, nvml):
    fake_ollama.stop()
    try:
        dashboard.get_by_role("button", name="Refresh").click()
        banner = dashboard.locator("#ollama-banner")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("OLLAMA_HOST")
        expect(banner).to_contain_text(fake_ollama.url.removeprefix("http://"))
        expect(dashboard.locator("#available-rows")).to_contain_text("Ollama is unreachable")
        nvml.apply(two_gpus().replace_gpu(0, used_bytes=9000 * MIB))
        expect(gpu_card(dashboard, 0).locator(".vram-text")).to_have_text("9,000 / 24,564 MiB (37%)")
    finally:
        fake_ollama.start()
    dashboard.get_by_role("button", name="Refresh").click()
    expect(dashboard.locator("#ollama-banner")).to_be_hidden()
    expect(available_row(dashboard, "llama3.2:latest")).to_be_visible()


def test_logout_and_expired_session_return_to_login(dashboard, server):
    token = api_token(dashboard)
    dashboard.get_by_role("button", name="Log out").click()
    expect(dashboard.get_by_role("heading", name="Log in")).to_be_visible()
    expect(dashboard.locator("#dashboard-view")).to_be_hidden()
    assert api_token(dashboard) is None
    assert api_get(server, "/api/auth/me", token).status_code == 401

    # A session that dies elsewhere (here: logged out through the API) sends the page back too.
    log_in(dashboard, server)
    token = api_token(dashboard)
    requests.post(server.url + "/api/auth/logout", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    expect(dashboard.get_by_role("heading", name="Log in")).to_be_visible()
    expect(dashboard.locator("#login-error")).to_have_text("Your session has ended. Please log in again.")


def test_phone_width_and_dark_mode(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark", is_mobile=True)
    try:
        page = context.new_page()
        page.goto(server.url + "/")
        log_in(page, server)
        expect(gpu_card(page, 1).locator(".vram-text")).to_be_visible()
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways at phone width ({width}px)"
        background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 18, 23)", background
    finally:
        context.close()
