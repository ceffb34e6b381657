"""Alert rules, evaluated on every poll from the reading the poller already has (no NVML call of their own).

A condition fires once it has held for ALERT_FOR_SECONDS, and resolves once it has been gone for one
full poll (two readings in a row without it), so a value that flaps around its threshold neither fires
(each dip restarts the wait) nor toggles a firing alert on and off. Each transition is stored, sent to
the sockets as `vram_alert` and handed to the webhook.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from sqlalchemy import select

from alerts.models import AlertRecord
from db import Database
from errors import ApiError
from settings.store import RuntimeSettings
from vram.poller import PolledSnapshot

log = logging.getLogger(__name__)
RULES = ("vram_high", "temperature_high", "gpu_lost", "nvml_unavailable", "ollama_unreachable")
GPU_RULES = frozenset({"vram_high", "temperature_high", "gpu_lost"})
CLEAR_READINGS = 2  # readings in a row without the condition before a firing alert resolves
MAX_LIMIT = 1000
Key = tuple[str, "int | None"]


@dataclass(frozen=True)
class Condition:
    """A rule that holds in this reading, with its value and threshold in the rule's own unit."""

    rule: str
    gpu_index: int | None
    value: float | None
    threshold: float | None
    message: str

    @property
    def key(self) -> Key:
        return self.rule, self.gpu_index


@dataclass
class _State:
    pending_since: float | None = None  # the condition has held since (clock time)
    alert: dict[str, Any] | None = None  # the firing alert, as sent
    clear_readings: int = 0


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def evaluate(polled: PolledSnapshot, ollama_up: bool | None, vram_percent: float, temperature_c: float
             ) -> tuple[list[Condition], set[Key]]:
    """Return the conditions that hold and every key this reading could judge (held or not)."""
    snapshot = polled.snapshot
    holding: list[Condition] = []
    judged: set[Key] = {("nvml_unavailable", None)}
    if ollama_up is not None:
        judged.add(("ollama_unreachable", None))
        if not ollama_up:
            holding.append(Condition("ollama_unreachable", None, None, None,
                                     "Ollama is unreachable (check OLLAMA_HOST and that Ollama is running)"))
    if not snapshot.available:
        # What the GPUs do is unknown: their alerts keep their state until NVML answers again.
        holding.append(Condition("nvml_unavailable", None, None, None, snapshot.error or "NVML is unavailable"))
        return holding, judged
    for gpu in snapshot.gpus:
        label = f"GPU {gpu.index}" + (f" ({gpu.name})" if gpu.name else "")
        judged.add(("gpu_lost", gpu.index))
        if gpu.error is not None:
            holding.append(Condition("gpu_lost", gpu.index, None, None, f"{label}: {gpu.error}"))
            continue  # its memory and temperature are unknown, not normal
        if gpu.used_mb is not None and gpu.total_mb:
            percent = round(100.0 * gpu.used_mb / gpu.total_mb, 1)
            judged.add(("vram_high", gpu.index))
            if percent >= vram_percent:
                holding.append(Condition("vram_high", gpu.index, percent, vram_percent,
                                         f"{label}: VRAM {percent:g}% used (threshold {vram_percent:g}%)"))
        if gpu.temperature_c is not None:
            judged.add(("temperature_high", gpu.index))
            if gpu.temperature_c >= temperature_c:
                holding.append(Condition("temperature_high", gpu.index, float(gpu.temperature_c), temperature_c,
                                         f"{label}: {gpu.temperature_c} °C (threshold {temperature_c:g} °C)"))
    return holding, judged


