"""Orders: a shop's order state becomes licenses and download grants, exactly once.

``apply_shop_order`` is the one verb. Whatever the delivery (webhook, redelivery, a
reconciliation re-read), it makes Keygate's records match the order's state as the shop last
reported it:

- paid (processing, completed): one license and one grant per product file for every unit of
  every line item whose product is configured (variation first, then parent product);
  refunded units are revoked, newest unit first;
- refunded, cancelled, failed, deleted: everything of the order is revoked;
- pending, on-hold and any other status (a plugin's: shipped, delivered, partially-paid):
  nothing is issued, and nothing already issued is taken away because of the status; what
  the order no longer pays for (refunded or removed units, a line changed to another
  product) is, as from a paid order.

Exactly-once comes from the unique keys (line item, unit) and (line item, unit, file) with
``ON CONFLICT DO NOTHING``, under a lock on the order row (PostgreSQL ``FOR UPDATE``; SQLite
writers are serialized by ``BEGIN IMMEDIATE``). A payload older than the one applied (by the
shop's ``date_modified``) changes nothing. Revocations made by the owner are never undone by
a later delivery; revocations made because of the order's state are, if the order is paid
again.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import ColumnElement, and_, or_, select, true, update
from sqlalchemy.orm import Session

from connector.audit import record_audit
from connector.catalog import find_product
from connector.db import insert_ignoring_conflicts, utcnow
from connector.jobs import enqueue
from connector.licensing.keys import KeyFormat, generate_key, lookup_form
from connector.licensing.links import downloads_last_while
from connector.licensing.policy import Policy
from connector.mail import contacts
from connector.mail.service import ORDER_MAIL_JOB
from connector.models import (
    Activation,
    DownloadGrant,
    Job,
    License,
    LicenseRenewal,
    LineItem,
    Mail,
    Order,
    Product,
    Store,
)
from connector.models.licensing import LINE_CHANGED, by_the_order
from connector.orders import renewals
from connector.orders.jobs import ISSUED_JOB
from connector.orders.refund_notices import note_refunds_read
from connector.orders.summary import order_entitlements
from connector.stores import hold_live_store
from connector.vault.crypto import keyed_hash
from plugin.shop import (
    PAID_STATUSES,
    REVOKING_STATUSES,
    WAITING_STATUSES,
    ShopLineItem,
    ShopOrder,
)

LICENSE_KEY_HASH = "license-key"


@dataclass
class ApplyResult:
    """What one application of an order changed."""

    outcome: str  # applied | stale
    order_id: int | None = None
    issued_licenses: list[int] = field(default_factory=list)
    issued_grants: list[int] = field(default_factory=list)
    revoked_licenses: list[int] = field(default_factory=list)
    reinstated_licenses: list[int] = field(default_factory=list)
    renewed_licenses: list[int] = field(default_factory=list)
    reverted_renewals: list[int] = field(default_factory=list)
    # The delivery lists refunds whose lines were not read from the shop yet: "<listed ids>|
    # <ids last read>", for the caller to ask for a read (one per such difference while
    # it waits: see enqueue_refresh).
    unread_refunds: str | None = None
    # The delivery may not be the order as it is now, and a read of the order settles it
    # (the caller asks for one, when the store has a WooCommerce REST key): the question,
    # "restore@<date>" (a live payload of an order Keygate has as deleted, without the
    # shop's word that it was restored), "delete@<date applied>" (a deletion of an order
    # Keygate has as live: it carries no date, and may have been sent before a restore) or
    # "same-second@<date>" (a payload of the second applied that says otherwise).
    unconfirmed: str | None = None


def hash_license_key(canonical_key: str) -> str:
    return keyed_hash(LICENSE_KEY_HASH, lookup_form(canonical_key))


def _lock_order(session: Session, store: Store, shop_order_id: str, status: str) -> Order:
    now = utcnow()
    insert_ignoring_conflicts(
        session,
        Order.__table__,
        {
            "store_id": store.id,
            "shop_order_id": shop_order_id,
            "status": status,
            "deleted": False,
            "created_at": now,
            "updated_at": now,
        },
        ["store_id", "shop_order_id"],
    )
    # NO KEY UPDATE: other deliveries of the order still wait for it, but a click counting
    # one of the order's links (its grant's row locked) still logs under the order (a
    # foreign-key check) while this delivery waits to withdraw that link (a deadlock).
    return session.execute(
        select(Order)
        .where(Order.store_id == store.id, Order.shop_order_id == shop_order_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).scalar_one()


def _is_stale(
    order: Order, shop_order: ShopOrder, reread: bool, restored: bool, readable: bool
) -> bool:
    if order.deleted and not shop_order.deleted:
        # A deletion carries no date of its own: only the shop's word that the order was
        # restored (order.restored) or a read of it now brings it back. A plain update may
        # be one sent before the trash and delivered after it; and so may a restore dated
        # before a change applied (a refund): where the order can be read, the read decides.
        if reread:
            return False
        if not restored:
            return True
        return readable and _older_than_applied(order, shop_order)
    if order.shop_modified_at is None:
        return False
    if shop_order.date_modified is None:
        # Deletions carry no date; anything else without one is older than what we know.
        return not shop_order.deleted
    if shop_order.date_modified != order.shop_modified_at:
        return shop_order.date_modified < order.shop_modified_at
    if reread:
        return False  # a read is the order as it is now, whatever came in the same second
    # Same second (WooCommerce dates have one-second resolution): which came first is
    # unknown, so the more decided state stands.
    return _decisiveness(shop_order.status) < _decisiveness(order.status)


def _older_than_applied(order: Order, shop_order: ShopOrder) -> bool:
    applied, modified = order.shop_modified_at, shop_order.date_modified
    return applied is not None and modified is not None and modified < applied


# The purpose of an order's content digest (Order.shop_digest).
CONTENT_DIGEST = "order-content"


def _content_digest(shop_order: ShopOrder) -> str:
    """What a live payload says of the order, as a webhook and a read of the same state
    both say it (refunds by id: a webhook does not list their lines).

    Keyed with the secret key: the digest holds the buyer's address, and outlives it on an
    erased order (or one whose buyer the purge forgot), where a plain hash would let anyone
    with the database confirm a guessed address, as a keyed one, like the erasure's
    pseudonym, does not."""
    content = {
        "status": shop_order.status,
        "email": shop_order.email,
        "subscription": renewals.subscription_of(shop_order.meta),
        "lines": sorted(
            [
                item.id,
                item.product_id,
                item.variation_id,
                item.quantity,
                str(item.meta.get(renewals.RENEW_META) or ""),
            ]
            for item in shop_order.line_items
        ),
        "refunds": _refund_ids(shop_order),
    }
    return keyed_hash(CONTENT_DIGEST, json.dumps(content, sort_keys=True))


def _same_second_other_content(order: Order, shop_order: ShopOrder, reread: bool) -> bool:
    """A delivery of the second already applied that says otherwise: which of the two the
    shop has now is unknown (dates have one-second resolution); a read tells."""
    return (
        not reread
        and not shop_order.deleted
        and shop_order.date_modified is not None
        and shop_order.date_modified == order.shop_modified_at
        and _content_digest(shop_order) != order.shop_digest
    )


def _iso(date: dt.datetime | None) -> str:
    return date.isoformat() if date is not None else ""


def _decisiveness(status: str) -> int:
    """Waiting < paid (or any other status) < revoking. A paid and a revoking payload of one
    second (a fraud check cancelling a fresh order): the revocation wins, whichever is
    delivered last; a wrongly revoked order is paid again by the shop's next change."""
    if status in WAITING_STATUSES:
        return 0
    return 2 if status in REVOKING_STATUSES else 1


