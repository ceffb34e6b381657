"""Settings a running server may change: GET/PATCH /api/settings, kept in the database."""


def init_app(app, services) -> None:
    """Register /api/settings; a changed poll interval reschedules the poller at once."""
    from settings import routes

    def apply(changed) -> None:
        if "vram_poll_interval_s" in changed:
            services.poller.set_interval(changed["vram_poll_interval_s"])

    services.settings.add_listener(apply)
    app.register_blueprint(routes.bp)