class AlertEngine:
    """Keep each rule's state per GPU; store, broadcast and deliver each transition."""

    def __init__(self, database: Database, settings: RuntimeSettings, *,
                 ollama_reachable: Callable[[], bool], notify: Iterable[Callable[[dict[str, Any]], None]] = (),
                 clock: Callable[[], float] = time.time):
        self._db = database
        self._settings = settings
        self._ollama_reachable = ollama_reachable
        self._notify = tuple(notify)
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[Key, _State] = {}
        self.ollama_up: bool | None = None  # as of the latest reading (for /metrics)
        self._restore()

    def _restore(self) -> None:
        """Take up the alerts still firing when the server stopped: no second alert for the same condition."""
        rows = self._db.run(lambda s: list(s.scalars(select(AlertRecord).where(AlertRecord.state == "firing"))))
        for row in rows:
            self._states[(row.rule, row.gpu_index)] = _State(pending_since=row.started_at,
                                                             alert={**_to_dict(row), "_started": row.started_at})

    def observe(self, polled: PolledSnapshot) -> None:
        """Evaluate every rule on one reading (the poller's hook)."""
        try:
            self.ollama_up = bool(self._ollama_reachable())  # cached by the client: no call per poll
        except Exception:  # never let a reachability check cost the GPU rules
            log.exception("Ollama reachability check failed")
            self.ollama_up = None
        holding, judged = evaluate(polled, self.ollama_up, float(self._settings.value("alert_vram_percent")),
                                   float(self._settings.value("alert_temperature_c")))
        for_s = float(self._settings.value("alert_for_seconds"))
        now = self._clock()
        transitions: list[dict[str, Any]] = []
        held = {condition.key: condition for condition in holding}
        with self._lock:
            for key, condition in held.items():
                state = self._states.setdefault(key, _State())
                state.clear_readings = 0
                if state.alert is not None:
                    continue
                if state.pending_since is None:
                    state.pending_since = now
                if now - state.pending_since >= for_s:
                    state.alert = {"id": None, "rule": condition.rule, "gpu_index": condition.gpu_index,
                                   "state": "firing", "value": condition.value, "threshold": condition.threshold,
                                   "started_at": iso(state.pending_since), "resolved_at": None,
                                   "message": condition.message, "_started": state.pending_since}
                    transitions.append(state.alert)
            for key in [k for k in self._states if k in judged and k not in held]:
                state = self._states[key]
                if state.alert is None:
                    del self._states[key]  # a pending condition that went away starts over
                    continue
                state.clear_readings += 1
                if state.clear_readings >= CLEAR_READINGS:
                    resolved = {**state.alert, "state": "resolved", "resolved_at": iso(now), "_resolved": now}
                    del self._states[key]
                    transitions.append(resolved)
        for alert in transitions:
            self._emit(alert)

    def _emit(self, alert: dict[str, Any]) -> None:
        try:
            alert["id"] = self._store(alert)
        except ApiError as exc:
            log.warning("alert %s %s not stored: %s", alert["rule"], alert["state"], exc.message)
        payload = {k: v for k, v in alert.items() if not k.startswith("_")}
        for notify in self._notify:
            notify(payload)

    def _store(self, alert: dict[str, Any]) -> int | None:
        def work(s) -> int | None:
            if alert["state"] == "firing":
                row = AlertRecord(rule=alert["rule"], gpu_index=alert["gpu_index"], state="firing",
                                  value=alert["value"], threshold=alert["threshold"], started_at=alert["_started"],
                                  resolved_at=None, message=alert["message"][:500])
                s.add(row)
                s.flush()
                return row.id
            row = s.get(AlertRecord, alert["id"]) if alert["id"] is not None else None
            if row is not None:
                row.state, row.resolved_at = "resolved", alert["_resolved"]
            return alert["id"]

        return self._db.run(work)

    def firing_counts(self) -> dict[str, int]:
        """Firing alerts per rule (every rule, 0 when none)."""
        counts = dict.fromkeys(RULES, 0)
        with self._lock:
            for state in self._states.values():
                if state.alert is not None:
                    counts[state.alert["rule"]] += 1
        return counts

    def firing(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{k: v for k, v in s.alert.items() if not k.startswith("_")}
                    for s in self._states.values() if s.alert is not None]

    def alerts(self, *, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Stored alerts, newest started_at first."""
        def work(s) -> list[dict[str, Any]]:
            query = select(AlertRecord)
            if state is not None:
                query = query.where(AlertRecord.state == state)
            query = query.order_by(AlertRecord.started_at.desc(), AlertRecord.id.desc()).limit(limit)
            return [_to_dict(row) for row in s.scalars(query)]

        return self._db.run(work)


def _to_dict(row: AlertRecord) -> dict[str, Any]:
    return {"id": row.id, "rule": row.rule, "gpu_index": row.gpu_index, "state": row.state, "value": row.value,
            "threshold": row.threshold, "started_at": iso(row.started_at), "resolved_at": iso(row.resolved_at),
            "message": row.message}
