"""Renewals: a paid line item that renews existing licenses extends them, once per unit.

A line renews

- the key its meta ``_keygate_renew_license`` holds (documented for shops and custom
  checkouts), once per unit: a quantity of 2 buys that key two periods; or
- if its order is a WooCommerce Subscriptions renewal (order meta ``_subscription_renewal``,
  the subscription's id), one license per seat: unit n a distinct license of the
  subscription, each at most once per order. Those are the licenses the subscription's
  earlier renewal orders renewed or issued (all of them, not only the latest); for its
  first renewal, the same customer's (customer id, else email) licenses of the product from
  earlier orders that no other subscription renews. Unit 1 takes the one that runs out first
  of those live when the renewal was paid (the renewal is due because it runs out; a
  customer with two subscriptions of one product renews each on its own date), the next
  units the next ones, then those that lapsed, the one that lapsed last first
  (:func:`_due_first`). Units beyond the licenses found are seats added to the
  subscription: each is issued a new license, as a purchase (extending a key twice would
  leave a paid seat without a key), which the subscription's next renewal renews.

A unit keeps the license it renewed (paid again after a refund, it renews the same one),
and a unit issued a license stays a purchase; the line's quantity raised later renews or
issues the new units the same way.

A revoked license is never extended: a subscription renews the customer's live license (or
is issued a new one), and a ``_keygate_renew_license`` naming a revoked key is issued a new
license, with an audit entry ``order.renewal_of_revoked_license`` for the owner.

Each unit extends the license by the product's duration (from its expiry, or from when the
renewal was paid if it has lapsed: :func:`counts_from`) and update period; a
:class:`LicenseRenewal` row per (line item, unit) makes that exactly-once and remembers the
expiry before and after it. A refund of the renewal takes back what it adds given the
renewals still paid for: the expiry is replayed from its value before the first renewal, in
the order Keygate last applied them (a renewal cancelled and paid again extends from the
expiry then, after those paid meanwhile), with and without it, and the difference is taken
off (so days the owner added by hand stay, and a refunded renewal of a lapsed license does
not cancel a later one: its jump included the lapsed time). Part of a line's units refunded
(or its quantity lowered) takes back its highest units' extensions: of a subscription's
renewal, those of the seats that were due last, one period each. The license's download grants
that expire move too (:class:`GrantExtension`, taken back the same way): grants that last
while the license lasts get its new expiry, grants with a window of their own
(``download_days``) a fresh window from their expiry, or from the payment if it has passed.
Counts and download limits stay as they are. A line that renews nothing found is issued a
new license as usual.
Renewals of one license are applied and taken back one at a time, under a lock on its row
(:func:`lock_license`), whichever orders and workers they come from; an order locks every
license it renews, and its own, at once in id order before it changes any
(:func:`lock_licenses`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Collection, Iterable
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Select, false, func, or_, select
from sqlalchemy.orm import Session

from connector.audit import record_audit
from connector.db import insert_ignoring_conflicts, lock_row, utcnow
from connector.licensing.policy import LATEST_EXPIRY, Policy, add_days
from connector.models import (
    DownloadGrant,
    GrantExtension,
    License,
    LicenseRenewal,
    LineItem,
    Order,
    Product,
    Store,
)
from plugin.shop import PayloadError
from plugin.woocommerce.webhooks import parse_id

RENEW_META = "_keygate_renew_license"
SUBSCRIPTION_RENEWAL_META = "_subscription_renewal"


def renewal_targets(
    session: Session,
    store: Store,
    order: Order,
    line: LineItem,
    product_ids: list[int],
    line_meta: dict[str, Any],
    subscription: str | None,
    units: int,
    claimed: Collection[int] = (),
) -> dict[int, License]:
    """The license each unit of this line renews: unit -> license. Units up to ``units``
    left out are issued licenses as a purchase; none renewing: an ordinary purchase.

    A line naming a key extends that key once per unit (several periods bought at once). A
    subscription's renewal renews one license per seat: each unit a distinct license of the
    subscription (:func:`_subscription_seats`); units beyond the licenses found are seats
    added to it, issued keys of their own (one key extended twice would leave a paid seat
    without a key). A unit renewed before keeps its license, also when it was refunded
    (paid again, it renews the same one); a unit issued a license stays a purchase.

    Args:
        product_ids: the configured products the line names (its variation's and its
            parent's): a key sold while the variation had its own settings, or while it
            followed its parent, is renewed either way.
        subscription: the order's :func:`subscription_of`.
        units: the units paid for now.
        claimed: licenses the order's other lines renew: a seat is renewed once per order.
    """
    known = {
        renewal.unit: renewal.license_id
        for renewal in session.scalars(
            select(LicenseRenewal).where(LicenseRenewal.line_item_id == line.id)
        )
    }
    issued = set(session.scalars(select(License.unit).where(License.line_item_id == line.id)))
    if not known and issued:
        return {}  # already licensed as a new purchase: stays one
    targets = {unit: _license(session, license_id) for unit, license_id in known.items()}
    open_units = [unit for unit in range(1, units + 1) if unit not in known and unit not in issued]
    if not open_units:
        return targets
    raw_key = line_meta.get(RENEW_META)
    named_key = isinstance(raw_key, str) and bool(raw_key.strip())
    if named_key or subscription is None:  # one license, extended once per unit
        if targets:
            license_: License | None = targets[min(targets)]
        elif isinstance(raw_key, str) and named_key:
            license_ = _license_by_key(session, store, product_ids, raw_key)
            if license_ is not None and license_.status == "revoked":
                _record_revoked_renewal(session, store, order, line, license_)
                return {}
        else:
            return {}
        if license_ is None:
            return targets
        return {**dict.fromkeys(open_units, license_), **targets}
    taken = {*known.values(), *claimed, *_renewed_by_other_lines(session, line)}
    seats = _subscription_seats(session, store, order, product_ids, subscription)
    free = [license_ for license_ in seats if license_.id not in taken]
    return {**dict(zip(open_units, free, strict=False)), **targets}


def _license(session: Session, license_id: int) -> License:
    found = session.get(License, license_id)
    assert found is not None  # noqa: S101 - a renewal's license is never deleted alone
    return found


def _renewed_by_other_lines(session: Session, line: LineItem) -> list[int]:
    return list(
        session.scalars(
            select(LicenseRenewal.license_id).where(
                LicenseRenewal.order_id == line.order_id, LicenseRenewal.line_item_id != line.id
            )
        )
    )


def _record_revoked_renewal(
    session: Session, store: Store, order: Order, line: LineItem, license_: License
) -> None:
    """A renewal names a revoked key: extending it would sell nothing that works, so the line
    is issued a new license as a purchase; the owner is told, in case the revocation was
    meant to keep this buyer out (then revoke the new key too)."""
    record_audit(
        session,
        store_id=store.id,
        actor="shop",
        action="order.renewal_of_revoked_license",
        subject=f"order:{order.shop_order_id}",
        detail={
            "line_item": line.shop_line_item_id,
            "license": license_.id,
            "license_status_reason": license_.status_reason,
        },
    )


def subscription_of(order_meta: dict[str, Any]) -> str | None:
    """The WooCommerce Subscriptions subscription a renewal order renews, if it is one."""
    try:
        return parse_id(order_meta.get(SUBSCRIPTION_RENEWAL_META))
    except PayloadError:
        return None  # not an id: not a renewal Keygate can follow


def _license_by_key(
    session: Session, store: Store, product_ids: list[int], raw: str
) -> License | None:
    from connector.licensing.admin import find_license_by_key

    found = find_license_by_key(session, raw, store.id)
    return found if found is not None and found.product_id in product_ids else None


def _of_subscriptions(renewals: ColumnElement[bool]) -> ColumnElement[bool]:
    """Licenses of the subscriptions whose ``renewals`` match: those they renewed, and those
    their renewal orders issued (seats added to a subscription)."""
    return or_(
        License.id.in_(select(LicenseRenewal.license_id).where(renewals)),
        License.order_id.in_(select(LicenseRenewal.order_id).where(renewals)),
    )


def _subscription_seats(
    session: Session, store: Store, order: Order, product_ids: list[int], subscription: str
) -> list[License]:
    """The licenses ``order``, a renewal of ``subscription``, may renew, the one due first
    first (:func:`_due_first`): those the subscription's earlier renewal orders renewed or
    issued (all of them: one per seat); for its first renewal, the same customer's licenses
    of the product from earlier orders that no other subscription renews.

    Only licenses that are not revoked: extending a revoked one (an earlier order cancelled,
    the owner's revocation) would leave the buyer's live key to run out.
    """
    live = (
        License.store_id == store.id,
        License.product_id.in_(product_ids),
        License.status != "revoked",
    )
    seats = session.scalars(
        select(License)
        .where(
            *live,
            _of_subscriptions(
                (LicenseRenewal.subscription_id == subscription)
                & (LicenseRenewal.order_id != order.id)
            ),
        )
        .order_by(License.id)
    ).all()
    if not seats:
        same_customer = same_customer_as(order)
        if same_customer is None:
            return []
        other_subscriptions = LicenseRenewal.subscription_id.is_not(None) & (
            LicenseRenewal.subscription_id != subscription
        )
        seats = session.scalars(
            select(License)
            .join(Order, License.order_id == Order.id)
            .where(
                *live,
                Order.id != order.id,
                same_customer,
                ~_of_subscriptions(other_subscriptions),
            )
            .order_by(License.id)
        ).all()
    paid = order.date_paid or utcnow()
    return sorted(seats, key=lambda license_: _due_first(license_, paid))


def same_customer_as(order: Order) -> ColumnElement[bool] | None:
    """Orders of ``order``'s customer: its shop customer id, else (a guest) its email; None
    when it has neither."""
    if order.customer_id is not None:
        return Order.customer_id == order.customer_id
    if order.email is not None:
        return Order.email == order.email
    return None


def hold_seat_choice(session: Session, order: Order) -> None:
    """Until the transaction ends, hold off the other renewals of ``order``'s customer
    (:func:`same_customer_as`) from choosing the licenses they renew.

    A subscription's first renewal takes the customer's licenses that no other subscription
    renews (:func:`_subscription_seats`): two subscriptions of the customer renewing at once
    (WooCommerce Subscriptions renews those due in one batch) would both read the same
    licenses as free, before either's renewal is written, and take the same one, leaving the
    other key, paid for, to lapse. Taken before any license is read: the second then reads
    the first's renewals. PostgreSQL: a transaction-scoped advisory lock per store and
    customer (locking the licenses themselves, line by line, could deadlock two orders).
    SQLite: already so, its writers take turns.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    customer = order.customer_id if order.customer_id is not None else (order.email or "")
    digest = hashlib.sha256(f"keygate:seats:{order.store_id}:{customer}".encode()).digest()
    session.execute(
        select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], "big", signed=True)))
    )


