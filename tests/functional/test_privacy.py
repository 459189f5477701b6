"""Privacy: a customer's data can be exported and erased; old records are purged."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import func, select, text

from connector.db import Base, db, transaction, utcnow
from connector.jobs import run_pending, schedule_periodic
from connector.models import Job, License, Mail, Order, ShopNote, WebhookDelivery
from connector.privacy.service import purge_expired_records
from connector.stores import NewStore
from tests.factories import WebhookSender, line_item, wc_order

EMAIL = "jurgen@example.org"


def paid_order(app: Flask, shop: WebhookSender, order_id: int) -> dict:  # type: ignore[type-arg]
    shop.configure(501)
    shop.deliver(wc_order(order_id, "completed", [line_item(501)], email=EMAIL))
    run_pending(app)
    return shop.order(order_id)


def test_export_has_the_orders_keys_and_mails(app: Flask, shop: WebhookSender) -> None:
    body = paid_order(app, shop, 9500)
    response = shop.admin("GET", f"/customers/{EMAIL.upper()}/export")
    assert response.status_code == 200
    exported = response.get_json()
    (order,) = exported["orders"]
    assert order["name"] == "Jürgen Ørsted 山田"
    assert order["licenses"][0]["key"] == body["licenses"][0]["key"]
    assert order["mails"][0]["sent_at"] is not None
    assert shop.admin("GET", "/customers/nobody@example.org/export").status_code == 404


def test_the_api_exports_and_erases_the_buyer_of_an_order_without_an_address(
    app: Flask, shop: WebhookSender
) -> None:
    """No address to name them by: ``/orders/<id>/buyer`` exports and erases the buyer of
    that order; a buyer with an address is the customer API's (409), an unknown order 404."""
    shop.configure(501)
    shop.deliver(wc_order(9530, "completed", [line_item(501)], email="", first_name="Nora"))
    paid_order(app, shop, 9531)
    exported = shop.admin("GET", "/orders/9530/buyer/export")
    assert exported.status_code == 200 and exported.headers["Cache-Control"] == "no-store"
    body = exported.get_json()
    assert body["email"] is None and body["erased"] is False
    assert [o["order"] for o in body["orders"]] == ["9530"]
    assert body["orders"][0]["name"] == "Nora Ørsted 山田"
    for path in ("/orders/9531/buyer/export", "/orders/9531/buyer"):
        method = "GET" if path.endswith("export") else "DELETE"
        refused = shop.admin(method, path)
        assert refused.status_code == 409, path
        assert refused.mimetype == "application/problem+json"
    assert shop.admin("DELETE", "/orders/424242/buyer").status_code == 404

    erased = shop.admin("DELETE", "/orders/9530/buyer")
    assert erased.status_code == 200
    assert erased.get_json() == {"erased_orders": 1, "brevo_removal": None}
    assert shop.order(9530)["order"]["name"] is None
    assert shop.order(9531)["order"]["name"] == "Jürgen Ørsted 山田"
    assert shop.admin("DELETE", "/orders/9530/buyer").status_code == 409
    kept = shop.admin("GET", "/orders/9530/buyer/export").get_json()
    assert kept["erased"] is True and kept["orders"][0]["licenses"][0]["key"]
    assert kept["audit"][-1]["action"] == "customer.erased"
    assert kept["audit"][-1]["actor"] == "api"


def test_export_has_every_order_field_kept_about_the_customer(
    app: Flask, shop: WebhookSender
) -> None:
    """The export shows the order's payment note, the shop's customer id and what was
    bought, not only name and amounts: everything stored about the customer."""
    shop.configure(501)
    payload = wc_order(9505, "completed", [line_item(501, quantity=2)], email=EMAIL, customer_id=77)
    shop.deliver(with_payment_note(payload, "USDT tx 0xabc, paid by Jürgen"))
    exported = shop.admin("GET", f"/customers/{EMAIL}/export").get_json()
    (order,) = exported["orders"]
    assert order["customer_id"] == "77"
    assert order["payment_note"] == "USDT tx 0xabc, paid by Jürgen"
    assert order["payment_reference"] == "ch_3PZ"
    [item] = order["items"]
    assert (item["name"], item["quantity"], item["refunded_quantity"]) == ("Plugin Pro", 2, 0)
    assert len(order["licenses"]) == 2 and order["licenses"][0]["activation_limit"] is None
    assert order["renewals"] == [] and order["shop_notes"] == []


