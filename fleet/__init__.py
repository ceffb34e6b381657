"""The fleet: several processes and GPU hosts sharing one Redis (REDIS_URL) and one database.

link.py owns the connection to Redis; bus.py carries ended credentials between processes;
registry.py keeps the fleet view; routes.py answers /api/fleet and forwards /api/nodes/<node>/….
The Socket.IO message queue is sockets/queue.py; the login throttle's and the downloads' shared
state live beside their own code (auth/throttle.py, ollama_client/download_owners.py).
"""


def init_app(app, services) -> None:
    """Register /api/fleet and /api/nodes/<node>/<path>."""
    from fleet import routes

    app.register_blueprint(routes.bp)
