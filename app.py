"""VRAM Dashboard: create_app() wires the parts; `python app.py` runs the server."""
if __name__ == "__main__":
    # Must run before Flask, requests or anything that imports socket/ssl/threading: otherwise
    # HTTPS requests recurse and green threads block each other.
    import os
    import warnings

    # eventlet warns on import that it is in maintenance mode; the README says so once instead.
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    # Names are looked up in a real thread instead (concurrency.resolve_names_in_threads).
    os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")
    import eventlet

    eventlet.monkey_patch()
    import concurrency

    concurrency.resolve_names_in_threads()
    import sys

    import config

    if not config.redis_url_given():
        # python-socketio imports redis-py as it is imported, for a RedisManager that only a server
        # with REDIS_URL uses (fleet/link.py imports it there): without one, that import is
        # refused and python-socketio goes on without it. 3.1 MB less of every server's memory
        # (BENCHMARKS.md, section 4). A None in sys.modules makes `import redis` an ImportError.
        sys.modules["redis"] = None

import logging
import sys
import time
from typing import Callable

from flask import Flask

import alerts
import audit
import auth
import usage
import dashboard
import errors
import fleet
import health
import metrics
import ollama_client
import ollama_client.proxy
import openapi_doc
import security
import server
import settings
import sockets
import vram
from alerts.engine import AlertEngine
from alerts.webhook import WebhookSender
from audit.log import AuditLog
from auth.accounts import Accounts
from auth.credentials import principal_for
from config import Config, ConfigError, ensure_data_dir, load_config
from ollama_client.client import OllamaClient
from ollama_client.downloads import DownloadManager
from ollama_client.history import DownloadHistory
from usage.log import UsageLog
from db import Database, DatabaseStartupError, default_url, describe_url, open_database
from fleet.bus import CredentialBus
from fleet.link import RedisLink, check_reachable, describe_url as describe_redis_url
from fleet.registry import Fleet
from ollama_client.download_owners import DownloadOwners
from services import Services
from settings.store import RuntimeSettings
from ollama_client.fit_service import FitAdvisor
from ollama_client.model_index import ModelIndex
from ollama_client.registry import RegistryClient
from vram.attribution import Attributor
from vram.nvml import NvmlReader
from vram.poller import VramPoller

log = logging.getLogger("vram_dashboard")
# Each registers its routes and hooks through the same door, init_app(app, services). Order is
# the order of their before_request hooks: malformed input is refused before credentials are checked.
PACKAGES = (errors, security, auth, audit, usage, health, vram, ollama_client, ollama_client.proxy,
            fleet, alerts, settings, metrics, dashboard, openapi_doc)


class DashboardFlask(Flask):
    """Flask, with automatic OPTIONS answers that carry no body and so no text/html content type."""

    def make_default_options_response(self):
        response = super().make_default_options_response()
        del response.headers["Content-Type"]  # Flask's default mimetype for its empty body
        return response


def create_app(config: Config | None = None, *, nvml_reader: NvmlReader | None = None,
               database: Database | None = None, clock: Callable[[], float] = time.time) -> Flask:
    """Create and configure an instance of the Flask application.

    Without `database`, opens and migrates DATABASE_URL (raising DatabaseStartupError).
    """
    if config is None:
        config = load_config()
    if database is None:
        database = open_database(config.database_url or default_url(config.data_dir))
    app = DashboardFlask(__name__, static_folder=None)
    # Werkzeug would answer "/api//vram/status" with a 308 redirect whose body is an HTML page;
    # a path that is not a route is a JSON 404 like any other.
    app.url_map.merge_slashes = False
    app.config["MAX_CONTENT_LENGTH"] = config.max_api_body_bytes
    app.json.sort_keys = False

    # The boundary objects first, each complete; then one Services that holds them all.
    reader = nvml_reader or NvmlReader()
    accounts = Accounts(database, config.session_expiry_s, clock=clock)
    ollama = OllamaClient(config.ollama_host)
    model_index = ModelIndex(ollama)  # blob digest -> model name, for attributing runner processes
    registry = RegistryClient(config.ollama_allowed_registries)
    # With REDIS_URL: the Socket.IO queue, ended credentials, the fleet, throttle and downloads shared.
    link = RedisLink(config.redis_url) if config.redis_url else None
    hub = sockets.SocketHub(sockets.create_socketio(app, config.cors_allowed_origins, link), principal_for)
    accounts.add_listener(hub.credentials_ended)
    bus = CredentialBus(link, accounts, hub.credentials_ended) if link is not None else None
    runtime_settings = RuntimeSettings(config, database, clock=clock)  # the environment, under the API's values
    webhook = WebhookSender(lambda: runtime_settings.value("alert_webhook_url"))
    alert_engine = AlertEngine(database, runtime_settings, ollama_reachable=ollama.is_reachable,
                               notify=(lambda alert: hub.broadcast("vram_alert", alert), webhook.send), clock=clock)

    def nvml_ok() -> bool:
        polled = poller.latest
        return polled is not None and polled.snapshot.available and not polled.is_stale(poller.stale_after_s)

    def latest_status() -> dict | None:
        polled = poller.latest
        return None if polled is None else polled.body

    interval_s = runtime_settings.value("vram_poll_interval_s")
    fleet_view = Fleet(config.node_name, config.public_url or _local_url(config), lambda: poller.interval_s,
                       latest_status=latest_status, nvml_ok=nvml_ok, ollama_ok=ollama.is_reachable,
                       broadcast=hub.broadcast, publish_vram=hub.publish_vram, link=link, clock=clock)
    poller = VramPoller(reader, interval_s, publish=fleet_view.publish_vram,
                        annotate=Attributor(model_index.name_for_blob, on_unknown=model_index.request_refresh),
                        on_reading=(alert_engine.observe,))
    services = Services(
        config=config, nvml=reader, database=database, accounts=accounts, hub=hub, ollama=ollama, poller=poller,
        audit=AuditLog(database, config.audit_retention_days, clock=clock),
        usage=UsageLog(database, config.audit_retention_days, clock=clock),
        downloads=DownloadManager(ollama, hub.broadcast, clock=clock,
                                  history=DownloadHistory(database, config.node_name),
                                  owners=DownloadOwners(link, config.node_name) if link is not None else None),
        model_index=model_index, registry=registry,
        fit=FitAdvisor(ollama, model_index, registry, poller.latest_snapshot),
        fleet=fleet_view, redis=link, bus=bus, settings=runtime_settings, alerts=alert_engine, webhook=webhook)
    services.attach(app)
    for package in PACKAGES:
        package.init_app(app, services)
    return app


