"""A customer's data: export it, erase it, and purge records past their retention.

Erasure keeps what accounting and license enforcement must keep (order number, amounts,
currency, payment reference, dates, license keys and their status) and removes or
pseudonymises the rest: name, company, email become an erasure marker; stored mails are
deleted. Domains with records of their own add them through ``EXPORTERS`` and ``ERASERS``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CursorResult, and_, delete, or_, select
from sqlalchemy.orm import Session

from connector.audit import record_audit
from connector.db import db, iso, lock_row, utcnow
from connector.errors import Conflict, NotFound
from connector.jobs import handles
from connector.mail.contacts import LIST_NOT_RECORDED, pass_erasure_on
from connector.models import (
    AuditEvent,
    BrevoRemoval,
    DownloadGrant,
    Job,
    License,
    LicenseRenewal,
    Mail,
    Order,
    ShopNote,
    Store,
    WebhookDelivery,
)
from connector.orders.refund_notices import REFUNDS_READ, answers_a_notice, open_refund_notices
from connector.orders.service import PERSONAL_FIELDS, clear_personal_fields
from connector.orders.summary import order_entitlements
from connector.stores import hold_live_store
from connector.vault.crypto import keyed_hash, store_keyed_hash

# Per-domain hooks: exporter(session, orders) -> {section: data}; eraser(session, orders) -> None.
Exporter = Callable[[Session, list[Order]], dict[str, Any]]
Eraser = Callable[[Session, list[Order]], None]
EXPORTERS: list[Exporter] = []
ERASERS: list[Eraser] = []
# Purgers run daily: purger(session, now) -> {record kind: rows removed}.
Purger = Callable[[Session, dt.datetime], dict[str, int]]
PURGERS: list[Purger] = []


def register_hooks(
    exporter: Exporter | None = None, eraser: Eraser | None = None, purger: Purger | None = None
) -> None:
    """Add a domain's privacy hooks once (safe to call on every import)."""
    for hooks, hook in ((EXPORTERS, exporter), (ERASERS, eraser), (PURGERS, purger)):
        if hook is not None and hook not in hooks:
            hooks.append(hook)  # type: ignore[arg-type]


def customer_orders(
    session: Session, store: Store, email: str, *, erased: bool = False, lock: bool = False
) -> list[Order]:
    """The orders of ``email`` in ``store``; ``erased``: those kept after the customer was
    erased instead (found by their pseudonym, which is made from the address: either kind,
    :func:`erased_addresses`). ``lock``: locked (NO KEY UPDATE) and read again once a
    transaction that held them committed."""
    addresses = erased_addresses(store.id, email) if erased else (email.strip().lower(),)
    query = (
        select(Order)
        .where(Order.store_id == store.id, Order.email.in_(addresses))
        .order_by(Order.id)
    )
    if lock:
        query = query.with_for_update(key_share=True).execution_options(populate_existing=True)
    return list(session.execute(query).scalars())


def _shared_erasure_marker(email: str) -> str:
    """The pseudonym erasures gave the customer before pseudonyms were per store: the same
    in every store. Orders and audit entries erased then keep it."""
    return "erased-" + keyed_hash("erasure", email.strip().lower())[:16]


def erasure_marker(store_id: int, email: str) -> str:
    """The pseudonym an erasure in store ``store_id`` gives the customer (the same for each
    of their orders there, another in every store: two owners' exports do not show that
    one person bought from both). Made from the pseudonym every store shared before, not
    from the address again: one kept under that can be turned into this one without the
    address, which the erasure took."""
    return "erased-" + store_keyed_hash("erasure", store_id, _shared_erasure_marker(email))[:16]


def erasure_markers(store_id: int, email: str) -> tuple[str, str]:
    """The pseudonyms the customer may be kept under in the store: the store's, and the one
    erasures gave in every store before (:func:`_shared_erasure_marker`)."""
    return erasure_marker(store_id, email), _shared_erasure_marker(email)


