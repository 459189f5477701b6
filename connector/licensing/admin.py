"""The owner's verbs on licenses: find, list, revoke, suspend, reinstate, extend, free a seat.

The admin JSON API and the admin pages both call these.

Revocations and suspensions made here carry ``status_reason = "admin"``; the order service
never undoes those (only reasons the order's state caused are undone when it is paid again).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from connector.audit import record_audit
from connector.db import read_mostly, utcnow
from connector.errors import Conflict, NotFound, ValidationFailed
from connector.licensing.keys import normalize_key
from connector.licensing.links import downloads_last_while, set_downloads_blocked
from connector.licensing.policy import LATEST_EXPIRY, add_days
from connector.licensing.service import activations_used, iso
from connector.models import (
    LICENSE_STATUSES,
    Activation,
    License,
    LicenseFlag,
    LicenseRenewal,
    LineItem,
    Order,
    Product,
    Store,
)
from connector.models.licensing import LINE_CHANGED
from connector.orders.service import hash_license_key
from connector.stores import hold_live_store
from plugin.shop import REVOKING_STATUSES

ACTIONS = ("revoke", "suspend", "reinstate", "extend")
# The status each action leaves: asked of a license already so, it changes nothing.
STATUS_AFTER = {"revoke": "revoked", "suspend": "suspended", "reinstate": "active"}
STATUS_FILTERS = (*LICENSE_STATUSES, "expired")
LIST_LIMIT = 500
DAYS_MAX = 100 * 366  # what one extension may add


def find_license_by_key(session: Session, raw_key: str, store_id: int | None) -> License | None:
    """The license with this key (typed as the buyer got it), found by its keyed hash.

    With ``store_id``, only a license of that store: another store's key is not found.
    """
    canonical = normalize_key(raw_key)
    if canonical is None:
        return None
    query = select(License).where(License.key_hash == hash_license_key(canonical))
    if store_id is not None:
        query = query.where(License.store_id == store_id)
    return session.execute(query).scalar_one_or_none()


def find_store_license(session: Session, store: Store, raw_key: str) -> License:
    """The store's license with this key, or 404 (another store's key is not found either)."""
    lic = find_license_by_key(session, raw_key, store.id)
    if lic is None:
        raise NotFound("No license of this store has this key.")
    return lic


@dataclass(frozen=True)
class LicenseRow:
    """One license as the owner's lists show it: with its product, order and seats taken."""

    license: License
    product: Product
    order: Order | None
    activations_used: int
    flagged: bool
    expired: bool


def check_status_filter(status: str | None) -> None:
    """422 unless ``status`` is None or one the license lists filter by."""
    if status is not None and status not in STATUS_FILTERS:
        raise ValidationFailed(
            "status must be one of active, suspended, revoked, expired", field="status"
        )


def search_licenses(
    session: Session,
    store_id: int | None,
    *,
    email: str | None = None,
    status: str | None = None,
    product: str | None = None,
    before: int | None = None,
    limit: int = LIST_LIMIT,
) -> list[LicenseRow]:
    """Licenses newest first, filtered by buyer email, status and the shop's product id.

    ``store_id`` None searches every store (an admin of all stores). ``status`` is one of
    active, suspended, revoked, or ``expired`` (active but past expiry); another is 422.
    ``before`` pages back: only licenses with a smaller id.
    """
    check_status_filter(status)
    # Counted for the page's licenses only (an index lookup each): not a count of every
    # activation of the store grouped for each page, which an export of a big store's keys
    # repeated for each of its pages.
    seats = (
        select(func.count(Activation.id))
        .where(Activation.license_id == License.id, Activation.staging.is_(False))
        .correlate(License)
        .scalar_subquery()
    )
    query = (
        select(License, Product, Order, seats, LicenseFlag.id)
        .join(Product, License.product_id == Product.id)
        .outerjoin(Order, License.order_id == Order.id)
        .outerjoin(LicenseFlag, LicenseFlag.license_id == License.id)
        .order_by(License.id.desc())
        .limit(limit)
    )
    if store_id is not None:
        query = query.where(License.store_id == store_id)
    if before is not None:
        query = query.where(License.id < before)
    now = utcnow()
    if email:
        # Orders keep the address lower-cased: compared as is, its index finds them.
        query = query.where(Order.email == email.strip().lower())
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
    return [
        LicenseRow(
            license=lic,
            product=prod,
            order=order,
            activations_used=used or 0,
            flagged=flag_id is not None,
            expired=lic.expires_at is not None and lic.expires_at <= now,
        )
        for lic, prod, order, used, flag_id in session.execute(query).all()
    ]


