"""The boundary objects of one app instance, built by create_app before anything is registered."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app
from flask_socketio import SocketIO

from auth.sessions import SessionStore
from config import Config
from ollama_client.client import OllamaClient
from ollama_client.downloads import DownloadManager
from ollama_client.fit_service import FitAdvisor
from ollama_client.model_index import ModelIndex
from ollama_client.registry import RegistryClient
from sockets.hub import SocketHub
from vram.nvml import NvmlReader
from vram.poller import VramPoller

log = logging.getLogger(__name__)
EXTENSION_KEY = "dashboard"


@dataclass
class Services:
    """NVML reader, poller, session store, Socket.IO hub, Ollama client, downloads: complete and typed."""

    config: Config
    nvml: NvmlReader
    poller: VramPoller
    sessions: SessionStore
    hub: SocketHub
    ollama: OllamaClient
    downloads: DownloadManager
    model_index: ModelIndex   # blob digest -> model name
    registry: RegistryClient  # manifests and GGUF headers of models not downloaded
    fit: FitAdvisor
    _tasks: list[Any] = field(default_factory=list, repr=False)
    _stopping: bool = field(default=False, repr=False)

    @property
    def socketio(self) -> SocketIO:
        return self.hub.socketio

    def attach(self, app: Flask) -> None:
        app.extensions[EXTENSION_KEY] = self

    def ollama_reachable(self) -> bool:
        return self.ollama.is_reachable()

    def start_background_tasks(self) -> None:
        """Start what runs on its own: the poller and the session store's expiry timer."""
        start = self.socketio.start_background_task
        self._tasks = [start(self.poller.run), start(self.sessions.run_expiry)]

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
        self.sessions.stop()
        for task in self._tasks:
            kill = getattr(task, "kill", None)
            if kill is not None:
                kill()
        self._tasks = []
        self.registry.close()
        self.ollama.close()
        return self.nvml.shutdown()


def current() -> Services:
    """Return the Services of the app handling this request."""
    return current_app.extensions[EXTENSION_KEY]