def test_export_has_the_renewals_and_the_download_windows_they_moved(
    app: Flask, shop: WebhookSender
) -> None:
    """A renewal order and the download window it moved are in the customer's export."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9506, "completed", [line_item(501)], email=EMAIL))
    key = shop.order(9506)["licenses"][0]["key"]
    renewal = line_item(501, line_id=306)
    renewal["meta_data"] = [{"id": 1, "key": "_keygate_renew_license", "value": key.lower()}]
    shop.deliver(wc_order(9507, "processing", [renewal], email=EMAIL, modified=5))
    exported = shop.admin("GET", f"/customers/{EMAIL}/export").get_json()
    original, renewing = exported["orders"]
    assert original["renewals"] == []
    [renewed] = renewing["renewals"]
    assert renewed["expires_at"] > renewed["previous_expires_at"]
    assert renewed["reverted_at"] is None
    [moved] = exported["download_extensions"]
    assert moved["filename"] == "manual.pdf"
    assert moved["expires_at"] == renewed["expires_at"]
    # Each time as every JSON answer of Keygate gives it: ISO 8601 in UTC with a Z.
    times = list(_times(exported))
    assert len(times) > 10 and renewed["expires_at"] in times and moved["expires_at"] in times
    assert [t for t in times if not re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", t)] == []


def _times(value: object) -> Iterator[str]:
    """Every string in a JSON document that is a date with a time of day."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            yield from _times(item)
    elif isinstance(value, str) and re.match(r"\d{4}-\d\d-\d\dT\d", value):
        yield value


# Export sections of the tables that point at a customer's order, line, license or grant.
EXPORTED_TABLES = {
    "line_items": "orders[].items",
    "licenses": "orders[].licenses",
    "license_renewals": "orders[].renewals",
    "download_grants": "orders[].downloads",
    "mails": "orders[].mails",
    "shop_notes": "orders[].shop_notes",
    "activations": "activations",
    "security_events": "security_events",
    "binding_changes": "binding_changes",
    "license_flags": "license_flags",
    "download_events": "download_log",
    "watermark_copies": "watermarked_copies",
    "grant_extensions": "download_extensions",
}


def test_every_table_about_a_customers_orders_is_in_the_export() -> None:
    """A table that points at an order, line item, license or grant holds data about that
    customer: it must have its place in the export (add it there, then here)."""
    customer_tables = {"orders", "line_items", "licenses", "download_grants"}
    linked = {
        table.name
        for table in Base.metadata.sorted_tables
        for fk in table.foreign_keys
        if fk.column.table.name in customer_tables
    }
    assert linked == set(EXPORTED_TABLES)


def test_erasure_keeps_accounting_and_licenses_but_not_the_person(
    app: Flask, shop: WebhookSender
) -> None:
    body = paid_order(app, shop, 9501)
    response = shop.admin("DELETE", f"/customers/{EMAIL}")
    assert response.status_code == 200
    assert response.get_json() == {"erased_orders": 1, "brevo_removal": None}
    with app.app_context():
        order = db.session.execute(select(Order)).scalar_one()
        assert order.name is None and order.company is None
        assert order.email is not None and order.email.endswith("@erased.invalid")
        assert str(order.total) == "49.00" and order.transaction_id == "ch_3PZ"
        assert db.session.execute(select(func.count()).select_from(Mail)).scalar_one() == 0
        license_ = db.session.execute(select(License)).scalar_one()
        assert license_.status == "active"
        everything = " ".join(
            repr(db.session.execute(text(f"SELECT * FROM {table}")).all())  # noqa: S608
            for table in ("orders", "audit_events", "mails", "jobs")
        )
    assert EMAIL not in everything
    assert "Jürgen" not in everything
    # A later delivery of the same order from the shop does not bring the person back.
    shop.deliver(wc_order(9501, "completed", [line_item(501)], email=EMAIL, modified=5))
    with app.app_context():
        assert db.session.execute(select(Order.name)).scalar_one() is None
    # The key still works for the product, and the owner still sees the order.
    assert shop.order(9501)["licenses"][0]["key"] == body["licenses"][0]["key"]
    assert shop.admin("GET", f"/customers/{EMAIL}/export").get_json()["erased"] is True


