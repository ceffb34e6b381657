"""The boundary objects of one app instance, built by create_app before anything is registered."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app
from flask_socketio import SocketIO

import concurrency
from alerts.engine import AlertEngine
from alerts.webhook import WebhookSender
from audit.log import AuditLog
from auth.accounts import Accounts
from config import Config
from db import Database
from errors import ApiError
from fleet.bus import CredentialBus
from fleet.link import RedisLink
from fleet.registry import Fleet
from ollama_client.client import OllamaClient
from ollama_client.downloads import DownloadManager
from ollama_client.fit_service import FitAdvisor
from ollama_client.model_index import ModelIndex
from ollama_client.registry import RegistryClient
from settings.store import RuntimeSettings
from sockets.hub import SocketHub
from usage.log import UsageLog
from vram.nvml import NvmlReader
from vram.poller import VramPoller

log = logging.getLogger(__name__)
EXTENSION_KEY = "dashboard"
PURGE_EVERY_S = 3600.0


@dataclass
class Services:
    """NVML reader, poller, session store, Socket.IO hub, Ollama client, downloads: complete and typed."""

    config: Config
    nvml: NvmlReader
    poller: VramPoller
    database: Database
    accounts: Accounts        # users, sessions, API keys
    audit: AuditLog
    usage: UsageLog
    hub: SocketHub
    ollama: OllamaClient
    downloads: DownloadManager
    model_index: ModelIndex   # blob digest -> model name
    registry: RegistryClient  # manifests and GGUF headers of models not downloaded
    fit: FitAdvisor
    fleet: Fleet              # this node's entry and every node's (this one alone without REDIS_URL)
    settings: RuntimeSettings  # the values GET/PATCH /api/settings read and change
    alerts: AlertEngine
    webhook: WebhookSender
    redis: RedisLink | None = None     # REDIS_URL, when the server is one of several
    bus: CredentialBus | None = None   # ended credentials to and from the other processes
    _tasks: list[Any] = field(default_factory=list, repr=False)
    _stopping: bool = field(default=False, repr=False)

    @property
    def socketio(self) -> SocketIO:
        return self.hub.socketio

    @property
    def sessions(self) -> Accounts:
        """The session store (the accounts hold users, sessions and keys)."""
        return self.accounts

    def attach(self, app: Flask) -> None:
        app.extensions[EXTENSION_KEY] = self

    def ollama_reachable(self) -> bool:
        return self.ollama.is_reachable()

    def start_background_tasks(self) -> None:
        """Start what runs on its own: the poller, the session store's expiry timer, the fleet entry, the
        sweep for downloads whose process died."""
        start = self.socketio.start_background_task
        self._tasks = [start(self.poller.run), start(self.accounts.run_expiry), start(self._purge_old_records)]
        if self.fleet.shared:  # a fleet of one has nobody to tell: GET /api/fleet builds its entry on demand
            self._tasks.append(start(self.fleet.run))
        if self.bus is not None:
            self._tasks.append(start(self.bus.run))
        if self.downloads.sweeps:  # other processes' downloads whose process died end as interrupted
            self._tasks.append(start(self.downloads.run_sweeps))

    def _purge_old_records(self) -> None:
        """Delete audit entries and usage rows past AUDIT_RETENTION_DAYS, now and every hour."""
        while not self._stopping:
            try:
                removed = self.audit.purge() + self.usage.purge()
                if removed:
                    log.info("deleted %d audit and usage rows older than %d days", removed,
                             self.config.audit_retention_days)
            except ApiError as exc:
                log.warning("could not delete old audit and usage rows: %s", exc.message)
            concurrency.sleep(PURGE_EVERY_S)

    def begin_shutdown(self) -> None:
        """Mark running downloads interrupted while sockets can still hear it."""
        if not self._stopping:
            self._stopping = True
            self.downloads.shutdown()

    def shutdown(self) -> bool:
        """Stop background work: downloads marked interrupted, the poller, expiry, Ollama, NVML.

        Return False when an NVML call is still blocked in the driver's C code.
        """
        self.begin_shutdown()
        self.poller.stop()
        self.fleet.stop()
        if self.bus is not None:
            self.bus.stop()
        manager_stop = getattr(self.socketio.server.manager, "stop", None)
        if manager_stop is not None:
            manager_stop()
        self.accounts.stop()
        try:
            self.usage.flush()  # the last batch of proxied requests
        except ApiError as exc:
            log.warning("usage not written at shutdown: %s", exc.message)
        for task in self._tasks:
            kill = getattr(task, "kill", None)
            if kill is not None:
                kill()
        self._tasks = []
        self.registry.close()
        self.webhook.close()
        self.ollama.close()
        self.database.dispose()
        if self.redis is not None:
            self.redis.close()
        return self.nvml.shutdown()


def current() -> Services:
    """Return the Services of the app handling this request."""
    return current_app.extensions[EXTENSION_KEY]