def order_erasure_marker(order: Order) -> str:
    """The pseudonym erasing the buyer of an order without an email address gives them
    (their only record is the order: see :func:`erase_order_buyer`)."""
    return "erased-" + keyed_hash("erasure", f"order:{order.store_id}:{order.shop_order_id}")[:16]


def _pseudonymous_address(marker: str) -> str:
    return f"{marker}@erased.invalid"


def erased_addresses(store_id: int, email: str) -> tuple[str, str]:
    """The addresses the customer's erased orders in the store may have (see
    :func:`erasure_markers`)."""
    stores, shared = erasure_markers(store_id, email)
    return _pseudonymous_address(stores), _pseudonymous_address(shared)


def is_buyer_without_address(order: Order) -> bool:
    """The order's buyer has no email address (an order entered by hand in the shop), or
    had none when they were erased: the order alone names them, for export and erasure."""
    if order.is_erased:
        return order.email == _pseudonymous_address(order_erasure_marker(order))
    return order.email is None


def known_customer_orders(
    session: Session, store: Store, email: str, *, erased_too: bool = False
) -> list[Order]:
    """The customer's orders in ``store`` (``erased_too``: and what was kept of those an
    erasure reached, a customer who came back after it having both), or 404 when Keygate
    keeps nothing about them there (an export or an erasure of nobody is an error the owner
    should see)."""
    orders = customer_orders(session, store, email)
    kept = customer_orders(session, store, email, erased=True)
    if erased_too and (orders or kept):
        return sorted(orders + kept, key=lambda order: order.id)
    if orders:
        return orders
    if kept:
        raise NotFound(
            "This customer was erased already: Keygate keeps only the accounting and license"
            " records of their orders, under a pseudonym (their export lists them)."
        )
    raise NotFound("Keygate keeps no data about this customer.")


def _renewals(session: Session, order: Order) -> list[dict[str, Any]]:
    """The licenses this order renewed, with the dates before and after."""
    return [
        {
            "previous_expires_at": iso(r.previous_expires_at),
            "expires_at": iso(r.expires_at),
            "previous_updates_until": iso(r.previous_updates_until),
            "updates_until": iso(r.updates_until),
            "subscription": r.subscription_id,
            "reverted_at": iso(r.reverted_at),
            "created_at": iso(r.created_at),
        }
        for r in session.scalars(
            select(LicenseRenewal)
            .where(LicenseRenewal.order_id == order.id)
            .order_by(LicenseRenewal.id)
        )
    ]


def export_customer(session: Session, store: Store, email: str) -> dict[str, Any]:
    """Everything Keygate keeps about ``email`` in ``store``, as JSON-ready data: once the
    customer was erased, what was kept of their orders under the pseudonym."""
    address = email.strip().lower()
    try:
        orders = known_customer_orders(session, store, email, erased_too=True)
    except NotFound:
        # An address the shop corrected on an order: no order names it any more, but it
        # waits to leave the Brevo list the order pushed it into, and that is kept.
        if not brevo_removals(session, store, address=address):
            raise
        orders = []
    markers = erasure_markers(store.id, email)
    return _export(session, store, orders, markers, email=address)


def export_order_buyer(session: Session, store: Store, order: Order) -> dict[str, Any]:
    """Everything Keygate keeps about the buyer of an order without an email address (the
    order alone names them), as :func:`export_customer` answers for a customer.

    Raises:
        Conflict: the buyer has an address: their export is the customer's, every order.
    """
    if not is_buyer_without_address(order):
        raise Conflict(HAS_ADDRESS)
    return _export(session, store, [order], [order_erasure_marker(order)], email=None)


HAS_ADDRESS = (
    "This order's buyer has an email address: look them up on the Customers page, which"
    " exports or erases every order of theirs at once."
)


