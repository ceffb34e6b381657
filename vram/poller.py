"""The background poller: reads NVML on a fixed cadence, keeps the latest snapshot and history."""
from __future__ import annotations

import functools
import gzip
import itertools
import json
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import concurrency
from vram.snapshot import VramSnapshot

log = logging.getLogger(__name__)
HISTORY_MIN_SECONDS = 3600
HISTORY_MAX_SAMPLES = 36_000
# A request that arrives before the first reading (the port opens before NVML answers) waits this
# long for it, then is told to retry.
FIRST_READING_WAIT_S = 2.0
# A reading older than this many poll intervals is stale: the driver has stopped answering in time.
STALE_AFTER_INTERVALS = 3


class SnapshotReader(Protocol):
    """What the poller needs of an NVML reader (vram.nvml.NvmlReader, or a test's scripted one)."""

    def read_snapshot(self) -> VramSnapshot: ...


# Level 6 (gzip's default) takes a 56 KB snapshot to ~5 KB in well under a millisecond, once a poll.
GZIP_LEVEL = 6


@dataclass(frozen=True)
class PolledSnapshot:
    """A snapshot with its JSON body, serialised once per poll and shared by every request.

    `etag` names this poll (the poller's count of readings and the snapshot's timestamp), so a
    client that asks again before the next poll can be answered 304. `gzip_bytes` is the body
    compressed, built by the first request that accepts gzip and then shared like `json_bytes`.
    """

    snapshot: VramSnapshot
    body: dict[str, Any]
    json_bytes: bytes
    etag: str = '"0"'
    taken_at: float = 0.0  # concurrency.monotonic() when the reading was stored

    def age_s(self) -> float:
        return max(0.0, concurrency.monotonic() - self.taken_at)

    def is_stale(self, stale_after_s: float) -> bool:
        return self.age_s() > stale_after_s

    @functools.cached_property
    def gzip_bytes(self) -> bytes:
        # mtime=0: the same reading always compresses to the same bytes. cached_property writes
        # the instance's __dict__ directly, which a frozen dataclass allows; two requests racing
        # here (OS threads only; green threads cannot switch inside compress) both get equal bytes.
        return gzip.compress(self.json_bytes, GZIP_LEVEL, mtime=0)


class VramPoller:
    """Poll NVML every `interval_s` in a real thread, keep the latest reading, and publish it."""

    def __init__(self, reader: SnapshotReader, interval_s: float,
                 publish: Callable[[dict[str, Any]], None] | None = None,
                 annotate: Callable[[VramSnapshot], VramSnapshot] | None = None,
                 on_reading: Iterable[Callable[[PolledSnapshot], None]] = ()):
        self._reader = reader
        self._on_reading = tuple(on_reading)  # after publishing, e.g. alerts.AlertEngine.observe
        self._annotate = annotate  # e.g. vram.attribution.Attributor: adds `model` to processes
        self.interval_s = interval_s
        self._publish = publish
        self._lock = threading.Lock()
        self._first_reading = concurrency.Event()
        self._latest: PolledSnapshot | None = None
        samples = max(math.ceil(HISTORY_MIN_SECONDS / interval_s) + 1, 1)
        self._history: deque[tuple] = deque(maxlen=min(samples, HISTORY_MAX_SAMPLES))
        self._stopping = False
        self._readings = itertools.count(1)
        self._wake = concurrency.Event()  # set_interval() and stop() cut the sleep short

    @property
    def latest(self) -> PolledSnapshot | None:
        with self._lock:
            return self._latest

    def latest_snapshot(self) -> VramSnapshot | None:
        """Return the latest reading itself (None before the first)."""
        latest = self.latest
        return None if latest is None else latest.snapshot

    def wait_latest(self, timeout_s: float = FIRST_READING_WAIT_S) -> PolledSnapshot | None:
        """Return the latest reading; before the first one, wait up to `timeout_s` for it."""
        latest = self.latest
        if latest is None:
            self._first_reading.wait(timeout_s)
            latest = self.latest
        return latest

    def tick(self) -> PolledSnapshot:
        """Read NVML once (in an OS thread), store the result, and publish it."""
        snapshot = concurrency.run_in_thread(self._reader.read_snapshot)
        if self._annotate is not None and snapshot.available:
            snapshot = self._annotate(snapshot)
        body = snapshot.to_dict()
        etag = f'"{next(self._readings)}-{snapshot.timestamp!r}"'
        polled = PolledSnapshot(snapshot, body, json.dumps(body, separators=(",", ":")).encode(), etag,
                                taken_at=concurrency.monotonic())
        sample = (snapshot.timestamp, tuple(
            (gpu.index, gpu.used_mb, gpu.total_mb, gpu.utilization) for gpu in snapshot.gpus))
        with self._lock:
            self._latest = polled
            if snapshot.available:
                self._history.append(sample)
        self._first_reading.set()
        if self._publish is not None:
            self._publish(body)
        for hook in self._on_reading:
            try:
                hook(polled)
            except Exception:  # one broken hook must not cost the others (or the next poll)
                log.exception("a VRAM reading hook failed")
        return polled

    def set_interval(self, interval_s: float) -> None:
        """Poll every `interval_s` from now on: the sleep in progress is rescheduled at once."""
        self.interval_s = interval_s
        self._wake.set()

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Return the last `limit` samples (all by default), oldest first."""
        with self._lock:
            samples = list(self._history)
        if limit is not None:
            samples = samples[-limit:] if limit > 0 else []
        return [
            {"timestamp": ts, "gpus": [
                {"index": index, "used_mb": used, "total_mb": total, "utilization": util}
                for index, used, total, util in gpus]}
            for ts, gpus in samples
        ]

    @property
    def stale_after_s(self) -> float:
        return STALE_AFTER_INTERVALS * self.interval_s

    @property
    def history_capacity(self) -> int:
        return self._history.maxlen or 0

    def run(self) -> None:
        """Tick on a fixed schedule (next += interval) so the period does not drift."""
        deadline = concurrency.monotonic()
        while not self._stopping:
            try:
                self.tick()
            except Exception:  # a poller that dies silently would freeze the dashboard
                log.exception("VRAM poll failed; retrying at the next interval")
            if self._stopping:
                break
            deadline = self._sleep_until_next(deadline)

    def _sleep_until_next(self, deadline: float) -> float:
        """Sleep until the slot after `deadline`; return it. A new interval reschedules from `deadline`."""
        while True:
            self._wake.clear()
            following = deadline + self.interval_s
            now = concurrency.monotonic()
            if following < now:
                # We fell behind (a slow driver) or the interval shrank: skip missed slots rather
                # than bursting.
                following = now + self.interval_s - ((now - following) % self.interval_s)
            if not self._sleep(max(0.0, following - now)) or self._stopping:
                return following

    def _sleep(self, seconds: float) -> bool:
        """Sleep `seconds` (green); return True when set_interval() or stop() cut it short."""
        return self._wake.wait(seconds)

    def stop(self) -> None:
        """Make run() return after the tick in progress (the caller may also kill its task)."""
        self._stopping = True
        self._wake.set()
