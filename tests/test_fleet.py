"""The fleet entry's schedule: published with every new reading, once; a heartbeat without one."""
from __future__ import annotations

import concurrency
from fleet.registry import HEARTBEAT_INTERVALS, Fleet


class _Client:
    def __init__(self):
        self.store: dict[str, str] = {}

    def set(self, key, value, ex=None):
        self.store[key] = value

    def scan_iter(self, match, count):
        return iter(())


class _Link:
    """What Fleet needs of fleet.link.RedisLink: key names, and calls made on a client."""

    def __init__(self):
        self.client = _Client()

    def key(self, *parts):
        return ":".join(("test", *parts))

    def call(self, what, fn):
        return fn(self.client)


def _fleet(interval: list[float], updates: list, readings: list):
    return Fleet("node-a", "http://a:5000", lambda: interval[0],
                 latest_status=lambda: readings[-1] if readings else None, nvml_ok=lambda: True,
                 ollama_ok=lambda: True, broadcast=lambda event, data: updates.append((event, data)),
                 publish_vram=lambda body: None, link=_Link())


def test_each_reading_goes_out_once_with_the_reading_just_taken():
    interval, updates, readings = [0.5], [], []
    fleet = _fleet(interval, updates, readings)
    task = concurrency.spawn(fleet.run)
    try:
        for n in range(3):
            readings.append({"n": n})
            fleet.publish_vram({"n": n})
            concurrency.sleep(0.05)
        # One fleet_update a reading, each carrying that reading; none from a timer in between.
        assert [data["status"]["n"] for _, data in updates] == [0, 1, 2]
        assert {event for event, _ in updates} == {"fleet_update"}
    finally:
        fleet.stop()
        concurrency.kill(task)


def test_without_readings_the_entry_still_goes_out_and_follows_the_interval_setting():
    interval, updates, readings = [0.1], [], [{"n": 0}]
    fleet = _fleet(interval, updates, readings)
    task = concurrency.spawn(fleet.run)
    try:
        concurrency.sleep(HEARTBEAT_INTERVALS * 0.1 * 3.5)
        assert 2 <= len(updates) <= 4  # a driver that stopped answering: the node still looks alive
        interval[0] = 10.0  # PATCH /api/settings: the published entry says the new interval
        fleet.publish_vram({"n": 0})
        concurrency.sleep(0.05)
        assert fleet.own_entry()["interval_s"] == 10.0
    finally:
        fleet.stop()
        concurrency.kill(task)