# The buyer's personal fields of an order: those _copy_personal_fields copies from the shop
# and clear_personal_fields clears (an erasure, the purge of orders that issued nothing).
PERSONAL_FIELDS = ("email", "name", "company", "customer_id", "payment_note")


def clear_personal_fields(order: Order, email: str | None = None) -> None:
    """Clear the buyer's personal fields (:data:`PERSONAL_FIELDS`); ``email``: what the
    address becomes (an erasure's pseudonym), else none."""
    for name in PERSONAL_FIELDS:
        setattr(order, name, None)
    order.email = email


def _copy_personal_fields(order: Order, shop_order: ShopOrder) -> None:
    """The buyer's personal fields (:data:`PERSONAL_FIELDS`): every one that erasure clears,
    and only those.

    Never called once the order is erased, so a later delivery cannot bring any of them back.
    """
    order.email = shop_order.email
    order.name = shop_order.full_name
    order.company = shop_order.company
    order.customer_id = shop_order.customer_id
    # A later payload without it (e.g. after a manual status change) keeps what we had.
    order.payment_note = shop_order.payment_note or order.payment_note


def _copy_order_fields(order: Order, shop_order: ShopOrder) -> None:
    order.status = shop_order.status
    if shop_order.deleted:
        order.deleted = True
        # A deletion has no shop date: the last one applied stays (an order never seen
        # before has none: Keygate's clock is no shop date). What brings the order back is
        # the shop's word, not a date (see _is_stale).
        if shop_order.date_modified is not None:  # read over REST: trashed at that date
            order.shop_modified_at = shop_order.date_modified
        return
    order.deleted = False
    order.shop_digest = _content_digest(shop_order)
    order.number = shop_order.number
    if not order.is_erased:
        _copy_personal_fields(order, shop_order)
    order.currency = shop_order.currency
    order.total = shop_order.total
    order.payment_method = shop_order.payment_method
    order.payment_method_title = shop_order.payment_method_title
    # A later payload without them (e.g. after a manual status change) keeps what we had.
    order.transaction_id = shop_order.transaction_id or order.transaction_id
    order.date_paid = shop_order.date_paid or order.date_paid
    if shop_order.date_modified is not None:
        order.shop_modified_at = shop_order.date_modified


