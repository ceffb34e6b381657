"""The OpenAPI document: YAML fragments beside the routes, merged on first use; GET /api/openapi.json and /docs.

Each feature describes its own routes in a fragment next to its code — `<package>/openapi.yaml`,
or `<module>.openapi.yaml` beside a top-level module — holding `paths` and the `components` only it
uses. `base.yaml` here holds what they share (the error shape, model operations, the security
schemes, the common error responses, the Socket.IO events). Top-level keys starting with `x-` in a
fragment are YAML anchors for its own reuse and are dropped from the document.

The fragments are found on disk, not through the blueprints, so the document does not depend on
the order create_app registers things in; tests/test_openapi.py compares it with the URL map in
both directions, so a route without a fragment (or a fragment without its route) fails.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any, Iterable

from flask import Blueprint, Flask, Response, send_from_directory

import services as services_module
from auth.permissions import public
from ollama_client.names import DEFAULT_REGISTRIES, name_pattern

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(__file__).resolve().parent
BASE = PACKAGE_DIR / "base.yaml"
FRAGMENT = "openapi.yaml"
DOCUMENT_PATH = "/api/openapi.json"
# Methods the document describes; HEAD and OPTIONS are Flask's automatic answers on every rule.
METHODS = ("get", "put", "post", "delete", "patch")

bp = Blueprint("openapi_doc", __name__)


class OpenApiFragmentError(Exception):
    """Two fragments describe the same thing, or a fragment is not shaped like one."""


def fragment_paths(root: Path = ROOT) -> list[Path]:
    """Return every fragment: <package>/openapi.yaml and <module>.openapi.yaml, sorted."""
    packages = [p / FRAGMENT for p in sorted(root.iterdir())
                if (p / "__init__.py").is_file() and (p / FRAGMENT).is_file()]
    modules = [p for p in sorted(root.glob("*." + FRAGMENT)) if p.with_name(p.name[:-len(FRAGMENT) - 1] + ".py").is_file()]
    return packages + modules


def build_document(version: str, registries: Iterable[str] = DEFAULT_REGISTRIES,
                   root: Path = ROOT) -> dict[str, Any]:
    """Merge base.yaml and every fragment into one OpenAPI document."""
    document = _load(BASE)
    document["info"]["version"] = version
    # The grammar comes from the validator itself, so the document cannot drift from it.
    document["components"]["schemas"]["ModelName"]["pattern"] = name_pattern(registries)
    document.setdefault("paths", {})
    for path in fragment_paths(root):
        merge_fragment(document, _load(path), source=str(path.relative_to(root)))
    return document


def merge_fragment(document: dict[str, Any], fragment: dict[str, Any], *, source: str) -> None:
    """Add one fragment's paths and components to `document`; a duplicate raises."""
    unknown = {k for k in fragment if not k.startswith("x-")} - {"paths", "components"}
    if unknown:
        raise OpenApiFragmentError(f"{source}: only paths and components belong in a fragment, not {sorted(unknown)}")
    for url, item in (fragment.get("paths") or {}).items():
        target = document["paths"].setdefault(url, {})
        for method, operation in item.items():
            if method in target:
                raise OpenApiFragmentError(f"{source}: {method.upper()} {url} is already described")
            target[method] = operation
    for kind, entries in (fragment.get("components") or {}).items():
        section = document.setdefault("components", {}).setdefault(kind, {})
        for name, value in entries.items():
            if name in section and section[name] != value:
                raise OpenApiFragmentError(f"{source}: components/{kind}/{name} is already defined differently")
            section[name] = value


def _load(path: Path) -> dict[str, Any]:
    import yaml  # only while the document is built: once a process, on its first request

    # libyaml's loader when PyYAML has it: the pure-Python one takes ~150 ms for the fragments.
    with path.open(encoding="utf-8") as stream:
        data = yaml.load(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(data, dict):
        raise OpenApiFragmentError(f"{path}: not a YAML mapping")
    # Anchors are resolved by now; copies keep one fragment's edits from reaching another's.
    return copy.deepcopy(data)


@bp.get(DOCUMENT_PATH)
@public
def openapi_document():
    """Serve the document: built on the first request (~0.5 s of CPU and PyYAML that an idle
    server does without), then the same bytes."""
    from health import VERSION

    registries = tuple(services_module.current().config.ollama_allowed_registries)
    return Response(document_json(VERSION, registries), mimetype="application/json")


@bp.get("/docs")
def docs_page():
    """Serve Swagger UI for the document (vendored, no inline script)."""
    return send_from_directory(PACKAGE_DIR, "docs.html", mimetype="text/html")


@functools.lru_cache(maxsize=8)
def document_json(version: str, registries: tuple[str, ...]) -> bytes:
    """Return the document as JSON bytes; built once per process for each setting it depends on."""
    return json.dumps(build_document(version, registries), separators=(",", ":"), ensure_ascii=False).encode()


def init_app(app: Flask, services) -> None:
    """Register the document's routes."""
    app.register_blueprint(bp)
