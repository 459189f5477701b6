"""The downloads log and the state of each buyer's watermarked copy."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from connector.db import Base, UTCDateTime, utcnow

# What a click on /d/<token> came to.
# "resumed": a Range request continuing a download the same address was served (and
# counted) within the last hour, served without counting again.
DOWNLOAD_OUTCOMES = ("served", "resumed", "expired", "revoked", "limit", "refused")


class DownloadEvent(Base):
    """One click on a buyer's download link. The IP is kept only as a keyed hash."""

    __tablename__ = "download_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), index=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("download_grants.id"), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    # What was sent: "original", "watermarked", or "original-fallback" (the copy could not
    # be made and the product says to fall back); None when nothing was sent.
    served: Mapped[str | None] = mapped_column(String(24), default=None)
    ip_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    user_agent: Mapped[str | None] = mapped_column(String(400), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class WatermarkCopy(Base):
    """The buyer's watermarked copy of one file (one per grant), or why it could not be made."""

    __tablename__ = "watermark_copies"

    id: Mapped[int] = mapped_column(primary_key=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("download_grants.id"), unique=True)
    # ready | failed
    status: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(8))
    object_key: Mapped[str | None] = mapped_column(String(1024), default=None, index=True)
    # The original's version (ObjectStore.version: ETag, or size and mtime) when it was
    # stamped: a click restamps once the owner has replaced the original.
    source_version: Mapped[str | None] = mapped_column(String(200), default=None)
    # The signed fingerprint hidden in the copy; leak lookup verifies it and finds the grant.
    fingerprint: Mapped[str | None] = mapped_column(String(200), default=None, index=True)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    # Failed attempts since the copy was last made: past MAX_WATERMARK_ATTEMPTS clicks and
    # jobs stop trying until the original changes (a copy made since starts again at 0).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # How it was stamped (connector.downloads.watermark.STAMP_VERSION): 1, a ZIP copy whose
    # LICENSE.txt holds the license key (before 2); the daily purge deletes those.
    stamp_version: Mapped[int] = mapped_column(Integer, server_default="1")
    # Keyed hash of the buyer's name and address stamped in (connector.downloads.service.
    # buyer_hash): a copy whose order now names someone else (the shop corrected it) is not
    # served, it is stamped anew. None: made before this was recorded, stamped anew once.
    buyer_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
