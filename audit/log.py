"""The audit log: record an action with who and from where; read it back; drop old entries."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

from sqlalchemy import delete, select

from audit.models import AuditRecord
from db import Database

log = logging.getLogger(__name__)
ACTIONS = ("login", "login_failed", "logout", "password_change", "user_create", "user_update", "user_delete",
           "key_create", "key_revoke", "model_load", "model_unload", "model_download",
           "model_download_cancel", "model_delete", "settings_update")
MAX_LIMIT = 1000
PURGE_EVERY_S = 3600.0


class AuditLog:
    """Append-only entries in the database; never a password, a token or a key (callers pass none)."""

    def __init__(self, database: Database, retention_days: int, *, clock: Callable[[], float] = time.time):
        self._db = database
        self.retention_days = retention_days
        self._clock = clock

    def record(self, action: str, *, username: str | None, target: str | None = None, success: bool = True,
               source_ip: str | None = None, detail: str | None = None) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        entry = AuditRecord(timestamp=self._clock(), username=(username or None) and username[:128],
                            action=action, target=None if target is None else str(target)[:300],
                            success=success, source_ip=source_ip,
                            detail=None if detail is None else detail[:500])
        self._db.run(lambda s: s.add(entry))

    def entries(self, *, limit: int = 100, username: str | None = None, action: str | None = None
                ) -> list[dict[str, Any]]:
        def work(s) -> list[dict[str, Any]]:
            query = select(AuditRecord)
            if username is not None:
                query = query.where(AuditRecord.username == username)
            if action is not None:
                query = query.where(AuditRecord.action == action)
            query = query.order_by(AuditRecord.timestamp.desc(), AuditRecord.id.desc()).limit(limit)
            return [{"id": r.id, "timestamp": r.timestamp, "username": r.username, "action": r.action,
                     "target": r.target, "success": r.success, "source_ip": r.source_ip, "detail": r.detail}
                    for r in s.scalars(query)]

        return self._db.run(work)

    def purge(self) -> int:
        """Delete entries older than the retention; return how many."""
        cutoff = self._clock() - self.retention_days * 86400.0
        return self._db.run(lambda s: s.execute(delete(AuditRecord).where(AuditRecord.timestamp < cutoff)).rowcount)