def _named_products(
    session: Session, store: Store, variation_id: str | None, product_id: str | None
) -> list[tuple[Product, str]]:
    """The configured products a line names, retired or not, with the shop id each is
    configured under: its variation's first, then its parent's."""
    return [
        (product, shop_id)
        for shop_id in (variation_id, product_id)
        if shop_id is not None and (product := find_product(session, store, shop_id)) is not None
    ]


def _configured_product(
    session: Session, store: Store, item: ShopLineItem, renewal: bool = False
) -> tuple[Product | None, str | None]:
    """The configured product for a line: its variation first, then its parent product.
    A retired product (its shop meta is gone) matches no new sale, only a ``renewal`` (a
    paid subscription renewal or a line naming a key extends the key it renews), and only
    when no live one does: a variation retired to follow its parent again renews the
    parent's key. A product the owner stopped licensing in Keygate (``retire_product``)
    is not passed over for its parent: its new sales get nothing."""
    found = _named_products(session, store, item.variation_id, item.product_id)
    for product, shop_id in found:
        if product.retired_at is None:
            return product, shop_id
        if product.source == "keygate" and not renewal:
            return None, None
    if renewal and found:
        return found[0]
    return None, None


def _line_product_ids(
    session: Session, store: Store, line: LineItem, matched: Product
) -> list[int]:
    """The configured products a line names, the one it matched first (a renewal renews
    a key sold as either its variation or its parent)."""
    named = _named_products(session, store, line.shop_variation_id, line.shop_product_id)
    return [matched.id, *(p.id for p, _ in named if p.id != matched.id)]


def _line_match(
    session: Session, store: Store, item: ShopLineItem, line: LineItem, renewal: bool = False
) -> tuple[int | None, str | None]:
    """The configured product a line is licensed for, and the shop id that matched it.

    A line that names another product (the owner swapped the product or variation) matches
    that one, or nothing when nobody configured it. A line that names the same product as
    before keeps its match, even if a better one was configured since (a variation of the
    product it matched): the buyer's key must not change under them. A line that names no
    product any more (WooCommerce reports product_id 0 once the product is deleted from the
    shop) keeps its match too: the buyer still bought it.

    Only a line that issued something (a license, a renewal) has a key to keep: one that
    waited (pending, on-hold) or matched nothing is matched again, as the same order
    delivered only now would be.
    """
    if item.product_id is None and item.variation_id is None:
        return line.product_id, line.matched_shop_product_id
    same_product = (line.shop_product_id, line.shop_variation_id) == (
        item.product_id,
        item.variation_id,
    )
    if same_product and line.product_id is not None and _has_issued(session, line):
        return line.product_id, line.matched_shop_product_id
    product, matched = _configured_product(session, store, item, renewal)
    return (product.id if product is not None else None), matched


def _has_issued(session: Session, line: LineItem) -> bool:
    """The line has a license or a renewal (whatever its state now): a key the buyer had."""
    if line.id is None:
        return False
    licensed = select(License.id).where(License.line_item_id == line.id).exists()
    renewed = select(LicenseRenewal.id).where(LicenseRenewal.line_item_id == line.id).exists()
    return bool(session.scalar(select(or_(licensed, renewed))))


def _refund_ids(shop_order: ShopOrder) -> str:
    return ",".join(sorted(refund.id for refund in shop_order.refunds))


def _refunds_itemized(shop_order: ShopOrder, reread: bool) -> bool:
    """The refunds carry their lines: read from the shop's refunds endpoint, or none listed.

    Webhook payloads list refunds without their lines; counting those would make every
    later delivery take a partial refund back.
    """
    return reread or not shop_order.refunds


def _refunded_units(shop_order: ShopOrder, item: ShopLineItem, line: LineItem, reread: bool) -> int:
    # A unit is licensed while it is wholly paid for: the parts refunded are added up first,
    # across refunds, and taken from the quantity bought as sent, rounded down once (2.5
    # bought, 0.5 refunded: 2 units, where 2 less 0.5 rounded up took a paid one).
    parts = sum(
        (r.line_quantities.get(item.id, Decimal(0)) for r in shop_order.refunds), Decimal(0)
    )
    bought = item.bought if item.bought is not None else item.quantity
    from_refunds = item.quantity - math.floor(bought - parts)
    refunded = max(item.refunded_quantity, from_refunds)
    if _refunds_itemized(shop_order, reread):
        return refunded
    # Lines unknown: what the last read of the refunds found stands until the next read.
    return max(refunded, line.refunded_quantity or 0)