def _export(
    session: Session,
    store: Store,
    orders: list[Order],
    markers: Collection[str],
    *,
    email: str | None,
) -> dict[str, Any]:
    exported: dict[str, Any] = {
        "email": email,
        "erased": bool(orders) and all(order.is_erased for order in orders),
        "store": store.name,
        "exported_at": iso(utcnow()),
        "orders": [],
    }
    for order in orders:
        entitlements = order_entitlements(session, order)
        exported["orders"].append(
            {
                "order": order.shop_order_id,
                "number": order.number,
                "status": order.status,
                "deleted_in_shop": order.deleted,
                "created_at": iso(order.created_at),
                "erased_at": iso(order.erased_at),
                "email": order.email,
                "name": order.name,
                "company": order.company,
                "currency": order.currency,
                "total": str(order.total) if order.total is not None else None,
                "customer_id": order.customer_id,
                "payment_method": order.payment_method_title or order.payment_method,
                "payment_reference": order.transaction_id,
                "payment_note": order.payment_note,
                "date_paid": iso(order.date_paid),
                # The Brevo list Keygate pushed the buyer into for this order (0: the store's).
                "brevo_list": order.brevo_list_id,
                "brevo_address": order.brevo_email,  # the address pushed into it
                "brevo_consent_withdrawn": order.brevo_consent_withdrawn,
                "items": [
                    {
                        "name": line.name,
                        "sku": line.sku,
                        "quantity": line.quantity,
                        "refunded_quantity": line.refunded_quantity,
                        "total": str(line.total) if line.total is not None else None,
                    }
                    for line in order.line_items
                ],
                "licenses": [
                    {
                        "key": lic.key,
                        "product": lic.product_name,
                        "status": lic.status,
                        "activation_limit": lic.activation_limit,
                        "expires_at": iso(lic.expires_at),
                        "updates_until": iso(lic.updates_until),
                    }
                    for lic in entitlements["licenses"]
                ],
                "renewals": _renewals(session, order),
                "downloads": [
                    {
                        "filename": d.filename,
                        "downloads_left": d.downloads_left,
                        "expires_at": iso(d.expires_at),
                        "revoked": d.revoked,
                    }
                    for d in entitlements["downloads"]
                ],
                "mails": [
                    {
                        "kind": m.kind,
                        "to": m.to_email,
                        "subject": m.subject,
                        "sent_at": iso(m.sent_at),
                    }
                    for m in session.execute(
                        select(Mail).where(Mail.order_id == order.id)
                    ).scalars()
                ],
                "shop_notes": [
                    {
                        "marker": note.marker,
                        "shop_note_id": note.shop_note_id,
                        "created_at": iso(note.created_at),
                    }
                    for note in session.scalars(
                        select(ShopNote).where(ShopNote.order_id == order.id).order_by(ShopNote.id)
                    )
                ],
            }
        )
    subjects = _customer_subjects(session, markers, orders)
    exported["audit"] = _audit_entries(session, store, subjects)
    exported["brevo_removals"] = (
        brevo_removals(session, store, subjects=subjects)
        if email is None
        else brevo_removals(session, store, address=email)
    )
    for exporter in EXPORTERS:
        exported.update(exporter(session, orders))
    return exported


def _customer_subjects(
    session: Session, markers: Collection[str], orders: list[Order]
) -> list[str]:
    """How records name the customer: by one of their orders, a license of those orders (or
    one they renewed), or their erasure's pseudonym (``markers``: either kind)."""
    order_ids = [order.id for order in orders]
    license_ids = session.scalars(
        select(License.id)
        .where(License.order_id.in_(order_ids))
        .union(select(LicenseRenewal.license_id).where(LicenseRenewal.order_id.in_(order_ids)))
    ).all()
    subjects = {f"order:{order.shop_order_id}" for order in orders}
    subjects.update(f"license:{license_id}" for license_id in license_ids)
    subjects.update(markers)
    return sorted(subjects)


