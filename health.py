"""GET /health: public liveness with what is (not) available; nothing sensitive."""
from __future__ import annotations

from flask import Blueprint, Flask, jsonify

import services as services_module

VERSION = "0.1.0"
bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    services = services_module.current()
    poller = services.poller
    polled = poller.wait_latest()
    # A reading older than 3 poll intervals: the driver stopped answering in time; what the
    # dashboard shows is not the GPU's state now.
    stale = polled is not None and polled.is_stale(poller.stale_after_s)
    nvml_ok = polled is not None and polled.snapshot.available and not stale
    ollama_ok = services.ollama_reachable()
    return jsonify(status="ok" if nvml_ok and ollama_ok else "degraded", nvml=nvml_ok,
                   ollama=ollama_ok, stale=stale, version=VERSION)


def init_app(app: Flask, services) -> None:
    """Register GET /health."""
    app.register_blueprint(bp)