def _sync_line_items(
    session: Session, store: Store, order: Order, shop_order: ShopOrder, reread: bool
) -> None:
    existing = {line.shop_line_item_id: line for line in order.line_items}
    seen: set[str] = set()
    for item in shop_order.line_items:
        seen.add(item.id)
        line = existing.get(item.id)
        if line is None:
            line = LineItem(order=order, shop_line_item_id=item.id)
            session.add(line)
        renewal = bool(
            renewals.subscription_of(shop_order.meta) or item.meta.get(renewals.RENEW_META)
        )
        line.product_id, line.matched_shop_product_id = _line_match(
            session, store, item, line, renewal
        )
        line.shop_product_id = item.product_id
        line.shop_variation_id = item.variation_id
        line.name = item.name
        line.sku = item.sku
        line.quantity = item.quantity
        line.total = item.total
        # Not capped at the quantity (paid_units is never below 0): the units refunded
        # stand when the owner lowers the quantity under them and raises it again, and a
        # delivery that does not itemize refunds keeps the count it stored.
        line.refunded_quantity = _refunded_units(shop_order, item, line, reread)
    for shop_line_id, line in existing.items():
        if shop_line_id not in seen:
            # Removed from the order in the shop: nothing of it is owed any more.
            line.quantity = 0
    session.flush()


def _issue_unit(
    session: Session,
    store: Store,
    order: Order,
    line: LineItem,
    product: Product,
    unit: int,
    license_id: int | None,
    result: ApplyResult,
) -> None:
    """The unit's license (unless ``license_id`` names it) and its grants, each inserted
    unless it exists: the unique keys make this exactly-once across processes."""
    policy = Policy.of(product)
    now = utcnow()
    # From the payment (a webhook lost and the order read hours later still counts from
    # it), never later than now: a shop whose clock runs ahead would lengthen every key and
    # link by its error (renewals count the same way: renewals.counts_from).
    start = now if order.date_paid is None else min(order.date_paid, now)
    existing = license_id
    if license_id is None:
        license_id = _insert_license(
            session, store, order, line, product, unit, policy, start, now, result
        )
    new_grants: list[int] = []
    for product_file in product.files:
        if not product_file.active:
            continue
        granted = insert_ignoring_conflicts(
            session,
            DownloadGrant.__table__,
            {
                "store_id": store.id,
                "order_id": order.id,
                "line_item_id": line.id,
                "unit": unit,
                "product_file_id": product_file.id,
                "license_id": license_id,
                "expires_at": policy.downloads_until(start),
                "download_limit": policy.download_limit,
                "download_count": 0,
                "created_at": now,
            },
            ["line_item_id", "unit", "product_file_id"],
        )
        if granted is not None:
            new_grants.append(granted)
    result.issued_grants.extend(new_grants)
    license_ = session.get(License, existing) if existing is not None else None
    if license_ is not None and new_grants:
        # Links for a file added since: as long as the renewals made the license's others,
        # and as the owner's extensions did (the license's end, when links last while it does).
        renewals.extend_new_grants(session, license_, new_grants)
        if license_.expires_at is not None:
            downloads_last_while(session, license_, license_.expires_at, new_grants)


def _insert_license(
    session: Session,
    store: Store,
    order: Order,
    line: LineItem,
    product: Product,
    unit: int,
    policy: Policy,
    start: dt.datetime,
    now: dt.datetime,
    result: ApplyResult,
) -> int:
    """Issue the unit's license unless it exists; its id either way. ``start``: what its
    policy counts from (the paid date); ``now``: the moment of issue, as for its grants."""
    fmt = KeyFormat(store.key_prefix, store.key_groups, store.key_group_length)
    key = generate_key(fmt)
    inserted = insert_ignoring_conflicts(
        session,
        License.__table__,
        {
            "store_id": store.id,
            "product_id": product.id,
            "order_id": order.id,
            "line_item_id": line.id,
            "unit": unit,
            "key_hash": hash_license_key(key),
            "key_encrypted": key,
            "status": "active",
            "activation_limit": policy.activation_limit,
            "expires_at": policy.expires_at(start),
            "updates_until": policy.updates_until(start),
            "issued_at": now,
            "updated_at": now,
        },
        ["line_item_id", "product_id", "unit"],
    )
    if inserted is not None:
        result.issued_licenses.append(inserted)
        return inserted
    # Another process issued it meanwhile (the unique key refused ours): theirs it is.
    existing: int = session.execute(
        select(License.id).where(
            License.line_item_id == line.id, License.product_id == product.id, License.unit == unit
        )
    ).scalar_one()
    return existing


def _revoke(session: Session, which: ColumnElement[bool], reason: str, result: ApplyResult) -> None:
    """Revoke the licenses ``which`` selects, if active, and their open links for ``reason``.

    A license the owner (or abuse detection) suspended or revoked keeps that state and
    reason: overwritten by the order's, paying the order again would make it active.
    Read under the licenses' lock, which the owner's suspend, reinstate or revoke and the
    abuse signal's suspension hold while they decide: one waits for the other and decides
    on what it committed (a refund that saw a key paused that the owner was reinstating
    left it be, and the reinstate handed out a refunded key).
    """
    now = utcnow()
    license_ids = []
    for license_ in renewals.locked_licenses(session, which):
        license_ids.append(license_.id)
        if license_.status == "active":
            license_.status = "revoked"
            license_.status_reason = reason
            result.revoked_licenses.append(license_.id)
    if not license_ids:
        return
    for grant in session.scalars(
        select(DownloadGrant).where(
            DownloadGrant.license_id.in_(license_ids), DownloadGrant.revoked_at.is_(None)
        )
    ):
        grant.revoked_at = now
        grant.revoked_reason = reason