def _audit_entries(session: Session, store: Store, subjects: list[str]) -> list[dict[str, Any]]:
    """The store's audit entries naming the customer (``subjects``)."""
    return [
        {
            "at": iso(event.created_at),
            # An admin as such: the name they sign in with is half of their credentials.
            "actor": "admin" if event.actor.startswith("admin:") else event.actor,
            "action": event.action,
            "subject": event.subject,
            "detail": event.detail,
        }
        for event in session.scalars(
            select(AuditEvent)
            .where(AuditEvent.store_id == store.id, AuditEvent.subject.in_(subjects))
            .order_by(AuditEvent.id)
        )
    ]


def brevo_removals(
    session: Session,
    store: Store,
    *,
    address: str | None = None,
    subjects: Collection[str] = (),
) -> list[dict[str, Any]]:
    """The addresses still to be taken out of the store's Brevo list (an erasure, a withdrawn
    consent or a corrected address waits for Brevo), kept until it is done: those that are
    ``address`` (a customer's export: not an address the shop corrected away from on one of
    their orders, which is another person's or a typo's), or else those the records
    ``subjects`` name (the export of an order's buyer without an address). The addresses
    are encrypted, so they are compared here; few wait at any time."""
    waiting = session.scalars(
        select(BrevoRemoval).where(BrevoRemoval.store_id == store.id).order_by(BrevoRemoval.id)
    )
    return [
        {
            "list": removal.list_id,
            "address": removal.email,
            "reason": removal.reason,
            "since": iso(removal.created_at),
        }
        for removal in waiting
        if (
            removal.email.strip().lower() == address
            if address is not None
            else removal.subject in subjects
        )
    ]


@dataclass(frozen=True)
class Erasure:
    """What an erasure did."""

    orders: int
    # The erasure passed on to Brevo (see connector.mail.contacts.pass_erasure_on):
    # queued, no_brevo_credentials, list_unknown, or None (Keygate never pushed them).
    brevo_removal: str | None = None


def erase_customer(session: Session, store: Store, email: str, *, actor: str) -> Erasure:
    """Erase a customer's personal data, and have Brevo take them out of the lists Keygate
    pushed them into."""
    hold_live_store(session, store)  # before the orders' locks, as a deletion takes them
    # Locked, and so read again once an erasure committed meanwhile (a double click of
    # Erase): it leaves none of their orders to this one, which is the 404 of one erased
    # already, not a second erasure. NO KEY UPDATE, as the erasure's other locks.
    orders = customer_orders(session, store, email, lock=True)
    if not orders:
        known_customer_orders(session, store, email)  # raises its 404
    return _erase(session, store, orders, erasure_marker(store.id, email), actor=actor)


def erase_order_buyer(session: Session, store: Store, order: Order, *, actor: str) -> Erasure:
    """Erase the personal data of the buyer of an order without an email address (an order
    the owner entered by hand): the Customers page, which finds buyers by address, cannot
    reach them. What is kept, and how, is what :func:`erase_customer` keeps.

    Raises:
        Conflict: the buyer has an address (their erasure is the customer's, every order),
            or was erased already.
    """
    hold_live_store(session, store)
    # A delivery copying an address waits; a click logging under the order does not (NO
    # KEY UPDATE: see connector.downloads.privacy.erase_downloads).
    order = lock_row(session, Order, order.id, keep_key=True)
    if order.is_erased:
        raise Conflict("This order's buyer was erased already.")
    if not is_buyer_without_address(order):
        raise Conflict(HAS_ADDRESS)
    return _erase(session, store, [order], order_erasure_marker(order), actor=actor)


def _erase(
    session: Session, store: Store, orders: list[Order], marker: str, *, actor: str
) -> Erasure:
    for eraser in ERASERS:
        eraser(session, orders)
    brevo_removal = pass_erasure_on(session, store, orders, marker)
    for order in orders:
        session.execute(delete(Mail).where(Mail.order_id == order.id))
        clear_personal_fields(order, _pseudonymous_address(marker))
        order.erased_at = utcnow()
    # The audit entry names the pseudonym, not the address.
    record_audit(
        session,
        store_id=store.id,
        actor=actor,
        action="customer.erased",
        subject=marker,
        detail={"orders": len(orders), "brevo_removal": brevo_removal},
    )
    session.flush()
    return Erasure(len(orders), brevo_removal)


