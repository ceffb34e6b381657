"""The dashboard's Fleet panel in headless Chromium: two `python app.py` nodes on one real Redis and
one real PostgreSQL (as tests/test_fleet_live.py starts them), each with its own fake GPUs."""
from __future__ import annotations

import re
import signal
from dataclasses import dataclass

import pytest

from playwright.sync_api import expect

from tests.e2e.conftest import POLL_INTERVAL_S, browser_page, log_in  # noqa: E402
from tests.fakes.fake_nvml import MIB, FakeGpu, FakeNvml, Scenario, two_gpus  # noqa: E402
from tests.live import LiveServer, free_port, server_env, start_server, wait_until_up  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.services]
ONE_GPU = Scenario(gpus=(FakeGpu(name="NVIDIA A100-SXM4-80GB", uuid="GPU-11111111-0000-0000-0000-000000000001",
                                 total_bytes=81920 * MIB),))


@dataclass
class Node:
    server: LiveServer
    nvml: FakeNvml


@pytest.fixture
def fleet(tmp_path, fake_nvml_lib, redis_url, postgres_url):
    """Two nodes of one fleet: node-a (two GPUs, migrates the database first), node-b (one A100)."""
    nodes: dict[str, Node] = {}
    for name, scenario in (("node-a", two_gpus()), ("node-b", ONE_GPU)):
        home = tmp_path / name
        home.mkdir()
        fake = FakeNvml(home / "scenario.txt", lib_path=fake_nvml_lib)
        fake.apply(scenario)
        port = free_port()
        env = server_env(home, port=port, nvml_lib_dir=fake_nvml_lib.parent, nvml_scenario=fake.scenario_path,
                         extra={"REDIS_URL": redis_url, "DATABASE_URL": postgres_url, "DASHBOARD_NODE_NAME": name,
                                "DASHBOARD_PUBLIC_URL": f"http://127.0.0.1:{port}",
                                "VRAM_POLL_INTERVAL_SECONDS": POLL_INTERVAL_S})
        nodes[name] = Node(start_server(home, env=env, wait=name == "node-a"), fake)
    wait_until_up(nodes["node-b"].server)
    yield nodes
    for node in nodes.values():
        node.server.stop(signal.SIGKILL)


@pytest.fixture
def page(browser, fleet, request):
    """The dashboard of node-a (overrides conftest's page, whose server is not in a fleet)."""
    with browser_page(browser, fleet["node-a"].server, request) as page:
        yield page


def test_the_fleet_panel_lists_both_nodes_with_their_gpus_and_marks_a_killed_one_stale(page, fleet):
    log_in(page, fleet["node-a"].server)
    panel = page.locator("#fleet-panel")
    expect(panel).to_be_visible()
    expect(panel.locator(".fleet-card")).to_have_count(2)
    a = panel.locator('.fleet-card[data-node="node-a"]')
    b = panel.locator('.fleet-card[data-node="node-b"]')
    expect(a.locator("h3")).to_have_text("node-a")
    expect(a.locator(".fleet-gpus li")).to_have_count(2)
    expect(a.locator(".fleet-gpus li").nth(0)).to_contain_text("0: NVIDIA GeForce RTX 4090")
    expect(a.locator(".fleet-gpus li").nth(0)).to_contain_text("6,144 MiB / 24,564 MiB (25%)")
    expect(a.locator(".fleet-gpus li").nth(1)).to_contain_text("1: NVIDIA RTX A6000")
    expect(b.locator("h3")).to_have_text("node-b")
    expect(b.locator(".fleet-gpus li")).to_have_count(1)
    expect(b.locator(".fleet-gpus li")).to_contain_text("0: NVIDIA A100-SXM4-80GB")
    expect(b.locator(".fleet-gpus li")).to_contain_text("0 MiB / 81,920 MiB (0%)")
    expect(b).to_contain_text("NVML · no Ollama")
    expect(panel.locator(".badge", has_text="stale")).to_have_count(0)
    expect(page.locator("#fleet-node option")).to_have_text(["node-a", "node-b"])

    # node-b's own readings reach node-a's page (fleet_update through Redis).
    fleet["node-b"].nvml.apply(ONE_GPU.replace_gpu(0, used_bytes=40_960 * MIB))
    expect(b.locator(".fleet-gpus li")).to_contain_text("40,960 MiB / 81,920 MiB (50%)")
    expect(b.get_by_role("meter", name="GPU 0 VRAM used")).to_have_attribute("aria-valuenow", "50")

    fleet["node-b"].server.stop(signal.SIGKILL)
    # Stale after 3 poll intervals unheard; the panel re-reads /api/fleet every 5 s.
    expect(b).to_have_class(re.compile(r"\bstale\b"))
    expect(b.locator(".badge")).to_have_text("stale")
    expect(b.locator(".fleet-gpus li")).to_contain_text("0: NVIDIA A100-SXM4-80GB")  # its last reading stays
    expect(a).not_to_have_class(re.compile(r"\bstale\b"))
    expect(a.locator(".badge", has_text="stale")).to_have_count(0)
