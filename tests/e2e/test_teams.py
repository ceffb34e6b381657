"""The dashboard's team pages in headless Chromium: users, API keys, audit, usage, roles, password."""
from __future__ import annotations

import itertools
import re

import pytest
import requests

from playwright.sync_api import expect

from tests.e2e.conftest import PASSWORD, api_get, api_token, log_in_as  # noqa: E402
from tests.live import LiveServer, wait_until  # noqa: E402

pytestmark = pytest.mark.e2e

_names = itertools.count(1)


def api_login(server: LiveServer, username: str, password: str) -> requests.Response:
    return requests.post(f"{server.url}/api/auth/login", json={"username": username, "password": password}, timeout=10)


def open_page(page, name: str) -> None:
    page.locator("#page-nav").get_by_role("link", name=name, exact=True).click()


def test_the_top_bar_names_the_user_and_role_and_an_admin_sees_every_page(dashboard, server):
    expect(dashboard.locator("#user-name")).to_have_text(server.username)
    expect(dashboard.locator("#user-role")).to_have_text("admin")
    nav = dashboard.locator("#page-nav")
    for name in ("Overview", "Usage", "API keys", "Users", "Audit", "Account"):
        expect(nav.get_by_role("link", name=name, exact=True)).to_be_visible()
    expect(dashboard.locator("#available-rows button[data-action='load']").first).to_be_visible()