def with_payment_note(payload: dict, note: str) -> dict:  # type: ignore[type-arg]
    payload["meta_data"].append({"id": 2, "key": "_keygate_payment_note", "value": note})
    return payload


def test_no_personal_field_of_an_erased_order_comes_back_with_a_later_delivery(
    app: Flask, shop: WebhookSender
) -> None:
    """An erased customer's payment note and customer id do not come back with the next
    delivery; the order's accounting fields still follow the shop."""
    shop.configure(501)
    first = wc_order(9504, "processing", [line_item(501)], email=EMAIL, customer_id=77)
    shop.deliver(with_payment_note(first, "Paid by Jürgen's bank transfer"))
    with app.app_context():
        order = db.session.execute(select(Order)).scalar_one()
        assert (order.customer_id, order.payment_note) == ("77", "Paid by Jürgen's bank transfer")
    assert shop.admin("DELETE", f"/customers/{EMAIL}").status_code == 200

    later = wc_order(9504, "completed", [line_item(501)], email=EMAIL, customer_id=77, modified=5)
    later["total"] = "59.00"
    shop.deliver(with_payment_note(later, "Paid by Jürgen's bank transfer"))
    with app.app_context():
        order = db.session.execute(select(Order)).scalar_one()
        assert order.status == "completed" and str(order.total) == "59.00"
        personal = (order.name, order.company, order.customer_id, order.payment_note)
        assert personal == (None, None, None, None)
        assert order.email is not None and order.email.endswith("@erased.invalid")
        stored = repr(db.session.execute(text("SELECT * FROM orders")).all())
    assert "Jürgen" not in stored and EMAIL not in stored


def test_privacy_endpoints_need_the_store_token(shop: WebhookSender) -> None:
    assert shop.client.delete(f"/api/v1/admin/customers/{EMAIL}").status_code == 401
    assert shop.admin("GET", "/customers/not-an-email/export").status_code == 422


def test_purge_removes_only_records_past_retention(app: Flask, shop: WebhookSender) -> None:
    paid_order(app, shop, 9502)
    old = utcnow() - dt.timedelta(days=400)
    with app.app_context(), transaction() as session:
        for delivery in session.execute(select(WebhookDelivery)).scalars():
            delivery.received_at = old
        for mail in session.execute(select(Mail)).scalars():
            mail.created_at = old
        for job in session.execute(select(Job)).scalars():
            job.finished_at = old
        # A job given up on stays (retry, work still to do), but its error text may name a
        # customer: past the retention only its type is kept.
        session.add(
            Job(
                kind="mail.order_issued",
                status="dead",
                last_error="BrevoError: jurgen@example.org refused",
                finished_at=old,
            )
        )
    with app.app_context(), transaction() as session:
        removed = purge_expired_records(session)
        [dead] = session.scalars(select(Job).where(Job.status == "dead")).all()
        assert dead.last_error == "BrevoError"
        assert removed["dead_job_errors"] == 1
    assert removed["webhook_deliveries"] == 1
    assert removed["mails"] == 1
    assert removed["jobs"] >= 2
    shop.deliver(wc_order(9503, "completed", [line_item(501)]))
    with app.app_context(), transaction() as session:
        assert purge_expired_records(session)["webhook_deliveries"] == 0


