"""Ollama: the HTTP client, the model routes, downloads (and, in proxy.py, the /ollama proxy)."""
from __future__ import annotations

from ollama_client.client import OllamaClient
from ollama_client.downloads import DownloadManager

__all__ = ["DownloadManager", "OllamaClient", "init_app"]


def init_app(app, services) -> None:
    """Register the model routes (the client and download manager are built by create_app)."""
    from ollama_client import routes

    app.register_blueprint(routes.bp)
