"""The data Keygate keeps, held against its privacy promises (DESIGN.md, "Data promises").

A realistic WooCommerce order (billing phone and address, shipping address, the checkout's
IP and user agent, a customer note, payment gateway meta) goes through the real webhook,
then a click, an activation, a rate-limited burst, the owner's actions; every row of every
table is read back as the database returns it. What the promises do not allow to stay is
each a test here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, update

from connector.db import db, transaction, utcnow
from connector.jobs import run_pending
from connector.models import AuditEvent, SecurityEvent
from connector.privacy.service import purge_expired_records
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_downloads import get, link_path, make_pdf
from tests.functional.test_license_security import _limited_shop, limited_app
from tests.functional.test_no_plaintext_secrets import dump_database
from tests.functional.test_portal import csrf
from tests.licensing_helpers import call

__all__ = ["limited_app"]  # a fixture the tests below use

EMAIL = "greta.buyer@example.org"
# What identifies the buyer in the rows of one of their orders.
PERSONAL = ("greta.buyer@example.org", "Greta", "Lindqvist", "Bücher GmbH")
# Past every retention Keygate has (the longest, mail and download log, is 365 days).
A_YEAR_AND_MORE = dt.timedelta(days=400)


def rich_order(
    order_id: int, status: str = "processing", product_id: int = 501, **fields: Any
) -> dict[str, Any]:
    """An order as WooCommerce's webhook carries it from a real checkout."""
    payload = wc_order(
        order_id,
        status,
        [line_item(product_id)],
        email=EMAIL,
        first_name="Greta",
        last_name="Lindqvist",
        customer_id=31,
        transaction_id=fields.pop("transaction_id", "ch_3PrivCharge"),
    )
    payload["billing"].update(
        {"address_1": "Lindenallee 42", "city": "Berlin", "postcode": "10115"},
        phone="+49 30 5550199",
    )
    payload["shipping"] = {
        "first_name": "Greta",
        "last_name": "Lindqvist",
        "address_1": "Gartenweg 7",
        "city": "Berlin",
        "postcode": "10115",
        "country": "DE",
        "phone": "+49 30 5550199",
    }
    payload["customer_ip_address"] = "198.51.100.77"
    payload["customer_user_agent"] = "Mozilla/5.0 CheckoutBrowser/7.7"
    payload["customer_note"] = "Please ring twice"
    payload["meta_data"] += [
        {"id": 11, "key": "_stripe_source_id", "value": "src_1PrivSrc"},
        {"id": 12, "key": "_stripe_customer_id", "value": "cus_PrivCust"},
        {"id": 13, "key": "_stripe_card_brand", "value": "visa"},
        {"id": 14, "key": "_stripe_card_last4", "value": "4242"},
    ]
    if "payment_note" in fields:
        note = fields.pop("payment_note")
        payload["meta_data"].append({"id": 15, "key": "_keygate_payment_note", "value": note})
    payload.update(fields)
    return payload


def personal_data_in(database: str) -> list[str]:
    """``table: value`` for each of the buyer's :data:`PERSONAL` values a row still holds."""
    return sorted(
        {
            f"{row.split(':', 1)[0]}: {needle}"
            for row in database.splitlines()
            for needle in PERSONAL
            if needle.lower() in row.lower()
        }
    )


# --- the whole flow: what the promises allow, and nothing else ---------------------------


def test_a_rich_checkout_leaves_only_what_the_promises_list(
    limited_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    """Guard (passes today): a checkout's phone, addresses, IP, user agent, note and gateway
    meta are never stored or logged; clicks and rate-limit events keep IPs as keyed hashes
    only (the download's own user agent, which is promised, is kept); no license key,
    token or secret is in the clear in any row or log line."""
    caplog.set_level(logging.DEBUG)
    for name in ("connector", "plugin"):
        caplog.set_level(logging.DEBUG, logger=name)
    app = limited_app
    shop = _limited_shop(app)
    storage = Path(app.extensions["keygate.settings"].storage_dir)
    make_pdf(storage / "books/guide.pdf")
    pdf = {"object_key": "books/guide.pdf", "filename": "guide.pdf", "watermark": "pdf"}
    shop.configure(501, activation_limit=2, files=[pdf])
    assert shop.deliver(rich_order(8801), "order.created").status_code == 200
    run_pending(app)
    body = shop.order(8801)
    key, link = body["licenses"][0]["key"], link_path(body["downloads"][0])
    portal = body["portal_url"].removeprefix("http://keygate.test")
    click = get(
        shop.client,
        link,
        environ_base={"REMOTE_ADDR": "198.51.100.9"},
        headers={"User-Agent": "KeygateDownloader/1.0"},
    )
    assert click.status_code == 200
    activation = {"key": key, "site": "greta-shop.com", "fingerprint": "fp-1", "label": "Live"}
    assert call(shop.client, "activate", activation).get_json()["valid"]
    shop.client.environ_base["REMOTE_ADDR"] = "192.0.2.55"
    burst = [call(shop.client, "validate", {"key": key}).status_code for _ in range(4)]
    del shop.client.environ_base["REMOTE_ADDR"]
    assert 429 in burst
    assert shop.admin("POST", f"/licenses/{key}/suspend").status_code == 200
    assert shop.admin("POST", f"/licenses/{key}/reinstate").status_code == 200
    assert shop.client.get(portal).status_code == 200
    run_pending(app)

    database = dump_database(app)
    logs = caplog.text + "\n".join(str(r.args) for r in caplog.records if r.args)
    assert "KeygateDownloader/1.0" in database  # the click's user agent: promised
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(SecurityEvent))
    never = {
        "billing phone": "5550199",
        "billing street": "Lindenallee",
        "shipping street": "Gartenweg",
        "checkout IP": "198.51.100.77",
        "checkout user agent": "CheckoutBrowser",
        "customer note": "ring twice",
        "gateway source": "src_1PrivSrc",
        "gateway customer": "cus_PrivCust",
        "gateway card meta": "_stripe_card",
        "download IP": "198.51.100.9",
        "rate-limited IP": "192.0.2.55",
        "license key": key,
        "license key without dashes": key.replace("-", ""),
        "download token": link.rsplit("/", 1)[-1],
        "portal token": portal.rsplit("/", 1)[-1],
        "webhook secret": shop.store.webhook_secret,
        "api token": shop.store.api_token,
    }
    for label, needle in never.items():
        assert needle.lower() not in database.lower(), f"{label} is stored"
        assert needle.lower() not in logs.lower(), f"{label} is logged"


