"""postman/ is what scripts/postman.sh makes from the current OpenAPI document (regenerate to fix)."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.live import REPO

POSTMAN = REPO / "postman"
COLLECTION = POSTMAN / "vram-dashboard.postman_collection.json"
ENVIRONMENT = POSTMAN / "vram-dashboard.postman_environment.json"


def test_committed_collection_is_what_the_script_generates(tmp_path):
    if not (REPO / "node_modules" / "openapi-to-postmanv2").is_dir():
        pytest.fail("node_modules is missing: run `npm ci` (scripts/test.sh does)", pytrace=False)
    subprocess.run([str(REPO / "scripts" / "postman.sh"), str(tmp_path)], cwd=REPO, check=True,
                   capture_output=True, timeout=120)
    for committed in (COLLECTION, ENVIRONMENT):
        fresh = (tmp_path / committed.name).read_text()
        assert committed.read_text() == fresh, f"{committed.name} is stale: run ./scripts/postman.sh and commit postman/"


def test_every_request_has_tests_and_the_login_keeps_the_token():
    collection = json.loads(COLLECTION.read_text())
    items = collection["item"]
    assert items[0]["request"]["url"]["path"] == ["api", "auth", "login"]
    assert items[-1]["request"]["url"]["path"] == ["api", "auth", "logout"]
    assert "pm.collectionVariables.set(\"token\"" in "\n".join(items[0]["event"][0]["script"]["exec"])
    assert collection["auth"]["bearer"][0]["value"] == "{{token}}"
    for item in items:
        script = "\n".join(item["event"][0]["script"]["exec"])
        for test in ("status is ", "content type is documented", "body matches the schema"):
            assert test in script, f"{item['name']}: {test}"
    body = json.loads(items[0]["request"]["body"]["raw"])
    assert body == {"username": "{{username}}", "password": "{{password}}"}


def test_environment_names_the_base_url_and_the_credentials():
    values = {v["key"]: v for v in json.loads(ENVIRONMENT.read_text())["values"]}
    assert set(values) == {"baseUrl", "username", "password"}
    assert values["password"]["type"] == "secret" and values["password"]["value"] == ""
