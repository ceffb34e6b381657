"""GET /health: public liveness with what is (not) available; nothing sensitive."""
from __future__ import annotations

from flask import Blueprint, Flask, jsonify

import services as services_module

VERSION = "0.1.0"
bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    services = services_module.current()
    polled = services.poller.wait_latest()
    nvml_ok = polled is not None and polled.snapshot.available
    ollama_ok = services.ollama_reachable()
    return jsonify(status="ok" if nvml_ok and ollama_ok else "degraded", nvml=nvml_ok,
                   ollama=ollama_ok, version=VERSION)


def init_app(app: Flask, services) -> None:
    """Register GET /health."""
    app.register_blueprint(bp)
