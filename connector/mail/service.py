"""Mail verbs and their jobs."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, TypeVarTuple

from flask import render_template
from sqlalchemy import Select, or_, select, update
from sqlalchemy.orm import Session

from connector.audit import record_audit
from connector.db import db, iso, lock_row, utcnow
from connector.integrations.brevo import (
    BrevoConfig,
    BrevoMailer,
    BrevoRejected,
    key_refusals,
    refused_before,
)
from connector.integrations.mail import (
    ConsoleMailer,
    Mailer,
    OutgoingMail,
    header_text,
    mail_text,
)
from connector.jobs import JOB_ID, RetryLater, enqueue, handles
from connector.mail import contacts
from connector.models import Job, Mail, Order, Store
from connector.orders.summary import order_entitlements
from connector.stores import hold_live_store
from plugin.shop import WAITING_STATUSES

Ts = TypeVarTuple("Ts")


def brevo_config_for(store: Store) -> BrevoConfig | None:
    """The store's Brevo settings from the vault, or None when it has none."""
    return contacts.brevo_config_for(db.session, store)


def mailer_for(store: Store) -> Mailer:
    """The backend for a store's mail (see Settings.mail_backend).

    Raises:
        RetryLater: the backend is ``brevo`` and the store has no Brevo credentials yet.
    """
    from connector import get_settings

    settings = get_settings()
    if settings.mail_backend != "console":
        config = brevo_config_for(store)
        if config is not None:
            return BrevoMailer(config, settings.brevo_api_host)
        if settings.mail_backend == "brevo":
            raise RetryLater(f"{contacts.NO_CREDENTIALS} yet")
    return ConsoleMailer(echo=settings.mail_echo)


def mail_route(store: Store) -> str:
    """Where the store's buyer mail goes, for its owner: ``brevo``; ``console`` (printed on
    the server's output: buyers receive nothing); ``waiting`` (held in the outbox until
    the store has Brevo credentials)."""
    from connector import get_settings

    backend = get_settings().mail_backend
    if backend != "console" and brevo_config_for(store) is not None:
        return "brevo"
    return "waiting" if backend == "brevo" else "console"


def compose_order_mail(
    order: Order, store: Store, entitlements: dict[str, Any]
) -> tuple[str, str, str]:
    """Subject, text and HTML of the mail that gives a buyer their keys and links
    (``entitlements``: the order's :func:`order_entitlements`)."""
    from connector import get_settings

    # The portal link is made now (``entitlements``), and works this long from now.
    portal_until = utcnow() + dt.timedelta(days=get_settings().portal_link_days)
    listed = mailed(entitlements)
    context: dict[str, Any] = {
        "order": order,
        "store": store,
        "portal_until": portal_until,
        **entitlements,
        **listed,
    }
    number = order.number or order.shop_order_id
    if not (listed["keys"] or listed["links"] or entitlements["renewed"]):
        # A fresh link to the page of an order whose keys and links no longer work: the
        # mail holds that link and why nothing else is listed, not "your licenses".
        subject = f"The page of your order {number}"
    elif entitlements["renewed"] and not (entitlements["licenses"] or entitlements["downloads"]):
        subject = f"Your license renewal for order {number}"
    else:
        subject = f"Your licenses and downloads for order {number}"
    # Names come from the buyer, the shop and its owner: what they hold must not forge a
    # header nor turn a line around (see header_text and mail_text).
    text = mail_text(render_template("emails/order_issued.txt", **context))
    html = mail_text(render_template("emails/order_issued.html", **context))
    return header_text(subject), text, html


def mailed(entitlements: dict[str, Any]) -> dict[str, Any]:
    """What an order's mail lists: ``keys`` and ``links`` that still work (``links`` with
    those of the licenses it renews for their own buyer); and ``left_out``, what it leaves
    out because it no longer does (keys revoked, refunded or suspended, links ended) said in
    a sentence, so that a buyer reading a later or resent mail does not take a missing key
    or link for a mistake (None when nothing is)."""
    keys = [lic for lic in entitlements["licenses"] if lic.status == "active"]
    links = [d for d in entitlements["downloads"] if d.ended is None]
    counts = (
        (len(entitlements["licenses"]) - len(keys), "license key"),
        (len(entitlements["downloads"]) - len(links), "download link"),
    )
    # The renewed licenses' links that work follow the order's own: a renewal extended them.
    links += [d for d in entitlements["renewed_downloads"] if d.ended is None]
    parts = [f"{count} {noun}{'' if count == 1 else 's'}" for count, noun in counts if count]
    sentence = None
    if parts:
        verb = "is" if sum(count for count, _ in counts) == 1 else "are"
        sentence = (
            f"{' and '.join(parts)} of this order can no longer be used (refunded, revoked,"
            f" suspended, expired or used up) and {verb} not listed here; the page linked"
            " below shows the order as it is now."
        )
    return {"keys": keys, "links": links, "left_out": sentence}


