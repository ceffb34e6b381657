"""The download history table (owned by ollama_client/; queries in ollama_client/history.py)."""
from __future__ import annotations

from sqlalchemy import BigInteger, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from db import Base


class DownloadRecord(Base):
    __tablename__ = "downloads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(300), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    message: Mapped[str | None] = mapped_column(String(500), nullable=True)
    percent: Mapped[float] = mapped_column(Float, default=0.0)
    completed_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # Which node's Ollama pulls it, the model as the downloads key it (canonical), and the process
    # that runs the pull (its lease id in Redis): another process of the node tells from these
    # whether the pull still has a live owner. Null in rows written before the fleet.
    node: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    model_key: Mapped[str | None] = mapped_column(String(300), nullable=True)
    owner: Mapped[str | None] = mapped_column(String(32), nullable=True)
