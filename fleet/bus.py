"""Credentials ended on one process end on all: Ended (and user changes) on a Redis channel.

Accounts tells its listeners when a session, a key or a user's access ends (logout, disable,
delete, password change, revoke, expiry); this process's hub disconnects its own sockets at
once. `CredentialBus` is one more listener: it publishes the Ended on `<prefix>:ended`, and
every other process drops the cached entries (`accounts.forget_cached`) and disconnects its
sockets opened with them (`hub.credentials_ended`) as soon as the message arrives. A role
change is published the same way, so another process reads the user again on its next request.

While Redis is away those messages are lost; when it answers again every process drops its
whole cache (the database is the truth) — the sockets opened with a credential that ended in
the meantime are closed by their own server when their session expires, at the latest.
"""
from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict
from typing import Callable

from auth.accounts import Accounts, Ended
from fleet.link import RedisLink, handle_safely, subscribe_forever

log = logging.getLogger(__name__)
CHANNEL = "ended"


class CredentialBus:
    """Publish this process's Ended and user changes; apply the other processes' ones."""

    def __init__(self, link: RedisLink, accounts: Accounts, credentials_ended: Callable[[Ended], None]):
        self._link = link
        self._accounts = accounts
        self._credentials_ended = credentials_ended
        self.channel = link.key(CHANNEL)
        self.origin = uuid.uuid4().hex
        self._stopping = False
        accounts.add_listener(self.publish_ended)
        accounts.add_change_listener(self.publish_user_changed)
        link.on_restored(accounts.forget_all_cached)

    def publish_ended(self, ended: Ended) -> None:
        self._publish({"ended": asdict(ended)})

    def publish_user_changed(self, user_id: int) -> None:
        self._publish({"user_changed": user_id})

    def _publish(self, body: dict) -> None:
        payload = json.dumps({"origin": self.origin, **body})
        self._link.call("publishing an ended credential", lambda client: client.publish(self.channel, payload))

    def handle(self, channel: str, data: bytes) -> None:
        """Apply one message from another process (ours come back too and are skipped)."""
        message = json.loads(data)
        if message.get("origin") == self.origin:
            return
        if "ended" in message:
            ended = Ended(**{k: v for k, v in message["ended"].items() if k in Ended.__dataclass_fields__})
            self._accounts.forget_cached(ended)
            self._credentials_ended(ended)
        elif isinstance(message.get("user_changed"), int):
            self._accounts.forget_cached_user(message["user_changed"])

    def run(self) -> None:
        """Listen until stop() (a background task's body)."""
        subscribe_forever(self._link, [self.channel], handle_safely(self.handle), lambda: self._stopping)

    def stop(self) -> None:
        self._stopping = True