def license_row_json(row: LicenseRow) -> dict[str, Any]:
    """One license as the owner's list answers it (and the CSV export writes it)."""
    return {
        "key": row.license.key_encrypted,
        "product_id": row.product.shop_product_id,
        "product": row.product.name,
        "status": row.license.status,
        "status_reason": row.license.status_reason,
        "expired": row.expired,
        "expires_at": iso(row.license.expires_at),
        "updates_until": iso(row.license.updates_until),
        "activation_limit": row.license.activation_limit,
        "activations_used": row.activations_used,
        "flagged": row.flagged,
        "order_id": row.order.shop_order_id if row.order is not None else None,
        "email": row.order.email if row.order is not None else None,
        "issued_at": iso(row.license.issued_at),
    }


def all_licenses(
    session: Session,
    store_id: int,
    *,
    email: str | None = None,
    status: str | None = None,
    product: str | None = None,
    page: int = LIST_LIMIT,
) -> Iterator[LicenseRow]:
    """Every license of the store, newest first, filtered as :func:`search_licenses`
    filters them: a page at a time, each read in a short read-only transaction of its own
    (an export of any size in bounded memory, holding no lock while its reader is slow)."""
    before = None
    while True:
        rows = read_mostly(
            session,
            functools.partial(
                search_licenses,
                session,
                store_id,
                email=email,
                status=status,
                product=product,
                before=before,
                limit=page,
            ),
        )
        yield from rows
        if len(rows) < page:
            return
        before = rows[-1].license.id


def license_activations(session: Session, lic: License) -> list[Activation]:
    """Where the license is used, oldest binding first."""
    return list(
        session.scalars(
            select(Activation).where(Activation.license_id == lic.id).order_by(Activation.id)
        )
    )


def license_renewals(session: Session, lic: License) -> list[tuple[LicenseRenewal, Order]]:
    """The renewals that extended the license (taken-back ones too, marked by
    ``reverted_at``), oldest first, with the order each was paid in."""
    return [
        (renewal, order)
        for renewal, order in session.execute(
            select(LicenseRenewal, Order)
            .join(Order, LicenseRenewal.order_id == Order.id)
            .where(LicenseRenewal.license_id == lic.id)
            .order_by(LicenseRenewal.id)
        ).all()
    ]


@dataclass(frozen=True)
class LicenseRecord:
    """Everything the owner's license page shows of one license but its downloads."""

    license: License
    product: Product
    order: Order | None
    activations: list[Activation]
    activations_used: int  # seats taken: free staging sites do not count
    flag: LicenseFlag | None
    renewals: list[tuple[LicenseRenewal, Order]]


def license_record(session: Session, lic: License) -> LicenseRecord:
    """The license with its product, order, activations, abuse flag and renewals."""
    product = session.get(Product, lic.product_id)
    if product is None:  # pragma: no cover - a foreign key
        raise NotFound("This license's product is gone.")
    return LicenseRecord(
        license=lic,
        product=product,
        order=session.get(Order, lic.order_id) if lic.order_id is not None else None,
        activations=license_activations(session, lic),
        activations_used=activations_used(session, lic.id),
        flag=session.execute(
            select(LicenseFlag).where(LicenseFlag.license_id == lic.id)
        ).scalar_one_or_none(),
        renewals=license_renewals(session, lic),
    )


def not_paid_for(session: Session, lic: License) -> str | None:
    """Why the license's order does not pay for it now, or None when it does: the order is
    refunded, cancelled, failed or deleted, the unit was refunded or removed, or the line
    now names another product. Whatever revoked or suspended the key (the order
    itself, or the owner before the order was cancelled), reinstating it then would hand
    out a key nobody paid for."""
    order = session.get(Order, lic.order_id) if lic.order_id is not None else None
    line = session.get(LineItem, lic.line_item_id) if lic.line_item_id is not None else None
    if order is None or line is None:
        return None  # not sold through an order Keygate follows
    if order.deleted:
        return "the order was deleted in the shop"
    if order.status in REVOKING_STATUSES:
        return f"the order is {order.status}"
    # pending or on-hold: a paid order waiting on something (a bank transfer checked): its
    # keys stay as they are, and so may the owner's reinstate; but not once the order took
    # its keys back (cancelled, then pending again for another payment), whatever paused
    # this one: it waits for the payment.
    if order.revoked_at is not None:  # paid since, it would be cleared
        return f"the order is {order.status}: not paid again since it took its keys back"
    if line.product_id != lic.product_id:
        return "the order's line now names another product"
    if lic.unit > line.paid_units:
        return "this unit was refunded or removed from the order"
    return None


