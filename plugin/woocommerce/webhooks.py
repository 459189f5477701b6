"""WooCommerce webhook deliveries: signature check, ping detection, order parsing.

WooCommerce signs ``base64(HMAC-SHA256(raw body, secret))`` in ``X-WC-Webhook-Signature``.
On creation it sends an unsigned ping whose form body is ``webhook_id=<n>``.
Payloads are the REST v3 order schema (see ../shared/notes/woocommerce.md).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import unicodedata
from collections.abc import Mapping
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from plugin.shop import (
    PayloadError,
    ShopLineItem,
    ShopOrder,
    ShopRefund,
    parse_utc_datetime,
    without_card_numbers,
)

SIGNATURE_HEADER = "X-WC-Webhook-Signature"
TOPIC_HEADER = "X-WC-Webhook-Topic"
DELIVERY_HEADER = "X-WC-Webhook-Delivery-ID"
WEBHOOK_ID_HEADER = "X-WC-Webhook-ID"
ORDER_TOPICS = frozenset({"order.created", "order.updated", "order.deleted", "order.restored"})

# The block checkout's cart saved as an order while the buyer fills in the form: never
# delivered by a webhook, deleted for good a day later if abandoned, but listed over REST.
DRAFT_STATUSES = frozenset({"checkout-draft"})


def is_checkout_draft(raw: Any) -> bool:
    """Whether a REST order is a checkout still in progress (or abandoned), not an order."""
    status = raw.get("status") if isinstance(raw, dict) else None
    return isinstance(status, str) and status.removeprefix("wc-") in DRAFT_STATUSES


# Documented order meta for manual and crypto payments: the owner's note on a manual payment,
# and a transaction hash (e.g. USDT) when the gateway does not fill transaction_id.
PAYMENT_NOTE_META = "_keygate_payment_note"
TRANSACTION_HASH_META = "_keygate_transaction_hash"

_PING = re.compile(rb"webhook_id=\d+")


def sign(body: bytes, secret: str) -> str:
    """The signature WooCommerce would send for ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def signature_valid(body: bytes, header: str | None, secret: str) -> bool:
    """Constant-time check of ``X-WC-Webhook-Signature`` against the raw body."""
    if not header:
        return False
    return hmac.compare_digest(
        sign(body, secret).encode("ascii"), header.strip().encode("ascii", "replace")
    )


def is_ping(body: bytes, headers: Mapping[str, str] | Any) -> bool:
    """The creation ping: form body ``webhook_id=N`` and no topic header."""
    return TOPIC_HEADER not in headers and bool(_PING.fullmatch(body.strip()))


NO_SUCH_ORDER = "woocommerce_rest_shop_order_invalid_id"


def rest_error(payload: Any) -> str | None:
    """Why the body is WooCommerce's REST error instead of an order, or None when it is not
    one.

    WooCommerce builds a delivery's payload when it sends it, by reading the order over its
    own REST API as the webhook's user; when that read fails the body is the error,
    ``{"code", "message", "data": {"status"}}``, and names no order.
    """
    if not isinstance(payload, dict) or "id" in payload:
        return None
    code, data = payload.get("code"), payload.get("data")
    if not isinstance(code, str) or not isinstance(payload.get("message"), str):
        return None
    status = data.get("status") if isinstance(data, dict) else None
    said = f"WooCommerce sent its error {one_line(code, 80) or ''!r}"
    if isinstance(status, int) and not isinstance(status, bool):
        said += f" (HTTP {status})"
    said += " instead of the order: "
    if code == NO_SUCH_ORDER:
        return said + "the order was deleted for good before it was sent; nothing to apply"
    if status in (401, 403):
        return said + (
            "the WordPress user who owns this webhook in WooCommerce may not read orders"
            " (deleted, or its role changed): make the webhooks again as an administrator or"
            " shop manager"
        )
    return said + "WooCommerce could not read the order when it sent it; nothing to apply"


def parse_id(value: Any) -> str | None:
    if value is None or value == "" or value == 0 or value == "0":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PayloadError(f"id must be a number, not {type(value).__name__}")
    text = str(value)
    if not (text.isascii() and text.isalnum() and len(text) <= 64):
        raise PayloadError("an id must be at most 64 letters and digits")
    return text


# Amounts are stored as NUMERIC(14, 2).
MAX_AMOUNT = Decimal("1e12")
CENT = Decimal("0.01")


def _decimal(value: Any, name: str) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise PayloadError(f"{name} is not a number") from None
    if not amount.is_finite() or abs(amount) >= MAX_AMOUNT:
        raise PayloadError(f"{name} is out of range")
    # Rounded here, as PostgreSQL would (half away from zero), and checked again: a value
    # just under the bound can round up to it (999999999999.995), and both backends must
    # then keep the same amount.
    amount = amount.quantize(CENT, rounding=ROUND_HALF_UP)
    if abs(amount) >= MAX_AMOUNT:
        raise PayloadError(f"{name} is out of range")
    return amount