def _due_first(license_: License, paid: dt.datetime) -> tuple[int, float]:
    """Sort key: which licenses a subscription's renewal, paid at ``paid``, most likely
    renews, its first unit the first: of those live then, the one that runs out first (the
    renewal is due because it runs out); then those that lapsed, the one that lapsed last
    first (a renewal paid late, after failed attempts), so a renewal for one seat never
    takes one that lapsed long ago while another is live (an old purchase of the same
    product); lifetime licenses last (they need no renewal). The subscription's own licenses
    (of its parent order) would be certain, but the renewal order does not name them: only
    the subscription, whose parent order Keygate would have to ask the shop for."""
    if license_.expires_at is None:
        return 2, 0.0
    if license_.expires_at > paid:
        return 0, (license_.expires_at - paid).total_seconds()
    return 1, (paid - license_.expires_at).total_seconds()


def lock_license(session: Session, license_id: int) -> License:
    """The license row, locked until the transaction ends and read again under the lock.

    Every renewal applied or taken back computes the new expiry from the one stored: two
    workers renewing one license at once (two orders, a renewal and a refund) must take
    turns, or one extension is lost (PostgreSQL ``FOR NO KEY UPDATE``, as
    :func:`locked_licenses` takes it; SQLite writers are serialized anyway).
    """
    return lock_row(session, License, license_id, keep_key=True)


