"""Orders as the shop reported them, and their line items."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from connector.db import Base, UTCDateTime, utcnow
from connector.vault.crypto import Encrypted
from plugin.shop import REVOKING_STATUSES


class Order(Base):
    """One shop order. Only what the privacy promises list is kept (no addresses, no cards)."""

    __tablename__ = "orders"
    # Never an id used before, on SQLite too (links name orders by id: migration 0018).
    __table_args__ = (UniqueConstraint("store_id", "shop_order_id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), index=True)
    # Indexed each: the owner finds an order by either, in every store.
    shop_order_id: Mapped[str] = mapped_column(String(64), index=True)
    number: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    status: Mapped[str] = mapped_column(String(32))
    deleted: Mapped[bool] = mapped_column(default=False)
    email: Mapped[str | None] = mapped_column(String(320), index=True, default=None)
    name: Mapped[str | None] = mapped_column(String(300), default=None)
    company: Mapped[str | None] = mapped_column(String(300), default=None)
    currency: Mapped[str | None] = mapped_column(String(8), default=None)
    total: Mapped[Decimal | None] = mapped_column(Numeric(14, 2), default=None)
    customer_id: Mapped[str | None] = mapped_column(String(64), default=None)
    payment_method: Mapped[str | None] = mapped_column(String(100), default=None)
    payment_method_title: Mapped[str | None] = mapped_column(String(200), default=None)
    # Payment reference: card gateways' charge id, or a crypto transaction hash. Never a card.
    transaction_id: Mapped[str | None] = mapped_column(String(200), default=None)
    payment_note: Mapped[str | None] = mapped_column(Text, default=None)
    # Set when the customer's data was erased: later deliveries keep it erased.
    erased_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    date_paid: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    # The shop's date_modified_gmt of the newest payload applied; older payloads change nothing.
    shop_modified_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    # What the newest payload applied says of the order (status, address, lines, refunds
    # listed), hashed: a payload of the same second that says otherwise asks for a read.
    shop_digest: Mapped[str | None] = mapped_column(String(64), default=None)
    # The refund ids (sorted, comma separated) whose line quantities were last read from the
    # shop: a delivery listing other refunds needs another read before they count.
    refund_ids_read: Mapped[str | None] = mapped_column(Text, default=None)
    # The Brevo list Keygate pushed the buyer into for this order (brevo.push_contact): an
    # erasure, or the buyer's consent withdrawn, takes them out of it again. 0: pushed before
    # Keygate recorded the list (migration 0011), the store's list is meant.
    brevo_list_id: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The address Keygate pushed into that list (the order's address may be corrected since),
    # encrypted like every stored address; set and cleared with brevo_list_id. None on orders
    # pushed before it was recorded (migration 0020): their address then stands for it.
    brevo_email: Mapped[str | None] = mapped_column(Encrypted, default=None)
    # The latest delivery of the order no longer carried the buyer's consent (a store that
    # asks for it): a push still waiting in the outbox must not add them to the list.
    brevo_consent_withdrawn: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Set when the order took its keys back (refunded, cancelled, failed, deleted), cleared
    # when it is paid again: a key of an order waiting for payment since is not reinstated.
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    line_items: Mapped[list[LineItem]] = relationship(
        back_populates="order", order_by="LineItem.id", cascade="all, delete-orphan"
    )

    @property
    def is_erased(self) -> bool:
        """The customer's data was erased: the order is kept for accounting and enforcement,
        but its stored address is a placeholder, so nothing is mailed or copied back to it."""
        return self.erased_at is not None

    @property
    def mail_address(self) -> str | None:
        """Where the buyer may be mailed: None when the order has no address or was erased
        (its address is then only a placeholder). Every mail and contact push asks this."""
        return None if self.is_erased else self.email

    @property
    def is_revoking(self) -> bool:
        """Refunded, cancelled, failed or deleted in the shop: what it sold is taken back."""
        return self.deleted or self.status in REVOKING_STATUSES


class LineItem(Base):
    """A line of an order. ``product_id`` is set when a configured product matched."""

    __tablename__ = "line_items"
    __table_args__ = (UniqueConstraint("order_id", "shop_line_item_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    shop_line_item_id: Mapped[str] = mapped_column(String(64))
    shop_product_id: Mapped[str | None] = mapped_column(String(64), default=None)
    shop_variation_id: Mapped[str | None] = mapped_column(String(64), default=None)
    name: Mapped[str | None] = mapped_column(String(300), default=None)
    sku: Mapped[str | None] = mapped_column(String(100), default=None)
    quantity: Mapped[int] = mapped_column(Integer, default=1)
    refunded_quantity: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[Decimal | None] = mapped_column(Numeric(14, 2), default=None)
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id"), default=None)
    # The shop id that matched (variation first, then product), as answered to the owner.
    matched_shop_product_id: Mapped[str | None] = mapped_column(String(64), default=None)

    order: Mapped[Order] = relationship(back_populates="line_items")

    @property
    def paid_units(self) -> int:
        """The units paid for now: the quantity less those refunded."""
        return max(0, self.quantity - self.refunded_quantity)


class LicenseRenewal(Base):
    """A paid unit of a renewal line item that extended an existing license.

    One per (line item, unit), so a renewal extends once however often it is delivered; the
    expiries before and after it (as last applied, and before it was first applied) and the
    order it was last applied in are kept so that refunding the renewal takes back what it
    added (``connector.orders.renewals``).
    """

    __tablename__ = "license_renewals"
    __table_args__ = (UniqueConstraint("line_item_id", "unit"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    license_id: Mapped[int] = mapped_column(ForeignKey("licenses.id"), index=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    line_item_id: Mapped[int] = mapped_column(ForeignKey("line_items.id"))
    unit: Mapped[int] = mapped_column(Integer, default=1)
    previous_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    previous_updates_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    updates_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    # Before the renewal was first applied: paid again later, it extends from the expiry
    # then, but a replay of the license's renewals starts before the first one ever applied.
    first_previous_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    first_previous_updates_until: Mapped[dt.datetime | None] = mapped_column(
        UTCDateTime, default=None
    )
    # 1, 2, ... per license in the order its renewals were last applied (a renewal paid again
    # counts after those paid meanwhile); None until applied.
    applied_seq: Mapped[int | None] = mapped_column(Integer, default=None)
    # The WooCommerce Subscriptions subscription renewed, if any: its next renewals extend
    # the same license.
    subscription_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    # Set when the renewal was refunded or its order revoked: the extension is taken back.
    reverted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class GrantExtension(Base):
    """A download grant's expiry moved by a renewal of its license.

    Grants that follow the license ("downloads while the license lasts") move with it; those
    with their own window get a fresh one. Kept per (renewal, grant) so a refunded renewal
    takes back what it added, like the license's.
    """

    __tablename__ = "grant_extensions"
    __table_args__ = (UniqueConstraint("renewal_id", "grant_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    renewal_id: Mapped[int] = mapped_column(ForeignKey("license_renewals.id"), index=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("download_grants.id"), index=True)
    previous_expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    # Before the renewal first moved the grant (see LicenseRenewal.first_previous_expires_at).
    first_previous_expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
