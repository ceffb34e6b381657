"""Ollama: the HTTP client, the model routes, downloads (and, in proxy.py, the /ollama proxy)."""
from __future__ import annotations

from ollama_client.client import OllamaClient
from ollama_client.downloads import DownloadManager
from ollama_client.fit_service import FitAdvisor
from ollama_client.model_index import ModelIndex
from ollama_client.registry import RegistryClient

__all__ = ["DownloadManager", "OllamaClient", "init_app"]


def init_app(app, services) -> None:
    """Build the Ollama client and download manager, and register the model routes."""
    from ollama_client import routes

    client = OllamaClient(services.config.ollama_host)
    services.ollama = client
    # Late-bound: the hub is looked up at publish time, so a test may swap it.
    services.downloads = DownloadManager(client, lambda event, payload: services.hub.broadcast(event, payload))
    services.model_index = ModelIndex(client)
    registry = RegistryClient(services.config.ollama_allowed_registries)
    services.fit = FitAdvisor(client, services.model_index, registry,
                              lambda: services.poller.latest.snapshot if services.poller.latest else None)
    app.register_blueprint(routes.bp)
    services.shutdown_hooks.append(registry.close)
    services.shutdown_hooks.append(client.close)
    services.shutdown_hooks.append(services.downloads.shutdown)  # hooks run last-in first