def _set_unit_revoked(
    session: Session, line: LineItem, unit: int, reason: str, result: ApplyResult
) -> None:
    _revoke(session, and_(License.line_item_id == line.id, License.unit == unit), reason, result)


def _revoke_other_products(session: Session, line: LineItem, result: ApplyResult) -> None:
    """Licenses of the line for a product it no longer names (all of them when it names
    none that is configured): the buyer's line is for something else now."""
    other = true() if line.product_id is None else License.product_id != line.product_id
    active = and_(License.line_item_id == line.id, License.status == "active", other)
    _revoke(session, active, LINE_CHANGED, result)


def _reinstate_units(session: Session, line: LineItem, entitled: int, result: ApplyResult) -> None:
    """Undo automatic revocations (a refund, an order status, a product swapped back) of the
    line's units 1..``entitled`` of its product; an owner's revocation stays. Read under
    the licenses' lock (as :func:`_revoke`): a payment does not bring back a license the
    owner is revoking."""
    for license_ in renewals.locked_licenses(
        session,
        and_(
            License.line_item_id == line.id,
            License.product_id == line.product_id,
            License.unit <= entitled,
            License.status == "revoked",
        ),
    ):
        if by_the_order(license_.status_reason):
            license_.status = "active"
            license_.status_reason = None
            result.reinstated_licenses.append(license_.id)
    # Links come back only with a license that is active again: one the owner revoked or
    # suspended keeps its links shut, whatever shut them first.
    for grant in session.scalars(
        select(DownloadGrant)
        .join(License, DownloadGrant.license_id == License.id)
        .where(
            DownloadGrant.line_item_id == line.id,
            DownloadGrant.unit <= entitled,
            DownloadGrant.revoked_at.is_not(None),
            License.status == "active",
        )
    ):
        if by_the_order(grant.revoked_reason):
            grant.revoked_at = None
            grant.revoked_reason = None


@dataclass
class _IssuedUnit:
    license_id: int
    license_active: bool
    file_ids: set[int] = field(default_factory=set)


def _issued_so_far(session: Session, line: LineItem) -> dict[int, _IssuedUnit]:
    """unit -> its license for the line's product and the files it has grants for, in two
    queries per line."""
    issued = {
        unit: _IssuedUnit(license_id, status == "active")
        for unit, license_id, status in session.execute(
            select(License.unit, License.id, License.status).where(
                License.line_item_id == line.id, License.product_id == line.product_id
            )
        )
    }
    for unit, file_id in session.execute(
        select(DownloadGrant.unit, DownloadGrant.product_file_id).where(
            DownloadGrant.line_item_id == line.id
        )
    ):
        if unit in issued:
            issued[unit].file_ids.add(file_id)
    return issued


def _issued_units(session: Session, line: LineItem) -> list[int]:
    return list(session.scalars(select(License.unit).where(License.line_item_id == line.id)))


_Chosen = tuple[list[tuple[LineItem, Product, dict[int, License]]], list[LineItem]]


def _choose_renewals(
    session: Session, store: Store, order: Order, shop_order: ShopOrder, subscription: str | None
) -> _Chosen:
    """The order's licensed lines, each with the licenses its units renew
    (:func:`renewals.renewal_targets`), and the lines whose renewal no longer stands: the
    owner changed the line to a product nobody configured, or to another one than the key
    it renewed."""
    shop_items = {item.id: item for item in shop_order.line_items}
    licensed: list[tuple[LineItem, Product, dict[int, License]]] = []
    unrenewed: list[LineItem] = []
    claimed: set[int] = set()  # renewed by the order's lines so far: each seat once
    for line in order.line_items:
        if line.product_id is None:
            unrenewed.append(line)
            continue  # recorded, not licensed: nobody configured this product
        product = session.get(Product, line.product_id)
        if product is None:  # pragma: no cover - products are never deleted
            continue
        shop_item = shop_items.get(line.shop_line_item_id)
        product_ids = _line_product_ids(session, store, line, product)
        targets = renewals.renewal_targets(
            session,
            store,
            order,
            line,
            product_ids,
            shop_item.meta if shop_item else {},
            subscription,
            line.paid_units,
            claimed,
        )
        names_products = bool(line.shop_product_id or line.shop_variation_id)
        if names_products and any(t.product_id not in product_ids for t in targets.values()):
            # Changed to another product (not a product deleted in the shop: the line then
            # names none, and what it was sold as stands).
            unrenewed.append(line)
            targets = {}  # the line now buys another product: a purchase of it
        claimed.update(license_.id for license_ in targets.values())
        licensed.append((line, product, targets))
    return licensed, unrenewed


