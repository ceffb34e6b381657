"""Usage rows: one per proxied request; grouped by user, model or day for GET /api/usage."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from sqlalchemy import delete, insert, select

import concurrency
from db import Database
from errors import ApiError
from usage.models import UsageRecord

log = logging.getLogger(__name__)
GROUPS = ("user", "model", "day")
FLUSH_EVERY_S = 1.0
MAX_PENDING = 10_000  # rows kept for a retry while the database is down
# The text columns' lengths: PostgreSQL refuses a longer value (SQLite keeps it), and one refused
# row would fail its whole batch, every retry of it, and every row queued behind it.
_TEXT_LENGTHS = {column.name: column.type.length for column in UsageRecord.__table__.columns
                 if getattr(column.type, "length", None)}


@dataclass(frozen=True)
class Usage:
    """What one proxied request cost: who, through which key, which model, how long, how many tokens."""

    username: str
    key_id: str | None
    endpoint: str
    model: str | None
    status: int
    duration_s: float
    prompt_tokens: int | None
    completion_tokens: int | None


def _fitted(usage: Usage) -> dict[str, Any]:
    """The row's values, each text cut to its column (a model name Ollama made up, say)."""
    values = dict(usage.__dict__)
    for name, length in _TEXT_LENGTHS.items():
        value = values.get(name)
        if isinstance(value, str) and len(value) > length:
            values[name] = value[:length]
    return values


class UsageLog:
    """Usage rows, written in batches: one proxied request must not wait for (or queue behind) a
    database commit. Measured: a commit per request put +2 ms on every proxied first line and
    +30 ms on 8 concurrent streams (BENCHMARKS.md, section 2)."""

    def __init__(self, database: Database, retention_days: int, *, clock: Callable[[], float] = time.time,
                 flush_every_s: float = FLUSH_EVERY_S):
        self._db = database
        self.retention_days = retention_days
        self._clock = clock
        self._flush_every_s = flush_every_s
        self._listeners: list[Callable[[Usage], None]] = []
        # (timestamp, usage) pairs: the request path appends a tuple; the rows are built in flush().
        self._pending: list[tuple[float, Usage]] = []
        self._flusher: Any = None

    def record(self, usage: Usage) -> None:
        """Record one request now (and tell the listeners)."""
        row = UsageRecord(timestamp=self._clock(), **_fitted(usage))
        self._db.run(lambda s: s.add(row))
        self._tell(usage)

    def record_later(self, usage: Usage) -> None:
        """Record in the next batch (within FLUSH_EVERY_S); the listeners hear of it at once."""
        self._pending.append((self._clock(), usage))
        self._tell(usage)
        if self._flusher is None:
            self._flusher = concurrency.spawn(self._flush_soon)

    def _tell(self, usage: Usage) -> None:
        for listener in self._listeners:
            listener(usage)

    def _flush_soon(self) -> None:
        try:
            concurrency.sleep(self._flush_every_s)
        finally:
            self._flusher = None
            self.flush()

    def flush(self) -> int:
        """Write the pending rows in one transaction; return how many (kept for the next try on failure)."""
        rows, self._pending = self._pending, []
        if not rows:
            return 0
        # One executemany INSERT (SQLAlchemy's ORM bulk insert): no ORM object per row, on either side.
        values = [{"timestamp": timestamp, **_fitted(usage)} for timestamp, usage in rows]
        try:
            self._db.run(lambda s: s.execute(insert(UsageRecord), values))
        except ApiError as exc:
            log.warning("usage of %d proxied requests not recorded yet: %s", len(rows), exc.message)
            self._pending[:0] = rows[-MAX_PENDING:]
            return 0
        return len(rows)

    def add_listener(self, listener: Callable[[Usage], None]) -> None:
        """Call `listener(usage)` for every request recorded (e.g. the Prometheus counters)."""
        self._listeners.append(listener)

    def summary(self, since: float, until: float, group_by: str, username: str | None) -> list[dict[str, Any]]:
        """Rows grouped in Python: a small team's week of requests, and one query for SQLite and PostgreSQL."""
        def work(s) -> list[UsageRecord]:
            query = select(UsageRecord).where(UsageRecord.timestamp >= since, UsageRecord.timestamp < until)
            if username is not None:
                query = query.where(UsageRecord.username == username)
            return list(s.scalars(query))

        groups: dict[str, dict[str, Any]] = {}
        for row in self._db.run(work):
            if group_by == "user":
                name = row.username
            elif group_by == "model":
                name = row.model or ""
            else:
                name = datetime.fromtimestamp(row.timestamp, tz=timezone.utc).date().isoformat()
            group = groups.setdefault(name, {group_by: name, "requests": 0, "errors": 0, "prompt_tokens": 0,
                                             "completion_tokens": 0, "duration_s": 0.0})
            group["requests"] += 1
            group["errors"] += 1 if row.status >= 400 else 0
            group["prompt_tokens"] += row.prompt_tokens or 0
            group["completion_tokens"] += row.completion_tokens or 0
            group["duration_s"] = round(group["duration_s"] + row.duration_s, 3)
        return [groups[k] for k in sorted(groups)]

    def purge(self) -> int:
        cutoff = self._clock() - self.retention_days * 86400.0
        return self._db.run(lambda s: s.execute(delete(UsageRecord).where(UsageRecord.timestamp < cutoff)).rowcount)
