"""Alerts and the Settings panel in headless Chromium, driven by the fake NVML's readings.

The module's server fires an alert on the first reading over a threshold (ALERT_FOR_SECONDS=0), so
a test waits one poll (0.2 s), not the default 10 s.
"""
from __future__ import annotations

import time

import pytest
import requests

from playwright.sync_api import expect

from tests.e2e.conftest import PASSWORD, log_in, log_in_as  # noqa: E402
from tests.fakes.fake_nvml import MIB, two_gpus  # noqa: E402
from tests.live import LiveServer, wait_until  # noqa: E402

pytestmark = pytest.mark.e2e

# GPU 0 (an RTX 4090, 24,564 MiB) at 23,000 MiB is 93.6 % used: over the default 90 %.
GPU0_FULL = two_gpus().replace_gpu(0, used_bytes=23_000 * MIB)
GPU0_MESSAGE = "GPU 0 (NVIDIA GeForce RTX 4090): VRAM 93.6% used (threshold 90%)"


@pytest.fixture(scope="module")
def server_env_extra() -> dict[str, str]:
    return {"ALERT_FOR_SECONDS": "0"}


def alerts(server: LiveServer, state: str) -> list[dict]:
    answer = requests.get(f"{server.url}/api/alerts", params={"state": state}, headers=server.headers(), timeout=10)
    answer.raise_for_status()
    return answer.json()["alerts"]


def settings(server: LiveServer) -> dict:
    answer = requests.get(f"{server.url}/api/settings", headers=server.headers(), timeout=10)
    answer.raise_for_status()
    return answer.json()


def patch_settings(server: LiveServer, **changes) -> None:
    requests.patch(f"{server.url}/api/settings", headers=server.headers(), json=changes,
                   timeout=10).raise_for_status()


@pytest.fixture(autouse=True)
def clean_slate(server, nvml):
    """Each test leaves the settings as it found them and no alert firing (both outlive a test)."""
    before = settings(server)["settings"]
    yield
    changed = {name: value for name, value in settings(server)["settings"].items() if value != before[name]}
    if changed:
        patch_settings(server, **{name: "" if before[name] is None else before[name] for name in changed})
    nvml.scenario_two_gpus()
    wait_until(lambda: not alerts(server, "firing"))


def test_an_alert_that_fires_shows_a_toast_and_the_banner_naming_the_gpu_then_clears(dashboard, server, nvml):
    banner = dashboard.locator("#alert-banner")
    expect(banner).to_be_hidden()

    nvml.apply(GPU0_FULL)
    toast = dashboard.locator("#toast-area .toast")
    expect(toast).to_have_text(f"Alert: {GPU0_MESSAGE}")
    expect(toast).to_have_attribute("data-rule", "vram_high")
    expect(banner).to_be_visible()
    expect(dashboard.locator("#alert-banner-text")).to_have_text("1 alert firing")
    item = dashboard.locator("#alert-list li")
    expect(item).to_have_count(1)
    expect(item).to_have_attribute("data-rule", "vram_high")
    expect(item.locator(".alert-gpu")).to_have_text("GPU 0")
    expect(item).to_contain_text(GPU0_MESSAGE)
    [firing] = alerts(server, "firing")
    assert (firing["rule"], firing["gpu_index"], firing["value"]) == ("vram_high", 0, 93.6)

    # The condition keeps holding on every poll: still one alert, one toast.
    time.sleep(0.6)
    expect(toast).to_have_count(1)
    expect(item).to_have_count(1)

    nvml.scenario_two_gpus()  # back to 25 %: resolves after two readings without it
    expect(banner).to_be_hidden()
    expect(item).to_have_count(0)
    assert alerts(server, "firing") == []
    assert alerts(server, "resolved")[0]["id"] == firing["id"]


