"""Ollama: the HTTP client, the model routes, downloads (and, in proxy.py, the /ollama proxy).

Nothing is imported here, so that config.py can read Ollama's keep_alive syntax
(ollama_client.keep_alive) without pulling in the HTTP client, eventlet and Flask.
"""
from __future__ import annotations


def init_app(app, services) -> None:
    """Register the model routes (the client and download manager are built by create_app)."""
    import audit
    from ollama_client import routes

    app.register_blueprint(routes.bp)
    # Each unload that "make room and load" makes is an action of its own in the audit log.
    services.fit.on_unload = lambda name: audit.record("model_unload", target=name, detail="to make room")
