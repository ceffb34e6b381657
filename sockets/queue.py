"""Flask-SocketIO's message queue on REDIS_URL, with the broadcast fast path as local delivery.

`RedisBroadcastManager(socketio.RedisManager, BroadcastManager)`: python-socketio's
PubSubManager.emit delivers to this process through `_handle_emit`, whose `super().emit` is, by
the MRO (RedisBroadcastManager, RedisManager, PubSubManager, BroadcastManager, Manager), the
shared-frame emit of sockets.broadcast; then it publishes the event for the other processes,
whose listener delivers it the same way. An emit with `ignore_queue=True` stays in this process.

Two of RedisManager's methods are replaced so that Redis is reached through the one RedisLink
(fleet/link.py): `_publish` (a lost Redis is logged once, not twice per event, and events are
dropped for the other processes while it is away, never delaying this one's clients) and
`_redis_listen_with_retries` (resubscribes with the link's back-off). Both are the methods
RedisManager itself documents as the backend's half of PubSubManager.
"""
from __future__ import annotations

import socketio

from fleet.link import RedisLink, messages
from sockets.broadcast import BroadcastManager

CHANNEL = "socketio"


class RedisBroadcastManager(socketio.RedisManager, BroadcastManager):
    """python-socketio's Redis manager whose local delivery is BroadcastManager's."""

    def __init__(self, link: RedisLink, channel: str | None = None):
        super().__init__(url=link.url, channel=channel or link.key(CHANNEL))
        self.link = link
        self._stopping = False

    def _publish(self, data):
        payload = self.json.dumps(data)
        return self.link.call("publishing a Socket.IO event", lambda client: client.publish(self.channel, payload))

    def _redis_listen_with_retries(self):
        yield from messages(self.link, [self.channel], lambda: self._stopping)

    def stop(self) -> None:
        """End the listener within about a second."""
        self._stopping = True