def test_alerts_firing_before_the_login_are_listed_and_each_clears_on_its_own(page, server, nvml):
    nvml.apply(GPU0_FULL.replace_gpu(1, temperature_c=91))  # and the A6000 over 85 °C
    wait_until(lambda: len(alerts(server, "firing")) == 2)

    log_in(page, server)
    banner = page.locator("#alert-banner")
    expect(banner).to_be_visible()
    expect(page.locator("#alert-banner-text")).to_have_text("2 alerts firing")
    vram = page.locator('#alert-list li[data-rule="vram_high"]')
    hot = page.locator('#alert-list li[data-rule="temperature_high"]')
    expect(vram).to_contain_text(GPU0_MESSAGE)
    expect(hot.locator(".alert-gpu")).to_have_text("GPU 1")
    expect(hot).to_contain_text("GPU 1 (NVIDIA RTX A6000): 91 °C (threshold 85 °C)")
    expect(page.locator("#toast-area .toast")).to_have_count(0)  # a toast is for an alert that fires now

    nvml.apply(GPU0_FULL)  # the A6000 cools down; GPU 0 stays full
    expect(hot).to_have_count(0)
    expect(page.locator("#alert-banner-text")).to_have_text("1 alert firing")
    expect(vram).to_be_visible()


def setting(page, name: str):
    return page.locator(f"#setting-{name}")


def test_an_admin_changes_a_threshold_in_the_settings_panel_and_it_applies_at_once(dashboard, server):
    vram = dashboard.get_by_label("VRAM alert at (% used)")
    expect(vram).to_have_value("90")
    expect(vram).to_be_editable()
    expect(dashboard.locator("#setting-alert_vram_percent-source")).to_have_text(
        settings(server)["sources"]["alert_vram_percent"])
    expect(dashboard.get_by_label("Alert after holding (s)")).to_have_value("0")
    expect(dashboard.locator("#setting-alert_for_seconds-source")).to_have_text("environment")

    vram.fill("20")
    dashboard.get_by_role("button", name="Save").click()
    status = dashboard.locator("#settings-status")
    expect(status).to_have_text("Saved.")
    body = settings(server)
    assert body["settings"]["alert_vram_percent"] == 20
    assert body["sources"]["alert_vram_percent"] == "api"
    assert body["settings"]["alert_for_seconds"] == 0  # only what was edited is sent
    assert body["sources"]["alert_for_seconds"] == "environment"
    expect(dashboard.locator("#setting-alert_vram_percent-source")).to_have_text("api")
    # Applied without a restart: GPU 0 at 25 % is over 20 % now, GPU 1 at 2 % is not.
    item = dashboard.locator('#alert-list li[data-rule="vram_high"]')
    expect(item).to_have_count(1)
    expect(item).to_contain_text("GPU 0 (NVIDIA GeForce RTX 4090): VRAM 25% used (threshold 20%)")

    dashboard.reload()
    expect(dashboard.locator("#dashboard-view")).to_be_visible()
    expect(vram).to_have_value("20")
    expect(dashboard.locator("#setting-alert_vram_percent-source")).to_have_text("api")

    # A value the server refuses is shown, and nothing changes.
    vram.fill("150")
    dashboard.get_by_role("button", name="Save").click()
    expect(status).to_contain_text("alert_vram_percent")
    assert settings(server)["settings"]["alert_vram_percent"] == 20

    # An emptied number is refused too, not sent as 0 (0 s is a valid wait: every alert at once).
    vram.fill("20")
    dashboard.get_by_label("Alert after holding (s)").fill("")
    dashboard.get_by_role("button", name="Save").click()
    expect(status).to_contain_text("alert_for_seconds")
    assert settings(server)["sources"]["alert_for_seconds"] == "environment"


def test_a_non_admin_sees_the_settings_read_only(page, server, make_user):
    patch_settings(server, alert_temperature_c=80, alert_webhook_url="http://127.0.0.1:9/hook")
    # An operator: may manage models, so the panel cannot go by that; only an admin may edit.
    log_in_as(page, make_user("operator"), PASSWORD)
    inputs = page.locator("#settings-form input")
    expect(inputs).to_have_count(6)
    for index in range(6):
        expect(inputs.nth(index)).not_to_be_editable()
    expect(page.get_by_label("Temperature alert at (°C)")).to_have_value("80")
    expect(page.locator("#setting-alert_temperature_c-source")).to_have_text("api")
    expect(page.get_by_label("Webhook URL")).to_have_value("")  # only administrators see it
    expect(page.locator("#settings-form button")).to_have_count(0)
    expect(page.locator("#settings-status")).to_have_text("Only administrators can change these.")
