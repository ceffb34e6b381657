"""GPU memory monitoring: the NVML reader, the poller, and the /api/vram routes."""


def init_app(app, services) -> None:
    """Register the /api/vram routes."""
    from vram import routes

    app.register_blueprint(routes.bp)
