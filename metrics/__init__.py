"""GET /metrics: the Prometheus text format from the server's own state (metrics.collector).

Needs a session or an API key with the `metrics` scope; METRICS_AUTH=false makes it public. The view
is built per app, so that one app's setting never changes another's (tests create many).
"""
from __future__ import annotations

from flask import Flask, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from auth.permissions import METRICS, public, require
from metrics.collector import DashboardCollector, ProxyCounters

PATH = "/metrics"


def init_app(app: Flask, services) -> None:
    """Register GET /metrics on a registry of its own, fed by the poller, the usage log and the alerts."""
    counters = ProxyCounters()
    services.usage.add_listener(counters.observe)
    poller = services.poller
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DashboardCollector(lambda: poller.latest, lambda: poller.stale_after_s,
                                         lambda: services.alerts.ollama_up, services.alerts.firing_counts, counters))

    def scrape() -> Response:
        """Serve every metric in the Prometheus text format (version 0.0.4)."""
        return Response(generate_latest(registry), mimetype=None, content_type=CONTENT_TYPE_PLAIN_0_0_4)

    view = public(scrape) if not services.config.metrics_auth else require(METRICS)(scrape)
    app.add_url_rule(PATH, "metrics.scrape", view, methods=["GET"])
    app.extensions["metrics_registry"] = registry
