"""The dashboard's page and static files as the server serves them (no browser needed)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
STATIC = DASHBOARD / "static"
IMPORT = re.compile(r"""^\s*import\s[^'"]*?from\s+['"](?P<path>[^'"]+)['"]""", re.MULTILINE)


def own_modules() -> list[Path]:
    return sorted(p for p in STATIC.rglob("*.js") if "vendor" not in p.parts)


def test_index_is_public_html_with_the_csp(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert b'<script type="module" src="/static/app.js"></script>' in response.data


def test_page_needs_nothing_the_csp_forbids():
    """No inline script or style, no style attributes, nothing fetched from another origin."""
    html = (DASHBOARD / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "inline <script>"
    assert "<style" not in html and not re.search(r"\sstyle=", html)
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html), "a resource from another origin"
    for module in own_modules():
        source = module.read_text()
        assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML", source), f"{module.name}: markup from strings"
        assert not re.search(r"setAttribute\(\s*['\"]style", source), f"{module.name}: style attribute"
        assert "cssText" not in source and "eval(" not in source


@pytest.mark.parametrize("path", sorted(set(re.findall(r'(?:src|href)="(/static/[^"]+)"',
                                                     (DASHBOARD / "index.html").read_text()))))
def test_every_file_the_page_names_is_served(client, path):
    response = client.get(path)
    assert response.status_code == 200, path
    expected = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}[Path(path).suffix]
    assert response.mimetype == expected


@pytest.mark.parametrize("module", own_modules(), ids=lambda p: str(p.relative_to(STATIC)))
def test_every_module_import_resolves(client, module):
    for target in IMPORT.findall(module.read_text()):
        resolved = (module.parent / target).resolve()
        assert resolved.is_file(), f"{module.name} imports missing {target}"
        url = "/static/" + resolved.relative_to(STATIC).as_posix()
        response = client.get(url)
        assert response.status_code == 200 and response.mimetype == "text/javascript", url


def test_vendored_libraries_carry_their_licences():
    readme = (STATIC / "vendor" / "README.md").read_text()
    for folder in (STATIC / "vendor").iterdir():
        if folder.is_dir():
            assert (folder / "LICENSE").is_file(), folder.name
            assert folder.name in readme, f"{folder.name} missing from vendor/README.md"


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/%2e%2e/app.py", "/static/nope.js"])
def test_nothing_outside_static_is_served(client, path):
    assert client.get(path).status_code == 404
