"""Socket.IO: who may connect, and how events reach authenticated connections."""
from sockets.hub import AUTHENTICATED_ROOM, SocketHub
from sockets.transport import create_socketio

__all__ = ["AUTHENTICATED_ROOM", "SocketHub", "create_socketio"]
