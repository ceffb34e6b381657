"""Download history in the database: each pull's last state, kept across restarts.

Each row names its node (a node's listing is its own Ollama's downloads; rows written before the
fleet have none and belong to every node), its model key and the process running the pull, so
that another process of the node can tell a pull whose owner died (ollama_client/downloads.py).
"""
from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import or_, select, true, update

from db import Database
from ollama_client.history_models import DownloadRecord

INTERRUPTED = "interrupted: the server stopped while the download was running"
DOWNLOADING = "downloading"


class DownloadHistory:
    """Save a job's state when it starts and ends; list the recent ones; mark leftovers interrupted."""

    def __init__(self, database: Database, node: str | None = None):
        self._db = database
        self._node = node

    def _this_node(self):
        """The rows of this node (and those of no node); every row when no node was given."""
        if self._node is None:
            return true()
        return or_(DownloadRecord.node == self._node, DownloadRecord.node.is_(None))

    def start(self, model_name: str, started_at: float, *, model_key: str | None = None,
              owner: str | None = None) -> int:
        def work(s) -> int:
            record = DownloadRecord(model_name=model_name, status=DOWNLOADING, message="Download started",
                                    percent=0.0, completed_bytes=0, total_bytes=0, started_at=started_at,
                                    node=self._node, model_key=model_key, owner=owner)
            s.add(record)
            s.flush()
            return record.id

        return self._db.run(work)

    def finish(self, record_id: int, summary: dict[str, Any], finished_at: float) -> None:
        values = _final_values(summary, finished_at)
        self._db.run(lambda s: s.execute(update(DownloadRecord).where(DownloadRecord.id == record_id).values(**values)))

    def interrupt_leftovers(self, now: float) -> int:
        """Downloads that were running when the server last stopped are `error` (interrupted)."""
        return self._db.run(lambda s: s.execute(
            update(DownloadRecord).where(DownloadRecord.status == DOWNLOADING, self._this_node())
            .values(status="error", error=INTERRUPTED, message=INTERRUPTED, finished_at=now)).rowcount)

    def running(self) -> list[dict[str, Any]]:
        """This node's rows still marked downloading (by any process), oldest first."""
        query = (select(DownloadRecord).where(DownloadRecord.status == DOWNLOADING, self._this_node())
                 .order_by(DownloadRecord.started_at))
        return self._db.run(lambda s: [_as_dict(r) for r in s.scalars(query)])

    def end_if_running(self, record_id: int, summary: dict[str, Any], finished_at: float) -> bool:
        """Write a final state only if the row is still downloading; True if this call wrote it.

        Of several processes that find the same orphaned row, exactly one wins.
        """
        values = _final_values(summary, finished_at)
        return self._db.run(lambda s: s.execute(
            update(DownloadRecord).where(DownloadRecord.id == record_id, DownloadRecord.status == DOWNLOADING)
            .values(**values)).rowcount) == 1

    def get(self, record_id: int) -> dict[str, Any] | None:
        def work(s) -> dict[str, Any] | None:
            record = s.get(DownloadRecord, record_id)
            return None if record is None else _as_dict(record)

        return self._db.run(work)

    def finished_since(self, since: float) -> list[dict[str, Any]]:
        query = (select(DownloadRecord).where(DownloadRecord.finished_at >= since, self._this_node())
                 .order_by(DownloadRecord.started_at))
        return self._db.run(lambda s: [_as_dict(r) for r in s.scalars(query)])


def _final_values(summary: dict[str, Any], finished_at: float) -> dict[str, Any]:
    return {"status": summary["status"], "message": (summary.get("message") or "")[:500],
            "percent": summary["percent"], "completed_bytes": summary["completed_bytes"],
            "total_bytes": summary["total_bytes"], "finished_at": finished_at,
            "error": (summary.get("error") or None) and summary["error"][:500]}


def _as_dict(r: DownloadRecord) -> dict[str, Any]:
    return {"id": r.id, "model_name": r.model_name, "status": r.status, "message": r.message,
            "percent": r.percent, "completed_bytes": r.completed_bytes, "total_bytes": r.total_bytes,
            "started_at": r.started_at, "finished_at": r.finished_at, "error": r.error,
            "node": r.node, "model_key": r.model_key, "owner": r.owner}


Clock = Callable[[], float]
