"""Audit of the data Keygate keeps against its privacy promises (DESIGN.md, "Data promises").

A realistic WooCommerce order (billing phone and address, shipping address, the checkout's
IP and user agent, a customer note, payment gateway meta) goes through the real webhook,
then a click, an activation, a rate-limited burst, the owner's actions; every row of every
table is read back as the database returns it. What the promises do not allow to stay is
each a test here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from connector.db import db
from connector.jobs import run_pending
from connector.models import SecurityEvent
from tests.factories import line_item, wc_order
from tests.functional.test_downloads import get, link_path, make_pdf
from tests.functional.test_license_security import _limited_shop, apps_with
from tests.functional.test_no_plaintext_secrets import dump_database
from tests.licensing_helpers import call

EMAIL = "greta.buyer@example.org"
# What identifies the buyer in the rows of one of their orders.
PERSONAL = ("greta.buyer@example.org", "Greta", "Lindqvist", "Bücher GmbH")


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


@pytest.fixture
def limited_app(tmp_path: Path, database_url: str) -> Iterator[Flask]:
    with apps_with(
        tmp_path,
        database_url,
        ratelimit_license_per_key="3/minute",
        ratelimit_license_per_ip="5/minute",
    ) as (application,):
        yield application


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
