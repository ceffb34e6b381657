"""GET /docs in Chromium: Swagger UI renders the document offline, within the CSP, and Authorize works."""
from __future__ import annotations

import pytest

from tests.e2e.conftest import VIEWPORT

pytestmark = pytest.mark.e2e


@pytest.fixture
def docs(browser, live_server):
    """The /docs page in a fresh context that may reach nothing but the server itself."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport=VIEWPORT, locale="en-US", timezone_id="UTC")
    outside: list[str] = []

    def only_this_server(route):
        if route.request.url.startswith(live_server.url + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_this_server)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on("console", lambda message: message.type in ("error", "warning") and errors.append(
        f"console {message.type}: {message.text}"))
    page.goto(live_server.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("VRAM Dashboard")
    yield page
    context.close()
    assert not outside, f"/docs tried to reach another origin: {outside}"
    assert not [e for e in errors if "Content Security Policy" in e or "Refused to" in e], errors
    assert not [e for e in errors if e.startswith(("page error", "console error"))], errors


def test_docs_render_every_operation_from_the_document(docs, live_server):
    from playwright.sync_api import expect

    import requests

    document = requests.get(live_server.url + "/api/openapi.json", timeout=10).json()
    count = sum(len(item) for item in document["paths"].values())
    expect(docs.locator(".opblock")).to_have_count(count)
    expect(docs.locator("#operations-vram-vramStatus")).to_be_visible()


def test_authorize_with_a_token_then_try_a_protected_route(docs, live_server):
    from playwright.sync_api import expect

    docs.locator(".btn.authorize").first.click()
    modal = docs.locator(".modal-ux")
    expect(modal.locator(".auth-container").filter(has_text="X-API-Key")).to_be_visible()
    bearer = modal.locator(".auth-container").filter(has_text="bearerAuth")
    bearer.locator("input").fill(live_server.login())
    bearer.locator("button.authorize").click()
    expect(bearer.locator("button", has_text="Logout")).to_be_visible()
    bearer.locator("button.btn-done").click()

    operation = docs.locator("#operations-auth-whoAmI")
    operation.locator(".opblock-summary").first.click()
    operation.locator(".try-out__btn").click()
    operation.locator(".btn.execute").click()
    status = operation.locator(".live-responses-table tbody .response-col_status").first
    expect(status).to_contain_text("200")
    expect(operation.locator(".live-responses-table")).to_contain_text(live_server.username)
