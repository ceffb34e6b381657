"""Socket.IO's server object: its client manager, who may connect from where, and its own answers."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Iterable
from urllib.parse import urlsplit

from flask import Flask
from flask_socketio import SocketIO

import concurrency
from security import SECURITY_HEADERS
from sockets.broadcast import BroadcastManager

if TYPE_CHECKING:
    from fleet.link import RedisLink


def create_socketio(app: Flask, cors_allowed_origins: tuple[str, ...], link: RedisLink | None = None) -> SocketIO:
    """Build Flask-SocketIO on the app, with the broadcast manager and the error middleware.

    With a RedisLink (REDIS_URL) the manager is the message queue's, delivering locally the same way.
    """
    if link is not None:
        from sockets.queue import RedisBroadcastManager

        manager: BroadcastManager = RedisBroadcastManager(link)
    else:
        manager = BroadcastManager()
    socketio = SocketIO(app, async_mode=concurrency.ASYNC_MODE, client_manager=manager,
                        cors_allowed_origins=origin_checker(cors_allowed_origins),
                        logger=False, engineio_logger=False)
    manager.writer.install(socketio.server)
    # SocketIO(app) put its middleware on app.wsgi_app; this one goes around it.
    app.wsgi_app = EngineIoResponses(app.wsgi_app)  # type: ignore[method-assign]
    return socketio


def origin_checker(allowed: tuple[str, ...]):
    """Return engineio's cors_allowed_origins callable: same origin, or one listed in the config."""
    allowed_set = frozenset(allowed)

    def is_allowed(origin: str | None, environ: dict[str, Any]) -> bool:
        if not origin or origin in allowed_set:
            return True
        # Same origin: the page was served by this host (behind a TLS proxy the scheme may differ).
        return urlsplit(origin).netloc == environ.get("HTTP_HOST")

    return is_allowed


class EngineIoResponses:
    """WSGI middleware for what Socket.IO answers itself, below Flask: add the security headers, and
    give its errors (plain text such as `"Not an accepted origin."`) the one JSON error shape."""

    def __init__(self, wsgi_app: Callable, path: str = "/socket.io/"):
        self.wsgi_app = wsgi_app
        self.path = path

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        if not (environ.get("PATH_INFO") or "").startswith(self.path):
            return self.wsgi_app(environ, start_response)  # Flask's own after_request covers these
        captured: dict[str, Any] = {}

        def start(status: str, headers: list[tuple[str, str]], exc_info=None):
            present = {name.lower() for name, _ in headers}
            headers = list(headers) + [h for h in SECURITY_HEADERS if h[0].lower() not in present]
            if status[:1] in ("4", "5"):
                captured.update(status=status, headers=headers)  # sent below, once the body is JSON
                return lambda data: None
            return start_response(status, headers, exc_info)

        body = self.wsgi_app(environ, start)
        if not captured:
            return body
        try:
            text = b"".join(body).decode("utf-8", "replace")
        finally:
            if hasattr(body, "close"):
                body.close()
        try:
            message = json.loads(text)
        except ValueError:
            message = text
        if not isinstance(message, str):
            message = text
        payload = json.dumps({"error": message or captured["status"]}).encode()
        headers = [(k, v) for k, v in captured["headers"] if k.lower() not in ("content-type", "content-length")]
        headers += [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        start_response(captured["status"], headers)
        return [payload]
