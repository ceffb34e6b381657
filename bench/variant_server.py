"""Run `app.py` with a change the benchmark compares against the server as shipped.

    BENCH_STOCK_BROADCAST=1  python-engineio and python-socketio as shipped: each websocket in its
                             green threads, broadcasts through the per-recipient path (the old way)
    BENCH_MEMORY_DUMP=DIR    on SIGUSR1 writes DIR/dump-N.pickle: counts of live objects and
                             green threads, and with BENCH_TRACEMALLOC=FRAMES a tracemalloc
                             snapshot (tracing starts at the first dump: start-up stays fast and
                             what the dumps compare is what was allocated after it) (bench/memory.py)

Used only by the benchmark.
"""
import os
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
os.environ.setdefault("EVENTLET_NO_GREENDNS", "yes")  # as app.py
import eventlet  # noqa: E402

eventlet.monkey_patch()

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import concurrency  # noqa: E402

concurrency.resolve_names_in_threads()

import app  # noqa: E402
from sockets import owner  # noqa: E402

if os.environ.get("BENCH_STOCK_BROADCAST") == "1":
    # The websocket owner reports "not installed": Engine.IO keeps its websockets, and every event
    # takes python-socketio's own path.
    owner.WebsocketOwner.install = lambda self, sio: False

if os.environ.get("BENCH_MEMORY_DUMP"):
    import signal

    def _dump(signum, frame) -> None:
        import collections
        import gc
        import pickle
        import tracemalloc

        import greenlet

        frames = int(os.environ.get("BENCH_TRACEMALLOC") or 0)
        if frames and not tracemalloc.is_tracing():
            tracemalloc.start(frames)
        gc.collect()
        types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        threads = [o for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead]
        # greenlet keeps the part of a parked green thread's C stack that the running one
        # overwrote in a heap copy; `_stack_saved` (bytes) is its size. A bench-only probe.
        stacks = [getattr(t, "_stack_saved", 0) for t in threads]
        dump = {"types": dict(types), "greenlets": len(threads), "greenlet_stack_bytes": sum(stacks),
                "tracemalloc": tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None}
        target = Path(os.environ["BENCH_MEMORY_DUMP"])
        index = len(list(target.glob("dump-*.pickle")))
        (target / f"dump-{index}.tmp").write_bytes(pickle.dumps(dump))
        (target / f"dump-{index}.tmp").rename(target / f"dump-{index}.pickle")

    signal.signal(signal.SIGUSR1, _dump)

if __name__ == "__main__":
    sys.exit(app.main())