def _lock_order_licenses(session: Session, order: Order, chosen: _Chosen | None = None) -> None:
    """Every license the convergence of ``order`` may change, locked at once in id order
    before any is changed (:func:`renewals.locked_licenses`): the order's own (revoked,
    reinstated, swapped, given new links: line by line and unit by unit, which is not id
    order), those it renewed, and those it renews now (``chosen``)."""
    targets = [] if chosen is None else _chosen_targets(chosen)
    own = session.scalars(select(License.id).where(License.order_id == order.id))
    renewals.lock_licenses(session, [*own, *renewals.renewed_by(session, order), *targets])


def _chosen_targets(chosen: _Chosen) -> list[int]:
    licensed, _ = chosen
    return [license_.id for _, _, targets in licensed for license_ in targets.values()]


def _converge_paid(
    session: Session, store: Store, order: Order, shop_order: ShopOrder, result: ApplyResult
) -> None:
    order.revoked_at = None
    subscription = renewals.subscription_of(shop_order.meta)
    if subscription is not None:
        renewals.hold_seat_choice(session, order)  # before any license is read
    chosen = _choose_renewals(session, store, order, shop_order, subscription)
    _lock_order_licenses(session, order, chosen)
    for line in order.line_items:
        _revoke_other_products(session, line, result)
    if any(t.status == "revoked" for _, _, targets in chosen[0] for t in targets.values()):
        # Chosen before their locks, read again under them: one revoked meanwhile (its order
        # refunded or cancelled, the owner's revocation, at the same moment; a line of this
        # order changed to another product) is chosen again as a delivery after the
        # revocation would choose (a key named: a new license is issued; a subscription:
        # another seat). A unit renewed before keeps its license. A license chosen only now
        # is locked after those held (rare: the one chosen first was revoked meanwhile).
        chosen = _choose_renewals(session, store, order, shop_order, subscription)
        renewals.lock_licenses(session, _chosen_targets(chosen))
    licensed, unrenewed = chosen
    for line in unrenewed:
        result.reverted_renewals.extend(renewals.revert_renewals(session, line))
    for line, product, targets in licensed:
        entitled = line.paid_units
        if targets:
            # Extends existing licenses instead of issuing them (issue 7).
            renewed, reverted = renewals.converge_renewal(
                session, order, line, targets, entitled, subscription
            )
            result.renewed_licenses.extend(renewed)
            result.reverted_renewals.extend(reverted)
            if not _issued_units(session, line) and all(
                unit in targets for unit in range(1, entitled + 1)
            ):
                continue  # every unit renews: nothing to issue or take back
        # One pass per line, not per unit: a redelivery of an order with many units is a
        # few queries; only what is missing is inserted. Keys in use are kept first (and
        # before links for new files are issued: the key kept gets them), so that an order
        # paid again for fewer units brings back the keys in use, not idle ones.
        _keep_keys_in_use(session, line, entitled)
        _reinstate_units(session, line, entitled, result)
        issued = _issued_so_far(session, line)
        files = {f.id for f in product.files if f.active}
        for unit in range(1, entitled + 1):
            if unit in targets:
                continue  # renews a license (a seat of the subscription)
            known = issued.get(unit)
            if known is None:
                _issue_unit(session, store, order, line, product, unit, None, result)
            elif known.license_active and not files <= known.file_ids:
                # A file added since; a license the owner shut gets no new link.
                _issue_unit(session, store, order, line, product, unit, known.license_id, result)
        _take_back_units_above(session, line, entitled, result)


def _take_back_units_above(
    session: Session, line: LineItem, entitled: int, result: ApplyResult
) -> None:
    """The line's units above ``entitled`` (refunded, or removed by a lower quantity)."""
    # Newest first, so the first keys bought stay valid; but a key in use was kept over an
    # idle one before (_keep_keys_in_use: WooCommerce does not say which unit was refunded).
    for unit in sorted((u for u in _issued_units(session, line) if u > entitled), reverse=True):
        _set_unit_revoked(session, line, unit, "refund", result)
    # Those the whole order's state revoked before (cancelled, paid again for fewer) are
    # not paid for now either: no longer the order's to bring back on a redelivery.
    session.execute(
        update(License)
        .where(
            License.line_item_id == line.id,
            License.unit > entitled,
            License.status == "revoked",
            License.status_reason.startswith("order:"),
        )
        .values(status_reason="refund")
    )


def _converge_unpaid(session: Session, order: Order, result: ApplyResult) -> None:
    """An order neither paid nor revoked now: waiting (pending, on-hold: put on hold after
    payment, as a payment dispute does) or in a status a plugin added (shipped, delivered,
    partially-paid). Nothing is issued, nor taken back because of the status; but what the
    order no longer pays for goes, as from a paid order: units refunded (WooCommerce keeps
    the status on a partial refund) or removed, a line changed to another product."""
    _lock_order_licenses(session, order)
    for line in order.line_items:
        _revoke_other_products(session, line, result)
        entitled = line.paid_units if line.product_id is not None else 0
        result.reverted_renewals.extend(
            renewals.revert_renewals(session, line, above_unit=entitled)
        )
        if line.product_id is None:
            continue
        _keep_keys_in_use(session, line, entitled)
        _take_back_units_above(session, line, entitled, result)


