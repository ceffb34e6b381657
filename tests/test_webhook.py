"""Webhook delivery against a live receiver on 127.0.0.1: slow, failing with 500, redirecting. Bounded."""
from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import concurrency
from alerts.webhook import WebhookSender
from tests.live import wait_until

ALERT = {"id": 7, "rule": "vram_high", "gpu_index": 0, "state": "firing", "value": 95.0, "threshold": 90.0,
         "started_at": "2026-01-01T00:00:00+00:00", "resolved_at": None, "message": "GPU 0: VRAM 95% used"}


class Receiver:
    """A webhook receiver in a real thread; `mode` is ok, fail (500), redirect (302) or slow."""

    def __init__(self, mode: str = "ok", delay_s: float = 0.0):
        self.mode, self.delay_s = mode, delay_s
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.bodies.append(json.loads(body))
                receiver.headers.append(dict(self.headers))
                if receiver.mode == "slow":
                    concurrency.sleep(receiver.delay_s)
                status = {"ok": 204, "slow": 204, "fail": 500, "redirect": 302}[receiver.mode]
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        # Green threads (threading is monkey-patched), as the server's own: the test's hub serves both.
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(request):
    mode, delay = getattr(request, "param", ("ok", 0.0))
    receiver = Receiver(mode, delay)
    yield receiver
    receiver.close()


def sender(url, **kwargs):
    return WebhookSender(lambda: url, **{"timeout_s": 0.5, "backoff_s": (0.05, 0.1), **kwargs})


def test_delivers_the_alert_as_json(receiver):
    webhook = sender(receiver.url)
    webhook.send(ALERT)
    wait_until(lambda: webhook.delivered == 1)
    assert receiver.bodies == [ALERT]
    assert receiver.headers[0]["Content-Type"] == "application/json"


@pytest.mark.parametrize("receiver", [("fail", 0.0)], indirect=True)
def test_a_failing_webhook_gets_three_tries_and_one_log_line(receiver, caplog):
    webhook = sender(receiver.url)
    with caplog.at_level(logging.WARNING, logger="alerts.webhook"):
        webhook.send(ALERT)
        wait_until(lambda: webhook.failed == 1)
    assert len(receiver.bodies) == 3
    lines = [r for r in caplog.records if r.name == "alerts.webhook"]
    assert len(lines) == 1 and "500" in lines[0].getMessage() and "3 tries" in lines[0].getMessage()


@pytest.mark.parametrize("receiver", [("redirect", 0.0)], indirect=True)
def test_a_redirect_is_not_followed(receiver, caplog):
    webhook = sender(receiver.url)
    webhook.send(ALERT)
    wait_until(lambda: webhook.failed == 1)
    assert len(receiver.bodies) == 3  # every try hit /hook, none /elsewhere
    assert webhook.delivered == 0


@pytest.mark.parametrize("receiver", [("slow", 2.0)], indirect=True)
def test_a_slow_webhook_never_delays_the_sender(receiver):
    webhook = sender(receiver.url, timeout_s=0.3)
    started = time.monotonic()
    webhook.send(ALERT)
    assert time.monotonic() - started < 0.05  # queued, not sent in the caller's time
    wait_until(lambda: webhook.failed == 1, timeout_s=10)
    assert webhook.in_flight == 0


def test_a_dead_webhook_is_a_logged_failure():
    webhook = sender("http://127.0.0.1:9/hook")
    webhook.send(ALERT)
    wait_until(lambda: webhook.failed == 1)


def test_no_url_sends_nothing():
    webhook = WebhookSender(lambda: None)
    webhook.send(ALERT)
    assert webhook.in_flight == 0


@pytest.fixture
def config_overrides(request):
    return dict(getattr(request, "param", {}))


@pytest.mark.parametrize("receiver", [("slow", 3.0)], indirect=True)
def test_alerts_reach_the_webhook_without_delaying_the_poller(receiver, services, clock):
    services.settings.update({"alert_for_seconds": 0, "alert_vram_percent": 1,
                              "alert_webhook_url": receiver.url}, username="admin")
    started = time.monotonic()
    services.poller.tick()
    assert time.monotonic() - started < 1.0
    wait_until(lambda: "vram_high" in {body["rule"] for body in receiver.bodies}, timeout_s=8)