def why_revoked(status_reason: str | None) -> str:
    """Who or what revoked a license, as its owner reads it (``License.status_reason``)."""
    reason = status_reason or ""
    if reason == "admin":
        return "by the owner, on an admin page or with the admin API"
    if reason == "refund":
        return "by a refund: this unit was refunded or removed from its order"
    if reason == LINE_CHANGED:
        return "by its order: the line was changed to another product"
    if reason.startswith("order:"):
        return f"by its order, {reason.removeprefix('order:')}"
    return f"reason: {reason or 'none recorded'}"


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
    - reinstate: back to active, after the owner's or the abuse signal's suspension or
      revocation, or the order's; 409 while the order does not pay for it (:func:`not_paid_for`);
    - revoke, suspend or reinstate of a license already so: nothing changes, nothing is
      audited (the answer is the license as it is), except that revoking a key its order
      revoked makes the revocation the owner's; suspend of a revoked license is 409: a
      suspension would hide why it was revoked (a refund's would no longer come back with
      its order);
    - extend: ``days`` more, counted from the expiry if it is still ahead, else from now;
      an update window that ran with the license moves with it, and so do downloads that
      last while the license lasts. A lifetime license is 422.
    """
    if action not in ACTIONS:
        raise NotFound(f"Unknown action; use one of {', '.join(ACTIONS)}.")
    from connector.orders.renewals import lock_license

    # Locked, like renewals lock it: an extension made while a renewal is applied must not
    # be lost to the other's write (PostgreSQL; SQLite writers take turns anyway).
    found = find_store_license(session, store, raw_key)
    hold_live_store(session, store)  # before the license's lock, as a deletion takes them
    lic = lock_license(session, found.id)
    before = {"status": lic.status, "expires_at": iso(lic.expires_at)}
    if action == "suspend" and lic.status == "revoked":
        raise Conflict(
            f"This license is revoked ({why_revoked(lic.status_reason)}); suspending it would"
            " hide why. It stays revoked.",
            status_reason=lic.status_reason,
        )
    if action == "reinstate":
        _refuse_unpaid_reinstate(session, lic)
    # Already so: its reason, links and audit log stay as they are. But the owner's revoke
    # of a key its order revoked makes it the owner's: paid again, the order does not bring
    # it back (a refunded fraud's key stays revoked whatever becomes of the order).
    if lic.status == STATUS_AFTER.get(action) and (
        action != "revoke" or lic.status_reason == "admin"
    ):
        return lic
    if action in ("revoke", "suspend"):
        lic.status = "revoked" if action == "revoke" else "suspended"
        lic.status_reason = "admin"
        set_downloads_blocked(session, lic, blocked=True)
    elif action == "reinstate":
        lic.status = "active"
        lic.status_reason = None
        set_downloads_blocked(session, lic, blocked=False)
    else:
        if days is None:
            raise ValidationFailed("days is required", field="days")
        if not 1 <= days <= DAYS_MAX:
            raise ValidationFailed(f"days must be between 1 and {DAYS_MAX}", field="days")
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
        downloads_last_while(session, lic, new_expiry)
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


def _refuse_unpaid_reinstate(session: Session, lic: License) -> None:
    """409 while the license's order does not pay for it (:func:`not_paid_for`)."""
    unpaid = not_paid_for(session, lic)
    if unpaid is not None:
        raise Conflict(
            f"This key's order does not pay for it now ({unpaid}): reinstated, it would be a"
            " key nobody paid for. Once the order is paid again in the shop, a key the order"
            " revoked comes back by itself, and one you paused can be reinstated here."
        )


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
    # Its id only, as the buyer portal's entry: the audit log outlives the activation and
    # erasures, and a site or a device fingerprint is about the buyer.
    detail = {"activation_id": activation.id}
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
