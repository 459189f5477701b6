"""Deleting a store: everything Keygate keeps for it goes, at once and for good.

An owner who stops selling through Keygate (or never should have added the store) deletes
it from the store's admin page or with ``keygate store delete``. Gone in one transaction:
orders and their buyers' names and addresses, licenses (products asking about a key hear
NOT_FOUND), activations, download links and their clicks, stored mails, jobs, products and
releases, the shop connection and every credential, webhook records, the store's audit log
and the admins who saw only this store. Before that, Keygate's webhooks are deleted in the
shop (as disconnecting does); after it, the buyers' stamped copies are deleted from the
store's own R2 bucket, and a job empties the store's areas of shared storage.

The ``stores`` row itself stays, emptied and marked deleted (no name, address, secret or
token): its id names the store's areas of shared storage, and a new store given the same id
(SQLite reuses the highest) could otherwise read what is left in them. Nothing finds a
deleted store: its webhook URL and admin pages are 404, its API token was replaced.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, Select, delete, func, or_, select
from sqlalchemy.orm import Session

from connector.audit import record_audit
from connector.db import db, lock_row, utcnow
from connector.downloads.storage import ObjectStore, own_bucket, shared_area, store_areas
from connector.errors import Conflict, NotFound, ServiceUnavailable
from connector.integrations.r2 import StorageUnavailable
from connector.jobs import JOB_ID, RetryLater, enqueue, handles
from connector.models import (
    Activation,
    AdminUser,
    AuditEvent,
    BindingChange,
    BrevoRemoval,
    Credential,
    DownloadEvent,
    DownloadGrant,
    GrantExtension,
    Job,
    License,
    LicenseFlag,
    LicenseRenewal,
    LineItem,
    Mail,
    Order,
    Product,
    ProductFile,
    Release,
    SecurityEvent,
    ShopConnection,
    ShopNote,
    Store,
    WatermarkCopy,
    WebhookDelivery,
    WebhookRegistration,
)
from connector.redact import keygate_logger
from connector.stores import API_TOKEN_HASH, random_alphanumeric
from connector.vault.crypto import keyed_hash

log = keygate_logger(__name__)

DELETE_FILES_JOB = "store.delete_files"
DELETED_NAME = "(deleted store)"


@dataclass(frozen=True)
class StoreDeletion:
    """What deleting a store did, for the owner."""

    orders: int
    licenses: int
    # Keygate's webhooks still in the shop, for the owner to delete there: the shop refused
    # Keygate's key (their ids) or could not be reached (``shop_unreachable``).
    webhooks_left: list[str]
    shop_unreachable: bool
    # Buyers still to be taken out of a Brevo list while the store had no Brevo credentials
    # to do it (a removal waits for them): Keygate can no longer pass that on.
    brevo_removals_dropped: int = 0

    def left_to_do(self) -> list[str]:
        """What the owner still has to do by hand, if anything."""
        notes = []
        if self.shop_unreachable:
            notes.append(
                "The shop did not answer: delete Keygate's webhooks in WooCommerce (Settings →"
                " Advanced → Webhooks); until then the shop's deliveries are refused."
            )
        elif self.webhooks_left:
            notes.append(
                "The shop refused Keygate's key: delete its webhooks in WooCommerce yourself"
                f" (ids {', '.join(self.webhooks_left)})."
            )
        if self.brevo_removals_dropped:
            notes.append(
                f"{self.brevo_removals_dropped} erased buyer(s) were still waiting to be taken"
                " out of the store's Brevo list, which had no Brevo credentials to do it: check"
                " that list in Brevo for buyers who asked to be erased."
            )
        return notes


def _brevo_removals_left(session: Session, store: Store) -> int:
    """Buyers still to be taken out of the store's Brevo list (erased, consent withdrawn).

    Raises:
        Conflict: there are, and the store's Brevo credentials are there to do it: deleting
            them now would drop that for good.
    """
    from connector.vault.service import credentials_for

    waiting = session.scalar(select(func.count()).where(BrevoRemoval.store_id == store.id)) or 0
    if waiting and credentials_for(session, store, "brevo") is not None:
        raise Conflict(
            f"{waiting} buyer(s) are still to be taken out of the store's Brevo list (see the"
            " outbox, brevo.remove_contact): delete the store once that is done, or delete its"
            " Brevo credentials first and take them out in Brevo by hand."
        )
    return waiting


def delete_store(session: Session, store: Store, *, actor: str) -> StoreDeletion:
    """Delete ``store`` and everything kept for it (see the module's docstring). Commits.

    Raises:
        Conflict: see :func:`_brevo_removals_left`.
        NotFound: the store was deleted meanwhile.
    """
    from connector.vault.connection import disconnect

    if lock_row(session, Store, store.id).deleted_at is not None:
        raise NotFound("This store was deleted.")
    _brevo_removals_left(session, store)
    shop_unreachable = False
    webhooks_left: list[str] = []
    try:
        webhooks_left = disconnect(session, store, actor=actor).left
        session.commit()
    except ServiceUnavailable as exc:
        # Its webhooks stay in the shop and are refused here from now on (404): WooCommerce
        # disables them after a few failed deliveries, or the owner deletes them.
        session.rollback()
        log.warning("store %s: shop not reached while deleting the store (%s)", store.id, exc)
        shop_unreachable = True
    if lock_row(session, Store, store.id).deleted_at is not None:
        raise NotFound("This store was deleted.")
    # Again under the lock: one may have been queued while the shop answered.
    waiting = _brevo_removals_left(session, store)
    # Work under way on the store's rows finishes first (an activation holds its license,
    # a click its grant): none adds a row that points at one deleted here.
    locked = {
        model: len(
            session.execute(select(model.id).where(model.store_id == store.id).with_for_update())
            .scalars()
            .all()
        )
        for model in (Order, License, DownloadGrant)
    }
    orders, licenses = locked[Order], locked[License]
    delete_store_rows(session, store.id, keep_bucket=True)
    session.execute(delete(AuditEvent).where(AuditEvent.store_id == store.id))
    session.execute(delete(AdminUser).where(AdminUser.store_id == store.id))
    store.deleted_at = utcnow()
    store.name = DELETED_NAME
    store.url = ""
    store.webhook_secret = random_alphanumeric(40)
    store.previous_webhook_secret = store.previous_secret_until = None
    store.api_token_hash = keyed_hash(API_TOKEN_HASH, secrets.token_urlsafe(32))
    record_audit(
        session,
        store_id=store.id,
        actor=actor,
        action="store.deleted",
        subject=store.public_id,
        detail={"orders": orders, "licenses": licenses, "shop_unreachable": shop_unreachable},
    )
    enqueue(session, DELETE_FILES_JOB, {"store_id": store.id})
    session.commit()
    return StoreDeletion(
        orders=orders,
        licenses=licenses,
        webhooks_left=webhooks_left,
        shop_unreachable=shop_unreachable,
        brevo_removals_dropped=waiting,
    )


def delete_store_rows(session: Session, store_id: int, *, keep_bucket: bool) -> int:
    """Delete every row kept for store ``store_id`` but its audit log, its admins and the
    store itself (children first); returns how many. Safe to run again. ``keep_bucket``
    keeps its R2 credentials, for the files job to reach its own bucket."""
    orders = select(Order.id).where(Order.store_id == store_id)
    licenses = select(License.id).where(License.store_id == store_id)
    grants = select(DownloadGrant.id).where(DownloadGrant.store_id == store_id)
    products = select(Product.id).where(Product.store_id == store_id)
    renewals = select(LicenseRenewal.id).where(
        or_(LicenseRenewal.order_id.in_(orders), LicenseRenewal.license_id.in_(licenses))
    )
    of_store: list[tuple[type[Any], ColumnElement[bool]]] = [
        (
            GrantExtension,
            or_(GrantExtension.renewal_id.in_(renewals), GrantExtension.grant_id.in_(grants)),
        ),
        (LicenseRenewal, LicenseRenewal.id.in_(renewals)),
        (WatermarkCopy, WatermarkCopy.grant_id.in_(grants)),
        (DownloadEvent, DownloadEvent.store_id == store_id),
        (DownloadGrant, DownloadGrant.store_id == store_id),
        (Activation, Activation.license_id.in_(licenses)),
        (BindingChange, BindingChange.license_id.in_(licenses)),
        (LicenseFlag, LicenseFlag.license_id.in_(licenses)),
        (SecurityEvent, SecurityEvent.license_id.in_(licenses)),
        (ShopNote, ShopNote.store_id == store_id),
        (Mail, or_(Mail.store_id == store_id, Mail.order_id.in_(orders))),
        (Job, _jobs_of(store_id, orders)),
        (License, License.store_id == store_id),
        (LineItem, LineItem.order_id.in_(orders)),
        (Order, Order.store_id == store_id),
        (Release, Release.product_id.in_(products)),
        (ProductFile, ProductFile.product_id.in_(products)),
        (Product, Product.store_id == store_id),
        (WebhookDelivery, WebhookDelivery.store_id == store_id),
        (WebhookRegistration, WebhookRegistration.store_id == store_id),
        (ShopConnection, ShopConnection.store_id == store_id),
        (
            Credential,
            (Credential.store_id == store_id) & (Credential.kind != "r2")
            if keep_bucket
            else Credential.store_id == store_id,
        ),
        (BrevoRemoval, BrevoRemoval.store_id == store_id),
    ]
    removed = 0
    for model, which in of_store:
        result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            delete(model).where(which).execution_options(synchronize_session=False)
        )
        removed += result.rowcount
    session.expire_all()  # nothing deleted here may be read from the session's copies
    return removed


def _jobs_of(store_id: int, orders: Select[Any]) -> ColumnElement[bool]:
    """The store's jobs (their payload names the store or one of its orders), but the one
    that empties its storage."""
    return (
        or_(
            Job.payload["store_id"].as_integer() == store_id,
            Job.payload["order_id"].as_integer().in_(orders),
        )
    ) & (Job.kind != DELETE_FILES_JOB)


@handles(DELETE_FILES_JOB)
def delete_store_files(payload: dict[str, Any]) -> None:
    """Empty a deleted store's storage: its areas of shared storage (its files, its buyers'
    copies), then the buyers' stamped copies in its own bucket (the owner's own files there
    stay); and forget its R2 credentials. First, whatever work still running wrote for the
    store meanwhile is deleted again.

    Retried while storage is down; on its last attempt, a store bucket that still does not
    answer (the owner revoked its key, say) is given up on: the credentials are forgotten all
    the same and the folder left is named in the audit entry."""
    from connector import get_settings

    session = db.session
    store = session.get(Store, payload["store_id"])
    if store is None or store.deleted_at is None:
        return
    job = session.get(Job, payload.get(JOB_ID, 0))
    last_attempt = job is None or job.attempts >= get_settings().job_max_attempts
    delete_store_rows(session, store.id, keep_bucket=True)
    bucket = own_bucket(store)
    session.commit()  # nothing held while storage answers
    copies = store_areas(store.id)[1]
    removed = 0
    left: list[str] = []
    # Keygate's own storage is retried for as long as it takes (a job given up on is dead,
    # named in the audit log, and retried from the outbox): buyers' names are in there. The
    # store's own bucket is the owner's: its key revoked, the copies are left to them.
    folders: list[tuple[ObjectStore, str, str | None]] = [
        (shared_area(store.id), prefix, None) for prefix in store_areas(store.id)
    ]
    if bucket is not None:
        folders.append((bucket, copies, f"{bucket.config.bucket}/{copies}"))
    for storage, prefix, owners in folders:
        try:
            removed += storage.delete_prefix(prefix)
        except StorageUnavailable as exc:
            if owners is None or not last_attempt:
                raise RetryLater(str(exc)) from None
            left.append(owners)
    delete_store_rows(session, store.id, keep_bucket=False)
    record_audit(
        session,
        store_id=store.id,
        actor="system",
        action="store.files_deleted",
        subject=store.public_id,
        detail={"files": removed, "left": left},
    )
