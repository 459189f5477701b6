"""What needs the owner's attention, store by store, for the top of the dashboard.

Each notice is something a buyer cannot tell the owner and that does not mend itself: the
shop cannot be read, refuses the webhooks' secret, sends bodies over the size limit, or
delivers them to another address than Keygate's, buyers' mails are not getting out (or
cannot: orders issued with no address), keys flagged for too many binding changes, copies
that failed to stamp (their links are refused), buyers' clicks the storage failed (a bucket
that refused Keygate's credentials or did not answer) until one is served again, refunds
Keygate could not apply, and jobs given up on after their last attempt whose work a buyer or
the shop is missing (:data:`DEAD_NEEDS_OWNER`). Read only;
each notice links where the owner can act. Admins who see every store are also told of
sign-ins locked in the last hour (``admin.login_locked``, not a store's: no store is named).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from flask import url_for
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from connector.db import shown_utc, utcnow
from connector.downloads.outage import REFUSED, open_failure
from connector.downloads.service import MAX_WATERMARK_ATTEMPTS
from connector.jobs import store_jobs
from connector.mail.contacts import PUSH_JOB, REMOVE_JOB
from connector.mail.service import mail_route, undelivered_mails
from connector.models import (
    AuditEvent,
    Credential,
    DownloadGrant,
    Job,
    License,
    LicenseFlag,
    Mail,
    Order,
    ShopConnection,
    Store,
    WatermarkCopy,
    WebhookDelivery,
)
from connector.models.records import BAD_SIGNATURE, TOO_LARGE
from connector.orders.jobs import ISSUED_JOB
from connector.orders.reconcile import REFRESH_JOB
from connector.orders.refund_notices import open_refund_notices
from connector.orders.writeback import NOTE_JOB
from connector.vault.connection import registration_trouble, webhook_url, webhooks_elsewhere
from connector.vault.service import has_credentials
from plugin.shop import REVOKING_STATUSES

# Refunds Keygate could not apply, and mails printed on the console, are news for this long
# (the order pages keep them after).
NEWS = dt.timedelta(days=30)


# Jobs whose death leaves a buyer or the shop without something, as the owner reads them
# (one, several). Not here: the buyer's mail (its own notice, "not delivered yet"), the
# webhooks' registration (its own notice), the stamping of copies (a click stamps its copy
# on the spot; copies that cannot be are their own notice), and work that runs again by
# itself: the periodic reconciliation and product sync (restarted hourly by
# shop.keep_schedules, their failures the shop's "could not be read"), the daily purge and
# sweep (a copy whose deletion died is swept the next day), a deleted store's files (given
# up on and audited on the last attempt, no store left to show it).
DEAD_NEEDS_OWNER: dict[str, tuple[str, str]] = {
    ISSUED_JOB: (
        "issued order's follow-up (its mail, shop note, stamped copies, Brevo contact)",
        "issued orders' follow-ups (their mails, shop notes, stamped copies, Brevo contacts)",
    ),
    "order.revoked": ("revoked order's follow-up", "revoked orders' follow-ups"),
    NOTE_JOB: (
        "note with the buyer's keys and links not written to the shop order",
        "notes with the buyers' keys and links not written to the shop orders",
    ),
    REFRESH_JOB: (
        "order not read again from the shop (its refunds may not be applied)",
        "orders not read again from the shop (their refunds may not be applied)",
    ),
    PUSH_JOB: (
        "buyer not added to the store's Brevo list",
        "buyers not added to the store's Brevo list",
    ),
    REMOVE_JOB: (
        "address not taken out of the store's Brevo list (an erasure, a withdrawn consent)",
        "addresses not taken out of the store's Brevo list (erasures, withdrawn consents)",
    ),
}


# A sign-in lockout is news while it lasts (the account budget's window).
LOCKOUT_NEWS = dt.timedelta(hours=1)


@dataclass(frozen=True)
class Notice:
    store: Store | None  # None: the admin's own, not a store's
    text: str
    link: str


def latest_delivery(session: Session, store: Store) -> WebhookDelivery | None:
    """The store's latest webhook delivery (the store page shows it; refused for its
    signature, it is a notice)."""
    return session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.store_id == store.id)
        .order_by(WebhookDelivery.id.desc())
        .limit(1)
    ).first()


def counted(number: int, singular: str, plural: str | None = None) -> str:
    """Say "1 refund", "3 refunds", "1 buyer copy", "2 buyer copies", not "refund(s)"."""
    return f"{number} {singular if number == 1 else plural or singular + 's'}"


def _count(session: Session, query: Select[Any]) -> int:
    return int(session.scalar(query) or 0)


def notices(session: Session, stores: list[Store]) -> list[Notice]:
    """The notices of ``stores``, store by store (none when all is well)."""
    from connector import get_settings

    # Mail printed on the console is news only when Keygate chose it for want of Brevo
    # credentials (``auto``), not when the operator set ``console`` (development).
    console_by_default = get_settings().mail_backend == "auto"
    found: list[Notice] = []
    for store in stores:
        page = url_for("admin_views.store_detail", store_id=store.id)
        connection = session.scalar(
            select(ShopConnection).where(ShopConnection.store_id == store.id)
        )
        if connection is not None and connection.status == "connected" and connection.last_error:
            text = f"The shop could not be read: {connection.last_error}"
            found.append(Notice(store, text, page))
        if registration_trouble(session, store) is not None:
            text = "Keygate could not register its webhooks in the shop."
            found.append(Notice(store, text, page))
        elsewhere = webhooks_elsewhere(session, store)
        if elsewhere is not None:
            text = (
                f"The shop's webhooks deliver to {elsewhere}, while Keygate is at"
                f" {webhook_url(store)}: connect WooCommerce again from the store page, then"
                " delete the old webhooks in WooCommerce."
            )
            found.append(Notice(store, text, page))
        latest = latest_delivery(session, store)
        if latest is not None and latest.outcome == BAD_SIGNATURE:
            found.append(
                Notice(
                    store,
                    "The shop's latest webhook delivery was refused: its secret is not the"
                    " store's.",
                    page,
                )
            )
        if latest is not None and latest.outcome == TOO_LARGE:
            found.append(
                Notice(
                    store,
                    "The shop's latest webhook delivery was refused unread: its body is over"
                    " KEYGATE_MAX_BODY_BYTES. Raise that setting"
                    + (
                        "; the shop's REST key reads the order meanwhile."
                        if has_credentials(session, store, "woocommerce")
                        else ": the store has no REST key to read the order instead."
                    ),
                    page,
                )
            )
        mails = _count(session, undelivered_mails(select(func.count(Job.id)), store.id))
        if mails:
            found.append(
                Notice(
                    store,
                    f"{counted(mails, 'order mail')} to buyers not delivered yet.",
                    url_for("admin_views.orders"),
                )
            )
        console = _count(
            session,
            select(func.count(Mail.id)).where(
                Mail.store_id == store.id,
                Mail.backend == "console",
                Mail.created_at > utcnow() - NEWS,
            ),
        )
        if console and console_by_default and mail_route(store) == "console":
            found.append(
                Notice(
                    store,
                    f"{counted(console, 'mail')} to buyers in the last 30 days"
                    f" {'was' if console == 1 else 'were'} printed on the server's console,"
                    " not sent: the store has no Brevo credentials.",
                    url_for("admin_views.store_credentials", store_id=store.id),
                )
            )
        unmailed = _count(session, _issued_with_no_address(store.id, func.count(Order.id)))
        if unmailed:
            newest = session.scalars(
                _issued_with_no_address(store.id, Order).order_by(Order.id.desc()).limit(1)
            ).one()
            which = (
                f"Order {newest.number or newest.shop_order_id} was"
                if unmailed == 1
                else f"{counted(unmailed, 'order')} were"
            )
            found.append(
                Notice(
                    store,
                    f"{which} issued in the last 30 days with no buyer address (none given,"
                    " or not one mailbox): nothing was mailed. Once the shop gives the order"
                    " an address, Keygate mails the keys and links there.",
                    url_for("admin_views.order_detail", order_id=newest.id)
                    if unmailed == 1
                    else url_for("admin_views.orders"),
                )
            )
        flagged = _count(
            session,
            select(func.count(LicenseFlag.id))
            .join(License, LicenseFlag.license_id == License.id)
            .where(License.store_id == store.id),
        )
        if flagged:
            found.append(
                Notice(
                    store,
                    f"{counted(flagged, 'license')} flagged for too many binding changes.",
                    url_for("admin_licenses.licenses"),
                )
            )
        failed = _count(
            session,
            select(func.count(WatermarkCopy.id))
            .join(DownloadGrant, WatermarkCopy.grant_id == DownloadGrant.id)
            .where(
                DownloadGrant.store_id == store.id,
                DownloadGrant.revoked_at.is_(None),
                WatermarkCopy.status == "failed",
                WatermarkCopy.attempts >= MAX_WATERMARK_ATTEMPTS,
            ),
        )
        if failed:
            found.append(
                Notice(
                    store,
                    f"{counted(failed, 'buyer copy', 'buyer copies')} could not be stamped: "
                    + (
                        "its link gives the original or is refused"
                        if failed == 1
                        else "those links give the original or are refused"
                    )
                    + ", as the product says, until the file is replaced (the order pages"
                    " say why).",
                    url_for("admin_views.orders"),
                )
            )
        failed_downloads = storage_failure(session, store)
        if failed_downloads is not None:
            found.append(
                Notice(
                    store,
                    failed_downloads,
                    url_for("admin_views.store_credentials", store_id=store.id),
                )
            )
        dead = dead_jobs(session, store)
        if dead is not None:
            found.append(Notice(store, dead, dead_jobs_link(store)))
        refunds = _count(
            session,
            select(func.count(AuditEvent.subject.distinct())).where(
                AuditEvent.store_id == store.id,
                open_refund_notices(),
                AuditEvent.created_at > utcnow() - NEWS,
            ),
        )
        if refunds:
            found.append(
                Notice(
                    store,
                    f"Refunds of {counted(refunds, 'order')} Keygate could not apply in the"
                    " last 30 days.",
                    url_for("admin_views.audit", action="order.refund_not_applied"),
                )
            )
    return found


def dead_jobs(session: Session, store: Store) -> str | None:
    """What the dashboard and the store page say of the store's jobs of
    :data:`DEAD_NEEDS_OWNER` given up on (dead) in the last :data:`NEWS` and not retried
    since; None when none is. Older ones stay in the outbox's dead filter: one that cannot
    be mended (a Brevo list deleted since) is not news for ever."""
    counts = dict(
        session.execute(
            store_jobs(store.id)
            .with_only_columns(Job.kind, func.count())
            .where(
                Job.status == "dead",
                Job.kind.in_(DEAD_NEEDS_OWNER),
                Job.finished_at > utcnow() - NEWS,
            )
            .group_by(Job.kind)
        ).all()
    )
    if not counts:
        return None
    total = sum(counts.values())
    which = ", ".join(
        counted(counts[kind], *DEAD_NEEDS_OWNER[kind])
        for kind in DEAD_NEEDS_OWNER
        if kind in counts
    )
    return (
        f"Keygate gave up on {counted(total, 'job')} after {'its' if total == 1 else 'their'}"
        f" last attempt: {which}. The outbox says why: retry {'it' if total == 1 else 'them'}"
        " there once that is mended."
    )


def dead_jobs_link(store: Store) -> str:
    """The outbox, showing the store's jobs that :func:`dead_jobs` counts."""
    return url_for("admin_views.outbox", status="dead", store=store.id, kind=list(DEAD_NEEDS_OWNER))


