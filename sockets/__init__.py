"""Socket.IO: who may connect, and how events reach authenticated connections."""
from sockets.handlers import AUTHENTICATED_ROOM, SocketHub

__all__ = ["AUTHENTICATED_ROOM", "SocketHub"]
