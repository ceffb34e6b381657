"""The settings a running server may change: their values, where each came from, and who hears of a change.

Each setting is one variable of config.py, validated exactly as that variable is (the Config field's
own type, bounds and parser). A value set through the API is kept in the database and wins over the
environment, also after a restart.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Annotated, Any, Callable, Mapping

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select

from config import Config, _describe
from db import Database
from errors import BadRequestError
from settings.models import SettingRecord

log = logging.getLogger(__name__)
# API name -> the Config field (and so the variable) it overrides.
FIELDS: dict[str, str] = {
    "alert_vram_percent": "alert_vram_percent",
    "alert_temperature_c": "alert_temperature_c",
    "alert_for_seconds": "alert_for_seconds",
    "alert_webhook_url": "alert_webhook_url",
    "vram_poll_interval_s": "vram_poll_interval_s",
    "load_keep_alive": "ollama_load_keep_alive",
}
SECRET = frozenset({"alert_webhook_url"})  # shown to administrators only
NUMERIC = frozenset({"alert_vram_percent", "alert_temperature_c", "alert_for_seconds", "vram_poll_interval_s"})


def _adapter(name: str) -> TypeAdapter:
    field = Config.model_fields[FIELDS[name]]
    return TypeAdapter(Annotated[(field.annotation, *field.metadata)])


_ADAPTERS = {name: _adapter(name) for name in FIELDS}


def validate(name: str, value: Any) -> Any:
    """Return `value` parsed as the setting's variable would be, or raise a 400 naming the field."""
    if name not in FIELDS:
        raise BadRequestError(f"unknown setting {name!r}: one of {', '.join(FIELDS)}")
    field = Config.model_fields[FIELDS[name]]
    if isinstance(value, bool) or (name in NUMERIC and not isinstance(value, (int, float))):
        raise BadRequestError(f"field {name} must be a number")
    if name == "alert_webhook_url" and value is not None and not isinstance(value, str):
        raise BadRequestError(f"field {name} must be a string (an http(s) URL, or empty)")
    if name == "load_keep_alive" and not isinstance(value, (str, int, float)):
        raise BadRequestError(f"field {name} must be a duration string (5m, 1h) or a number of seconds")
    try:
        return _ADAPTERS[name].validate_python(value)
    except ValidationError as exc:
        raise BadRequestError(f"field {name} ({field.alias}): {_describe(exc.errors(include_url=False)[0], field)}"
                              ) from None


class RuntimeSettings:
    """The six settings of GET/PATCH /api/settings: defaults < environment < API (kept in the database)."""

    def __init__(self, config: Config, database: Database, *, clock: Callable[[], float] = time.time):
        self._config = config
        self._db = database
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[str, Any] = {name: getattr(config, field) for name, field in FIELDS.items()}
        self._sources: dict[str, str] = {
            name: "environment" if field in config.model_fields_set else "default" for name, field in FIELDS.items()}
        self._listeners: list[Callable[[Mapping[str, Any]], None]] = []
        self._load()

    def _load(self) -> None:
        for row in self._db.run(lambda s: list(s.scalars(select(SettingRecord)))):
            if row.name not in FIELDS:
                continue
            try:
                value = validate(row.name, json.loads(row.value_json))
            except (ValueError, BadRequestError) as exc:
                log.warning("ignoring the stored value of setting %s: %s", row.name, exc)
                continue
            self._values[row.name] = value
            self._sources[row.name] = "api"

    def value(self, name: str) -> Any:
        with self._lock:
            return self._values[name]

    def snapshot(self) -> tuple[dict[str, Any], dict[str, str]]:
        """Return (values, sources)."""
        with self._lock:
            return dict(self._values), dict(self._sources)

    def add_listener(self, listener: Callable[[Mapping[str, Any]], None]) -> None:
        """Call `listener({name: new value})` after every change, in the request that made it."""
        self._listeners.append(listener)

    def update(self, changes: Mapping[str, Any], *, username: str | None) -> dict[str, Any]:
        """Validate every change first (all or nothing), store them, apply them; return what changed."""
        parsed = {name: validate(name, value) for name, value in changes.items()}
        now = self._clock()

        def work(s) -> None:
            for name, value in parsed.items():
                s.merge(SettingRecord(name=name, value_json=json.dumps(value), updated_at=now, updated_by=username))

        self._db.run(work)
        with self._lock:
            self._values.update(parsed)
            self._sources.update({name: "api" for name in parsed})
        for listener in self._listeners:
            listener(parsed)
        return parsed
