"""Neutral shop data: what the connector needs from any shop platform."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

PAID_STATUSES = frozenset({"processing", "completed"})
WAITING_STATUSES = frozenset({"pending", "on-hold"})
REVOKING_STATUSES = frozenset({"refunded", "cancelled", "failed"})
# A buyer's full name is kept (and stamped) up to this many characters.
NAME_LENGTH = 300


class PayloadError(ValueError):
    """A shop payload is malformed or misses a required field."""


@dataclass(frozen=True)
class ShopLineItem:
    id: str
    product_id: str | None
    variation_id: str | None
    quantity: int
    name: str | None = None
    sku: str | None = None
    total: Decimal | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # Units refunded so far, when the platform tells (WooCommerce: from the refunds endpoint).
    refunded_quantity: int = 0


@dataclass(frozen=True)
class ShopRefund:
    id: str
    reason: str | None
    total: Decimal | None
    # line item id -> quantity refunded (positive), when known.
    line_quantities: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ShopOrder:
    id: str
    status: str
    number: str | None = None
    currency: str | None = None
    total: Decimal | None = None
    customer_id: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    company: str | None = None
    payment_method: str | None = None
    payment_method_title: str | None = None
    transaction_id: str | None = None
    # A manual payment's note (bank transfer reference, who confirmed it), when the shop has one.
    payment_note: str | None = None
    date_paid: dt.datetime | None = None
    date_modified: dt.datetime | None = None
    line_items: tuple[ShopLineItem, ...] = ()
    refunds: tuple[ShopRefund, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False

    @property
    def full_name(self) -> str | None:
        parts = [p for p in (self.first_name, self.last_name) if p]
        return " ".join(parts)[:NAME_LENGTH] or None

    @property
    def is_paid(self) -> bool:
        return self.status in PAID_STATUSES and not self.deleted

    @property
    def is_revoking(self) -> bool:
        return self.deleted or self.status in REVOKING_STATUSES
