"""Outbox job: make the buyers' watermarked copies once an order is paid."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from connector.db import db
from connector.downloads.service import MAX_WATERMARK_ATTEMPTS, make_watermarked_copy
from connector.integrations.r2 import StorageUnavailable
from connector.jobs import RetryLater, handles
from connector.models import DownloadGrant, ProductFile, WatermarkCopy


@handles("downloads.watermark")
def make_watermarks(payload: dict[str, Any]) -> None:
    """Stamp a copy for every watermarked grant of the issuance; skip those already made."""
    session = db.session
    for grant_id in payload.get("grant_ids", []):
        grant = session.get(DownloadGrant, grant_id)
        if grant is None or grant.revoked_at is not None:
            continue
        product_file = session.get(ProductFile, grant.product_file_id)
        if product_file is None or product_file.watermark == "none":
            continue
        copy = session.execute(
            select(WatermarkCopy).where(WatermarkCopy.grant_id == grant.id)
        ).scalar_one_or_none()
        if copy is not None and (copy.status == "ready" or copy.attempts >= MAX_WATERMARK_ATTEMPTS):
            continue
        try:
            make_watermarked_copy(session, grant)
        except StorageUnavailable as exc:
            raise RetryLater(str(exc)) from None
