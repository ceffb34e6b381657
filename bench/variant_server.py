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
from sockets import broadcast  # noqa: E402

if os.environ.get("BENCH_STOCK_BROADCAST") == "1":
    # The direct-write adapter reports "not installed": every event takes python-socketio's own path.
    broadcast.DirectWebsocketWriter.install = lambda self, eio: False

if __name__ == "__main__":
    sys.exit(app.main())
