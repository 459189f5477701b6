"""The dashboard's "Needs attention": what the owner must act on, store by store."""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import re

import pytest
from flask import Flask
from sqlalchemy import select

from connector.audit import record_audit
from connector.db import db, utcnow
from connector.jobs import retry_dead, run_pending
from connector.mail.service import ORDER_MAIL_JOB
from connector.models import (
    DownloadGrant,
    Job,
    License,
    LicenseFlag,
    Order,
    ShopConnection,
    WatermarkCopy,
)
from connector.stores import create_store
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_admin_pages import signed_in_owner, store_admin


def dashboard(client: object) -> str:
    page = client.get("/admin/")  # type: ignore[attr-defined]
    assert page.status_code == 200
    text: str = page.get_data(as_text=True)
    return text


def test_all_is_well(app: Flask, shop: WebhookSender) -> None:
    shop.configure(501)
    assert shop.deliver(wc_order(9100, "processing", [line_item(501)])).status_code == 200
    page = dashboard(signed_in_owner(app))
    assert "Nothing needs your attention." in page and "Needs attention" not in page


def test_each_trouble_is_named_with_its_store(app: Flask, shop: WebhookSender) -> None:
    shop.configure(501, files=[{"object_key": "a.pdf", "filename": "a.pdf", "watermark": "pdf"}])
    assert shop.deliver(wc_order(9101, "processing", [line_item(501)])).status_code == 200
    assert shop.deliver(wc_order(9103, "processing", [])).status_code == 200
    assert shop.deliver(wc_order(9102, "processing"), secret="not-the-secret").status_code == 401
    store_id = shop.store.store.id
    with app.app_context():
        session = db.session
        order_id = session.scalars(select(Order.id).where(Order.shop_order_id == "9101")).one()
        license_id = session.scalars(select(License.id)).one()
        grant_id = session.scalars(select(DownloadGrant.id)).one()
        session.add_all(
            [
                ShopConnection(
                    store_id=store_id, status="connected", last_error="<b>503 Maintenance</b>"
                ),
                Job(kind=ORDER_MAIL_JOB, payload={"order_id": order_id}, attempts=2),
                LicenseFlag(license_id=license_id, reason="binding_changes", binding_changes=9),
                WatermarkCopy(grant_id=grant_id, status="failed", kind="pdf", attempts=3),
            ]
        )
        for subject in ("order:9101", "order:9103"):
            record_audit(
                session,
                store_id=store_id,
                actor="system",
                action="order.refund_not_applied",
                subject=subject,
            )
        session.commit()
    page = dashboard(signed_in_owner(app))
    assert "Needs attention" in page
    for text in (
        "The shop could not be read: &lt;b&gt;503 Maintenance&lt;/b&gt;",
        "latest webhook delivery was refused",
        "1 order mail to buyers not delivered yet.",
        "1 license flagged for too many binding changes.",
        "1 buyer copy could not be stamped: its link gives the original or is refused",
        "Refunds of 2 orders Keygate could not apply",
    ):
        assert text in page, text
    assert "<b>503" not in page
    assert "(s)" not in page and "(ies)" not in page


def test_a_store_admin_sees_their_stores_notices_only(app: Flask, shop: WebhookSender) -> None:
    with app.app_context():
        other = create_store(db.session, "Other shop", "https://other.example").store
        db.session.add(ShopConnection(store_id=other.id, status="connected", last_error="down"))
        db.session.commit()
        other_id = other.id
    mine = dashboard(store_admin(app, shop.store.store.id))
    assert "could not be read" not in mine and "Nothing needs your attention." in mine
    assert "The shop could not be read: down" in dashboard(store_admin(app, other_id, "bo"))


def test_the_audit_log_shows_one_action_and_each_entrys_store(
    app: Flask, shop: WebhookSender
) -> None:
    """The refunds notice leads to the audit log narrowed to them; paging keeps the action.
    The dashboard counts the orders that stand: one refunded whole took every key back."""
    store_id = shop.store.store.id
    for n in (0, 1, 2):
        assert shop.deliver(wc_order(9120 + n, "processing", [])).status_code == 200
    assert shop.deliver(wc_order(9123, "refunded", [])).status_code == 200
    with app.app_context():
        for n in (0, 1, 2, 2, 3):  # two entries of one order (two refunds) count it once
            record_audit(
                db.session,
                store_id=store_id,
                actor="system",
                action="order.refund_not_applied",
                subject=f"order:{9120 + n}",
            )
        record_audit(db.session, store_id=store_id, actor="t", action="license.revoke")
        db.session.commit()
    client = signed_in_owner(app)
    page = client.get("/admin/audit?action=order.refund_not_applied").get_data(as_text=True)
    assert page.count('<td data-label="What">order.refund_not_applied</td>') == 5
    assert '<td data-label="What">license.revoke</td>' not in page
    assert '<td data-label="Store">Test Shop</td>' in page
    assert '<option value="license.revoke">' in page
    assert "/admin/audit?action=order.refund_not_applied" in dashboard(client)
    assert "Refunds of 3 orders Keygate could not apply in the last 30 days." in dashboard(client)
    nothing = client.get("/admin/audit?action=no.such").get_data(as_text=True)
    assert "No entry of this action." in nothing


