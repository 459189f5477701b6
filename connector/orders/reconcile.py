"""Reconciliation: re-read orders from the shop and feed them through ``apply_shop_order``.

WooCommerce does not retry a failed webhook and disables one after repeated failures, so a
paid order can be missed. Reconciliation lists the orders modified since the last run (with
an overlap) and applies each exactly as a webhook would, reading ``/orders/<id>/refunds``
for orders with refunds so partial refunds revoke only the refunded units. It also
re-activates webhooks the shop disabled.

Jobs: ``shop.reconcile`` (periodic per store, re-enqueues itself; or once, soon, when a
delivery's body was over the limit) and ``shop.refresh_order`` (one order, enqueued by the
webhook view when a delivery lists refunds).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.audit import record_audit
from connector.db import db, utcnow
from connector.jobs import RetryLater, enqueue, handles, release_dedupe_key
from connector.models import AuditEvent, Job, Order, ShopConnection, Store
from connector.orders.refund_notices import open_refund_notices
from connector.orders.service import apply_shop_order
from connector.redact import keygate_logger
from connector.vault.connection import check_webhooks, connection_of, shop_client_for
from plugin.shop import PayloadError, ShopOrder, parse_utc_datetime
from plugin.woocommerce.rest import ShopError, ShopRejected, ShopUnavailable, WooCommerceClient
from plugin.woocommerce.webhooks import (
    NO_SUCH_ORDER,
    is_checkout_draft,
    parse_order,
    parse_refund,
)

log = keygate_logger(__name__)

RECONCILE_JOB = "shop.reconcile"
REFRESH_JOB = "shop.refresh_order"
# Re-read a little before the newest change the last run read: a change saved in the shop
# while that run read the list can carry an earlier date than the newest one listed.
OVERLAP = dt.timedelta(minutes=10)
FIRST_LOOKBACK = dt.timedelta(days=7)


@dataclass
class ReconcileResult:
    since: dt.datetime
    seen: int = 0
    applied: int = 0
    stale: int = 0
    issued_licenses: int = 0
    revoked_licenses: int = 0
    unreadable: list[str] = field(default_factory=list)
    webhooks_repaired: list[str] = field(default_factory=list)


def read_shop_order(client: WooCommerceClient, raw: dict[str, Any]) -> ShopOrder:
    """Parse a REST order; when it lists refunds, read their line quantities too."""
    shop_order = parse_order(raw)
    if shop_order.refunds:
        refunds = tuple(parse_refund(r) for r in client.list_refunds(shop_order.id))
        shop_order = dataclasses.replace(shop_order, refunds=refunds)
    return shop_order


def default_since(session: Session, store: Store) -> dt.datetime:
    connection = connection_of(session, store)
    now = utcnow()
    if connection.reconciled_until is None:
        return now - FIRST_LOOKBACK
    # A watermark in the future (set before it was capped at Keygate's clock) reads on from now.
    return min(connection.reconciled_until, now) - OVERLAP


def _shop_date(raw: dict[str, Any]) -> dt.datetime | None:
    """The order's ``date_modified_gmt``: the shop's clock, which ``modified_after`` uses."""
    value = raw.get("date_modified_gmt")
    if not isinstance(value, str):
        return None
    try:
        return parse_utc_datetime(value)
    except ValueError:
        return None


class _Walks:
    """How far the listings of a run (trashed orders, then the rest) are known to have read,
    in the shop's clock (``date_modified_gmt``, which ``modified_after`` compares with).

    A listing read to its end read every change the shop saved before its last request,
    so at least up to the shop's clock when the listing began. That clock is known from the
    dates listed only: an order listed at a moment was changed by then, and the shop's clock
    runs as Keygate's does, so each date listed says how far the shop's clock was, at the
    least, at any moment of the run. A listing cut off (a timeout, a 503) read every change
    up to the last one it applied (oldest first); one not begun read nothing.

    ``reconciled_until`` moves to the least of what both read. The newest date of both
    would pass over a change made, after the first listing ended, to an order it had read,
    once the second ran longer than the overlap.
    """

    COUNT = 2

    def __init__(self, started: dt.datetime) -> None:
        self.started = started
        self.ahead = 0
        # The shop's clock, at the least, less Keygate's monotonic clock: their difference.
        self._offset: dt.datetime | None = None
        self._finished: list[tuple[float, dt.datetime | None]] = []  # (began, newest)
        self._began: float | None = None
        self._newest: dt.datetime | None = None

    def begin(self) -> None:
        self._began, self._newest = time.monotonic(), None

    def listed(self, modified: dt.datetime | None) -> dt.datetime | None:
        """Note an order's date as listed; returns it, never past the run's start."""
        if modified is None:
            return None
        if modified > self.started:
            self.ahead += 1
            modified = self.started
        offset = modified - dt.timedelta(seconds=time.monotonic())
        if self._offset is None or offset > self._offset:
            self._offset = offset
        return modified

    def applied(self, modified: dt.datetime | None) -> None:
        if modified is not None and (self._newest is None or modified > self._newest):
            self._newest = modified

    def end(self) -> None:
        if self._began is not None:
            self._finished.append((self._began, self._newest))
        self._began = None

    def reached(self) -> dt.datetime | None:
        """How far every listing read (None: one read nothing known to have been read)."""
        reaches: list[dt.datetime | None] = []
        for began, newest in self._finished:
            clock = None
            if self._offset is not None:
                # Whole seconds, as the shop's dates: the next run reads the overlap again.
                clock = _ceil_second(self._offset + dt.timedelta(seconds=began))
            reaches.append(max((c for c in (newest, clock) if c is not None), default=None))
        if self._began is not None:  # cut off: read up to the last change it applied
            reaches.append(self._newest)
        if len(reaches) < self.COUNT or None in reaches:
            return None
        return min(r for r in reaches if r is not None)


def _ceil_second(moment: dt.datetime) -> dt.datetime:
    whole = moment.replace(microsecond=0)
    return whole + dt.timedelta(seconds=1) if whole < moment else whole


def _apply_listed(
    session: Session,
    store: Store,
    client: WooCommerceClient,
    raw: dict[str, Any],
    result: ReconcileResult,
) -> None:
    """Apply one listed order (its refunds read first) and commit it."""
    if is_checkout_draft(raw):
        return  # a checkout in progress: no order yet, and nothing of it is kept
    try:
        shop_order = read_shop_order(client, raw)
    except PayloadError as exc:
        result.unreadable.append(str(raw.get("id")))
        log.warning("store %s: order %s unreadable: %s", store.public_id, raw.get("id"), exc)
        return
    applied = apply_shop_order(session, store, shop_order, reread=True)
    session.commit()
    if applied.outcome == "stale":
        result.stale += 1
        return
    result.applied += 1
    result.issued_licenses += len(applied.issued_licenses)
    result.revoked_licenses += len(applied.revoked_licenses)


def _move_watermark(
    session: Session,
    store: Store,
    covered: dt.datetime | None,
    since: dt.datetime,
    reached: dt.datetime | None,
    *,
    started: dt.datetime,
    complete: bool,
) -> ShopConnection:
    """Move ``reconciled_until`` to what a run read, if it read on without a gap from what
    was covered (the first run, complete with nothing listed: from where it began)."""
    connection = connection_of(session, store)
    if covered is None or since <= covered:
        first = since if covered is None and complete else None
        candidates = [c for c in (connection.reconciled_until, reached, first) if c is not None]
        if candidates:
            connection.reconciled_until = min(max(candidates), started)
    return connection


def reconcile_store(
    session: Session,
    store: Store,
    client: WooCommerceClient,
    *,
    since: dt.datetime | None = None,
    check_hooks: bool = True,
) -> ReconcileResult:
    """Apply every order the shop changed since ``since`` (default: the last run).

    Commits: the caller's work first, then each order in a short transaction of its own.
    The shop is never waited on inside a transaction (on SQLite one holds the database's
    write lock: every webhook and license call would wait on the shop).

    ``reconciled_until`` moves to how far both listings (trashed orders, the rest) are
    known to have read (see :class:`_Walks`), in the shop's clock (``date_modified_gmt``,
    which ``modified_after`` is compared with: Keygate's own could be ahead of it), never
    past Keygate's clock at the run's start (one order dated in the future, by a shop clock
    that jumped once or an import, would otherwise hide every later change until that
    date), and only when the run started at or before it (a ``--since`` later than it
    leaves the gap before unread). A run the shop cuts off moves it too, as far as the
    orders it applied (oldest change first) reach.

    Raises:
        ShopError: the shop could not be read; the orders applied so far stay applied.
    """
    started = utcnow()
    covered = connection_of(session, store).reconciled_until
    since = since or default_since(session, store)
    result = ReconcileResult(since=since)
    session.commit()
    if check_hooks:
        result.webhooks_repaired = check_webhooks(session, store, client)
        session.commit()
    walks = _Walks(started)
    try:
        # Trashed orders are listed only when asked for: a missed order.deleted is caught
        # too. That listing (short) first: a long listing of the rest cut off by the shop
        # still moves reconciled_until (see _Walks).
        for status in ("trash", None):
            walks.begin()
            for raw in client.orders_modified_after(since, status=status):
                result.seen += 1
                modified = walks.listed(_shop_date(raw))
                _apply_listed(session, store, client, raw, result)
                walks.applied(modified)
            walks.end()
    except ShopError:
        # What was applied stays applied, and what was read in full need not be read again:
        # a shop that keeps cutting a long run off still moves forward.
        _move_watermark(
            session, store, covered, since, walks.reached(), started=started, complete=False
        )
        session.commit()
        raise
    if walks.ahead:
        log.warning(
            "store %s: %d order(s) listed with a date_modified_gmt ahead of Keygate's clock;"
            " reconciled_until stops at %s (check the shop's clock)",
            store.public_id,
            walks.ahead,
            started.isoformat(timespec="seconds"),
        )
    connection = _move_watermark(
        session, store, covered, since, walks.reached(), started=started, complete=True
    )
    connection.last_error = None
    session.flush()
    if result.issued_licenses or result.revoked_licenses or result.unreadable:
        record_audit(
            session,
            store_id=store.id,
            actor="system",
            action="shop.reconciled",
            subject=f"store:{store.public_id}",
            detail={
                "since": since.isoformat(),
                "seen": result.seen,
                "issued": result.issued_licenses,
                "revoked": result.revoked_licenses,
                "unreadable": result.unreadable,
            },
        )
    return result


def refresh_order(
    session: Session, store: Store, client: WooCommerceClient, shop_order_id: str
) -> str:
    """Re-read one order (and its refunds) and apply it. Returns the outcome.

    An order the shop says it no longer has (deleted for good, not trashed) is applied as
    the deletion it is; its order.deleted delivery may have been lost. Only WooCommerce's own
    "no such order" counts: any other 404 (a REST API blocked or broken while webhooks still
    arrive) says nothing about the order.

    Commits the caller's work before asking the shop, so no transaction waits on it (on
    SQLite one holds the database's write lock); the caller commits the order's.
    """
    session.commit()
    try:
        raw = client.get_order(shop_order_id)
    except ShopRejected as exc:
        if exc.code != NO_SUCH_ORDER:
            raise
        return apply_shop_order(
            session, store, parse_order({"id": shop_order_id}, deleted=True)
        ).outcome
    return apply_shop_order(session, store, read_shop_order(client, raw), reread=True).outcome


def enqueue_refresh(
    session: Session, store: Store, shop_order_id: str, reason: str, *, refunds: bool = True
) -> None:
    """Ask for a REST re-read of an order: its delivery lists refunds not read yet
    (``refunds``: a store without a REST key tells the owner they are not applied), or may
    not be the order as it is now (:attr:`ApplyResult.unconfirmed`).

    ``reason`` makes each question asked once while a read of it is queued (the read, when
    it runs, frees it: see :func:`refresh_order_job`): for refunds
    (:attr:`ApplyResult.unread_refunds`) it names both the refunds listed and those last
    read, so even a refund set that comes back to one read before (a refund deleted) is
    asked about.
    """
    enqueue(
        session,
        REFRESH_JOB,
        {
            "store_id": store.id,
            "shop_order_id": shop_order_id,
            "refunds": refunds,
            # The refunds listed (shop ids): what the owner is told of if none can be read.
            "listed": reason.split("|", 1)[0] if refunds else "",
        },
        dedupe_key=f"{REFRESH_JOB}:{store.id}:{shop_order_id}:{_digest(reason)}",
    )


def reread_unapplied_refunds(session: Session, store: Store) -> None:
    """Queue a read of each of the store's orders whose refunds Keygate told the owner it
    could not apply (an open ``order.refund_not_applied``: no REST key, or the key refused),
    once the store has a key: the read applies them and ends the notice. Reconciliation
    would not: it reads the orders changed since its last run (a first run, the last
    week's), and such an order may not change again."""
    notices = session.execute(
        select(AuditEvent.id, AuditEvent.subject, AuditEvent.detail)
        .where(AuditEvent.store_id == store.id, open_refund_notices())
        .order_by(AuditEvent.id)
    ).all()
    newest = {subject: (notice_id, detail) for notice_id, subject, detail in notices if subject}
    for subject, (notice_id, detail) in newest.items():
        listed = str(detail.get("refunds", "")) if isinstance(detail, dict) else ""
        # One read queued per notice, however often the key is saved meanwhile.
        enqueue_refresh(
            session, store, subject.removeprefix("order:"), f"{listed}|notice:{notice_id}"
        )


def schedule_next(session: Session, store: Store, kind: str, interval: int) -> None:
    """Enqueue the next run of a periodic store job (one per time slot, however often asked)."""
    slot = int(utcnow().timestamp() // max(1, interval)) + 1
    run_after = dt.datetime.fromtimestamp(slot * interval, dt.UTC)
    enqueue(
        session,
        kind,
        {"store_id": store.id, "periodic": True},
        dedupe_key=f"{kind}:{store.id}:{slot}",
        run_after=run_after,
    )


# A delivery refused unread (its body over KEYGATE_MAX_BODY_BYTES) queues a reconciliation
# at most once in this many seconds a store: anyone can post such a body to the URL.
SOON_EVERY = 60


def enqueue_reconcile_soon(session: Session, store: Store) -> None:
    """Queue one reconciliation of ``store`` to run now, or at the start of the next minute
    when this minute's is queued already (it may have read the shop before the order at
    hand was saved). Each minute has one, however often asked: a flood of deliveries costs
    at most one reconciliation a minute, and each delivery is followed by one that starts
    after it."""
    slot = int(utcnow().timestamp() // SOON_EVERY)
    for at in (slot, slot + 1):
        key = f"{RECONCILE_JOB}:{store.id}:soon:{at}"
        if session.scalar(select(Job.id).where(Job.dedupe_key == key)) is not None:
            continue
        run_after = None if at == slot else dt.datetime.fromtimestamp(at * SOON_EVERY, dt.UTC)
        enqueue(session, RECONCILE_JOB, {"store_id": store.id}, dedupe_key=key, run_after=run_after)
        return


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:16]


def store_and_client(
    session: Session, payload: dict[str, Any]
) -> tuple[Store, WooCommerceClient | None] | None:
    """The store a shop job names and its REST client (None when it has no WooCommerce key)."""
    store = session.get(Store, payload["store_id"])
    if store is None:
        return None
    return store, shop_client_for(session, store)


@handles(RECONCILE_JOB)
def reconcile_job(payload: dict[str, Any]) -> None:
    """Reconcile one store; a periodic run schedules the next even when the shop is down."""
    from connector import get_settings

    session = db.session
    found = store_and_client(session, payload)
    if found is None:
        return
    store, client = found
    if client is None:
        return  # disconnected: the chain of periodic runs ends here
    try:
        reconcile_store(session, store, client)
    except ShopError as exc:
        session.rollback()
        reloaded = session.get(Store, payload["store_id"])
        if reloaded is None:  # pragma: no cover - deleted meanwhile
            return
        store = reloaded
        connection_of(session, store).last_error = str(exc)[:500]
        log.warning("store %s: reconciliation failed: %s", store.public_id, exc)
        if not payload.get("periodic"):
            raise RetryLater(str(exc)) from None
    if payload.get("periodic"):
        schedule_next(session, store, RECONCILE_JOB, get_settings().reconcile_interval_seconds)


@handles(REFRESH_JOB)
def refresh_order_job(payload: dict[str, Any]) -> None:
    """Re-read an order and its refunds over REST and apply them (partial refunds, an order
    that may have been restored)."""
    session = db.session
    found = store_and_client(session, payload)
    if found is None:
        return
    store, client = found
    if client is None:
        if payload.get("refunds", True):
            _refund_left_unapplied(session, store, payload, NO_KEY)
        return  # asked once per question, as ever: the owner is told once
    # What this read answers is the order as it is from now on: a delivery that asks
    # again later (a refund listed again after a delivery undid it) gets a read of its own.
    release_dedupe_key(session, payload)
    try:
        refresh_order(session, store, client, str(payload["shop_order_id"]))
    except ShopUnavailable as exc:
        raise RetryLater(str(exc)) from None
    except ShopRejected as exc:
        # Asking again gets the same answer (a REST API blocked, a key revoked): the owner
        # must know the refund is not applied.
        answer = f"HTTP {exc.status} {exc.code}".rstrip()
        log.warning("store %s: the shop refused to read an order (%s)", store.public_id, answer)
        if payload.get("refunds", True):
            reason = f"the shop refused to read the order ({answer}): {BY_HAND}"
            _refund_left_unapplied(session, store, payload, reason)


BY_HAND = "revoke the refunded licenses by hand"
NO_KEY = (
    "the store has no WooCommerce REST key, so which items the refund covers is unknown: "
    f"connect the shop (its key re-reads refunds) or {BY_HAND}"
)


TOLD_AGAIN_AFTER = dt.timedelta(days=30)  # the dashboard's news: older entries are not shown


def _refund_left_unapplied(
    session: Session, store: Store, payload: dict[str, Any], reason: str
) -> None:
    """A delivery lists refunds but not which items they cover, and without a WooCommerce
    REST key Keygate cannot ask: tell the owner (audit log), unless the order is revoked
    whole anyway (refunded, cancelled, failed, deleted). An order put on hold after payment
    (a payment dispute), or moved on to a plugin's status, keeps its keys: a refund of one of
    its seats would take that seat back, as from a paid one."""
    shop_order_id = str(payload["shop_order_id"])
    detail = {"reason": reason, "refunds": payload.get("listed", "")}
    order = session.execute(
        select(Order).where(Order.store_id == store.id, Order.shop_order_id == shop_order_id)
    ).scalar_one_or_none()
    if order is None or order.is_revoking:
        return
    # Each later delivery asks again (a note added, a status changed): while the shop keeps
    # refusing, the owner was told of these refunds once, not once per delivery.
    told = session.scalars(
        select(AuditEvent.detail).where(
            AuditEvent.store_id == store.id,
            AuditEvent.action == "order.refund_not_applied",
            AuditEvent.subject == f"order:{shop_order_id}",
            AuditEvent.created_at > utcnow() - TOLD_AGAIN_AFTER,
        )
    ).all()
    if detail in told:
        return
    log.warning("store %s: refunds of order %s not applied", store.public_id, shop_order_id)
    record_audit(
        session,
        store_id=store.id,
        actor="system",
        action="order.refund_not_applied",
        subject=f"order:{shop_order_id}",
        detail=detail,
    )


KEEP_SCHEDULES_JOB = "shop.keep_schedules"


@handles(KEEP_SCHEDULES_JOB)
def keep_schedules(_payload: dict[str, Any]) -> None:
    """Make sure every connected store has its next reconcile and product sync queued.

    Each periodic run queues the next one; this hourly job restarts a chain that ended (a
    run that died after its last attempt). ``schedule_next`` is one job per time slot, so a
    chain that is alive is not doubled.
    """
    from connector import get_settings
    from connector.models import ShopConnection
    from connector.orders.product_sync import SYNC_JOB

    settings = get_settings()
    session = db.session
    stores = session.scalars(
        select(Store)
        .join(ShopConnection, ShopConnection.store_id == Store.id)
        .where(ShopConnection.status == "connected")
    )
    for store in stores:
        schedule_next(session, store, RECONCILE_JOB, settings.reconcile_interval_seconds)
        schedule_next(session, store, SYNC_JOB, settings.product_sync_interval_seconds)