def locked_licenses(session: Session, which: ColumnElement[bool]) -> list[License]:
    """The licenses ``which`` selects, locked in one statement in id order until the
    transaction ends, and read again under the lock.

    Every writer that locks more than one license takes them so (ascending ids), before it
    changes any: taken as an order's lines and units come (a unit issued later for line 1
    has a higher id than line 2's), one order's revocation holding L1 and L3 would wait for
    L2 while a renewal holding L2 waits for L3, and PostgreSQL aborts one of them (a
    deadlock; WooCommerce never sends a failed webhook again). In one order, the second
    waits. The owner's change, a seat's activation and the abuse signal's suspension lock
    one license only.

    PostgreSQL ``FOR NO KEY UPDATE``: the owner's and the seat's ``FOR UPDATE`` wait for it,
    but not a row's foreign-key check of the license (a click's or a rate-limit record's):
    one that holds a download link this transaction changes next must not wait for it. SQLite
    writers take turns anyway.
    """
    return list(
        session.scalars(
            select(License)
            .where(which)
            .order_by(License.id)
            .with_for_update(key_share=True)
            .execution_options(populate_existing=True)
        )
    )


def lock_licenses(session: Session, license_ids: Iterable[int]) -> None:
    """Lock the licenses ``license_ids`` (an order's own and those it renews) at once, in id
    order, before any is changed (:func:`locked_licenses`)."""
    ids = sorted(set(license_ids))
    if ids:
        locked_licenses(session, License.id.in_(ids))


