"""A license's download links follow a pause or an end the order did not cause, and an
extension the owner gave.

The owner's suspend or revoke (``connector.licensing.admin``) and the abuse signal's
suspension (``connector.licensing.service``) shut the license's links; a reinstate opens
them again. The order's own revocations (refunds, cancellations) are the order service's.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.db import utcnow
from connector.models import DownloadGrant, License, Product
from connector.models.licensing import by_the_order

# Why a license's links were shut besides the order: by its owner, or by the abuse signal
# (``License.status_reason`` of the pause).
BLOCKING_REASONS = ("admin", "abuse")


def set_downloads_blocked(
    session: Session, lic: License, *, blocked: bool, reason: str = "admin"
) -> None:
    """The license's download links follow the owner's action, or the abuse signal's.

    Blocking marks every link with ``reason`` ("admin" or "abuse"), those an order status
    or refund had shut too: otherwise paying that order again would reopen them. A link the
    owner shut stays the owner's. Unblocking (a reinstate, once
    :func:`connector.licensing.admin.not_paid_for` found the order pays for the key) opens
    those, and those the order shut while the key was paused (the order's next paid
    delivery reopens only the links of active keys).
    """
    if reason not in BLOCKING_REASONS:
        raise ValueError(f"unknown reason {reason!r}")
    grants = select(DownloadGrant).where(DownloadGrant.license_id == lic.id)
    for grant in session.scalars(grants):
        if blocked and grant.revoked_reason != "admin":
            grant.revoked_at = grant.revoked_at or utcnow()
            grant.revoked_reason = reason
        elif not blocked and (
            grant.revoked_reason in BLOCKING_REASONS or by_the_order(grant.revoked_reason)
        ):
            grant.revoked_at = None
            grant.revoked_reason = None


def downloads_last_while(
    session: Session, lic: License, until: dt.datetime, grant_ids: list[int] | None = None
) -> None:
    """Links that last while the license lasts (its product sets no ``download_days``) end
    with it again, at ``until`` (the owner extended it); links with a window of their own
    keep it. ``grant_ids``: only these links (issued now, for a file added since)."""
    product = session.get(Product, lic.product_id)
    if product is None or product.download_days is not None:
        return
    grants = select(DownloadGrant).where(
        DownloadGrant.license_id == lic.id,
        DownloadGrant.expires_at.is_not(None),
        DownloadGrant.expires_at < until,
    )
    if grant_ids is not None:
        grants = grants.where(DownloadGrant.id.in_(grant_ids))
    for grant in session.scalars(grants):
        grant.expires_at = until
