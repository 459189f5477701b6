"""Download grants: a buyer's right to fetch one product file."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from connector.db import Base, UTCDateTime, utcnow


class DownloadGrant(Base):
    """One grant per (line item, unit, product file); its link is ``/d/<token>``."""

    __tablename__ = "download_grants"
    # Never an id used before, on SQLite too (links name grants by id: migration 0018).
    __table_args__ = (
        UniqueConstraint("line_item_id", "unit", "product_file_id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), index=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    line_item_id: Mapped[int] = mapped_column(ForeignKey("line_items.id"))
    unit: Mapped[int] = mapped_column(Integer, default=1)
    product_file_id: Mapped[int] = mapped_column(ForeignKey("product_files.id"))
    license_id: Mapped[int | None] = mapped_column(
        ForeignKey("licenses.id"), default=None, index=True
    )
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    download_limit: Mapped[int | None] = mapped_column(Integer, default=None)
    download_count: Mapped[int] = mapped_column(Integer, default=0)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_reason: Mapped[str | None] = mapped_column(String(64), default=None)
    # Object key of the buyer's watermarked copy, once made (None for unwatermarked files).
    watermarked_key: Mapped[str | None] = mapped_column(String(1024), default=None, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