def renewed_by_query(order_id: int) -> Select[int]:
    """Ids of the licenses the order's renewals extend now (not taken back)."""
    return (
        select(LicenseRenewal.license_id)
        .where(LicenseRenewal.order_id == order_id, LicenseRenewal.reverted_at.is_(None))
        .distinct()
    )


def own_renewed_query(order: Order) -> Select[int]:
    """Ids of the licenses ``order`` renews that its own customer bought: a renewal naming a
    key (``_keygate_renew_license``) may be paid by anyone who has the key, and paying for
    someone's license must not show them where it is activated nor free its seats."""
    same_customer = same_customer_as(order)
    if same_customer is None:
        return select(License.id).where(false())
    return (
        select(License.id)
        .join(Order, License.order_id == Order.id)
        .where(License.id.in_(renewed_by_query(order.id)), same_customer)
    )


def renewed_by(session: Session, order: Order) -> list[int]:
    """The licenses ``order``'s renewals extend now (not taken back)."""
    return list(session.scalars(renewed_by_query(order.id)))


def counts_from(paid: dt.datetime | None, renewal: LicenseRenewal) -> dt.datetime:
    """When a renewal of a lapsed license (or download window) starts to count: when its
    order was paid, not when Keygate got to apply it (a webhook lost and the order read by
    the reconciliation hours later); never later than Keygate first applied it (a shop
    whose clock runs ahead), which is also the moment for an order with no payment date.

    ``paid``: the renewal order's ``date_paid``.
    """
    return renewal.created_at if paid is None else min(paid, renewal.created_at)


def _later(moment: dt.datetime | None, start: dt.datetime) -> dt.datetime:
    return start if moment is None or moment < start else moment


def _extend(
    session: Session,
    renewal: LicenseRenewal,
    license_: License,
    policy: Policy,
    start: dt.datetime,
) -> None:
    if renewal.applied_seq is None:  # first applied now: where replays of the license start
        renewal.first_previous_expires_at = license_.expires_at
        renewal.first_previous_updates_until = license_.updates_until
    # Last of the license's renewals to count: a refund replays it after the others.
    last_seq = session.scalar(
        select(func.max(LicenseRenewal.applied_seq)).where(LicenseRenewal.license_id == license_.id)
    )
    renewal.applied_seq = (last_seq or 0) + 1
    renewal.previous_expires_at = license_.expires_at
    renewal.previous_updates_until = license_.updates_until
    if policy.duration_days is not None and license_.expires_at is not None:
        license_.expires_at = add_days(_later(license_.expires_at, start), policy.duration_days)
    if policy.update_days is not None and license_.updates_until is not None:
        license_.updates_until = add_days(_later(license_.updates_until, start), policy.update_days)
    elif policy.update_days is None and license_.updates_until is not None:
        license_.updates_until = license_.expires_at  # updates while the license lasts
    renewal.expires_at = license_.expires_at
    renewal.updates_until = license_.updates_until
    renewal.reverted_at = None
    _extend_grants(session, renewal, license_, policy, start)


def _extend_grants(
    session: Session,
    renewal: LicenseRenewal,
    license_: License,
    policy: Policy,
    start: dt.datetime,
    *,
    grant_ids: list[int] | None = None,
) -> None:
    """Move the license's links (only ``grant_ids``, when given) as ``renewal`` moves them:
    by the product's own download window, or to the license's expiry after the renewal;
    recorded per link, so that a refund of the renewal takes it back."""
    extensions = {
        extension.grant_id: extension
        for extension in session.scalars(
            select(GrantExtension).where(GrantExtension.renewal_id == renewal.id)
        )
    }
    grants = select(DownloadGrant).where(
        DownloadGrant.license_id == license_.id, DownloadGrant.expires_at.is_not(None)
    )
    if grant_ids is not None:
        grants = grants.where(DownloadGrant.id.in_(grant_ids))
    for grant in session.scalars(grants):
        previous = grant.expires_at
        assert previous is not None  # noqa: S101 - selected above
        if policy.download_days is not None:
            moved = add_days(_later(previous, start), policy.download_days)
        elif renewal.expires_at is not None:
            moved = max(previous, renewal.expires_at)
        else:
            continue
        extension = extensions.get(grant.id)
        if moved == previous:
            if extension is not None:  # moved when applied before: nothing to take back now
                extension.previous_expires_at = extension.expires_at = previous
            continue
        grant.expires_at = moved
        if extension is None:
            extension = GrantExtension(
                renewal_id=renewal.id, grant_id=grant.id, first_previous_expires_at=previous
            )
            session.add(extension)
        extension.previous_expires_at = previous
        extension.expires_at = moved


