"""Retention of what Keygate keeps about buyers of orders that issued nothing, and of the
audit log; the audit entries in a customer's export."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select, update

from connector import create_app
from connector.audit import record_audit
from connector.config import ConfigError
from connector.db import db, transaction, utcnow
from connector.jobs import run_pending
from connector.models import AuditEvent, Job, Mail, Order, WebhookDelivery
from connector.orders.reconcile import RECONCILE_JOB, schedule_next
from connector.privacy.service import purge_expired_records
from connector.stores import create_store
from tests.conftest import app_overrides
from tests.factories import WebhookSender, line_item, wc_order

EMAIL = "jurgen@example.org"
RETENTIONS = ("webhook", "jobs", "mail", "security", "download_log", "unlicensed_order", "audit")


def buyer_of(app: Flask, shop_order_id: str) -> tuple[str | None, str | None, str | None]:
    with app.app_context():
        order = db.session.scalars(select(Order).where(Order.shop_order_id == shop_order_id)).one()
        assert order.erased_at is None
        return order.email, order.name, order.company


def purge_in(app: Flask, days: int) -> dict[str, int]:
    with app.app_context(), transaction() as session:
        return purge_expired_records(session, now=utcnow() + dt.timedelta(days=days))


def mailed_to(app: Flask) -> list[str]:
    with app.app_context():
        return [mail.to_email for mail in db.session.scalars(select(Mail).order_by(Mail.id))]


def test_an_unlicensed_order_keeps_its_buyer_for_the_retention_period(
    app: Flask, shop: WebhookSender
) -> None:
    """90 days by default after the order last changed: longer than product sync re-reads
    unlicensed sales (30 days) and a bank transfer waits on hold; a licensed order keeps its
    buyer (accounting, enforcement)."""
    shop.configure(501)
    shop.deliver(wc_order(9701, "on-hold", [line_item(501)], email=EMAIL))
    shop.deliver(wc_order(9702, "completed", [line_item(501)], email=EMAIL))
    run_pending(app)
    assert purge_in(app, 89)["unlicensed_order_buyers"] == 0
    assert buyer_of(app, "9701") == (EMAIL, "Jürgen Ørsted 山田", "Bücher GmbH")
    assert purge_in(app, 91)["unlicensed_order_buyers"] == 1
    assert buyer_of(app, "9701") == (None, None, None)
    assert buyer_of(app, "9702") == (EMAIL, "Jürgen Ørsted 山田", "Bücher GmbH")
    assert purge_in(app, 91)["unlicensed_order_buyers"] == 0  # nothing left to clear


def test_an_order_paid_after_its_buyer_was_forgotten_is_issued_and_mailed(
    app: Flask, shop: WebhookSender
) -> None:
    """A bank transfer paid after 100 days: the delivery brings the buyer back from the
    shop, the keys are issued and mailed to them."""
    shop.configure(501)
    shop.deliver(wc_order(9703, "on-hold", [line_item(501)], email=EMAIL))
    purge_in(app, 100)
    assert buyer_of(app, "9703") == (None, None, None)

    shop.deliver(wc_order(9703, "processing", [line_item(501)], email=EMAIL, modified=5))
    run_pending(app)
    assert len(shop.order(9703)["licenses"]) == 1
    assert buyer_of(app, "9703") == (EMAIL, "Jürgen Ørsted 山田", "Bücher GmbH")
    assert mailed_to(app) == [EMAIL]


def test_a_sale_licensed_after_its_buyer_was_forgotten_is_issued_and_mailed(
    app: Flask, shop: WebhookSender
) -> None:
    """A product configured months after it was sold: the order's next delivery licenses
    it, to the buyer the shop names again."""
    shop.deliver(wc_order(9704, "completed", [line_item(777)], email=EMAIL))
    purge_in(app, 100)
    assert buyer_of(app, "9704") == (None, None, None)

    shop.configure(777)
    shop.deliver(wc_order(9704, "completed", [line_item(777)], email=EMAIL, modified=5))
    run_pending(app)
    assert len(shop.order(9704)["licenses"]) == 1
    assert buyer_of(app, "9704")[0] == EMAIL
    assert mailed_to(app) == [EMAIL]


def test_an_order_whose_buyer_was_forgotten_is_nobodys_not_an_erased_customers(
    app: Flask, shop: WebhookSender
) -> None:
    """The order names no customer any more: their export lists their licensed orders only
    and does not call them erased; a buyer of nothing else is unknown, not "erased already"."""
    shop.configure(501)
    shop.deliver(wc_order(9705, "failed", [line_item(501)], email=EMAIL))
    shop.deliver(wc_order(9706, "completed", [line_item(501)], email=EMAIL))
    shop.deliver(wc_order(9707, "cancelled", [line_item(501)], email="other@example.org"))
    purge_in(app, 100)

    exported = shop.admin("GET", f"/customers/{EMAIL}/export").get_json()
    assert [order["order"] for order in exported["orders"]] == ["9706"]
    assert exported["erased"] is False
    unknown = shop.admin("GET", "/customers/other@example.org/export")
    assert unknown.status_code == 404
    assert "keeps no data" in unknown.get_json()["detail"]


def test_the_audit_purge_keeps_a_refund_the_order_page_still_warns_about(
    app: Flask, shop: WebhookSender
) -> None:
    """The order page says a refund's keys were not taken back for as long as the order
    stands (paid, or put on hold after payment: it keeps its keys): that entry outlives the
    audit retention; once the order is refunded whole (or deleted) it goes."""
    shop.configure(501)
    for shop_order_id in (9708, 9709, 9710, 9711):
        shop.deliver(wc_order(shop_order_id, "completed", [line_item(501)]))
    store_id = shop.store.store.id
    with app.app_context(), transaction() as session:
        for shop_order_id in ("9708", "9709", "9710", "9711"):
            record_audit(
                session,
                store_id=store_id,
                actor="system",
                action="order.refund_not_applied",
                subject=f"order:{shop_order_id}",
                detail={"reason": "no REST key"},
            )
    shop.deliver(wc_order(9709, "refunded", [line_item(501)], modified=5))
    shop.deliver(wc_order(9710, "on-hold", [line_item(501)], modified=5))
    shop.deliver({"id": 9711}, "order.deleted")
    with app.app_context(), transaction() as session:
        session.execute(update(AuditEvent).values(created_at=utcnow() - dt.timedelta(days=731)))
    with app.app_context(), transaction() as session:
        removed = purge_expired_records(session)
    with app.app_context():
        left = db.session.execute(select(AuditEvent.action, AuditEvent.subject)).all()
    assert sorted(tuple(row) for row in left) == [
        ("order.refund_not_applied", "order:9708"),
        ("order.refund_not_applied", "order:9710"),
    ]
    assert removed["audit_events"] >= 4


def test_the_audit_purge_lets_a_refund_notice_a_read_answered_go_and_its_answer_after(
    app: Flask, shop: WebhookSender
) -> None:
    """A notice a later read of the order's refunds answered warns nobody any more: it goes
    at the end of the audit retention; the read's entry is kept while the notice is (purged
    first, it would open the notice again), and goes at the next purge."""
    shop.configure(501)
    shop.deliver(wc_order(9712, "completed", [line_item(501)]))
    store_id = shop.store.store.id
    with app.app_context(), transaction() as session:
        for action in ("order.refund_not_applied", "order.refunds_read"):
            record_audit(
                session, store_id=store_id, actor="system", action=action, subject="order:9712"
            )
            session.flush()
        session.execute(update(AuditEvent).values(created_at=utcnow() - dt.timedelta(days=731)))
    left = []
    for _ in range(2):
        with app.app_context(), transaction() as session:
            purge_expired_records(session)
        with app.app_context():
            left.append(db.session.execute(select(AuditEvent.action, AuditEvent.subject)).all())
    assert [tuple(row) for row in left[0]] == [("order.refunds_read", "order:9712")]
    assert left[1] == []


def test_the_export_lists_audit_entries_of_the_customers_store_only(
    app: Flask, shop: WebhookSender
) -> None:
    """Another store's order of the same number is another customer's."""
    shop.configure(501)
    shop.deliver(wc_order(9710, "completed", [line_item(501)], email=EMAIL))
    with app.app_context():
        other = create_store(db.session, "Other shop", "https://other.example").store
        record_audit(
            db.session, store_id=other.id, actor="shop", action="other.store", subject="order:9710"
        )
        db.session.commit()
    audit = shop.admin("GET", f"/customers/{EMAIL}/export").get_json()["audit"]
    assert [entry["action"] for entry in audit] == ["order.fulfilled"]
    assert audit[0]["subject"] == "order:9710" and audit[0]["actor"] == "shop"


def test_an_erased_customers_export_lists_their_erasure(app: Flask, shop: WebhookSender) -> None:
    shop.configure(501)
    shop.deliver(wc_order(9711, "completed", [line_item(501)], email=EMAIL))
    assert shop.admin("DELETE", f"/customers/{EMAIL}").status_code == 200
    audit = shop.admin("GET", f"/customers/{EMAIL}/export").get_json()["audit"]
    assert [entry["action"] for entry in audit] == ["order.fulfilled", "customer.erased"]
    assert EMAIL not in str(audit)


def test_the_export_names_no_admin_of_the_store(app: Flask, shop: WebhookSender) -> None:
    """An admin's action on the customer's order is exported as an admin's, without the
    name they sign in with (half of their credentials)."""
    shop.configure(501)
    shop.deliver(wc_order(9712, "completed", [line_item(501)], email=EMAIL))
    with app.app_context():
        record_audit(
            db.session,
            store_id=shop.store.store.id,
            actor="admin:owner-jane",
            action="license.suspend",
            subject="order:9712",
        )
        db.session.commit()
    audit = shop.admin("GET", f"/customers/{EMAIL}/export").get_json()["audit"]
    assert [(entry["actor"], entry["action"]) for entry in audit] == [
        ("shop", "order.fulfilled"),
        ("admin", "license.suspend"),
    ]
    assert "owner-jane" not in str(audit)


def test_retention_and_intervals_past_what_a_date_can_hold_are_refused_at_boot(
    app: Flask, tmp_path: Path, database_url: str
) -> None:
    """A retention of a million days (meant as "keep for ever") has no cutoff date: the
    daily purge would fail every day and purge nothing again, mails and click records
    included; a reconcile interval of 10**12 seconds has no next run. Boot refuses both,
    naming the setting and its ceiling; at the ceiling the purge and the schedule work, on
    either database."""
    for name, value in (
        ("retention_mail_days", 1_000_000),
        ("retention_download_log_days", 740_000),
        ("reconcile_interval_seconds", 10**12),
    ):
        with pytest.raises(ConfigError, match=f"KEYGATE_{name.upper()} must be at most"):
            create_app(app_overrides(tmp_path / name, database_url, **{name: value}))
    ceilings = {
        **{f"retention_{kind}_days": 36_600 for kind in RETENTIONS},
        "reconcile_interval_seconds": 366 * 86_400,
    }
    longest = create_app(app_overrides(tmp_path / "longest", database_url, **ceilings))
    try:
        with longest.app_context(), transaction() as session:
            store = create_store(session, "Shop", "https://shop.example").store
            assert set(purge_expired_records(session).values()) == {0}
            schedule_next(session, store, RECONCILE_JOB, 366 * 86_400)
            job = session.scalars(select(Job).where(Job.kind == RECONCILE_JOB)).one()
            assert job.run_after <= utcnow() + dt.timedelta(days=366)
    finally:
        longest.extensions["keygate.db"].engine.dispose()


def test_each_kind_of_record_is_kept_for_its_own_retention_and_no_longer(
    app: Flask, shop: WebhookSender
) -> None:
    """README's defaults: finished jobs 30 days, webhook deliveries 90, stored mails 365. A
    record goes once it is past its own retention (a mail, the buyer's copy of their keys,
    is not purged at the deliveries' 90 days), and one exactly that old is not past it."""
    shop.configure(501)
    shop.deliver(wc_order(9720, "completed", [line_item(501)], email=EMAIL))
    run_pending(app)
    then = utcnow().replace(microsecond=0)
    with app.app_context(), transaction() as session:
        session.execute(update(WebhookDelivery).values(received_at=then))
        session.execute(update(Mail).values(created_at=then))
        session.execute(update(Job).where(Job.status == "done").values(finished_at=then))

    def purged(days: int, seconds: int = 0) -> dict[str, int]:
        later = then + dt.timedelta(days=days, seconds=seconds)
        with app.app_context(), transaction() as session:
            removed = purge_expired_records(session, now=later)
        return {kind: removed[kind] for kind in ("jobs", "webhook_deliveries", "mails")}

    assert purged(30) == {"jobs": 0, "webhook_deliveries": 0, "mails": 0}
    assert purged(30, 1)["jobs"] >= 1  # the issuance's; the mail's job stays with its mail
    assert purged(90) == {"jobs": 0, "webhook_deliveries": 0, "mails": 0}
    assert purged(90, 1) == {"jobs": 0, "webhook_deliveries": 1, "mails": 0}
    assert purged(365) == {"jobs": 0, "webhook_deliveries": 0, "mails": 0}
    assert purged(365, 1) == {"jobs": 1, "webhook_deliveries": 0, "mails": 1}
    assert mailed_to(app) == []


def test_an_order_that_only_renewed_a_license_keeps_its_buyer(
    app: Flask, shop: WebhookSender
) -> None:
    """A renewal order issues no key or link of its own, but it extended a license: Keygate
    acted on it as on a licensed order, whose buyer is kept, not forgotten as an unlicensed
    sale's after its retention."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9721, "completed", [line_item(501)], email=EMAIL))
    key = shop.order(9721)["licenses"][0]["key"]
    renewal = line_item(501, line_id=306)
    renewal["meta_data"] = [{"id": 1, "key": "_keygate_renew_license", "value": key}]
    shop.deliver(wc_order(9722, "processing", [renewal], email=EMAIL, modified=5))
    assert shop.order(9722)["licenses"] == []
    assert purge_in(app, 91)["unlicensed_order_buyers"] == 0
    assert buyer_of(app, "9722") == (EMAIL, "Jürgen Ørsted 山田", "Bücher GmbH")
