"""The fleet view: each node's latest reading in Redis, the list of nodes, and fleet_update.

With every reading the poller takes, a node writes its entry — name, public URL, its /api/vram/status body,
whether Ollama and NVML answer, when — to `<prefix>:fleet:node:<name>` with an expiry of an
hour (so a node gone for an hour drops out by itself), and emits `fleet_update` through the
Socket.IO queue, so every client of every process hears every node. `nodes()` reads them all;
a node unheard for 3 of its poll intervals is `stale`. Without Redis the fleet is this node, and
no fleet_update is sent (vram_update, with "node", is that node's reading already).
While Redis is away the entries last read are kept and turn stale as their time passes, and
this node's own entry stays fresh: the view says which nodes it has lost sight of.
"""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable

import concurrency
from fleet.link import RedisLink

log = logging.getLogger(__name__)
EVENT = "fleet_update"
# Without a new reading, the entry is still published this many poll intervals apart.
HEARTBEAT_INTERVALS = 1.5
STALE_AFTER_INTERVALS = 3
DROPPED_AFTER_S = 3600
# How often a node reads the others' entries on its own (so that it knows whom it lost sight of
# when Redis goes away, even if nobody asked for the fleet lately).
REFRESH_EVERY_S = 1.0


class Fleet:
    """This node's entry, published at its poll interval; every node's, read back."""

    def __init__(self, name: str, url: str, interval_s: Callable[[], float], *,
                 latest_status: Callable[[], dict | None],
                 nvml_ok: Callable[[], bool], ollama_ok: Callable[[], bool],
                 broadcast: Callable[[str, Any], None], publish_vram: Callable[[dict], None],
                 link: RedisLink | None = None, clock: Callable[[], float] = time.time):
        self.name = name
        self.url = url
        # The poll interval, read when used: PATCH /api/settings changes it without a restart.
        self._interval_s = interval_s
        self._latest_status = latest_status
        self._nvml_ok = nvml_ok
        self._ollama_ok = ollama_ok
        self._broadcast = broadcast
        self._publish_vram = publish_vram
        self._link = link
        self._clock = clock
        self._own: dict[str, Any] | None = None
        self._known: dict[str, dict[str, Any]] = {}  # the other nodes, as last read from Redis
        self._read_at = -float("inf")
        self._stopping = False
        self._new_reading = concurrency.Event()

    @property
    def interval_s(self) -> float:
        return self._interval_s()

    @property
    def shared(self) -> bool:
        """Whether other nodes can be seen (REDIS_URL is set)."""
        return self._link is not None

    def publish_vram(self, body: dict[str, Any]) -> None:
        """The poller's publish: this node's reading as vram_update, naming the node."""
        self._publish_vram({**body, "node": self.name})
        self._new_reading.set()  # run() publishes the fleet entry with this reading now

    def own_entry(self) -> dict[str, Any]:
        """This node's entry, as of now."""
        return {"name": self.name, "url": self.url, "status": self._latest_status(), "ollama": self._ollama_ok(),
                "nvml": self._nvml_ok(), "last_seen": self._clock(), "interval_s": self.interval_s}

    def tick(self) -> dict[str, Any]:
        """Write this node's entry to Redis and tell every client; return the entry."""
        entry = self._own = self.own_entry()
        if self._link is not None:
            payload = json.dumps(entry, separators=(",", ":"))
            key = self._link.key("fleet", "node", self.name)
            self._link.call("publishing the fleet entry", lambda client: client.set(key, payload, ex=DROPPED_AFTER_S))
            if concurrency.monotonic() - self._read_at >= max(REFRESH_EVERY_S, self.interval_s):
                self._refresh()
            # Without Redis there is no other node to hear of, and vram_update already carries this
            # one's reading (with "node"): a second copy of every reading would double the bytes of
            # every broadcast for nothing.
            self._broadcast(EVENT, {"node": self.name, "status": entry["status"]})
        return entry

    def run(self) -> None:
        """tick() on every new reading (a background task's body).

        Driven by the poller's publish, so every fleet_update carries the reading just taken, once.
        When no reading comes (a driver that stopped answering), the entry still goes out every
        1.5 intervals, so the node is seen alive with a reading as old as it is (and others mark
        it stale only when they stop hearing from it).
        """
        while not self._stopping:
            self._new_reading.wait(HEARTBEAT_INTERVALS * self.interval_s)
            self._new_reading.clear()
            if self._stopping:
                break
            try:
                self.tick()
            except Exception:  # a publisher that dies silently would make this node look gone
                log.exception("could not publish this node's fleet entry; retrying at the next reading")

    def stop(self) -> None:
        self._stopping = True
        self._new_reading.set()

    def nodes(self) -> list[dict[str, Any]]:
        """Every node heard of in the last hour, by name, each marked stale or not."""
        if self._link is not None:
            self._refresh()
        entries = dict(self._known)
        entries[self.name] = self.own_entry() if self._own is None else {**self._own, "status": self._latest_status(),
                                                                         "last_seen": self._clock()}
        now = self._clock()
        nodes = []
        for name in sorted(entries):
            entry = entries[name]
            age_s = now - entry["last_seen"]
            if age_s > DROPPED_AFTER_S:
                continue
            interval_s = float(entry.get("interval_s") or self.interval_s)
            nodes.append({"name": entry["name"], "url": entry["url"], "status": entry["status"],
                          "ollama": bool(entry["ollama"]), "nvml": bool(entry["nvml"]),
                          "last_seen": entry["last_seen"], "stale": age_s > STALE_AFTER_INTERVALS * interval_s})
        return nodes

    def url_of(self, name: str) -> str | None:
        """The public URL of a node that registered itself (this one included), else None."""
        if name == self.name:
            return self.url
        if self._link is not None:
            raw = self._link.call("reading a fleet entry", lambda client: client.get(self._link.key("fleet", "node", name)))
            entry = _parse(raw) if raw is not None else self._known.get(name)
        else:
            entry = None
        return entry["url"] if entry else None

    def _refresh(self) -> None:
        read = self._link.call("reading the fleet", self._read_entries)
        if read is not None:
            self._known = read
            self._read_at = concurrency.monotonic()

    def _read_entries(self, client) -> dict[str, dict[str, Any]]:
        keys = list(client.scan_iter(match=self._link.key("fleet", "node", "*"), count=500))
        entries = {}
        for raw in client.mget(keys) if keys else []:
            entry = _parse(raw) if raw is not None else None
            if entry is not None and entry["name"] != self.name:
                entries[entry["name"]] = entry
        return entries


def _parse(raw: bytes | str) -> dict[str, Any] | None:
    """A node's entry, or None when it is not shaped like one (written by another version?)."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(entry.get("url"), str) \
            or not isinstance(entry.get("last_seen"), (int, float)):
        return None
    entry.setdefault("status", None)
    entry.setdefault("ollama", False)
    entry.setdefault("nvml", False)
    return entry