def storage_failure(session: Session, store: Store) -> str | None:
    """What the dashboard and the store page say of buyers' clicks the storage failed in
    the last 24 h with none served since (:func:`connector.downloads.outage.open_failure`)."""
    failure = open_failure(session, store.id)
    if failure is None:
        return None
    return f"Buyers' downloads failed at {shown_utc(failure.created_at)}: " + (
        _storage_failure_words(session, store, failure.detail)
    )


def _storage_failure_words(session: Session, store: Store, detail: dict[str, Any]) -> str:
    """Why a click failed (a ``downloads.storage_failed`` entry's detail), and what to check:
    the store's own R2 credentials, or the instance's bucket (its operator's settings)."""
    own = (
        session.scalar(
            select(Credential.id).where(Credential.store_id == store.id, Credential.kind == "r2")
        )
        is not None
    )
    check = (
        "check the store's R2 credentials"
        if own
        else "the instance's bucket: check its KEYGATE_R2_* settings"
    )
    status = detail.get("status")
    if detail.get("kind") == REFUSED:
        if status == 404:
            return f"the bucket was not found (HTTP 404; {check})."
        shown = f"HTTP {status}; " if status else ""
        return f"the bucket refused Keygate's credentials ({shown}{check})."
    if status:
        return f"the bucket answered with an error (HTTP {status}; {check})."
    return f"the bucket did not answer ({check})."