def purge_expired_records(session: Session, now: dt.datetime | None = None) -> dict[str, int]:
    """Remove records past their retention period."""
    from connector import get_settings

    settings = get_settings()
    now = now or utcnow()
    removed: dict[str, int] = {}

    def older(days: int) -> dt.datetime:
        return now - dt.timedelta(days=days)

    removed["webhook_deliveries"] = delete_in_batches(
        session,
        WebhookDelivery,
        WebhookDelivery.received_at < older(settings.retention_webhook_days),
    )
    removed["mails"] = delete_in_batches(
        session, Mail, Mail.created_at < older(settings.retention_mail_days)
    )
    # A dead job stays (the outbox's Retry, and work like a Brevo removal that still has to
    # happen, need it), but past the retention its error keeps only its type: the text may
    # name a customer.
    removed["dead_job_errors"] = change_in_batches(
        session,
        Job,
        Job.status == "dead",
        Job.finished_at < older(settings.retention_jobs_days),
        Job.last_error.contains(":"),
        change=_keep_error_type,
    )
    removed["jobs"] = delete_in_batches(
        session,
        Job,
        Job.status == "done",
        Job.finished_at < older(settings.retention_jobs_days),
        # Not NOT IN (a list of every mail's job): PostgreSQL hashes that list only while it
        # fits in work_mem, and past that reads it again for each job (a year of mails).
        ~select(Mail.id).where(Mail.job_id == Job.id).exists(),
    )
    removed["brevo_removals"] = _give_up_brevo_removals(
        session, older(settings.retention_jobs_days)
    )
    removed["unlicensed_order_buyers"] = _forget_unlicensed_buyers(
        session, older(settings.retention_unlicensed_order_days)
    )
    for purger in PURGERS:
        removed.update(purger(session, now))
    removed["audit_events"] = delete_in_batches(
        session,
        AuditEvent,
        AuditEvent.created_at < older(settings.retention_audit_days),
        # An open notice is the order page's only word that a refund's keys were not taken
        # back: kept while open; the read that answered it, while the notice is kept.
        ~open_refund_notices(),
        ~and_(AuditEvent.action == REFUNDS_READ, answers_a_notice()),
    )
    return removed


# Rows a retention purge deletes per transaction.
PURGE_BATCH = 5000


def delete_in_batches(session: Session, model: Any, *where: Any) -> int:
    """Delete the rows of ``model`` that ``where`` selects, in the order of their ids,
    :data:`PURGE_BATCH` at a time, each batch committed; returns how many. The first purge
    of an old shop's records (or after the owner shortens a retention) deletes millions of
    rows: in one transaction it held SQLite's only write lock for longer than a webhook or an
    activation waits for it (``busy_timeout``), and they failed. Records past their retention
    stay deletable, so a purge stopped half-way simply goes on the next day.

    Each batch starts after the last id of the one before: rows that are kept (done jobs a
    mail still refers to, open refund notices) are read once, not once per batch."""
    total, after = 0, 0
    while True:
        # The id that ends this batch: none when fewer than a batch are left.
        last = session.scalar(
            select(model.id)
            .where(model.id > after, *where)
            .order_by(model.id)
            .offset(PURGE_BATCH - 1)
            .limit(1)
        )
        batch = [model.id > after] if last is None else [model.id > after, model.id <= last]
        result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
            delete(model).where(*batch, *where).execution_options(synchronize_session=False)
        )
        session.commit()
        total += result.rowcount
        if last is None:
            return total
        after = last


# Rows a retention purge reads, changes and commits at a time: whole rows, into memory.
CHANGE_BATCH = 500