class _Step(NamedTuple):
    """One renewal as seen on one timeline (the license's expiry, its update window, a
    grant's expiry)."""

    renewal_id: int
    start: dt.datetime  # when it counts from (counts_from)
    first_before: dt.datetime | None  # the value before it was first applied
    before: dt.datetime | None  # the value before and after it, as last applied
    after: dt.datetime | None


def _plus(moment: dt.datetime, length: dt.timedelta) -> dt.datetime:
    try:
        return min(moment + length, LATEST_EXPIRY)
    except OverflowError:  # past year 9999
        return LATEST_EXPIRY


def _replay(value: dt.datetime, steps: list[_Step]) -> dt.datetime:
    """``value`` after ``steps`` in order, each adding the length it added when applied, from
    the value then or, if that had passed, from when the renewal counts."""
    for step in steps:
        if step.before is None or step.after is None:
            continue
        origin = max(step.before, step.start)
        if step.after <= origin:
            continue  # added nothing (a lifetime license, a product without a duration)
        value = _plus(max(value, step.start), step.after - origin)
    return value


def _taken_back(
    current: dt.datetime | None, reverted: int, history: list[_Step], counted: set[int]
) -> dt.datetime | None:
    """``current`` less what renewal ``reverted`` adds to it given the other renewals still
    counted: the timeline is replayed from its value before any renewal, with and without it.

    ``history``: every renewal of the timeline, in the order they were last applied. The
    value before any renewal is the lowest before a first application: a renewal applied
    again (or applied after one since taken back) has a later value before it.

    Subtracting the difference rather than taking the replay keeps what happened besides
    renewals (the owner's ``extend``). A renewal's own jump is not what it adds: on a lapsed
    license it includes the lapsed time, and taking that back would cancel a later renewal
    still paid for.
    """
    firsts = [s.first_before for s in history if s.first_before is not None and s.after is not None]
    if current is None or not firsts:
        return current
    base = min(firsts)
    steps = [step for step in history if step.renewal_id in counted]
    with_it = _replay(base, steps)
    without = _replay(base, [step for step in steps if step.renewal_id != reverted])
    return current - (with_it - without)


def _revert(session: Session, renewal: LicenseRenewal, license_: License, now: dt.datetime) -> None:
    session.flush()  # read back below, under the license's lock
    rows = session.execute(
        select(LicenseRenewal, Order.date_paid)
        .join(Order, LicenseRenewal.order_id == Order.id)
        .where(LicenseRenewal.license_id == license_.id)
        .order_by(LicenseRenewal.applied_seq, LicenseRenewal.id)
        .execution_options(populate_existing=True)
    ).all()
    starts = {row.id: counts_from(paid, row) for row, paid in rows}
    counted = {row.id for row, _ in rows if row.reverted_at is None} | {renewal.id}
    license_.expires_at = _taken_back(
        license_.expires_at,
        renewal.id,
        [
            _Step(
                r.id, starts[r.id], r.first_previous_expires_at, r.previous_expires_at, r.expires_at
            )
            for r, _ in rows
        ],
        counted,
    )
    license_.updates_until = _taken_back(
        license_.updates_until,
        renewal.id,
        [
            _Step(
                r.id,
                starts[r.id],
                r.first_previous_updates_until,
                r.previous_updates_until,
                r.updates_until,
            )
            for r, _ in rows
        ],
        counted,
    )
    renewal.reverted_at = now
    history: dict[int, list[_Step]] = {}
    for extension in session.scalars(
        select(GrantExtension)
        .join(LicenseRenewal, GrantExtension.renewal_id == LicenseRenewal.id)
        .where(LicenseRenewal.license_id == license_.id)
        .order_by(LicenseRenewal.applied_seq, LicenseRenewal.id)
        .execution_options(populate_existing=True)
    ):
        history.setdefault(extension.grant_id, []).append(
            _Step(
                extension.renewal_id,
                starts[extension.renewal_id],
                extension.first_previous_expires_at,
                extension.previous_expires_at,
                extension.expires_at,
            )
        )
    for grant_id, steps in history.items():
        if renewal.id not in {step.renewal_id for step in steps}:
            continue
        grant = session.execute(
            select(DownloadGrant)
            .where(DownloadGrant.id == grant_id)
            .execution_options(populate_existing=True)
        ).scalar_one()
        grant.expires_at = _taken_back(grant.expires_at, renewal.id, steps, counted)