def test_purge_keeps_an_old_job_a_kept_mail_refers_to(app: Flask, new_store: NewStore) -> None:
    """A mail is kept for its own retention, with the job that sends it (its outbox row)."""
    old = utcnow() - dt.timedelta(days=400)
    with app.app_context(), transaction() as session:
        jobs = [Job(kind="mail.order_issued", status="done", finished_at=old) for _ in range(2)]
        session.add_all(jobs)
        session.flush()
        session.add(
            Mail(
                store_id=new_store.store.id,
                job_id=jobs[0].id,
                kind="order_issued",
                to_email=EMAIL,
                subject="Your keys",
                body_text="…",
                backend="console",
            )
        )
        kept, gone = jobs[0].id, jobs[1].id
    with app.app_context(), transaction() as session:
        purge_expired_records(session)
        left = set(session.scalars(select(Job.id).where(Job.id.in_((kept, gone)))))
    assert left == {kept}


def test_the_daily_purge_is_scheduled_once_per_day(app: Flask) -> None:
    schedule_periodic(app)
    schedule_periodic(app)
    with app.app_context():
        kinds = db.session.execute(select(Job.kind)).scalars().all()
    assert kinds.count("privacy.purge") == 1
    run_pending(app)
    with app.app_context():
        job = db.session.execute(select(Job).where(Job.kind == "privacy.purge")).scalar_one()
        assert job.status == "done"


def test_an_erased_customers_export_lists_what_was_kept_under_the_pseudonym(
    app: Flask, shop: WebhookSender
) -> None:
    """Right of access after an erasure: the orders' accounting and license records kept
    under the pseudonym, none of the erased fields; erasing again says it was done."""
    body = paid_order(app, shop, 9520)
    assert shop.admin("DELETE", f"/customers/{EMAIL}").status_code == 200
    exported = shop.admin("GET", f"/customers/{EMAIL}/export")
    assert exported.status_code == 200
    document = exported.get_json()
    assert document["erased"] is True
    (order,) = document["orders"]
    assert order["order"] == "9520" and order["erased_at"] is not None
    assert order["email"].endswith("@erased.invalid") and order["name"] is None
    assert order["licenses"][0]["key"] == body["licenses"][0]["key"]
    assert order["mails"] == []
    assert EMAIL not in exported.get_data(as_text=True).replace(f'"email":"{EMAIL}"', "")
    again = shop.admin("DELETE", f"/customers/{EMAIL}")
    assert again.status_code == 404 and "erased already" in again.get_json()["detail"]
    assert shop.admin("GET", "/customers/nobody@example.org/export").status_code == 404


def test_a_customer_who_came_back_after_an_erasure_is_exported_whole(
    app: Flask, shop: WebhookSender
) -> None:
    """Erased, then a buyer again: the export lists the new order and what was kept of the
    erased one (each with its erasure state); erasing again reaches the new order only."""
    first = paid_order(app, shop, 9521)
    assert shop.admin("DELETE", f"/customers/{EMAIL}").status_code == 200
    paid_order(app, shop, 9522)
    document = shop.admin("GET", f"/customers/{EMAIL}/export").get_json()
    assert document["erased"] is False
    erased_at = {order["order"]: order["erased_at"] for order in document["orders"]}
    assert list(erased_at) == ["9521", "9522"]
    assert erased_at["9521"] is not None and erased_at["9522"] is None
    assert document["orders"][0]["licenses"][0]["key"] == first["licenses"][0]["key"]
    again = shop.admin("DELETE", f"/customers/{EMAIL}")
    assert again.status_code == 200 and again.get_json()["erased_orders"] == 1


