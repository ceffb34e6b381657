"""Usage: every proxied request counted per user, key and model; GET /api/usage."""


def init_app(app, services) -> None:
    """Register GET /api/usage."""
    from usage import routes

    app.register_blueprint(routes.bp)
