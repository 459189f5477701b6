"""The owner's word that a refund's keys were not taken back (``order.refund_not_applied``),
and what answers it: a later read of the order's refunds from the shop.

A refund Keygate could not read (no WooCommerce REST key, the key refused) is told of in the
audit log; the dashboard counts those orders and the order page warns of them. The notice is
open while its order stands (not refunded, cancelled, failed or deleted: then every key goes
anyway) and no read of the order's refunds followed it (``order.refunds_read``, recorded
when one did). Saving the store's key re-reads the orders of its open notices.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, aliased

from connector.audit import record_audit
from connector.models import AuditEvent, Order
from plugin.shop import REVOKING_STATUSES

REFUND_NOT_APPLIED = "order.refund_not_applied"
REFUNDS_READ = "order.refunds_read"
ORDER_SUBJECT = "order:"


def order_stands() -> Any:
    """The entry's order is in Keygate and not revoked whole (for an ``AuditEvent`` query)."""
    return (
        select(Order.id)
        .where(
            Order.store_id == AuditEvent.store_id,
            # The order's id taken out of the subject: the orders' index finds it.
            Order.shop_order_id == func.substr(AuditEvent.subject, len(ORDER_SUBJECT) + 1),
            Order.deleted.is_(False),
            Order.status.not_in(REVOKING_STATUSES),
        )
        .exists()
    )


def answered() -> Any:
    """A read of the order's refunds was recorded after the entry (``AuditEvent`` query)."""
    later = aliased(AuditEvent)
    return (
        select(later.id)
        .where(
            later.store_id == AuditEvent.store_id,
            later.subject == AuditEvent.subject,
            later.action == REFUNDS_READ,
            later.id > AuditEvent.id,
        )
        .exists()
    )


def answers_a_notice() -> Any:
    """An ``order.refunds_read`` entry follows a notice still kept (an ``AuditEvent`` query):
    purged before it, the notice would be open again."""
    earlier = aliased(AuditEvent)
    return (
        select(earlier.id)
        .where(
            earlier.store_id == AuditEvent.store_id,
            earlier.subject == AuditEvent.subject,
            earlier.action == REFUND_NOT_APPLIED,
            earlier.id < AuditEvent.id,
        )
        .exists()
    )


def open_refund_notices() -> Any:
    """The ``order.refund_not_applied`` entries still open: the order stands, unanswered."""
    return and_(AuditEvent.action == REFUND_NOT_APPLIED, order_stands(), ~answered())


def note_refunds_read(session: Session, order: Order) -> None:
    """The order's refunds were just read from the shop and applied: its open notices are
    answered (the dashboard and the order page stop warning of them). Recorded only when
    one is open."""
    subject = f"{ORDER_SUBJECT}{order.shop_order_id}"
    session.flush()
    notice = session.scalar(
        select(AuditEvent.id)
        .where(AuditEvent.store_id == order.store_id, AuditEvent.subject == subject)
        .where(open_refund_notices())
        .limit(1)
    )
    if notice is None:
        return
    record_audit(
        session,
        store_id=order.store_id,
        actor="shop",
        action=REFUNDS_READ,
        subject=subject,
        detail={"refunds": order.refund_ids_read or ""},
    )