def _keep_keys_in_use(session: Session, line: LineItem, entitled: int) -> None:
    """Before units above ``entitled`` are revoked (a partial refund, a lower quantity) or
    units up to it reinstated: swap each one in use (activated somewhere, or extended by a
    renewal still paid for) with one at or below ``entitled`` in no use, so the refund takes
    back a key nobody uses rather than the site or machine that runs on the newest one, or a
    renewal the buyer paid for. Its links go with it (their unit too). Swapped are keys that
    are active, or that the whole order's state revoked (cancelled, then paid again for
    fewer units): their units decide which come back.

    A redelivery finds nothing to swap: the units above ``entitled`` are revoked by then.
    """
    activated = select(Activation.id).where(Activation.license_id == License.id).exists()
    renewed = (
        select(LicenseRenewal.id)
        .where(LicenseRenewal.license_id == License.id, LicenseRenewal.reverted_at.is_(None))
        .exists()
    )
    rows = session.execute(
        select(License.id, License.unit, or_(activated, renewed)).where(
            License.line_item_id == line.id,
            License.product_id == line.product_id,
            or_(
                License.status == "active",
                (License.status == "revoked") & License.status_reason.startswith("order:"),
            ),
        )
    ).all()
    going = sorted(
        ((unit, license_id) for license_id, unit, used in rows if unit > entitled and used),
        reverse=True,
    )
    idle = sorted(
        ((unit, license_id) for license_id, unit, used in rows if unit <= entitled and not used),
        reverse=True,
    )
    for (high, in_use), (low, unused) in zip(going, idle, strict=False):
        # Through a unit no row has (the unique keys are checked per statement).
        for license_id, unit in ((in_use, -high), (unused, high), (in_use, low)):
            session.execute(update(License).where(License.id == license_id).values(unit=unit))
            session.execute(
                update(DownloadGrant)
                .where(DownloadGrant.license_id == license_id)
                .values(unit=unit)
            )


def _converge_revoked(session: Session, order: Order, result: ApplyResult) -> None:
    order.revoked_at = order.revoked_at or utcnow()
    reason = "order:deleted" if order.deleted else f"order:{order.status}"
    _lock_order_licenses(session, order)
    for line in order.line_items:
        result.reverted_renewals.extend(renewals.revert_renewals(session, line))
        for unit in _issued_units(session, line):
            _set_unit_revoked(session, line, unit, reason, result)


def _note_refunds_read(
    order: Order, shop_order: ShopOrder, reread: bool, result: ApplyResult
) -> None:
    """Remember which refunds' lines are counted; flag a delivery listing any others."""
    listed = _refund_ids(shop_order)
    if _refunds_itemized(shop_order, reread):
        order.refund_ids_read = listed
    elif listed != order.refund_ids_read:
        result.unread_refunds = f"{listed}|{order.refund_ids_read or ''}"


def apply_shop_order(
    session: Session,
    store: Store,
    shop_order: ShopOrder,
    *,
    reread: bool = False,
    restored: bool = False,
    readable: bool = False,
) -> ApplyResult:
    """Make Keygate's records of an order match the state the shop reports.

    Safe to call any number of times, in any order, from any number of processes.

    Args:
        session: the request's or job's session; this flushes, the caller commits.
        store: the store the order belongs to.
        shop_order: the order as the shop reports it now.
        reread: ``shop_order`` was read from the shop's REST API just now, not delivered
            by a webhook: its refunds carry their lines, and a live order restores a
            deleted one whatever its date.
        restored: delivered as ``order.restored``: the shop took the order out of the
            trash, so it restores a deleted one (unless ``readable`` and dated before a
            change applied: it may be older than the deletion, the read decides).
        readable: the caller can read the order from the shop (the store has a REST key)
            when the result is :attr:`ApplyResult.unconfirmed`.

    Raises:
        StoreDeleted: the store was deleted meanwhile (a job's re-read).
    """
    hold_live_store(session, store)
    order = _lock_order(session, store, shop_order.id, shop_order.status)
    tie = _same_second_other_content(order, shop_order, reread)
    if _is_stale(order, shop_order, reread, restored, readable):
        stale = ApplyResult(outcome="stale", order_id=order.id)
        if order.deleted and not shop_order.deleted:
            stale.unconfirmed = f"restore@{_iso(shop_order.date_modified)}"
        elif tie:
            stale.unconfirmed = f"same-second@{_iso(shop_order.date_modified)}"
        return stale
    result = ApplyResult(outcome="applied", order_id=order.id)
    if shop_order.deleted and not order.deleted and not reread:
        # Applied at once: a real deletion (a fraudulent order trashed) revokes now, whatever
        # becomes of the read; a deletion sent before a restore is undone by the read.
        result.unconfirmed = f"delete@{_iso(order.shop_modified_at)}"
    elif tie:
        # Applied as the tie rule says (_is_stale); the read puts the shop's order in place.
        result.unconfirmed = f"same-second@{_iso(shop_order.date_modified)}"
    was_revoked, had_address = order.revoked_at is not None, order.mail_address is not None
    seen_before = order.shop_digest is not None  # applied as a live order before
    contacts.remember_pushed_address(order)  # before the delivery may correct the address
    _copy_order_fields(order, shop_order)
    if not shop_order.deleted:
        _sync_line_items(session, store, order, shop_order, reread)
        _note_refunds_read(order, shop_order, reread, result)
    if shop_order.is_revoking:
        _converge_revoked(session, order, result)
    elif shop_order.status in PAID_STATUSES:
        _converge_paid(session, store, order, shop_order, result)
    else:
        _converge_unpaid(session, order, result)
    session.flush()
    if not shop_order.deleted:
        if reread:
            note_refunds_read(session, order)  # the owner's notice of unread refunds ends
        issuing = bool(result.issued_licenses or result.issued_grants)
        came_back = (was_revoked and order.revoked_at is None) or (
            not had_address and order.mail_address is not None
        )
        contacts.pass_consent_on(
            session, store, order, shop_order, issuing=issuing, came_back=came_back
        )
        contacts.pass_correction_on(session, store, order, shop_order, issuing=issuing)
    _record_changes(session, store, order, shop_order, result)
    if (
        seen_before
        and not had_address
        and order.mail_address is not None
        and not (shop_order.deleted or result.issued_licenses or result.issued_grants)
    ):
        _mail_first_address(session, order)  # after _record_changes: a mail it queued counts
    return result


