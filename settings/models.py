"""The settings table: a value set through PATCH /api/settings, kept across restarts (owned by settings/)."""
from __future__ import annotations

from sqlalchemy import Float, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from db import Base


class SettingRecord(Base):
    __tablename__ = "settings"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value_json: Mapped[str] = mapped_column(Text)  # the value as JSON (a number, a string or null)
    updated_at: Mapped[float] = mapped_column(Float)
    updated_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