def _local_url(config: Config) -> str:
    """Where this server reaches itself when DASHBOARD_PUBLIC_URL is not set (a fleet of one)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.host, config.host)
    return f"http://[{host}]:{config.port}" if ":" in host else f"http://{host}:{config.port}"


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main() -> int:
    """Validate the configuration, then serve until SIGTERM or Ctrl-C."""
    lifecycle = server.Lifecycle()
    lifecycle.install_signal_handlers()  # from here on a signal at any moment is a clean exit 0
    try:
        config = load_config()
        problem = ensure_data_dir(config)
        if problem:
            raise ConfigError([problem])
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        return 2
    if lifecycle.stop_requested:
        return 0
    _configure_logging(config.log_level)
    if config.redis_url:
        problem = check_reachable(config.redis_url)
        if problem:
            print(f"configuration error: REDIS_URL: cannot reach {describe_redis_url(config.redis_url)}: {problem}",
                  file=sys.stderr)
            return 2
    url = config.database_url or default_url(config.data_dir)
    try:
        database = open_database(url)
    except DatabaseStartupError as exc:
        if lifecycle.stop_requested:  # e.g. systemd's SIGTERM to the whole unit ended the migration
            return 0
        print(f"configuration error: DATABASE_URL: cannot use {describe_url(url)}: {exc}", file=sys.stderr)
        return 2
    app = create_app(config, database=database)
    services: Services = app.extensions["dashboard"]
    code = _serve(config, app, services, lifecycle)
    if not services.shutdown():
        # A driver call that never returns holds its OS thread, and the interpreter's exit would
        # wait for it forever. Everything of ours is closed: end without waiting.
        server.exit_now(code)
    return code


def _serve(config: Config, app: Flask, services: Services, lifecycle: server.Lifecycle) -> int:
    if lifecycle.stop_requested:
        return 0
    try:
        listener = server.listen(config.host, config.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s (set DASHBOARD_HOST / DASHBOARD_PORT)",
                  config.host, config.port, server.describe_listen_error(exc))
        return 1
    log.info("serving on http://%s:%d (Ollama at %s)", config.host, config.port, config.ollama_host)
    fd_limit = server.raise_fd_limit()
    max_connections = server.connection_cap(config.max_connections, fd_limit)
    if max_connections < config.max_connections:
        log.warning("at most %d connections, not DASHBOARD_MAX_CONNECTIONS=%d: the limit on open files is %d "
                    "(raise LimitNOFILE / ulimit -n)", max_connections, config.max_connections, fd_limit)
    # The first NVML reading is taken in the background: the port is open even if the driver hangs.
    services.start_background_tasks()
    server.release_startup_memory()
    lifecycle.run(listener, app, on_stop=services.begin_shutdown,
                  log_output=config.log_level == "DEBUG", max_connections=max_connections,
                  refusal_headers=security.SECURITY_HEADERS, limits=server.ConnectionLimits(
                      header_timeout_s=config.header_timeout_s, keepalive_timeout_s=config.keepalive_timeout_s,
                      body_timeout_s=config.body_timeout_s, max_per_client=config.max_connections_per_client))
    log.info("shutting down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