# --- retention ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "product_id"),
    [
        ("completed", 777),  # a sale of a product Keygate does not license (a T-shirt)
        ("failed", 501),  # a checkout whose payment failed: nothing was ever issued
        ("cancelled", 501),  # cancelled before it was paid: nothing was ever issued
    ],
)
def test_an_order_that_never_licensed_anything_keeps_no_buyer_past_retention(
    app: Flask, shop: WebhookSender, status: str, product_id: int
) -> None:
    """WooCommerce sends Keygate every order of the shop. One that never issued a key or a
    link serves no license enforcement and is not Keygate's accounting (the shop keeps
    that), yet its buyer's address, name and company are kept for ever: no purge reaches
    them. (Product sync re-reads unlicensed sales from the shop, for 30 days only, and needs
    only the order id for it.)"""
    shop.configure(501)
    assert shop.deliver(rich_order(8810, status, product_id), "order.created").status_code == 200
    run_pending(app)
    body = shop.order(8810)
    assert body["licenses"] == [] and body["downloads"] == []

    with app.app_context(), transaction() as session:
        purge_expired_records(session, now=utcnow() + A_YEAR_AND_MORE)
    assert personal_data_in(dump_database(app)) == []


def test_the_audit_log_has_a_retention_period(app: Flask, shop: WebhookSender) -> None:
    """ "Logs and attachments have retention periods and a purge job": the audit log is the
    one log the daily purge never touches. Entries naming a buyer's order and license (and
    the admins who signed in) stay for ever; only deleting the whole store removes them."""
    shop.configure(501)
    shop.deliver(rich_order(8820), "order.created")
    key = shop.order(8820)["licenses"][0]["key"]
    assert shop.admin("POST", f"/licenses/{key}/suspend").status_code == 200
    assert shop.admin("POST", f"/licenses/{key}/reinstate").status_code == 200
    eleven_years_ago = utcnow() - dt.timedelta(days=11 * 366)
    with app.app_context(), transaction() as session:
        session.execute(update(AuditEvent).values(created_at=eleven_years_ago))
        aged = session.scalar(select(func.count()).select_from(AuditEvent))
        assert aged is not None and aged >= 4  # configured, fulfilled, suspend, reinstate

    with app.app_context(), transaction() as session:
        purge_expired_records(session)
    with app.app_context():
        left = db.session.scalars(
            select(AuditEvent.action).where(
                AuditEvent.created_at < utcnow() - A_YEAR_AND_MORE,
                AuditEvent.subject.startswith("order:") | AuditEvent.subject.startswith("license:"),
            )
        ).all()
    assert left == [], f"audit entries 11 years old survive the daily purge: {left}"


# --- export ------------------------------------------------------------------------------


def test_the_export_lists_the_audit_entries_about_the_customer(
    app: Flask, shop: WebhookSender
) -> None:
    """The audit log keeps entries about the buyer's order and license, their own actions
    on the portal among them (actor "buyer"), and keeps them with no retention; the
    customer's export (everything kept about them) lists none of them."""
    shop.configure(501)
    shop.deliver(rich_order(8840), "order.created")
    body = shop.order(8840)
    run_pending(app)
    portal = body["portal_url"].removeprefix("http://keygate.test")
    token = csrf(shop.client.get(portal).get_data(as_text=True))
    assert shop.client.post(portal + "/resend", data={"csrf_token": token}).status_code == 302
    assert shop.admin("POST", f"/licenses/{body['licenses'][0]['key']}/suspend").status_code == 200
    with app.app_context():
        kept = set(
            db.session.scalars(
                select(AuditEvent.action).where(
                    (AuditEvent.subject == "order:8840")
                    | AuditEvent.subject.startswith("license:")  # this buyer's only
                    | (AuditEvent.actor == "buyer")
                )
            )
        )
    assert {"order.fulfilled", "mail.resend_requested", "license.suspend"} <= kept

    exported = shop.admin("GET", f"/customers/{EMAIL}/export")
    assert exported.status_code == 200
    document = json.dumps(exported.get_json())
    missing = sorted(action for action in kept if action not in document)
    assert missing == [], f"audit entries about the customer not in their export: {missing}"
