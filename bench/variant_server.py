"""Run `app.py` with a change the benchmark compares against the server as shipped.

    BENCH_STOCK_BROADCAST=1  broadcasts through python-socketio's per-recipient path (the old way)

Used only by the benchmark.
"""
import os
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
import eventlet  # noqa: E402

eventlet.monkey_patch()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import app  # noqa: E402
from sockets import handlers  # noqa: E402

if os.environ.get("BENCH_STOCK_BROADCAST") == "1":
    def _stock_broadcast(self, event, payload):
        self._socketio.emit(event, payload, to=handlers.AUTHENTICATED_ROOM)

    handlers.SocketHub.broadcast = _stock_broadcast

if __name__ == "__main__":
    sys.exit(app.main())
