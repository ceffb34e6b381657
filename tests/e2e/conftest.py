"""Fixtures for the browser tests: one live server with the fakes, headless Debian Chromium.

The tests skip only where Chromium (or Playwright) is missing on a developer's machine; on CI
(`CI` set) a missing browser is an error, so the suite can never pass by not running.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
from pathlib import Path

import eventlet.patcher
import pytest
import requests

from tests.fakes.fake_nvml import FakeNvml
from tests.live import REPO, LiveServer, start_server

CHROMIUM = Path(os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 800}
ARTIFACTS = REPO / "tests" / "artifacts"
POLL_INTERVAL_S = "0.2"
PASSWORD = "e2e-password-1"  # of the users that make_user makes
_names = itertools.count(1)

try:
    from playwright.sync_api import sync_playwright
except ImportError:
    if os.environ.get("CI"):
        raise  # on CI the browser tests must run
    # A developer's machine without Playwright for Python: the browser tests are not collected.
    collect_ignore_glob = ["test_*.py"]


def _unavailable(reason: str) -> None:
    """Skip on a developer's machine; fail on CI, where the browser must be installed."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser tests must run)", pytrace=False)
    pytest.skip(reason)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's report on the item, so fixtures know whether the test failed."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def playwright_instance():
    """Playwright's sync API, started once; stopped only where eventlet has not patched the process.

    tests/conftest.py monkey-patches this process (as app.py does), and then Playwright cannot stop:
    its dispatcher greenlet runs asyncio's loop, whose green select and green Popen switch through
    eventlet's hub, and the hub adopts it as its child. When stop() lets it finish, it returns to
    the hub instead of to the caller, and stop() (like leaving `with sync_playwright()`) never
    returns. The browser is closed by then, and the driver exits by itself when its pipe closes with
    this process, so under the patch it is left to do so; unpatched, it is stopped as usual.
    """
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} not found (apt-get install chromium)")
    playwright = sync_playwright().start()
    yield playwright
    if not eventlet.patcher.is_monkey_patched("select"):
        playwright.stop()


@pytest.fixture(scope="session")
def browser(playwright_instance):
    from playwright.sync_api import expect

    expect.set_options(timeout=10_000)
    browser = playwright_instance.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def nvml(fake_nvml_lib, tmp_path_factory) -> FakeNvml:
    """The fake NVML the server reads: two GPUs (reset before each test by `server`)."""
    fake = FakeNvml(tmp_path_factory.mktemp("e2e_nvml") / "scenario.txt", lib_path=fake_nvml_lib)
    fake.scenario_two_gpus()
    return fake


@pytest.fixture(scope="module")
def server_env_extra() -> dict[str, str]:
    """More environment for this module's server; a module overrides it (e.g. ALERT_FOR_SECONDS)."""
    return {}


@pytest.fixture(scope="module")
def live_server(browser, nvml, fake_ollama_server, tmp_path_factory, server_env_extra):
    """One `python app.py` per module, with the fake NVML, the fake Ollama and fast polling."""
    server = start_server(tmp_path_factory.mktemp("e2e_server"), nvml_lib_dir=nvml.lib_path.parent,
                          nvml_scenario=nvml.scenario_path, ollama_url=fake_ollama_server.url,
                          extra={"VRAM_POLL_INTERVAL_SECONDS": POLL_INTERVAL_S, **server_env_extra})
    yield server
    server.stop()


@pytest.fixture
def server(live_server: LiveServer, nvml: FakeNvml, fake_ollama) -> LiveServer:
    """The live server, with both fakes back at their defaults for this test."""
    nvml.scenario_two_gpus()
    return live_server


@contextlib.contextmanager
def browser_page(browser, server: LiveServer, request):
    """A fresh browser context at 1280×800 on `server`'s dashboard; a screenshot is saved on failure.

    Meant for fixtures (the failure is known at their teardown): `page` here, and modules with
    servers of their own (a fleet) that override `page`.
    """
    context = browser.new_context(viewport=VIEWPORT, color_scheme="light", locale="en-US",
                                  timezone_id="UTC")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda message: message.type == "error" and errors.append(f"console: {message.text}"))
    page.goto(server.url + "/")
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        (ARTIFACTS / f"{name}.server.log").write_text(server.log())
        (ARTIFACTS / f"{name}.console.log").write_text("\n".join(errors))
    context.close()
    # Errors the page expects (a 401 on purpose, a 503 while Ollama is down) are logged by the
    # browser as failed resource loads; anything else is a bug in the page.
    unexpected = [e for e in errors if "Failed to load resource" not in e]
    assert not unexpected, unexpected


@pytest.fixture
def page(browser, server, request):
    """A fresh browser context at 1280×800 on the dashboard; a screenshot is saved on failure."""
    with browser_page(browser, server, request) as page:
        yield page


def log_in(page, server: LiveServer) -> None:
    """Log in through the form and wait for the live dashboard."""
    from playwright.sync_api import expect

    page.locator("#login-form").get_by_label("User name").fill(server.username)
    page.locator("#login-form").get_by_label("Password").fill(server.password)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#dashboard-view")).to_be_visible()
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")


def log_in_as(page, username: str, password: str) -> None:
    """Log in through the form as this user and wait for the live dashboard."""
    from playwright.sync_api import expect

    form = page.locator("#login-form")
    form.get_by_label("User name").fill(username)
    form.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#dashboard-view")).to_be_visible()
    expect(page.locator("#live-status")).to_have_attribute("data-state", "live")


@pytest.fixture
def make_user(server: LiveServer):
    """make_user(role) -> name: a user made through the API (password PASSWORD), deleted afterwards."""
    made: list[str] = []

    def make(role: str = "viewer", prefix: str = "e2e") -> str:
        name = f"{prefix}-{role}-{next(_names)}"
        response = requests.post(f"{server.url}/api/users", headers=server.headers(),
                                 json={"username": name, "password": PASSWORD, "role": role}, timeout=10)
        assert response.status_code == 201, response.text
        made.append(name)
        return name

    yield make
    for name in made:
        requests.delete(f"{server.url}/api/users/{name}", headers=server.headers(), timeout=10)


@pytest.fixture
def dashboard(page, server):
    """The page, logged in, with live data flowing."""
    log_in(page, server)
    return page


def api_token(page) -> str:
    """The session token the page keeps in sessionStorage."""
    return page.evaluate("() => sessionStorage.getItem('vram-dashboard.token')")


def api_get(server: LiveServer, path: str, token: str) -> requests.Response:
    return requests.get(server.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)