def extend_new_grants(session: Session, license_: License, grant_ids: list[int]) -> None:
    """Links issued now to a license that renewals extended before (a file the owner added
    since): each renewal still applied moves them, in the order the renewals were applied,
    as it moved the license's other links, and records it (its refund takes it back)."""
    if not grant_ids:
        return
    license_ = lock_license(session, license_.id)  # a renewal applied meanwhile waits, or is seen
    product = session.get(Product, license_.product_id)
    if product is None:  # pragma: no cover - products are never deleted
        return
    policy = Policy.of(product)
    applied = session.execute(
        select(LicenseRenewal, Order.date_paid)
        .join(Order, LicenseRenewal.order_id == Order.id)
        .where(
            LicenseRenewal.license_id == license_.id,
            LicenseRenewal.reverted_at.is_(None),
            LicenseRenewal.applied_seq.is_not(None),
        )
        .order_by(LicenseRenewal.applied_seq, LicenseRenewal.id)
    ).all()
    for renewal, paid in applied:
        start = counts_from(paid, renewal)
        _extend_grants(session, renewal, license_, policy, start, grant_ids=grant_ids)


def converge_renewal(
    session: Session,
    order: Order,
    line: LineItem,
    targets: dict[int, License],
    entitled: int,
    subscription: str | None = None,
) -> tuple[list[int], list[int]]:
    """Extend the license of each paid unit of ``line`` once; take back refunded units.

    Args:
        targets: unit -> the license it renews (:func:`renewal_targets`).
        entitled: the units paid for now; those above it are taken back.
        subscription: the WooCommerce Subscriptions subscription the order renews, kept so
            its later renewals extend the same licenses.

    Returns:
        Ids of the licenses renewed now and of the renewals reverted now.
    """
    # In id order, before any is changed (see lock_licenses).
    locked = {
        license_id: lock_license(session, license_id)
        for license_id in sorted({license_.id for license_ in targets.values()})
    }
    policies: dict[int, Policy] = {}
    now = utcnow()
    renewed: list[int] = []
    for unit in sorted(unit for unit in targets if unit <= entitled):
        license_ = locked[targets[unit].id]
        if license_.product_id not in policies:
            product = session.get(Product, license_.product_id)
            if product is None:  # pragma: no cover - products are never deleted
                continue
            policies[license_.product_id] = Policy.of(product)
        inserted = insert_ignoring_conflicts(
            session,
            LicenseRenewal.__table__,
            {
                "license_id": license_.id,
                "order_id": order.id,
                "line_item_id": line.id,
                "unit": unit,
                "subscription_id": subscription,
                "reverted_at": now,  # "not applied yet"; _extend clears it
                "created_at": now,
            },
            ["line_item_id", "unit"],
        )
        renewal = session.execute(
            select(LicenseRenewal)
            .where(LicenseRenewal.line_item_id == line.id, LicenseRenewal.unit == unit)
            .execution_options(populate_existing=True)
        ).scalar_one()
        if inserted is not None or renewal.reverted_at is not None:
            start = counts_from(order.date_paid, renewal)
            _extend(session, renewal, license_, policies[license_.product_id], start)
            if license_.id not in renewed:
                renewed.append(license_.id)
    reverted = revert_renewals(session, line, above_unit=entitled)
    session.flush()
    return renewed, reverted


def revert_renewals(session: Session, line: LineItem, *, above_unit: int = 0) -> list[int]:
    """Take back the extensions of ``line``'s units above ``above_unit`` (newest first)."""
    now = utcnow()
    reverted: list[int] = []
    for renewal in session.scalars(
        select(LicenseRenewal)
        .where(
            LicenseRenewal.line_item_id == line.id,
            LicenseRenewal.unit > above_unit,
            LicenseRenewal.reverted_at.is_(None),
        )
        .order_by(LicenseRenewal.unit.desc())
    ).all():
        target = lock_license(session, renewal.license_id)
        _revert(session, renewal, target, now)
        reverted.append(renewal.id)
    return reverted
