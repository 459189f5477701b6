"""The owner's verbs on licenses: list, revoke, suspend, reinstate, extend.

Revocations and suspensions made here carry ``status_reason = "admin"``; the order service
never undoes those (only reasons the order's state caused are undone when it is paid again).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connector.audit import record_audit
from connector.db import utcnow
from connector.errors import NotFound, ValidationFailed
from connector.licensing.keys import normalize_key
from connector.licensing.policy import LATEST_EXPIRY, add_days
from connector.licensing.service import iso
from connector.models import (
    LICENSE_STATUSES,
    Activation,
    DownloadGrant,
    License,
    LicenseFlag,
    Order,
    Product,
    Store,
)
from connector.orders.service import hash_license_key

ACTIONS = ("revoke", "suspend", "reinstate", "extend")
LIST_LIMIT = 500


def find_store_license(session: Session, store: Store, raw_key: str) -> License:
    """The store's license with this key, or 404 (another store's key is not found either)."""
    canonical = normalize_key(raw_key)
    lic = None
    if canonical is not None:
        lic = session.execute(
            select(License).where(
                License.key_hash == hash_license_key(canonical), License.store_id == store.id
            )
        ).scalar_one_or_none()
    if lic is None:
        raise NotFound("No license of this store has this key.")
    return lic


def list_licenses(
    session: Session,
    store: Store,
    *,
    email: str | None = None,
    status: str | None = None,
    product: str | None = None,
) -> list[dict[str, Any]]:
    """The store's licenses, newest first, filtered by buyer email, status and product id.

    ``status`` is one of active, suspended, revoked, or ``expired`` (active but past expiry).
    """
    if status is not None and status not in (*LICENSE_STATUSES, "expired"):
        raise ValidationFailed(
            "status must be one of active, suspended, revoked, expired", field="status"
        )
    seats = (
        select(Activation.license_id, func.count().label("used"))
        .where(Activation.staging.is_(False))
        .group_by(Activation.license_id)
        .subquery()
    )
    query = (
        select(License, Product, Order, seats.c.used, LicenseFlag.id)
        .join(Product, License.product_id == Product.id)
        .outerjoin(Order, License.order_id == Order.id)
        .outerjoin(seats, seats.c.license_id == License.id)
        .outerjoin(LicenseFlag, LicenseFlag.license_id == License.id)
        .where(License.store_id == store.id)
        .order_by(License.id.desc())
        .limit(LIST_LIMIT)
    )
    now = utcnow()
    if email:
        query = query.where(func.lower(Order.email) == email.strip().lower())
    if product:
        query = query.where(Product.shop_product_id == product)
    if status == "expired":
        query = query.where(License.status == "active", License.expires_at <= now)
    elif status == "active":
        query = query.where(
            License.status == "active", (License.expires_at.is_(None)) | (License.expires_at > now)
        )
    elif status is not None:
        query = query.where(License.status == status)
    rows = session.execute(query).all()
    return [
        {
            "key": lic.key_encrypted,
            "product_id": prod.shop_product_id,
            "status": lic.status,
            "status_reason": lic.status_reason,
            "expired": lic.expires_at is not None and lic.expires_at <= now,
            "expires_at": iso(lic.expires_at),
            "updates_until": iso(lic.updates_until),
            "activation_limit": lic.activation_limit,
            "activations_used": used or 0,
            "flagged": flag_id is not None,
            "order_id": order.shop_order_id if order is not None else None,
            "email": order.email if order is not None else None,
            "issued_at": iso(lic.issued_at),
        }
        for lic, prod, order, used, flag_id in rows
    ]


def _set_downloads_blocked(session: Session, lic: License, *, blocked: bool) -> None:
    """The license's download links follow the owner's action.

    Blocking marks every link the owner's, those an order status or refund had shut too:
    otherwise paying that order again would reopen them. Unblocking opens only those.
    """
    grants = select(DownloadGrant).where(DownloadGrant.license_id == lic.id)
    for grant in session.scalars(grants):
        if blocked and grant.revoked_reason != "admin":
            grant.revoked_at = grant.revoked_at or utcnow()
            grant.revoked_reason = "admin"
        elif not blocked and grant.revoked_reason == "admin":
            grant.revoked_at = None
            grant.revoked_reason = None


def _extend_downloads(session: Session, lic: License, until: dt.datetime) -> None:
    """Downloads that last while the license lasts (its product sets no ``download_days``)
    end with it again; downloads with a window of their own keep it."""
    product = session.get(Product, lic.product_id)
    if product is None or product.download_days is not None:
        return
    grants = select(DownloadGrant).where(
        DownloadGrant.license_id == lic.id,
        DownloadGrant.expires_at.is_not(None),
        DownloadGrant.expires_at < until,
    )
    for grant in session.scalars(grants):
        grant.expires_at = until


def change_license(
    session: Session,
    store: Store,
    raw_key: str,
    action: str,
    *,
    days: int | None = None,
    actor: str = "api",
) -> License:
    """Apply an owner's action to a license and write an audit event.

    - revoke / suspend: status with reason "admin";
    - reinstate: back to active (whatever the reason was);
    - extend: ``days`` more, counted from the expiry if it is still ahead, else from now;
      an update window that ran with the license moves with it, and so do downloads that
      last while the license lasts. A lifetime license is 422.
    """
    if action not in ACTIONS:
        raise NotFound(f"Unknown action; use one of {', '.join(ACTIONS)}.")
    from connector.orders.renewals import lock_license

    # Locked, like renewals lock it: an extension made while a renewal is applied must not
    # be lost to the other's write (PostgreSQL; SQLite writers take turns anyway).
    lic = lock_license(session, find_store_license(session, store, raw_key).id)
    before = {"status": lic.status, "expires_at": iso(lic.expires_at)}
    if action in ("revoke", "suspend"):
        lic.status = "revoked" if action == "revoke" else "suspended"
        lic.status_reason = "admin"
        _set_downloads_blocked(session, lic, blocked=True)
    elif action == "reinstate":
        lic.status = "active"
        lic.status_reason = None
        _set_downloads_blocked(session, lic, blocked=False)
    else:
        if days is None:
            raise ValidationFailed("extend needs days", field="days")
        if lic.expires_at is None:
            raise ValidationFailed("a lifetime license cannot be extended", field="days")
        now = utcnow()
        start = max(lic.expires_at, now)
        new_expiry = add_days(start, days)
        if new_expiry >= LATEST_EXPIRY:
            raise ValidationFailed(
                f"{days} more days would take the license past {LATEST_EXPIRY.year}; "
                "make it a lifetime license instead",
                field="days",
            )
        if lic.updates_until is not None and lic.updates_until == lic.expires_at:
            lic.updates_until = new_expiry
        lic.expires_at = new_expiry
        _extend_downloads(session, lic, new_expiry)
    session.flush()
    record_audit(
        session,
        store_id=store.id,
        actor=actor,
        action=f"license.{action}",
        subject=f"license:{lic.id}",
        detail={
            "before": before,
            "after": {"status": lic.status, "expires_at": iso(lic.expires_at)},
            **({"days": days} if days is not None else {}),
        },
    )
    return lic


def remove_activation_as_owner(
    session: Session, store: Store, raw_key: str, activation_id: int, *, actor: str = "api"
) -> None:
    """Free a seat for the owner (audited; not counted as the buyer's binding change)."""
    lic = find_store_license(session, store, raw_key)
    activation = session.execute(
        select(Activation).where(Activation.id == activation_id, Activation.license_id == lic.id)
    ).scalar_one_or_none()
    if activation is None:
        raise NotFound("This license has no such activation.")
    detail = {"site": activation.site or None, "fingerprint": activation.fingerprint or None}
    session.delete(activation)
    session.flush()
    record_audit(
        session,
        store_id=store.id,
        actor=actor,
        action="license.activation_removed",
        subject=f"license:{lic.id}",
        detail=detail,
    )