ORDER_MAIL_JOB = "mail.order_issued"
# In a mail job's payload: when Brevo last refused an attempt of it (see remember_refusal).
REFUSED_AT = "brevo_refused_at"


NO_ADDRESS = "This order has no address to mail: none was given, or the customer was erased."
NOT_PAID_YET = "Nothing was issued for this order yet: its payment is not confirmed."
NOTHING_USABLE = (
    "Nothing of this order can be used any more (refunded, cancelled, revoked or expired):"
    " a mail would hold no key and no link."
)


def mail_order_again(
    session: Session, order: Order, *, actor: str, action: str, portal_link_only: bool = False
) -> str | None:
    """Queue the order's mail (its current keys and links, a fresh portal link) again.

    Returns None when queued, else why nothing was (:data:`NO_ADDRESS`, or
    :data:`NOTHING_USABLE` unless ``portal_link_only``: the buyer asked for a fresh link to
    their page, which says what happened).
    """
    if order.mail_address is None:
        return NO_ADDRESS
    if not portal_link_only and not order_entitlements(session, order)["usable"]:
        return NOT_PAID_YET if order.status in WAITING_STATUSES else NOTHING_USABLE
    payload: dict[str, Any] = {"order_id": order.id, "resend": True}
    if portal_link_only:
        payload["portal_link_only"] = True
    enqueue(session, ORDER_MAIL_JOB, payload)
    record_audit(
        session,
        store_id=order.store_id,
        actor=actor,
        action=action,
        subject=f"order:{order.shop_order_id}",
    )
    return None


@handles(ORDER_MAIL_JOB)
def mail_order_issued(payload: dict[str, Any]) -> None:
    """Mail the buyer every key and link of their order; a rerun of the job after the mail
    went sends nothing new.

    Each attempt writes the mail afresh from the order as it is then: a refund, a revocation
    or a new address that lands while an outage holds the mail up is in what is sent (a key
    taken back is never mailed). An order refunded, cancelled or deleted by then gets no
    mail at all (``mail.not_sent`` in the audit log), unless the buyer asked for a fresh link
    to their page, which says what happened.
    """
    session = db.session
    found = session.get(Order, payload["order_id"])
    if found is None:
        return
    # Under the order's lock, which an erasure takes too: one that lands from now on sees
    # (and deletes) this mail, one that landed before is seen here.
    hold_live_store(session, found.store_id)  # before the order's lock, as a deletion takes them
    order = lock_row(session, Order, found.id)
    if order.mail_address is None:
        return  # nothing to mail to (no address, or the customer was erased)
    store = session.get(Store, order.store_id)
    if store is None:
        return
    job_id = payload.get(JOB_ID)
    mail_row = session.execute(select(Mail).where(Mail.job_id == job_id)).scalar_one_or_none()
    if mail_row is not None and mail_row.sent_at is not None:
        return
    if order.is_revoking and not payload.get("portal_link_only"):
        if mail_row is not None:
            session.delete(mail_row)
        record_audit(
            session,
            store_id=store.id,
            actor="keygate",
            action="mail.not_sent",
            subject=f"order:{order.shop_order_id}",
            detail={"order_status": "deleted" if order.deleted else order.status},
        )
        return
    subject, text, html = compose_order_mail(order, store, order_entitlements(session, order))
    if mail_row is None:
        mail_row = Mail(
            store_id=store.id,
            order_id=order.id,
            job_id=job_id,
            kind="order_issued",
            backend="pending",
        )
        session.add(mail_row)
    mail_row.to_email = order.mail_address
    mail_row.subject, mail_row.body_text, mail_row.body_html = subject, text, html
    outgoing = OutgoingMail(
        to_email=order.mail_address,
        to_name=header_text(order.name) if order.name else None,
        subject=subject,
        text=text,
        html=html,
        idempotency_key=idempotency_key(store, job_id),
        # What the last attempt of this job ended with (kept while the job is retried), and
        # when Brevo last refused one (kept in its payload, the owner's retry too).
        refused_before=refused_before(
            session.scalar(select(Job.last_error).where(Job.id == job_id)),
            dt.datetime.fromisoformat(payload[REFUSED_AT]) if REFUSED_AT in payload else None,
            utcnow(),
        ),
    )
    # The mail is kept whatever comes next (one held up by an outage, or waiting for the
    # store's Brevo credentials, shows in the outbox), and the transaction ends before the
    # provider is called: on SQLite it would hold the one write lock, stalling every
    # webhook and click, while Brevo answers. The mailer reads the vault, so comes first.
    try:
        mailer = mailer_for(store)
    finally:
        session.commit()
    try:
        message_id = mailer.send(outgoing)
    except BrevoRejected as exc:
        if exc.status:  # Brevo's answer, not a request that could not be made
            remember_refusal(session, job_id)
        raise
    # A statement, not the row: an erasure may have deleted the mail while it was sent.
    session.execute(
        update(Mail)
        .where(Mail.id == mail_row.id)
        .values(backend=mailer.name, provider_message_id=message_id, sent_at=utcnow())
    )