def change_in_batches(
    session: Session,
    model: Any,
    *where: Any,
    change: Callable[[Any], None],
    lock: bool = False,
) -> int:
    """Apply ``change`` to each row of ``model`` that ``where`` selects, in the order of
    their ids, :data:`CHANGE_BATCH` rows at a time, each batch committed; returns how many.

    What :func:`delete_in_batches` is to a deletion, for what the purge changes (or deletes
    row by row) in Python: the first purge of an old shop read every such row into memory at
    once, and held its locks until the purge's next commit (SQLite's only write lock; on
    PostgreSQL, the locked orders a delivery waits for). A purge stopped half-way keeps the
    batches it committed, and the next one goes on with the rest, which still match.

    Each batch is read again with ``where``, so that a row changed since its id was chosen
    is judged on what it is now. With ``lock``, rows another transaction holds are skipped:
    the next purge finds them.
    """
    changed, after = 0, 0
    while True:
        chosen = select(model.id).where(model.id > after, *where).order_by(model.id)
        if lock:
            chosen = chosen.with_for_update(skip_locked=True)
        ids = session.scalars(chosen.limit(CHANGE_BATCH)).all()
        if not ids:
            return changed
        after = ids[-1]
        rows = session.scalars(select(model).where(model.id.in_(ids), *where)).all()
        for row in rows:
            change(row)
        session.commit()
        changed += len(rows)


def _keep_error_type(job: Job) -> None:
    """A dead job's error past the retention: its type stays, the text (a customer?) goes."""
    job.last_error = (job.last_error or "").split(":", 1)[0]


def _forget_unlicensed_buyers(session: Session, before: dt.datetime) -> int:
    """Clear the buyer's personal fields of orders that never issued a license or a download
    link (nor renewed one) and that the shop has not changed since ``before``: a product
    Keygate does not license, a failed or cancelled checkout. Keygate needs only the order
    itself (product sync re-reads unlicensed sales by id); the shop keeps the buyer. A later
    delivery or re-read of the order brings the fields back, so one paid or licensed after
    this is issued and mailed as any other. Not erased (nothing stops that): nobody's.

    An order whose buyer Keygate recorded pushing into a Brevo list keeps the address an
    erasure takes out of the list (only an order that issued something is pushed).
    Orders locked by a delivery are left for the next purge; the others are read again once
    locked, so that an issuance committed meanwhile keeps its buyer.
    """
    issued = or_(
        *(
            select(model.id).where(model.order_id == Order.id).exists()
            for model in (License, DownloadGrant, LicenseRenewal)
        )
    )
    expired = (
        Order.updated_at < before,
        Order.erased_at.is_(None),
        or_(*(getattr(Order, field).is_not(None) for field in PERSONAL_FIELDS)),
        Order.brevo_email.is_(None),
        or_(Order.brevo_list_id.is_(None), Order.brevo_list_id == LIST_NOT_RECORDED),
        ~issued,
    )
    return change_in_batches(session, Order, *expired, change=clear_personal_fields, lock=True)


def _give_up_brevo_removals(session: Session, before: dt.datetime) -> int:
    """Forget addresses still waiting to leave a Brevo list long after their job gave up
    (credentials removed, Brevo refusing): the owner is told to take them out by hand,
    under the pseudonym, and the address is not kept for ever."""

    def give_up(removal: BrevoRemoval) -> None:
        record_audit(
            session,
            store_id=removal.store_id,
            actor="system",
            action="customer.brevo_removal_given_up",
            subject=removal.subject,
            detail={"list_id": removal.list_id, "reason": removal.reason},
        )
        session.delete(removal)

    return change_in_batches(
        session, BrevoRemoval, BrevoRemoval.created_at < before, change=give_up
    )


@handles("privacy.purge")
def purge_job(_payload: dict[str, Any]) -> None:
    removed = purge_expired_records(db.session)
    record_audit(db.session, store_id=None, actor="system", action="privacy.purged", detail=removed)