def test_the_privacy_api_reaches_an_address_with_a_slash(app: Flask, shop: WebhookSender) -> None:
    """ "a/b@example.org" is a mailbox Keygate stores and mails: its downloads, export and
    erasure are reached over the API, the "/" written as is or as %2F."""
    shop.configure(501)
    shop.deliver(wc_order(9523, "completed", [line_item(501)], email="a/b@example.org"))
    assert shop.admin("GET", "/customers/a/b@example.org/downloads").status_code == 200
    exported = shop.admin("GET", "/customers/a%2Fb@example.org/export")
    assert exported.status_code == 200
    assert exported.get_json()["orders"][0]["email"] == "a/b@example.org"
    assert shop.admin("DELETE", "/customers/a/b@example.org").status_code == 200


def test_export_names_each_mail_and_the_orders_own_dates(app: Flask, shop: WebhookSender) -> None:
    paid_order(app, shop, 9521)
    (order,) = shop.admin("GET", f"/customers/{EMAIL}/export").get_json()["orders"]
    [mail] = order["mails"]
    assert (mail["kind"], mail["to"]) == ("order_issued", EMAIL)
    assert order["created_at"] is not None and order["deleted_in_shop"] is False
    assert order["brevo_consent_withdrawn"] is False and order["email"] == EMAIL


def digest_without_our_keys(app: Flask, payload: dict) -> str:  # type: ignore[type-arg]
    """What Keygate's own code makes of a shop payload in an instance with other keys: all
    that someone holding only the database (a leaked dump, a backup without its keys) can
    compute for an address they guess."""
    from cryptography.fernet import Fernet

    from connector.orders.service import _content_digest
    from connector.vault.crypto import Keyring
    from plugin.woocommerce.webhooks import parse_order

    with app.app_context():
        ours = app.extensions["keygate.keyring"]
        app.extensions["keygate.keyring"] = Keyring((Fernet.generate_key().decode(),), "x" * 43)
        try:
            return _content_digest(parse_order(payload))
        finally:
            app.extensions["keygate.keyring"] = ours


@pytest.mark.parametrize("forgotten_by", ["erasure", "unlicensed order purge"])
def test_a_forgotten_buyers_address_cannot_be_checked_against_their_order(
    app: Flask, shop: WebhookSender, forgotten_by: str
) -> None:
    """An order keeps a digest of what the shop said of it, the buyer's address included:
    once the buyer is erased (or an order that issued nothing lost its buyer), that digest
    must not let someone with the database alone confirm a guessed address, as an unkeyed
    hash of it would. It is keyed with the secret key, as the erasure's pseudonym is."""
    product = 501 if forgotten_by == "erasure" else 502
    shop.configure(501)
    payload = wc_order(9509, "completed", [line_item(product)], email=EMAIL)
    shop.deliver(payload)
    run_pending(app)
    if forgotten_by == "erasure":
        assert shop.admin("DELETE", f"/customers/{EMAIL}").status_code == 200
    else:
        with app.app_context(), transaction() as session:
            later = utcnow() + dt.timedelta(days=91)
            assert purge_expired_records(session, now=later)["unlicensed_order_buyers"] == 1
    with app.app_context():
        kept = db.session.execute(select(Order.email, Order.shop_digest)).one()
    assert kept.email != EMAIL
    assert kept.shop_digest is not None
    assert digest_without_our_keys(app, payload) != kept.shop_digest


def test_export_has_the_notes_keygate_wrote_on_the_customers_order_in_the_shop(
    app: Flask, shop: WebhookSender
) -> None:
    """A note written back to the shop (the buyer's keys and links, for them to see in their
    account) is a record about the customer's order: the export lists each, by its marker
    and the shop's id of the note."""
    paid_order(app, shop, 9508)
    with app.app_context(), transaction() as session:
        order = session.scalars(select(Order).where(Order.shop_order_id == "9508")).one()
        session.add(
            ShopNote(store_id=order.store_id, order_id=order.id, marker="keys", shop_note_id="41")
        )
    (order,) = shop.admin("GET", f"/customers/{EMAIL}/export").get_json()["orders"]
    [note] = order["shop_notes"]
    assert (note["marker"], note["shop_note_id"]) == ("keys", "41")
    assert note["created_at"].endswith("Z")
