"""GET /health: public liveness with what is (not) available; nothing sensitive."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

VERSION = "0.1.0"
bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    services = current_app.extensions["dashboard"]
    polled = services.poller.latest
    nvml_ok = polled is not None and polled.snapshot.available
    ollama_ok = services.ollama_reachable()
    return jsonify(status="ok" if nvml_ok and ollama_ok else "degraded", nvml=nvml_ok,
                   ollama=ollama_ok, version=VERSION)
