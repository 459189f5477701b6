"""Mail verbs and their jobs."""

from __future__ import annotations

from typing import Any

from flask import render_template
from sqlalchemy import select

from connector.db import db, utcnow
from connector.integrations.mail import ConsoleMailer, Mailer, OutgoingMail
from connector.jobs import JOB_ID, handles
from connector.models import Mail, Order, Store
from connector.orders.summary import order_entitlements


def mailer_for(store: Store | None) -> Mailer:
    """The backend for a store's mail."""
    from connector import get_settings

    return ConsoleMailer(echo=get_settings().mail_echo)


def send_stored_mail(mail_row: Mail, mailer: Mailer, to_name: str | None) -> None:
    """Send a stored mail once; a second call after success does nothing."""
    if mail_row.sent_at is not None:
        return
    message_id = mailer.send(
        OutgoingMail(
            to_email=mail_row.to_email,
            to_name=to_name,
            subject=mail_row.subject,
            text=mail_row.body_text,
            html=mail_row.body_html,
        )
    )
    mail_row.backend = mailer.name
    mail_row.provider_message_id = message_id
    mail_row.sent_at = utcnow()


def compose_order_mail(order: Order, store: Store) -> tuple[str, str, str]:
    """Subject, text and HTML of the mail that gives a buyer their keys and links."""
    entitlements = order_entitlements(db.session, order)
    context: dict[str, Any] = {"order": order, "store": store, **entitlements}
    subject = f"Your licenses and downloads for order {order.number or order.shop_order_id}"
    text = render_template("emails/order_issued.txt", **context)
    html = render_template("emails/order_issued.html", **context)
    return subject, text, html


@handles("mail.order_issued")
def mail_order_issued(payload: dict[str, Any]) -> None:
    """Mail the buyer every key and link of their order; a rerun of the job sends nothing new."""
    session = db.session
    order = session.get(Order, payload["order_id"])
    if order is None or order.email is None:
        return
    store = session.get(Store, order.store_id)
    if store is None:
        return
    job_id = payload.get(JOB_ID)
    mail_row = session.execute(select(Mail).where(Mail.job_id == job_id)).scalar_one_or_none()
    if mail_row is None:
        subject, text, html = compose_order_mail(order, store)
        mail_row = Mail(
            store_id=store.id,
            order_id=order.id,
            job_id=job_id,
            kind="order_issued",
            to_email=order.email,
            subject=subject,
            body_text=text,
            body_html=html,
            backend="pending",
        )
        session.add(mail_row)
        session.flush()
    send_stored_mail(mail_row, mailer_for(store), order.name)
