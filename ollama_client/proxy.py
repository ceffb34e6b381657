"""PLACEHOLDER: the /ollama proxy (to be replaced)."""


def init_app(app, services) -> None:
    """Register the proxy blueprint."""
