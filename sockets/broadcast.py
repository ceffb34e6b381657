"""Broadcasts encoded once: python-socketio's client manager, writing one shared frame to every websocket.

`BroadcastManager` is a python-socketio client manager (the library's extension point for how
events reach recipients; a Redis manager can sit on top of it, see its docstring). For an event
to a room it encodes one Socket.IO packet, one Engine.IO message and one websocket frame (plain,
or deflated once per window size) and hands that frame to the websocket owner
(sockets/owner.py), which writes it as is to every websocket it owns, behind whatever that socket
still has to send. The per-recipient path of python-socketio (a queue put, a writer green thread
woken by a hub timer, the frame built again, a Timeout per wait) cost ~70 us a client, ~180 ms of
p99 at 1,000 clients; see BENCHMARKS.md. A socket the owner does not have (long-polling, still
upgrading, closing, or left to Engine.IO's own handler) gets the message through Engine.IO's
public `send_packet`, so per-socket order is kept.
"""
from __future__ import annotations

import socketio
from socketio import packet as sio_packet

import concurrency
from sockets.frames import SharedFrames
from sockets.owner import WebsocketOwner

# Let other green threads run after this many direct writes (a broadcast to thousands of sockets
# must not hold REST requests for its whole duration).
YIELD_EVERY = 256


class BroadcastManager(socketio.Manager):
    """python-socketio's in-memory client manager, sending room events through one shared frame.

    A message-queue manager keeps this as its local delivery by listing it after the queue class,
    `class RedisBroadcastManager(socketio.RedisManager, BroadcastManager)`: the queue's listener
    delivers through `super().emit`, which is this method.
    """

    def __init__(self, writer: WebsocketOwner | None = None, **kwargs):
        super().__init__(**kwargs)
        self.writer = writer or WebsocketOwner()

    def emit(self, event, data, namespace, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        room = to or room
        if (not self.writer.enabled or room is None or callback or skip_sid
                or namespace not in self.rooms or isinstance(data, tuple)):
            return super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                                callback=callback, **kwargs)
        args = [] if data is None else [data]
        encoded = self.server.packet_class(sio_packet.EVENT, namespace=namespace,
                                           data=[event, *args]).encode()
        if isinstance(encoded, list):  # binary attachments: leave those to python-socketio
            return super().emit(event, data, namespace, room=room, callback=callback, **kwargs)
        frames = SharedFrames("4" + encoded)
        eio = self.server.eio
        written = _SidSet()
        waiting = False
        for sid, eio_sid in self.get_participants(namespace, room):
            if self.writer.try_write(eio, eio_sid, frames):
                written.add(sid)
                if len(written) % YIELD_EVERY == 0:
                    concurrency.sleep(0)
            else:
                waiting = True
        self.writer.stats["direct"] += len(written)
        if waiting:
            # The rest (busy, upgrading, long-polling) through the stock path, in their queues.
            return super().emit(event, data, namespace, room=room, skip_sid=written, **kwargs)
        return None


class _SidSet(list):
    """A skip_sid list for Manager.emit with set lookups (it tests `sid not in skip_sid` per recipient)."""

    def __init__(self):
        super().__init__()
        self._members: set[str] = set()

    def add(self, sid: str) -> None:
        self._members.add(sid)
        self.append(sid)

    def __contains__(self, sid: object) -> bool:
        return sid in self._members
