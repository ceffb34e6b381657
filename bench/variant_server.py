"""Run `app.py` with a change the benchmark compares against the server as shipped.

    BENCH_NODELAY=1          TCP_NODELAY on the listening socket (a proposed app.py change)
    BENCH_STOCK_BROADCAST=1  broadcasts through python-socketio's per-recipient path (the old way)

TCP_NODELAY: eventlet.wsgi writes a response through a 16 KiB buffered file, so a body larger than
that leaves as two sends (headers, then body), and a stream leaves as one send per chunk. With
Nagle on, each send after the first waits for the client's ACK of the one before, and a client
that delays its ACK (Linux: up to 40 ms) stalls the response. Linux copies TCP_NODELAY from the
listening socket to every accepted one, so setting it once on the listener is enough.

Used only by the benchmark.
"""
import os
import socket
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
import eventlet  # noqa: E402

eventlet.monkey_patch()

if os.environ.get("BENCH_NODELAY") == "1":
    _listen = eventlet.listen

    def _listen_nodelay(*args, **kwargs):
        sock = _listen(*args, **kwargs)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    eventlet.listen = _listen_nodelay

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import app  # noqa: E402
from sockets import handlers  # noqa: E402

if os.environ.get("BENCH_STOCK_BROADCAST") == "1":
    def _stock_broadcast(self, event, payload):
        self._socketio.emit(event, payload, to=handlers.AUTHENTICATED_ROOM)

    handlers.SocketHub.broadcast = _stock_broadcast

if __name__ == "__main__":
    sys.exit(app.main())
