"""Write-back: after issuing, a customer note on the shop's order with the keys and links.

WooCommerce mails a note added with ``customer_note: true`` to the buyer. The note is written
through the outbox (job ``shop.order_note``, one per issuance) and never twice: a row in
``shop_notes`` remembers it, and before posting the job looks for its reference among the
order's notes, in case an earlier run posted it and crashed before committing.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.db import db, insert_ignoring_conflicts, utcnow
from connector.integrations.mail import header_text, mail_text
from connector.jobs import RetryLater, handles
from connector.models import Order, ShopNote, Store
from connector.orders.summary import order_entitlements
from connector.redact import keygate_logger
from connector.vault.connection import shop_client_for
from plugin.woocommerce.rest import ShopRejected, ShopUnavailable
from plugin.woocommerce.webhooks import NO_SUCH_ORDER

log = keygate_logger(__name__)

NOTE_JOB = "shop.order_note"


def note_marker(payload: dict[str, Any]) -> str:
    """A reference naming one issuance (its order, licenses and grants), no secret in it."""
    licenses = ",".join(map(str, sorted(payload.get("license_ids", []))))
    grants = ",".join(map(str, sorted(payload.get("grant_ids", []))))
    digest = hashlib.sha256(f"{payload['order_id']}:{licenses}:{grants}".encode()).hexdigest()
    return "kg-" + digest[:16]


def compose_note(
    session: Session, order: Order, license_ids: list[int], grant_ids: list[int], marker: str
) -> str | None:
    """Plain-text note for the buyer with the keys and links of this issuance (None if empty)."""
    entitlements = order_entitlements(session, order)
    # Only what is still valid: an order refunded before this job ran gets no note.
    licenses = [
        lic
        for lic in entitlements["licenses"]
        if lic.id in set(license_ids) and lic.status == "active"
    ]
    # A link that gives no file (one whose download period had ended before the order was
    # licensed) is not offered: it would answer 410.
    downloads = [
        d for d in entitlements["downloads"] if d.grant_id in set(grant_ids) and d.ended is None
    ]
    if not licenses and not downloads:
        return None
    # Worded as Keygate's own mail (templates/emails/order_issued.txt): links of two
    # products with a file of the same name, or two copies of one, are told apart, and a
    # product name with line breaks is one line before its key or link.
    lines: list[str] = []
    if licenses:
        lines.append("Your license keys:")
        lines.extend(f"{header_text(lic.product_name)}: {lic.key} ({lic.term})" for lic in licenses)
    if downloads:
        if lines:
            lines.append("")
        lines.append("Your downloads:")
        lines.extend(f"{header_text(d.named)}: {d.link} ({d.terms})" for d in downloads)
    lines += ["", f"Manage your licenses: {entitlements['portal_url']}", f"(ref {marker})"]
    return mail_text("\n".join(lines))  # WooCommerce mails it: cleaned as Keygate's mail


def write_order_note(session: Session, payload: dict[str, Any]) -> str:
    """Post the note of one issuance unless it exists. Returns what happened."""
    order = session.get(Order, payload["order_id"])
    if order is None or order.deleted:
        return "no-order"
    if order.is_erased:
        # A customer note is mailed to the buyer by WooCommerce: an erased order is never
        # mailed again (the note job may still be retrying through a shop outage).
        return "erased"
    store = session.get(Store, order.store_id)
    if store is None:  # pragma: no cover - a store's orders go with it
        return "no-order"
    marker = note_marker(payload)
    done = session.execute(
        select(ShopNote).where(ShopNote.order_id == order.id, ShopNote.marker == marker)
    ).scalar_one_or_none()
    if done is not None:
        return "already-written"
    client = shop_client_for(session, store)
    if client is None:
        return "not-connected"
    text = compose_note(
        session, order, payload.get("license_ids", []), payload.get("grant_ids", []), marker
    )
    if text is None:
        return "nothing-to-say"
    # Nothing is written yet: end the transaction, so none waits on the shop (on SQLite it
    # holds the database's write lock).
    session.commit()
    existing = next(
        (n for n in client.list_order_notes(order.shop_order_id) if marker in str(n.get("note"))),
        None,
    )
    note = existing or client.create_order_note(order.shop_order_id, text, customer_note=True)
    insert_ignoring_conflicts(
        session,
        ShopNote.__table__,
        {
            "store_id": store.id,
            "order_id": order.id,
            "marker": marker,
            "shop_note_id": str(note.get("id")) if note.get("id") is not None else None,
            "created_at": utcnow(),
        },
        ["order_id", "marker"],
    )
    return "found" if existing is not None else "written"


@handles(NOTE_JOB)
def order_note_job(payload: dict[str, Any]) -> None:
    """Write the buyer's keys and links back to the shop order, once."""
    try:
        outcome = write_order_note(db.session, payload)
    except ShopUnavailable as exc:
        raise RetryLater(str(exc)) from None
    except ShopRejected as exc:
        if exc.code != NO_SUCH_ORDER:
            raise
        # Deleted for good in the shop (its order.deleted may not be here yet): no order to
        # take the note, now or later.
        db.session.rollback()
        outcome = "no-order-in-the-shop"
    log.info("order %s: shop note %s", payload.get("order_id"), outcome)