def _datetime_gmt(value: Any, name: str) -> dt.datetime | None:
    # *_gmt fields carry no offset; they are UTC. A date far in the future (a paid date in
    # year 9999) is garbage, and refused like one: a license could not expire after it.
    if not value:
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{name} must be a date string")
    try:
        return parse_utc_datetime(value)
    except ValueError as exc:
        raise PayloadError(f"{name} {exc}") from None


def _meta(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        return {}
    meta: dict[str, Any] = {}
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("key"), str):
            meta[item["key"]] = item.get("value")
    return meta


def clean_text(value: Any, limit: int = 300) -> str | None:
    """Shop text as Keygate keeps it: without NUL characters (PostgreSQL cannot store them)
    or unpaired surrogates (no UTF-8 form), stripped and cut at ``limit``. A buyer's name
    is never a reason to refuse their order."""
    if value is None:
        return None
    text = str(value).replace("\x00", "")
    text = text.encode("utf-8", "replace").decode("utf-8").strip()
    return text[:limit] or None


def one_line(value: Any, limit: int = 300) -> str | None:
    """Shop text shown on one line (a buyer's name, an order number), as :func:`clean_text`
    keeps it, with control characters (CR, LF, tab) as spaces: it goes into a mail's
    recipient and subject, and onto the stamp of the buyer's copy."""
    text = clean_text(value, limit)
    if text is None:
        return None
    return " ".join("".join(" " if _control(c) else c for c in text).split()) or None


def _control(char: str) -> bool:
    """A control character or a line or paragraph separator (not a zero-width joiner or
    non-joiner: names in some scripts need those)."""
    return unicodedata.category(char) in {"Cc", "Zl", "Zp"}


# One mailbox: no spaces, controls, quotes or the characters that list or bracket addresses
# (a comma would mail a second recipient), one "@", a dot in the domain (WooCommerce's own
# checkout requires one).
_NOT_IN_MAILBOX = r'\s@,;:<>()\[\]\\"'
_MAILBOX = re.compile(rf"[^{_NOT_IN_MAILBOX}]+@[^{_NOT_IN_MAILBOX}.]+(\.[^{_NOT_IN_MAILBOX}.]+)+")


MAX_ADDRESS = 320  # RFC 3696's 64 + 1 + 255, as stored


def mailbox(value: Any) -> str | None:
    """The buyer's address, lower-cased, or None when it is not one plain mailbox (an order
    made over the REST API can carry anything): Keygate never mails it, and the order is
    kept, without an address, like one given none."""
    text = clean_text(value, MAX_ADDRESS + 1)  # cut short, a longer one could name another
    if (
        text is None
        or len(text) > MAX_ADDRESS
        or any(map(_control, text))
        or not _MAILBOX.fullmatch(text)
    ):
        return None
    return text.lower()


# WooCommerce has no limit; more units than this in one line are not a real sale.
MAX_QUANTITY = 10_000


def _quantity(exact: Decimal) -> int:
    """The whole units of a quantity (:func:`_exact_quantity`), sign kept.

    A decimal-quantity plugin (``woocommerce_stock_amount`` filtered to floatval: goods sold
    by the kilo or metre) makes WooCommerce send ``2.5``: a real order, read as the units
    wholly bought (rounded toward zero) rather than refused with its other lines. Refunds
    are kept exact, and taken from the exact quantity bought before it is rounded down, so
    that a unit is licensed only while it is wholly paid for (2.5 bought, 0.5 refunded: 2).
    """
    return int(exact.to_integral_value(rounding=ROUND_DOWN))