def _issued_with_no_address(store_id: int, column: Any) -> Select[Any]:
    """``column`` of the store's orders of the last 30 days that issued keys or links their
    buyer could not be mailed: no address (an erased order's is a pseudonym, not none), and
    still paid for."""
    issued = select(License.id).where(License.order_id == Order.id).exists() | (
        select(DownloadGrant.id).where(DownloadGrant.order_id == Order.id).exists()
    )
    return select(column).where(
        Order.store_id == store_id,
        Order.email.is_(None),
        Order.deleted.is_(False),
        Order.status.not_in(REVOKING_STATUSES),
        Order.created_at > utcnow() - NEWS,
        issued,
    )


def sign_in_lockouts(session: Session) -> list[Notice]:
    """A notice for each account whose sign-in was locked in the last hour, by name."""
    locked = session.execute(
        select(AuditEvent.subject, func.max(AuditEvent.id))
        .where(
            AuditEvent.action == "admin.login_locked",
            AuditEvent.created_at > utcnow() - LOCKOUT_NEWS,
        )
        .group_by(AuditEvent.subject)
        .order_by(AuditEvent.subject)
    ).all()
    link = url_for("admin_views.audit", action="admin.login_locked")
    found: list[Notice] = []
    for subject, event_id in locked:
        event = session.get(AuditEvent, event_id)
        detail = event.detail if event is not None else {}
        where = " from one of their browsers" if detail.get("scope") == "device" else ""
        text = (
            f"Sign-in for {subject}{where} locked after {detail.get('failed')} failed attempts"
            " in the last hour."
        )
        found.append(Notice(None, text, link))
    return found
