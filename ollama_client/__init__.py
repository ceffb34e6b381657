"""Ollama: the HTTP client, the model routes, downloads (and, in proxy.py, the /ollama proxy)."""
from __future__ import annotations

__all__ = ["DownloadManager", "OllamaClient", "init_app"]


def __getattr__(name: str):
    # Imported on first use, so that `from ollama_client.keep_alive import ...` (as config.py
    # does) does not pull in the HTTP client, eventlet and Flask.
    if name == "OllamaClient":
        from ollama_client.client import OllamaClient

        return OllamaClient
    if name == "DownloadManager":
        from ollama_client.downloads import DownloadManager

        return DownloadManager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def init_app(app, services) -> None:
    """Build the Ollama client and download manager, and register the model routes."""
    from ollama_client import routes
    from ollama_client.client import OllamaClient
    from ollama_client.downloads import DownloadManager

    client = OllamaClient(services.config.ollama_host)
    services.ollama = client
    # Late-bound: the hub is looked up at publish time, so a test may swap it.
    services.downloads = DownloadManager(client, lambda event, payload: services.hub.broadcast(event, payload))
    app.register_blueprint(routes.bp)
    services.shutdown_hooks.append(client.close)
    services.shutdown_hooks.append(services.downloads.shutdown)  # hooks run last-in first