def test_mail_printed_on_the_console_for_want_of_brevo_is_news(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With KEYGATE_MAIL_BACKEND=auto a store without Brevo credentials has its buyers'
    mails printed on the console: buyers receive nothing, and the owner is told where to
    add the credentials. Not when the operator chose the console; not once Brevo is set."""
    shop.configure(501)
    assert shop.deliver(wc_order(9110, "processing", [line_item(501)])).status_code == 200
    run_pending(app)
    admin = signed_in_owner(app)
    page = dashboard(admin)
    assert "1 mail to buyers in the last 30 days was printed on the server" in page
    assert f'href="/admin/stores/{shop.store.store.id}/credentials"' in page
    settings = app.extensions["keygate.settings"]
    monkeypatch.setitem(
        app.extensions, "keygate.settings", dataclasses.replace(settings, mail_backend="console")
    )
    assert "Nothing needs your attention." in dashboard(admin)
    monkeypatch.setitem(app.extensions, "keygate.settings", settings)
    brevo = {"api_key": "xkeysib-test-key", "sender_email": "shop@example.org", "sender_name": "S"}
    assert shop.admin("PUT", "/credentials/brevo", brevo).status_code == 200
    assert "Nothing needs your attention." in dashboard(admin)


def test_orders_issued_with_no_address_are_news_until_the_shop_gives_one(
    app: Flask, shop: WebhookSender
) -> None:
    """A buyer whose order had no address (or not one mailbox) got nothing and cannot say
    so: the owner is told, with the order's page; once the shop gives an address (the
    keys are mailed then) or the order is refunded, the notice goes."""
    shop.configure(501)
    items = [line_item(501)]
    assert shop.deliver(wc_order(9110, "processing", items, email="")).status_code == 200
    owner = signed_in_owner(app)
    with app.app_context():
        order_id = db.session.scalars(select(Order.id)).one()
    page = dashboard(owner)
    assert "Order 9110 was issued in the last 30 days with no buyer address" in page
    assert f"/admin/orders/{order_id}" in page
    later = [line_item(501, line_id=2)]
    shop.deliver(wc_order(9111, "processing", later, email="not a mailbox"))
    assert "2 orders were issued in the last 30 days with no buyer address" in dashboard(owner)
    shop.deliver(wc_order(9111, "refunded", later, modified=5, email="not a mailbox"))
    shop.deliver(wc_order(9110, "processing", items, modified=5))
    run_pending(app)
    assert "no buyer address" not in dashboard(owner)


def test_jobs_given_up_on_whose_work_a_buyer_misses_are_news_with_the_outbox_narrowed_to_them(
    app: Flask, shop: WebhookSender
) -> None:
    """An order's follow-up or its buyer's shop note given up on after its last attempt is
    a notice, on the dashboard and the store page, leading to the outbox showing those jobs
    only; jobs with a notice of their own (a mail) or that run again by themselves (the
    purge, a reconciliation) are not counted, nor another store's. A retried job is no news."""
    shop.configure(501)
    assert shop.deliver(wc_order(9190, "processing", [line_item(501)])).status_code == 200
    store_id = shop.store.store.id
    with app.app_context():
        session = db.session
        other = create_store(session, "Other shop", "https://other.example").store
        order_id = session.scalars(select(Order.id)).one()
        dead = {
            "status": "dead",
            "attempts": 8,
            "last_error": "ShopUnavailable: HTTP 503",
            "finished_at": utcnow() - dt.timedelta(days=29),
        }
        long_dead = {**dead, "finished_at": utcnow() - dt.timedelta(days=31)}
        jobs = [
            Job(kind="order.issued", payload={"order_id": order_id}, **dead),
            Job(kind="shop.order_note", payload={"order_id": order_id, "license_ids": [1]}, **dead),
            Job(kind="shop.order_note", payload={"order_id": order_id, "license_ids": [2]}, **dead),
            Job(kind="shop.order_note", payload={"order_id": order_id, "license_ids": [3]}),
            Job(kind=ORDER_MAIL_JOB, payload={"order_id": order_id}, **dead),
            Job(kind="shop.reconcile", payload={"store_id": store_id}, **dead),
            Job(kind="privacy.purge", payload={}, **dead),
            Job(kind="shop.order_note", payload={"store_id": other.id}, **dead),
            # Given up on over 30 days ago: in the outbox, no longer news.
            Job(
                kind="shop.order_note",
                payload={"order_id": order_id, "license_ids": [4]},
                **long_dead,
            ),
        ]
        session.add_all(jobs)
        session.commit()
        ids = [job.id for job in jobs]
        other_id = other.id
    owner = signed_in_owner(app)
    said = (
        "Keygate gave up on 3 jobs after their last attempt: 1 issued order's follow-up (its"
        " mail, shop note, stamped copies, Brevo contact), 2 notes with the buyers' keys and"
        " links not written to the shop orders. The outbox says why: retry them there once"
        " that is mended."
    )
    page = html.unescape(dashboard(owner))
    assert said in page
    assert "1 order mail to buyers not delivered yet." in page  # its own notice, as ever
    link = re.search(r'<a href="(/admin/outbox\?[^"]+)" aria-label="Look: Keygate gave up', page)
    assert link is not None, page
    outbox = owner.get(link.group(1)).get_data(as_text=True)
    shown = {int(n) for n in re.findall(r"<tr><td>(\d+)</td>", outbox)}
    assert shown == {*ids[:3], ids[8]}  # the outbox keeps the older one, no longer news
    assert "Only the jobs of Test Shop of kinds" in outbox
    store_page = html.unescape(owner.get(f"/admin/stores/{store_id}").get_data(as_text=True))
    assert said in store_page and html.unescape(link.group(1)) in store_page
    # The other store's is its own notice, for its admin; not this store's admin's.
    assert "gave up on 1 job after its last attempt: 1 note with the buyer's" in html.unescape(
        dashboard(store_admin(app, other_id, "bo"))
    )
    mine = store_admin(app, store_id)
    assert said in html.unescape(dashboard(mine))
    # A store admin's outbox stays their store's, whatever store the address names.
    theirs = mine.get(f"/admin/outbox?status=dead&store={other_id}").get_data(as_text=True)
    assert f"<tr><td>{ids[7]}</td>" not in theirs and f"<tr><td>{ids[0]}</td>" in theirs
    with app.app_context():
        for job_id in ids[:3]:
            job = db.session.get(Job, job_id)
            assert job is not None
            retry_dead(db.session, job, store_id=store_id, actor="owner")
        db.session.commit()
    assert "gave up on 3" not in dashboard(owner)  # the other store's stays
    assert "Keygate gave up" not in owner.get(f"/admin/stores/{store_id}").get_data(as_text=True)


