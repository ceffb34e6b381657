"""VRAM Dashboard: create_app() wires the parts; `python app.py` runs the server."""
if __name__ == "__main__":
    # Must run before Flask, requests or anything that imports socket/ssl/threading: otherwise
    # HTTPS requests recurse and green threads block each other.
    import warnings

    # eventlet warns on import that it is in maintenance mode; the README says so once instead.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    import eventlet

    eventlet.monkey_patch()

import logging
import os
import signal
import sys
import time

from flask import Flask
from flask_socketio import SocketIO

import auth
import concurrency
import dashboard
import health
import ollama_client
import ollama_client.proxy
import openapi_doc
import vram.routes
from auth.sessions import InMemorySessionStore
from config import Config, ConfigError, load_config
from errors import register_error_handlers
from security import register_security
from services import Services
from sockets import SocketHub
from sockets.handlers import origin_checker
from vram.nvml import NvmlReader
from vram.poller import VramPoller

log = logging.getLogger("vram_dashboard")


class DashboardFlask(Flask):
    """Flask, with automatic OPTIONS answers that carry no body and so no text/html content type."""

    def make_default_options_response(self):
        response = super().make_default_options_response()
        del response.headers["Content-Type"]  # Flask's default mimetype for its empty body
        return response


def create_app(config: Config | None = None, *, nvml_reader=None, session_store=None) -> Flask:
    """Create and configure an instance of the Flask application."""
    if config is None:
        config = load_config()
    app = DashboardFlask(__name__, static_folder=None)
    # Werkzeug would answer "/api//vram/status" with a 308 redirect whose body is an HTML page;
    # a path that is not a route is a JSON 404 like any other.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = config.max_api_body_bytes
    app.json.sort_keys = False

    socketio = SocketIO(app, async_mode=concurrency.ASYNC_MODE,
                        cors_allowed_origins=origin_checker(config.cors_allowed_origins),
                        logger=False, engineio_logger=False)
    sessions = session_store or InMemorySessionStore(config.session_expiry_s)
    reader = nvml_reader or NvmlReader()
    services = Services(config=config, sessions=sessions, socketio=socketio, nvml=reader, poller=None)
    hub = SocketHub(socketio, sessions, lambda: services.poller.latest)
    services.hub = hub
    services.poller = VramPoller(reader, config.vram_poll_interval_s,
                                 publish=lambda polled: hub.broadcast("vram_update", polled.body),
                                 on_tick=services.expire_sessions)
    services.session_ended_listeners.append(hub.disconnect_token)
    app.extensions["dashboard"] = services

    register_error_handlers(app)
    register_security(app, config)
    auth.protect_api(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(vram.routes.bp)
    app.register_blueprint(health.bp)
    ollama_client.init_app(app, services)
    ollama_client.proxy.init_app(app, services)
    dashboard.init_app(app, services)
    openapi_doc.init_app(app, services)
    auth.init_limiter(app)
    return app


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> int:
    """Validate the configuration, then serve until SIGTERM or Ctrl-C."""
    # Until the server runs there is nothing to wind down: stop at once, without a traceback.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(0))
    try:
        config = load_config()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        return 2
    _configure_logging(config.log_level)
    app = create_app(config)
    services: Services = app.extensions["dashboard"]
    stop_requested_at: float | None = None

    def graceful_stop() -> None:
        services.begin_shutdown()  # "interrupted" events go out before connections close
        concurrency.interrupt_main()

    def on_signal(signum, frame):
        nonlocal stop_requested_at
        now = time.monotonic()
        if stop_requested_at is None:
            stop_requested_at = now
            # Signal handlers may not do green I/O; a green thread can.
            concurrency.spawn(graceful_stop)
        elif now - stop_requested_at > 1.0:
            os._exit(1)  # asked again while winding down (a second Ctrl-C): stop now
        # A repeat within a second is the same request delivered twice (e.g. to the process group).

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    services.poller.tick()  # a first reading before the port opens, so /api/vram/status has one
    services.start_background_tasks()
    log.info("serving on http://%s:%d (Ollama at %s)", config.host, config.port, config.ollama_host)
    try:
        concurrency.serve(app, config.host, config.port, log_output=config.log_level == "DEBUG",
                          max_connections=config.max_connections)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s (set DASHBOARD_HOST / DASHBOARD_PORT)",
                  config.host, config.port, exc.strerror or exc)
        services.shutdown()
        return 1
    log.info("shutting down")
    services.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