def test_users_page_creates_changes_role_disables_resets_and_deletes(dashboard, server):
    open_page(dashboard, "Users")
    expect(dashboard.locator("#page-users")).to_be_visible()
    expect(dashboard.locator(f'#users-rows tr[data-user="{server.username}"]')).to_be_visible()
    name = f"e2e-carol-{next(_names)}"
    form = dashboard.locator("#user-form")
    form.get_by_label("User name").fill(name)
    form.get_by_label("Password").fill(PASSWORD)
    form.get_by_label("Role").select_option("user")
    form.get_by_role("button", name="Create user").click()
    row = dashboard.locator(f'#users-rows tr[data-user="{name}"]')
    expect(row).to_be_visible()
    expect(row.get_by_label(f"Role of {name}")).to_have_value("user")

    def user(username=name):
        users = requests.get(f"{server.url}/api/users", headers=server.headers(), timeout=10).json()["users"]
        return next((u for u in users if u["username"] == username), None)

    row.get_by_label(f"Role of {name}").select_option("operator")
    expect(dashboard.locator("#users-status")).to_contain_text(f"User {name} updated")
    wait_until(lambda: user()["role"] == "operator")

    row.get_by_role("button", name="Disable").click()
    expect(row.locator('[data-field="status"]')).to_have_text("disabled")
    assert user()["disabled"] is True
    assert api_login(server, name, PASSWORD).status_code == 401
    row.get_by_role("button", name="Enable").click()
    expect(row.locator('[data-field="status"]')).to_have_text("active")

    row.get_by_role("button", name="Reset password").click()
    dialog = dashboard.locator("#reset-dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_label(f"New password for {name}").fill("a-brand-new-password")
    dialog.get_by_role("button", name="Set password").click()
    expect(dashboard.locator("#users-status")).to_contain_text(f"Password of {name} reset")
    assert api_login(server, name, "a-brand-new-password").status_code == 200
    assert api_login(server, name, PASSWORD).status_code == 401

    # The bootstrap administrator (from the environment) and yourself cannot be deleted or disabled.
    me = dashboard.locator(f'#users-rows tr[data-user="{server.username}"]')
    expect(me.get_by_role("button", name="Delete")).to_have_count(0)
    expect(me.get_by_role("button", name="Disable")).to_have_count(0)

    row.get_by_role("button", name=f"Delete {name}").click()
    confirm = dashboard.locator("#confirm-dialog")
    expect(confirm).to_contain_text(name)
    confirm.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    assert user() is None


def test_api_keys_page_shows_the_key_once_with_copy_and_revokes_it(dashboard, server):
    open_page(dashboard, "API keys")
    scopes = dashboard.locator("#key-scopes input[type=checkbox]")
    expect(scopes).to_have_count(4)  # an admin may give a key every scope
    expect(dashboard.locator('#key-scopes input[value="read"]')).to_be_checked()
    expect(dashboard.locator('#key-scopes input[value="models"]')).not_to_be_checked()
    dashboard.locator("#key-form").get_by_label("Name", exact=True).fill("e2e grafana")
    dashboard.locator('#key-scopes input[value="metrics"]').check()
    dashboard.get_by_label("Expires after (days, optional)").fill("30")
    dashboard.get_by_role("button", name="Create key").click()
    secret_box = dashboard.locator("#key-secret")
    expect(secret_box).to_be_visible()
    expect(secret_box.get_by_role("button", name="Copy")).to_be_visible()
    secret = dashboard.locator("#key-secret-value").inner_text()
    assert re.fullmatch(r"vdk_[A-Za-z0-9_-]{43}", secret)
    row = dashboard.locator("#keys-rows tr", has_text="e2e grafana")
    expect(row).to_be_visible()
    expect(row).to_contain_text(secret[:12])
    expect(row).to_contain_text("read, proxy, metrics")
    assert secret not in dashboard.locator("#keys-table").inner_text()  # the list never shows it

    me = requests.get(f"{server.url}/api/auth/me", headers={"X-API-Key": secret}, timeout=10)
    assert me.status_code == 200 and me.json()["auth"] == "api_key"

    # Shown once: leaving the page forgets it.
    open_page(dashboard, "Overview")
    open_page(dashboard, "API keys")
    expect(secret_box).to_be_hidden()
    expect(dashboard.locator("#key-secret-value")).to_have_text("")

    row.get_by_role("button", name="Revoke e2e grafana").click()
    expect(row).to_have_count(0)
    assert requests.get(f"{server.url}/api/auth/me", headers={"X-API-Key": secret}, timeout=10).status_code == 401


def test_audit_page_shows_login_and_user_create_and_filters_by_action(dashboard, server, make_user):
    name = make_user("viewer")
    open_page(dashboard, "Audit")
    rows = dashboard.locator("#audit-rows tr")
    expect(dashboard.locator('#audit-rows tr[data-action="login"]').first).to_be_visible()
    created = dashboard.locator('#audit-rows tr[data-action="user_create"]', has_text=name)
    expect(created).to_be_visible()
    expect(created).to_contain_text(server.username)

    dashboard.get_by_label("Action").select_option("user_create")
    expect(dashboard.locator('#audit-rows tr[data-action="login"]')).to_have_count(0)
    expect(created).to_be_visible()
    assert rows.count() == dashboard.locator('#audit-rows tr[data-action="user_create"]').count()

    dashboard.get_by_label("Action").select_option("login")
    dashboard.locator("#audit-form").get_by_label("User").fill(name)
    dashboard.get_by_role("button", name="Filter").click()
    expect(dashboard.locator("#audit-rows tr.empty")).to_have_text("No entries.")


def test_usage_page_shows_the_row_of_a_user_who_used_the_proxy(dashboard, server, make_user):
    name = make_user("user")
    token = api_login(server, name, PASSWORD).json()["token"]
    answer = requests.post(f"{server.url}/ollama/api/generate", headers={"Authorization": f"Bearer {token}"},
                           json={"model": "llama3.2:latest", "prompt": "why is the sky blue", "stream": False},
                           timeout=30)
    assert answer.status_code == 200, answer.text
    # Usage is recorded once the answer has ended, in the background.
    admin = api_token(dashboard)
    wait_until(lambda: any(r["user"] == name for r in api_get(server, "/api/usage", admin).json()["rows"]),
               timeout_s=10)

    open_page(dashboard, "Usage")
    row = dashboard.locator(f'#usage-rows tr[data-group="{name}"]')
    expect(row).to_be_visible()
    expect(row.locator("td").first).to_have_text("1")  # one request
    expect(row.locator("td").nth(2)).to_have_text("5")  # prompt tokens, as the fake counts them
    expect(dashboard.locator("#usage-chart [role=listitem]").last).to_have_attribute(
        "aria-label", re.compile(r": [1-9]\d* requests?"))

    dashboard.get_by_label("Group by").select_option("model")
    expect(dashboard.locator('#usage-rows tr[data-group="llama3.2:latest"]')).to_be_visible()


def test_a_viewer_sees_no_model_buttons_nor_admin_pages(page, server, make_user, fake_ollama):
    requests.post(f"{server.url}/api/models/ollama/load", headers=server.headers(),
                  json={"model_name": "llama3.2:latest"}, timeout=30).raise_for_status()
    name = make_user("viewer")
    log_in_as(page, name, PASSWORD)
    expect(page.locator("#user-name")).to_have_text(name)
    expect(page.locator("#user-role")).to_have_text("viewer")
    expect(page.locator('#available-rows tr[data-model="llama3.2:latest"]')).to_be_visible()
    expect(page.locator('#loaded-rows tr[data-model="llama3.2:latest"]')).to_be_visible()
    for table in ("#available-rows", "#loaded-rows"):
        expect(page.locator(f"{table} button")).to_have_count(0)
    expect(page.get_by_role("button", name="Download")).to_have_count(0)
    nav = page.locator("#page-nav")
    expect(nav.get_by_role("link", name="Users")).to_have_count(0)
    expect(nav.get_by_role("link", name="Audit")).to_have_count(0)
    page.goto(server.url + "/#/users")  # a page the role may not use falls back to the overview
    expect(page.locator("#dashboard-view")).to_be_visible()
    expect(page.locator("#page-users")).to_be_hidden()

    open_page(page, "API keys")
    values = page.locator("#key-scopes input[type=checkbox]").evaluate_all("boxes => boxes.map(b => b.value)")
    assert values == ["read", "metrics"]  # only what a viewer's key may have


def test_change_your_own_password(page, server, make_user):
    name = make_user("user")
    log_in_as(page, name, PASSWORD)
    open_page(page, "Account")
    expect(page.locator("#account-who")).to_have_text(f"Signed in as {name} (user).")
    form = page.locator("#password-form")
    form.get_by_label("Current password").fill("not-my-password")
    form.get_by_label("New password (8–72 bytes)").fill("my-new-password-2")
    form.get_by_label("New password again").fill("my-new-password-2")
    form.get_by_role("button", name="Change password").click()
    expect(page.locator("#password-error")).to_have_text("the current password is wrong")
    expect(page.locator("#page-account")).to_be_visible()  # a wrong password does not end the session

    form.get_by_label("Current password").fill(PASSWORD)
    form.get_by_role("button", name="Change password").click()
    expect(page.locator("#password-status")).to_contain_text("Password changed")
    assert api_login(server, name, "my-new-password-2").status_code == 200
    assert api_login(server, name, PASSWORD).status_code == 401
    # The session that changed it goes on.
    assert api_get(server, "/api/auth/me", api_token(page)).status_code == 200
