"""Ollama: the HTTP client, model routes, downloads and the proxy. PLACEHOLDER wiring (to be replaced)."""
from ollama_client.client import OllamaClient


def init_app(app, services) -> None:
    """Build the Ollama client and register the model routes."""
    services.ollama = OllamaClient(services.config.ollama_host)
