"""The downloads log and the state of each download link, as the owner reads them.

The admin JSON API and the admin pages both read them here: clicks (time, outcome, IP as a
keyed hash, user agent) of an order's, a buyer's or a license's links, and each link's
counts, expiry and watermarked copy.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.models import DownloadEvent, DownloadGrant, Order, ProductFile, WatermarkCopy
from connector.tokens import download_url

MAX_EVENTS = 1000


@dataclass(frozen=True)
class Click:
    """One click on a buyer's download link."""

    at: dt.datetime
    order_id: int
    shop_order_id: str
    grant_id: int
    filename: str
    outcome: str
    served: str | None
    ip_hash: str | None
    user_agent: str | None


@dataclass(frozen=True)
class LinkState:
    """One download link (grant): how often it was used, until when, its watermarked copy."""

    grant_id: int
    order_id: int
    license_id: int | None
    filename: str
    link: str
    download_count: int
    download_limit: int | None
    expires_at: dt.datetime | None
    revoked: bool
    watermark: str
    # pending | ready | failed (None for files without a watermark); the error is for the
    # owner, never shown to buyers.
    watermark_status: str | None
    watermark_error: str | None


def clicks(
    session: Session,
    *,
    orders: Iterable[Order] | None = None,
    license_id: int | None = None,
    limit: int = MAX_EVENTS,
) -> list[Click]:
    """Clicks on the links of ``orders``, or of the license ``license_id`` (of both, when
    both are given), newest first, at most ``limit``."""
    if orders is None and license_id is None:
        raise ValueError("clicks needs orders or a license")
    query = (
        select(DownloadEvent, ProductFile.filename, Order.shop_order_id)
        .join(DownloadGrant, DownloadEvent.grant_id == DownloadGrant.id)
        .join(ProductFile, DownloadGrant.product_file_id == ProductFile.id)
        .join(Order, DownloadEvent.order_id == Order.id)
        .order_by(DownloadEvent.created_at.desc(), DownloadEvent.id.desc())
        .limit(limit)
    )
    if orders is not None:
        order_ids = [order.id for order in orders]
        if not order_ids:
            return []
        query = query.where(DownloadEvent.order_id.in_(order_ids))
    if license_id is not None:
        query = query.where(DownloadGrant.license_id == license_id)
    return [
        Click(
            at=event.created_at,
            order_id=event.order_id,
            shop_order_id=shop_order_id,
            grant_id=event.grant_id,
            filename=filename,
            outcome=event.outcome,
            served=event.served,
            ip_hash=event.ip_hash,
            user_agent=event.user_agent,
        )
        for event, filename, shop_order_id in session.execute(query).all()
    ]


def link_states(
    session: Session, *, order_id: int | None = None, license_id: int | None = None
) -> list[LinkState]:
    """The download links of an order, or of a license, in the order they were made."""
    query = (
        select(DownloadGrant, ProductFile, WatermarkCopy)
        .join(ProductFile, DownloadGrant.product_file_id == ProductFile.id)
        .outerjoin(WatermarkCopy, WatermarkCopy.grant_id == DownloadGrant.id)
        .order_by(DownloadGrant.id)
    )
    if order_id is None and license_id is None:
        raise ValueError("link_states needs an order or a license")
    if order_id is not None:
        query = query.where(DownloadGrant.order_id == order_id)
    if license_id is not None:
        query = query.where(DownloadGrant.license_id == license_id)
    return [
        LinkState(
            grant_id=grant.id,
            order_id=grant.order_id,
            license_id=grant.license_id,
            filename=product_file.filename,
            link=download_url(grant.id),
            download_count=grant.download_count,
            download_limit=grant.download_limit,
            expires_at=grant.expires_at,
            revoked=grant.revoked_at is not None,
            watermark=product_file.watermark,
            watermark_status=(
                None
                if product_file.watermark == "none"
                else (copy.status if copy is not None else "pending")
            ),
            watermark_error=copy.error if copy is not None else None,
        )
        for grant, product_file, copy in session.execute(query).all()
    ]