def test_another_stores_troubles_are_not_a_store_admins_notices(
    app: Flask, shop: WebhookSender
) -> None:
    """Each trouble of one store (a refused delivery, an undelivered mail, an order issued
    with no address, a flagged license, a copy that failed to stamp, an unapplied refund, a
    job given up on) is a notice of that store alone: the other store's admin is told
    nothing needs attention."""
    with app.app_context():
        other = create_store(db.session, "Other shop", "https://other.example")
        db.session.commit()
    theirs = WebhookSender(app.test_client(), other)
    theirs.configure(501, files=[{"object_key": "a.pdf", "filename": "a.pdf", "watermark": "pdf"}])
    assert theirs.deliver(wc_order(9130, "processing", [line_item(501)])).status_code == 200
    assert (
        theirs.deliver(wc_order(9131, "processing", [line_item(501)], email="")).status_code == 200
    )
    assert theirs.deliver(wc_order(9132, "processing"), secret="not-theirs").status_code == 401
    with app.app_context():
        session = db.session
        order = session.scalars(select(Order).where(Order.shop_order_id == "9130")).one()
        license_id = session.scalars(select(License.id).where(License.order_id == order.id)).one()
        grant_id = session.scalars(
            select(DownloadGrant.id).where(DownloadGrant.order_id == order.id)
        ).one()
        session.add_all(
            [
                Job(kind=ORDER_MAIL_JOB, payload={"order_id": order.id}, attempts=2),
                Job(
                    kind="shop.order_note",
                    payload={"order_id": order.id},
                    status="dead",
                    attempts=8,
                    finished_at=utcnow(),
                ),
                LicenseFlag(license_id=license_id, reason="binding_changes", binding_changes=9),
                WatermarkCopy(grant_id=grant_id, status="failed", kind="pdf", attempts=3),
            ]
        )
        record_audit(
            session,
            store_id=other.store.id,
            actor="system",
            action="order.refund_not_applied",
            subject="order:9130",
        )
        session.commit()
    page = dashboard(store_admin(app, other.store.id, "bo"))
    for text in (
        "latest webhook delivery was refused",
        "1 order mail to buyers not delivered yet.",
        "Order 9131 was issued in the last 30 days with no buyer address",
        "1 license flagged for too many binding changes.",
        "1 buyer copy could not be stamped",
        "Refunds of 1 order Keygate could not apply",
        "Keygate gave up on 1 job",
    ):
        assert text in page, text
    mine = dashboard(store_admin(app, shop.store.store.id))
    assert "Nothing needs your attention." in mine and "Needs attention" not in mine
