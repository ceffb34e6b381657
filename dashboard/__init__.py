"""PLACEHOLDER: the browser dashboard at / (owned by the dashboard engineer)."""


def init_app(app, services) -> None:
    """Register the dashboard blueprint."""
