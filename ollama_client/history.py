"""Download history in the database: each pull's last state, kept across restarts."""
from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import select, update

from db import Database
from ollama_client.history_models import DownloadRecord

INTERRUPTED = "interrupted: the server stopped while the download was running"


class DownloadHistory:
    """Save a job's state when it starts and ends; list the recent ones; mark leftovers interrupted."""

    def __init__(self, database: Database):
        self._db = database

    def start(self, model_name: str, started_at: float) -> int:
        def work(s) -> int:
            record = DownloadRecord(model_name=model_name, status="downloading", message="Download started",
                                    percent=0.0, completed_bytes=0, total_bytes=0, started_at=started_at)
            s.add(record)
            s.flush()
            return record.id

        return self._db.run(work)

    def finish(self, record_id: int, summary: dict[str, Any], finished_at: float) -> None:
        values = {"status": summary["status"], "message": (summary.get("message") or "")[:500],
                  "percent": summary["percent"], "completed_bytes": summary["completed_bytes"],
                  "total_bytes": summary["total_bytes"], "finished_at": finished_at,
                  "error": (summary.get("error") or None) and summary["error"][:500]}
        self._db.run(lambda s: s.execute(update(DownloadRecord).where(DownloadRecord.id == record_id).values(**values)))

    def interrupt_leftovers(self, now: float) -> int:
        """Downloads that were running when the server last stopped are `error` (interrupted)."""
        return self._db.run(lambda s: s.execute(
            update(DownloadRecord).where(DownloadRecord.status == "downloading")
            .values(status="error", error=INTERRUPTED, message=INTERRUPTED, finished_at=now)).rowcount)

    def finished_since(self, since: float) -> list[dict[str, Any]]:
        def work(s) -> list[dict[str, Any]]:
            query = (select(DownloadRecord).where(DownloadRecord.finished_at >= since)
                     .order_by(DownloadRecord.started_at))
            return [{"id": r.id, "model_name": r.model_name, "status": r.status, "message": r.message,
                     "percent": r.percent, "completed_bytes": r.completed_bytes, "total_bytes": r.total_bytes,
                     "started_at": r.started_at, "finished_at": r.finished_at, "error": r.error}
                    for r in s.scalars(query)]

        return self._db.run(work)


Clock = Callable[[], float]