def _mail_first_address(session: Session, order: Order) -> None:
    """An order issued while it had no address (none given, or not a plain mailbox) that the
    shop now gives one: its keys and links are mailed there once, as they would have been
    when issued. Not when a mail is on its way (it reads the new address when it goes), when
    one was sent before (a correction: the owner's resend), or when nothing is usable."""
    if order.is_revoking or not order_entitlements(session, order)["usable"]:
        return
    sent = select(Mail.id).where(Mail.order_id == order.id, Mail.sent_at.is_not(None))
    on_its_way = select(Job.id).where(
        Job.kind.in_((ORDER_MAIL_JOB, ISSUED_JOB)),
        Job.status.in_(("pending", "running")),
        Job.payload["order_id"].as_integer() == order.id,
    )
    if session.scalar(sent.exists().select()) or session.scalar(on_its_way.exists().select()):
        return
    enqueue(session, ORDER_MAIL_JOB, {"order_id": order.id})
    record_audit(
        session,
        store_id=order.store_id,
        actor="shop",
        action="order.mailed_first_address",
        subject=f"order:{order.shop_order_id}",
    )


def _record_changes(
    session: Session, store: Store, order: Order, shop_order: ShopOrder, result: ApplyResult
) -> None:
    if result.renewed_licenses or result.reverted_renewals:
        record_audit(
            session,
            store_id=store.id,
            actor="shop",
            action="order.renewals_changed",
            subject=f"order:{order.shop_order_id}",
            detail={
                "status": order.status,
                "renewed": result.renewed_licenses,
                "reverted": result.reverted_renewals,
            },
        )
    if result.revoked_licenses or result.reinstated_licenses:
        record_audit(
            session,
            store_id=store.id,
            actor="shop",
            action="order.licenses_changed",
            subject=f"order:{order.shop_order_id}",
            detail={
                "status": order.status,
                "revoked": result.revoked_licenses,
                "reinstated": result.reinstated_licenses,
            },
        )
    if result.issued_licenses or result.issued_grants:
        record_audit(
            session,
            store_id=store.id,
            actor="shop",
            action="order.fulfilled",
            subject=f"order:{order.shop_order_id}",
            detail={"licenses": result.issued_licenses, "grants": result.issued_grants},
        )
        # One follow-up job per issuance; it fans out the slow work (mail, watermarks,
        # write-back) as jobs of their own so each retries on its own. The buyer's consent
        # to the store's Brevo list travels as a boolean, as this delivery states it: it is
        # not stored anywhere else.
        enqueue(
            session,
            ISSUED_JOB,
            {
                "order_id": order.id,
                "license_ids": result.issued_licenses,
                "grant_ids": result.issued_grants,
                "brevo_consent": contacts.consent_to_push(session, store, shop_order),
            },
        )
    elif result.renewed_licenses or result.reinstated_licenses:
        # A renewal applied (or paid again after a refund), keys working again after a
        # cancellation or refund was undone: the buyer is told what they have now. Each
        # happens once per change of the order (replays change nothing), so no dedupe key.
        enqueue(session, ORDER_MAIL_JOB, {"order_id": order.id})
    if result.revoked_licenses:
        enqueue(
            session,
            "order.revoked",
            {"order_id": order.id, "license_ids": result.revoked_licenses},
        )


def find_order(session: Session, store: Store, shop_order_id: str) -> Order | None:
    return session.execute(
        select(Order).where(Order.store_id == store.id, Order.shop_order_id == shop_order_id)
    ).scalar_one_or_none()
