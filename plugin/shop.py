"""Neutral shop data: what the connector needs from any shop platform."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

PAID_STATUSES = frozenset({"processing", "completed"})
WAITING_STATUSES = frozenset({"pending", "on-hold"})
REVOKING_STATUSES = frozenset({"refunded", "cancelled", "failed"})
# A buyer's full name is kept (and stamped) up to this many characters.
NAME_LENGTH = 300
# Dates Keygate accepts from anyone (shop payloads, the owner's API, the CLI). Outside them
# a date is garbage, and a license computed from it (a paid date plus up to 100 years)
# could not be represented: Python's datetimes end with year 9999.
EARLIEST_DATE = dt.datetime(1900, 1, 1, tzinfo=dt.UTC)
LATEST_DATE = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)


# What shops write for a ticked checkbox in order meta (WooCommerce: "yes"; plugins also
# "1", "true", "on"), and JSON's true and 1.
TRUTHY_META = frozenset({"yes", "1", "true", "on"})


def meta_flag(value: Any) -> bool:
    """Whether an order meta value is a ticked checkbox. Anything else (missing, "no", "",
    0, another value) is not."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in TRUTHY_META


# Digits as staff type a card number into a note or a manual reference: groups of digits
# joined by spaces (no-break ones too, pasted from a page), or by a dash, dot or slash with
# spaces around it or not; not part of a word (a crypto transaction hash has letters around
# its digits). A card number is 13 to 19 of them in a row of groups.
_JOIN = r"(?:[ \t\u00a0]*[./-][ \t\u00a0]*|[ \t\u00a0]+)"
_DIGIT_RUN = re.compile(rf"(?<![0-9A-Za-z])\d+(?:{_JOIN}\d+)*(?![0-9A-Za-z])")
_SEPARATOR = re.compile(rf"({_JOIN})")
CARD_DIGITS = range(13, 20)


def without_card_numbers(text: str | None) -> str | None:
    """``text`` with every payment card number in it masked but its last four digits
    (``**** **** **** 1111``): Keygate keeps payment references and notes, never card
    numbers. Digits in a row of groups (a date may come before the card's) are a card
    number when there are 13 to 19 of them and the Luhn check passes."""
    if text is None:
        return None
    return _DIGIT_RUN.sub(_cards_masked, text)


def _cards_masked(match: re.Match[str]) -> str:
    parts = _SEPARATOR.split(match.group())  # digits, separator, digits, ...
    groups = parts[0::2]
    shown = [list(group) for group in groups]
    for first in range(len(groups)):
        for last in range(first, len(groups)):
            window = "".join(groups[first : last + 1])
            if len(window) > CARD_DIGITS.stop - 1:
                break
            if len(window) in CARD_DIGITS and _luhn_valid(window):
                hidden = len(window) - 4
                for index in range(first, last + 1):
                    for at in range(min(hidden, len(groups[index]))):
                        shown[index][at] = "*"
                    hidden -= len(groups[index])
    parts[0::2] = ["".join(group) for group in shown]
    return "".join(parts)


def _luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char) * (2 if position % 2 else 1)
        total += digit - 9 if digit > 9 else digit
    return total % 10 == 0


class PayloadError(ValueError):
    """A shop payload is malformed or misses a required field."""


def parse_utc_datetime(value: str) -> dt.datetime:
    """An ISO 8601 date or date-time as an aware UTC datetime; no offset means UTC.

    Raises:
        ValueError: not ISO 8601, or outside :data:`EARLIEST_DATE` .. :data:`LATEST_DATE`
            (an offset that moves a date past year 1 or 9999 included); the message says
            which, for the caller's own error.
    """
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("is not an ISO 8601 date") from None
    out_of_range = f"is out of range (years {EARLIEST_DATE.year} to {LATEST_DATE.year - 1})"
    try:
        moment = (
            parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)
        )
    except OverflowError:  # an offset moved it past year 1 or 9999
        raise ValueError(out_of_range) from None
    if not EARLIEST_DATE <= moment < LATEST_DATE:
        raise ValueError(out_of_range)
    return moment


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
    # The quantity as sent when it is not whole (a decimal-quantity plugin's 2.5): the units
    # still wholly paid for are counted from it, less the parts refunded.
    bought: Decimal | None = None


@dataclass(frozen=True)
class ShopRefund:
    id: str
    reason: str | None
    total: Decimal | None
    # line item id -> quantity refunded (positive), when known; exact (a decimal-quantity
    # plugin refunds half a unit): the refunds' sum, rounded up, is the units refunded.
    line_quantities: dict[str, Decimal] = field(default_factory=dict)


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

    def meta_flag(self, key: str) -> bool:
        """Whether the order's meta ``key`` is a ticked checkbox (see :func:`meta_flag`)."""
        return meta_flag(self.meta.get(key))

    @property
    def is_paid(self) -> bool:
        return self.status in PAID_STATUSES and not self.deleted

    @property
    def is_revoking(self) -> bool:
        return self.deleted or self.status in REVOKING_STATUSES
