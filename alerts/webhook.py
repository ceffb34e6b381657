"""POST every alert transition to ALERT_WEBHOOK_URL in the background: bounded, never in anyone's way."""
from __future__ import annotations

import json
import logging
from typing import Any, Callable

import urllib3

import concurrency

log = logging.getLogger(__name__)
TIMEOUT_S = 5.0
TRIES = 3
BACKOFF_S = (1.0, 4.0)  # before the second and the third try
MAX_IN_FLIGHT = 64      # deliveries waiting or running; beyond that a transition is not sent (logged)


class WebhookSender:
    """Deliver JSON to the URL `url()` names at the time of sending (None = no webhook)."""

    def __init__(self, url: Callable[[], str | None], *, timeout_s: float = TIMEOUT_S, tries: int = TRIES,
                 backoff_s: tuple[float, ...] = BACKOFF_S):
        self._url = url
        self._timeout = urllib3.Timeout(total=timeout_s)  # connect and answer together
        self._tries = tries
        self._backoff_s = backoff_s
        # No retries or redirects of urllib3's own: the tries are ours, a redirect is a failure.
        self._pool = urllib3.PoolManager(num_pools=4, retries=False, timeout=self._timeout)
        self.in_flight = 0
        self.delivered = 0
        self.failed = 0

    def send(self, payload: dict[str, Any]) -> None:
        """Queue one delivery and return at once."""
        url = self._url()
        if not url:
            return
        if self.in_flight >= MAX_IN_FLIGHT:
            log.warning("alert %s not sent to the webhook: %d deliveries already pending", payload.get("id"),
                        self.in_flight)
            self.failed += 1
            return
        self.in_flight += 1
        concurrency.spawn(self._deliver, url, payload)

    def _deliver(self, url: str, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        reason = ""
        try:
            for attempt in range(self._tries):
                if attempt:
                    concurrency.sleep(self._backoff_s[min(attempt - 1, len(self._backoff_s) - 1)])
                reason = self._post(url, body)
                if not reason:
                    self.delivered += 1
                    return
            self.failed += 1
            # Once per alert transition, not per try.
            log.warning("alert %s (%s %s) not delivered to the webhook after %d tries: %s", payload.get("id"),
                        payload.get("rule"), payload.get("state"), self._tries, reason)
        finally:
            self.in_flight -= 1

    def _post(self, url: str, body: bytes) -> str:
        """POST once; return "" on a 2xx, else what went wrong."""
        try:
            response = self._pool.request("POST", url, body=body, redirect=False, retries=False,
                                          headers={"Content-Type": "application/json",
                                                   "User-Agent": "vram-dashboard-alerts"})
        except urllib3.exceptions.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        if 200 <= response.status < 300:
            return ""
        if 300 <= response.status < 400:
            return f"answered {response.status} (redirects are not followed)"
        return f"answered {response.status}"

    def close(self) -> None:
        self._pool.clear()