def remember_refusal(session: Session, job_id: Any) -> None:
    """Brevo refused an attempt of this mail job, and may keep its idempotency key though it
    sent nothing: when is noted in the job's payload, which every later attempt and the
    owner's retry keep (its last error is the last attempt's only), so that a "key used"
    answer within the key's lifetime is not taken for the mail sent (see refused_before).
    Committed here: the attempt fails, and its transaction is rolled back."""
    stored = session.scalar(select(Job.payload).where(Job.id == job_id))
    if isinstance(stored, dict):
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(payload={**stored, REFUSED_AT: iso(utcnow())})
        )
        session.commit()


def send_held_mail(session: Session, store: Store) -> list[int]:
    """The store's Brevo credentials were just saved: its buyers' mails held for want of them
    (``KEYGATE_MAIL_BACKEND=brevo``) or refused for the key saved before (401, 403: revoked
    in Brevo, say), and removals from its Brevo list, go now, not at their next backoff,
    and those that gave up waiting (dead after their last attempt: the credentials came a
    day later) too. The store page promised they were held until then. Returns the jobs'
    ids."""
    from connector.jobs import run_held_now, store_jobs

    # Dead past the jobs' retention, the daily purge kept its error's type only: one held for
    # the credentials a month and more (taken up again, any other waits again), unless the
    # buyer has had a later mail of the order (the owner resent it).
    sent_later = select(Mail.id).where(
        Mail.order_id == Job.payload["order_id"].as_integer(),
        Mail.sent_at.is_not(None),
        Mail.job_id > Job.id,
    )
    cut_short = (
        (Job.status == "dead") & (Job.last_error == RetryLater.__name__) & ~sent_later.exists()
    )
    waited_for = [f"{RetryLater.__name__}: {contacts.NO_CREDENTIALS}", *key_refusals()]
    held = store_jobs(store.id).where(
        Job.kind.in_((ORDER_MAIL_JOB, contacts.REMOVE_JOB)),
        Job.attempts > 0,
        or_(*(Job.last_error.startswith(start, autoescape=True) for start in waited_for))
        | cut_short,
    )
    return run_held_now(session, held, "brevo credentials saved")


def idempotency_key(store: Store, job_id: Any) -> str:
    """The same for every attempt of one mail job, so a provider that got the mail but whose
    answer was lost does not send it again. A UUID, as Brevo asks."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"keygate:{store.public_id}:mail-job:{job_id}"))


def undelivered_mails(query: Select[*Ts], store_id: int) -> Select[*Ts]:
    """``query`` (of jobs, with orders) narrowed to the store's order mails not delivered
    yet: retrying through an outage, or dead after their last attempt until the buyer has
    had a later mail (the owner resent it)."""
    sent_later = select(Mail.id).where(
        Mail.order_id == Order.id, Mail.sent_at.is_not(None), Mail.job_id > Job.id
    )
    return query.join(Order, Order.id == Job.payload["order_id"].as_integer()).where(
        Job.kind == ORDER_MAIL_JOB,
        Job.status != "done",
        Job.attempts > 0,
        Order.store_id == store_id,
        (Job.status != "dead") | ~sent_later.exists(),
    )
