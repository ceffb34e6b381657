"""The boundary objects one app instance uses, hung on app.extensions["dashboard"]."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from config import Config

log = logging.getLogger(__name__)


@dataclass
class Services:
    """NVML reader, poller, session store, Ollama client... built by create_app, swapped by tests."""

    config: Config
    sessions: Any
    socketio: Any
    nvml: Any
    poller: Any
    hub: Any = None
    ollama: Any = None
    downloads: Any = None
    model_index: Any = None  # ollama_client.model_index.ModelIndex: blob digest -> model name
    fit: Any = None          # ollama_client.fit_service.FitAdvisor
    session_ended_listeners: list[Callable[[str], None]] = field(default_factory=list)
    shutdown_hooks: list[Callable[[], None]] = field(default_factory=list)

    def notify_session_ended(self, token: str) -> None:
        """Tell listeners (open sockets) that a session was logged out or expired."""
        for listener in self.session_ended_listeners:
            listener(token)

    def expire_sessions(self) -> None:
        for session in self.sessions.purge_expired():
            self.notify_session_ended(session.token)

    def ollama_reachable(self) -> bool:
        return self.ollama is not None and self.ollama.is_reachable()

    def start_background_tasks(self) -> None:
        """Start the poller (and anything else that runs on its own)."""
        self.poller.start(self.socketio.start_background_task)

    def begin_shutdown(self) -> None:
        """Run the shutdown hooks (downloads marked interrupted) while sockets can still hear it."""
        hooks, self.shutdown_hooks = self.shutdown_hooks, []
        for hook in reversed(hooks):
            hook()

    def shutdown(self) -> None:
        """Stop background work: downloads marked interrupted, the poller, NVML."""
        self.begin_shutdown()
        self.poller.stop()
        self.nvml.shutdown()
