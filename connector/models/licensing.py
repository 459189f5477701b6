"""License keys issued for paid line items."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from connector.db import Base, UTCDateTime, utcnow
from connector.vault.crypto import Encrypted

LICENSE_STATUSES = ("active", "suspended", "revoked")


# Why a license is revoked or suspended (``License.status_reason``). A line's product was
# swapped in the shop: its licenses for the product it named before.
LINE_CHANGED = "line-changed"
# Reasons that the order's own state caused ("order:<status>", a partial "refund", a swapped
# line); only these are undone when the order is paid again. The owner's is "admin", the
# abuse signal's "abuse".
AUTOMATIC_REASONS = ("order:", "refund", LINE_CHANGED)


def by_the_order(status_reason: str | None) -> bool:
    """Revoked by its order's own state (a refund, a cancellation, a swapped line): it comes
    back when the order is paid again in the shop, and only then (not by the owner's
    reinstate, which the order's next update would undo)."""
    return (status_reason or "").startswith(AUTOMATIC_REASONS)


class License(Base):
    """One license per (line item, product, unit): the unique key makes issuing exactly-once;
    a line whose product the owner swapped gets licenses of the new product.

    The key itself is never stored in the clear: ``key_hash`` finds it, ``key_encrypted``
    shows it to its owner.
    """

    __tablename__ = "licenses"
    __table_args__ = (
        UniqueConstraint("line_item_id", "product_id", "unit"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True)
    line_item_id: Mapped[int | None] = mapped_column(ForeignKey("line_items.id"))
    unit: Mapped[int] = mapped_column(Integer, default=1)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    key_encrypted: Mapped[str] = mapped_column(Encrypted)
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)
    # Why it is revoked/suspended: one of AUTOMATIC_REASONS, "admin", "abuse".
    status_reason: Mapped[str | None] = mapped_column(String(64), default=None)

    @property
    def revoked_by_its_order(self) -> bool:
        return self.status != "active" and by_the_order(self.status_reason)

    activation_limit: Mapped[int | None] = mapped_column(Integer, default=None)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    updates_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