def _exact_quantity(value: Any, name: str) -> Decimal:
    """A quantity as sent (2.5 from a decimal-quantity plugin), sign kept, at most
    :data:`MAX_QUANTITY` either way."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PayloadError(f"{name} must be a number")
    if isinstance(value, int):
        quantity = Decimal(value)
    else:
        try:
            quantity = Decimal(value.strip() if isinstance(value, str) else repr(value))
        except InvalidOperation:  # "x", "²"
            raise PayloadError(f"{name} must be a number") from None
    if not quantity.is_finite() or abs(quantity) > MAX_QUANTITY:
        raise PayloadError(f"{name} is out of range")
    return quantity


def parse_line_item(raw: Any) -> ShopLineItem:
    if not isinstance(raw, dict):
        raise PayloadError("line_items entries must be objects")
    line_id = parse_id(raw.get("id"))
    if line_id is None:
        raise PayloadError("a line item has no id")
    bought = _exact_quantity(raw.get("quantity", 1), "line item quantity")
    quantity = _quantity(bought)
    if quantity < 0:
        raise PayloadError("line item quantity is out of range")
    return ShopLineItem(
        id=line_id,
        product_id=parse_id(raw.get("product_id")),
        variation_id=parse_id(raw.get("variation_id")),
        quantity=quantity,
        bought=bought if bought != quantity else None,
        name=clean_text(raw.get("name")),
        sku=clean_text(raw.get("sku"), 100),
        total=_decimal(raw.get("total"), "line item total"),
        meta=_meta(raw.get("meta_data")),
    )


def parse_refund(raw: Any) -> ShopRefund:
    if not isinstance(raw, dict):
        raise PayloadError("refunds entries must be objects")
    refund_id = parse_id(raw.get("id"))
    if refund_id is None:
        raise PayloadError("a refund has no id")
    total = _decimal(raw.get("total") or raw.get("amount"), "refund total")
    raw_lines = raw.get("line_items") or []
    if not isinstance(raw_lines, list):
        raise PayloadError("refund line_items must be a list")
    line_quantities: dict[str, Decimal] = {}
    # The refunds endpoint lists line_items with negative quantities and refunded_item_id meta.
    for line in raw_lines:
        if not isinstance(line, dict):
            continue
        meta = _meta(line.get("meta_data"))
        refunded_item = parse_id(meta.get("_refunded_item_id"))
        # Kept exact: part of a unit refunded takes the unit, once the parts refunded so far
        # are added up (half a unit refunded twice is one unit, not two).
        quantity = abs(_exact_quantity(line.get("quantity") or 0, "refund line quantity"))
        if refunded_item and quantity:
            line_quantities[refunded_item] = line_quantities.get(refunded_item, 0) + quantity
    return ShopRefund(
        id=refund_id,
        reason=clean_text(raw.get("reason")),
        total=abs(total) if total is not None else None,
        line_quantities=line_quantities,
    )


def _line_items(raw_items: list[Any]) -> tuple[ShopLineItem, ...]:
    items = tuple(parse_line_item(item) for item in raw_items)
    # Keygate keeps one row per line id; WooCommerce never repeats one in an order, so a
    # payload that does is malformed (refused, not merged: which copy would be the truth?).
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise PayloadError(f"line item {item.id} appears twice")
        seen.add(item.id)
    return items


# What to do about a webhook set to an API version whose orders Keygate does not read.
SET_V3 = (
    "set the webhook's API version to WP REST API Integration v3 in WooCommerce"
    " (Settings → Advanced → Webhooks)"
)


def parse_order(payload: Any, *, deleted: bool = False) -> ShopOrder:
    """Turn a REST v3 order (webhook payload) into a :class:`ShopOrder`.

    Extra fields are ignored and optional ones may be missing; ``id`` and ``status`` are
    required (``order.deleted`` deliveries carry only ``id``).

    Raises:
        PayloadError: the payload is not an order.
    """
    if not isinstance(payload, dict):
        raise PayloadError("the body must be a JSON object")
    if "id" not in payload and isinstance(payload.get("order"), dict):
        # The Legacy REST API's webhook payload, {"order": {...}}, in another shape.
        raise PayloadError(f"it is a Legacy REST API order: {SET_V3}")
    order_id = parse_id(payload.get("id"))
    if order_id is None:
        raise PayloadError("the order has no id")
    status = payload.get("status")
    if deleted and status is None:
        status = "trash"
    if not isinstance(status, str) or not status:
        raise PayloadError("the order has no status")
    status = status.removeprefix("wc-")
    if not (status.isascii() and status.replace("-", "").replace("_", "").isalnum()):
        raise PayloadError("the order status is not a status name")
    if len(status) > 32:
        raise PayloadError("the order status is longer than 32 characters")
    # A trashed order (read back over REST) is a deleted one, whatever the topic said.
    deleted = deleted or status == "trash"
    if not deleted and "date_modified" in payload and "date_modified_gmt" not in payload:
        # API v1 (a webhook made by hand can be set to it): no *_gmt dates to order the
        # deliveries by, and no order meta. Refused, saying what to change.
        raise PayloadError(f"it is a REST API v1 order (no date_modified_gmt): {SET_V3}")
    billing = payload.get("billing")
    if not isinstance(billing, dict):
        billing = {}
    raw_items = payload.get("line_items") or []
    if not isinstance(raw_items, list):
        raise PayloadError("line_items must be a list")
    raw_refunds = payload.get("refunds") or []
    if not isinstance(raw_refunds, list):
        raise PayloadError("refunds must be a list")
    meta = _meta(payload.get("meta_data"))
    return ShopOrder(
        id=order_id,
        status=status,
        number=one_line(payload.get("number"), 64),
        currency=clean_text(payload.get("currency"), 8),
        total=_decimal(payload.get("total"), "total"),
        customer_id=parse_id(payload.get("customer_id")),
        email=mailbox(billing.get("email")),
        first_name=one_line(billing.get("first_name")),
        last_name=one_line(billing.get("last_name")),
        company=one_line(billing.get("company")),
        payment_method=clean_text(payload.get("payment_method"), 100),
        payment_method_title=clean_text(payload.get("payment_method_title"), 200),
        transaction_id=without_card_numbers(
            clean_text(payload.get("transaction_id"), 200)
            or clean_text(meta.get(TRANSACTION_HASH_META), 200)
        ),
        payment_note=without_card_numbers(clean_text(meta.get(PAYMENT_NOTE_META), 2000)),
        date_paid=_datetime_gmt(payload.get("date_paid_gmt"), "date_paid_gmt"),
        date_modified=_datetime_gmt(payload.get("date_modified_gmt"), "date_modified_gmt"),
        line_items=_line_items(raw_items),
        refunds=tuple(parse_refund(refund) for refund in raw_refunds),
        meta=meta,
        deleted=deleted,
    )
