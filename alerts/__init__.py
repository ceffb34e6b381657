"""Alerts: rules evaluated on every poll, vram_alert events, the webhook, GET /api/alerts."""


def init_app(app, services) -> None:
    """Register GET /api/alerts (the engine itself is wired into the poller by create_app)."""
    from alerts import routes

    app.register_blueprint(routes.bp)
