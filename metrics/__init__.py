"""GET /metrics: the Prometheus text format from the server's own state (metrics.collector).

Needs a session or an API key with the `metrics` scope; METRICS_AUTH=false makes it public. The view
is built per app, so that one app's setting never changes another's (tests create many).
"""
from __future__ import annotations

from flask import Flask, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from auth.permissions import METRICS, public, require
from metrics.collector import DashboardCollector, GpuCollector, ProxyCounters
from vram.poller import PolledSnapshot

PATH = "/metrics"


def init_app(app: Flask, services) -> None:
    """Register GET /metrics on a registry of its own, fed by the poller, the usage log and the alerts."""
    counters = ProxyCounters()
    services.usage.add_listener(counters.observe)
    poller = services.poller
    registry = CollectorRegistry(auto_describe=False)
    state = DashboardCollector(lambda: poller.latest, lambda: poller.stale_after_s,
                               lambda: services.alerts.ollama_up, services.alerts.firing_counts, counters)
    registry.register(state)
    gpu_text = PerPollText()

    def scrape() -> Response:
        """Serve every metric in the Prometheus text format (version 0.0.4)."""
        body = generate_latest(registry)
        # The reading nvml_up was judged from: generate_latest ran collect() just now, in this green
        # thread, with no I/O in between for another scrape to run in.
        polled = state.collected
        if polled is not None:
            body += gpu_text.of(polled)
        return Response(body, mimetype=None, content_type=CONTENT_TYPE_PLAIN_0_0_4)

    view = public(scrape) if not services.config.metrics_auth else require(METRICS)(scrape)
    app.add_url_rule(PATH, "metrics.scrape", view, methods=["GET"])
    app.extensions["metrics_registry"] = registry


class PerPollText:
    """The GPU and process series of the latest reading, written out once per poll.

    With 8 GPUs x 50 processes they are ~470 series; prometheus_client writes ~20 us a sample, so
    writing them on every scrape cost ~10 ms, 6x a whole /health request. They are the same bytes
    until the poller takes its next reading, like /api/vram/status's body. The text format lets
    families follow one another in any order, so this text goes after the per-scrape families.
    """

    def __init__(self):
        self._polled: PolledSnapshot | None = None
        self._text = b""

    def of(self, polled: PolledSnapshot) -> bytes:
        if polled is not self._polled:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(GpuCollector(polled))
            self._text, self._polled = generate_latest(registry), polled
        return self._text
