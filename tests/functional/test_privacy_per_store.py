"""One buyer in two stores of one Keygate: what each owner sees about them that is made
from the buyer's IP or address (the IP hashes of clicks and security records, the erasure's
pseudonym) is another in each store, so that two owners comparing exports cannot link the
buyer. Records kept before these were per store (under the hash or pseudonym every store
shared) are still found where they were found before."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, update

from connector.audit import SECURITY_IP_HASH, record_audit
from connector.db import db, utcnow
from connector.downloads.service import IP_HASH_PURPOSE
from connector.models import DownloadEvent, License, Order, SecurityEvent
from connector.orders.service import clear_personal_fields
from connector.privacy.lookup import look_up_customer
from connector.vault.crypto import keyed_hash
from tests.factories import WebhookSender
from tests.functional.test_admin_licenses_pages import other_shop, sell
from tests.functional.test_downloads import events, get, link_path, put_file
from tests.licensing_helpers import call

EMAIL = "same.buyer@example.org"
IP = "127.0.0.1"  # the test client's address, in both stores


@pytest.fixture
def app_settings() -> dict[str, Any]:
    return {"ratelimit_license_per_key": "1/minute"}


def _buy_click_and_overuse(app: Flask, shop: WebhookSender, order_id: int) -> None:
    """The buyer buys, downloads once and calls the license API past the key's limit (a
    security record about their license)."""
    shop.configure(501)
    put_file(app, "products/501/manual.pdf", b"%PDF-1.4 manual")
    sold = sell(shop, order_id, email=EMAIL)
    assert get(shop.client, link_path(sold["downloads"][0])).status_code == 200
    key = sold["licenses"][0]["key"]
    assert call(shop.client, "validate", {"key": key}).status_code == 200
    assert call(shop.client, "validate", {"key": key}).status_code == 429


def _export(shop: WebhookSender) -> dict[str, Any]:
    response = shop.admin("GET", f"/customers/{EMAIL}/export")
    assert response.status_code == 200, response.get_data(as_text=True)
    document: dict[str, Any] = response.get_json()
    return document


def _erased_subjects(document: dict[str, Any]) -> list[str]:
    return [e["subject"] for e in document["audit"] if e["action"] == "customer.erased"]


def test_one_buyer_in_two_stores_is_hashed_and_pseudonymised_apart_in_each_export(
    app: Flask, shop: WebhookSender
) -> None:
    """Same buyer, same address, same IP in two stores: the IP hashes of their clicks and
    security records, and once erased their pseudonym, differ between the two exports."""
    theirs = other_shop(app)
    _buy_click_and_overuse(app, shop, 8101)
    _buy_click_and_overuse(app, theirs, 8201)
    mine_doc, theirs_doc = _export(shop), _export(theirs)
    [my_click], [their_click] = mine_doc["download_log"], theirs_doc["download_log"]
    assert my_click["ip_hash"] and their_click["ip_hash"]
    assert my_click["ip_hash"] != their_click["ip_hash"]
    [my_record], [their_record] = mine_doc["security_events"], theirs_doc["security_events"]
    assert my_record["ip_hash"] and their_record["ip_hash"]
    assert my_record["ip_hash"] != their_record["ip_hash"]
    # Each store's hash is its own, not the one every store shared before.
    assert IP not in my_click["ip_hash"]
    assert my_click["ip_hash"] != keyed_hash_in(app, IP_HASH_PURPOSE, IP)
    assert my_record["ip_hash"] != keyed_hash_in(app, SECURITY_IP_HASH, IP)

    assert shop.admin("DELETE", f"/customers/{EMAIL}").status_code == 200
    assert theirs.admin("DELETE", f"/customers/{EMAIL}").status_code == 200
    mine_doc, theirs_doc = _export(shop), _export(theirs)
    [my_order], [their_order] = mine_doc["orders"], theirs_doc["orders"]
    assert my_order["email"].endswith("@erased.invalid")
    assert their_order["email"].endswith("@erased.invalid")
    assert my_order["email"] != their_order["email"]
    [my_marker], [their_marker] = _erased_subjects(mine_doc), _erased_subjects(theirs_doc)
    assert my_marker.startswith("erased-") and their_marker.startswith("erased-")
    assert my_marker != their_marker
    assert my_order["email"] == f"{my_marker}@erased.invalid"


def keyed_hash_in(app: Flask, purpose: str, value: str) -> str:
    with app.app_context():
        return keyed_hash(purpose, value)


def _order(shop_order_id: int) -> Order:
    return db.session.execute(
        select(Order).where(Order.shop_order_id == str(shop_order_id))
    ).scalar_one()


def _erase_as_before(app: Flask, shop_order_id: int) -> str:
    """Erase the order's buyer as Keygate did before pseudonyms were per store: the address
    becomes the pseudonym every store shared, the audit entry names it. Returns it."""
    with app.app_context():
        order = _order(shop_order_id)
        marker = "erased-" + keyed_hash("erasure", EMAIL)[:16]
        clear_personal_fields(order, f"{marker}@erased.invalid")
        order.erased_at = utcnow()
        record_audit(
            db.session,
            store_id=order.store_id,
            actor="api",
            action="customer.erased",
            subject=marker,
            detail={"orders": 1, "brevo_removal": None},
        )
        db.session.commit()
        return marker


def test_a_customer_erased_under_the_pseudonym_every_store_shared_is_still_found(
    app: Flask, shop: WebhookSender
) -> None:
    """A customer erased before pseudonyms were per store: their export still lists what
    was kept and the erasure's audit entry, erasing them again is still "erased already",
    the Customers page still finds them; once back, their new order is erased under the
    store's pseudonym and the export lists both."""
    shop.configure(501)
    sell(shop, 8301, email=EMAIL)
    old_marker = _erase_as_before(app, 8301)

    document = _export(shop)
    assert document["erased"] is True
    [order] = document["orders"]
    assert (order["order"], order["email"]) == ("8301", f"{old_marker}@erased.invalid")
    assert _erased_subjects(document) == [old_marker]
    again = shop.admin("DELETE", f"/customers/{EMAIL}")
    assert again.status_code == 404 and "erased already" in again.get_json()["detail"]
    with app.app_context():
        [found] = look_up_customer(db.session, EMAIL, None)
        assert [entry.order.shop_order_id for entry in found.orders] == ["8301"]
        assert not found.erasable

    sell(shop, 8302, email=EMAIL)
    erased = shop.admin("DELETE", f"/customers/{EMAIL}")
    assert erased.status_code == 200 and erased.get_json()["erased_orders"] == 1
    document = _export(shop)
    assert document["erased"] is True
    emails = {order["order"]: order["email"] for order in document["orders"]}
    assert emails["8301"] == f"{old_marker}@erased.invalid"
    assert emails["8302"].endswith("@erased.invalid") and emails["8302"] != emails["8301"]
    subjects = _erased_subjects(document)
    assert subjects[0] == old_marker and len(subjects) == 2
    assert emails["8302"] == f"{subjects[1]}@erased.invalid"


def test_a_click_logged_under_the_hash_every_store_shared_is_still_resumed(
    app: Flask, shop: WebhookSender
) -> None:
    """A download served before IP hashes were per store (its click logged under the shared
    hash) is resumed for free by the same address within the hour, as before."""
    data = bytes(range(256)) * 40
    put_file(app, "files/big.bin", data)
    files = [{"object_key": "files/big.bin", "filename": "big.bin"}]
    shop.configure(501, files=files, download_limit=1)
    path = link_path(sell(shop, 8401, email=EMAIL)["downloads"][0])
    assert get(shop.client, path).status_code == 200
    with app.app_context():
        db.session.execute(update(DownloadEvent).values(ip_hash=keyed_hash(IP_HASH_PURPOSE, IP)))
        db.session.commit()
    resumed = get(shop.client, path, headers={"Range": "bytes=4000-"})
    assert (resumed.status_code, resumed.data) == (206, data[4000:])
    assert [e.outcome for e in events(app)] == ["served", "resumed"]


def test_a_security_record_kept_under_the_hash_every_store_shared_still_counts(
    app: Flask, shop: WebhookSender
) -> None:
    """One security record a minute per address, scope and license: one kept under the
    shared hash just before hashes were per store counts, no second is written."""
    shop.configure(501)
    key = sell(shop, 8501, email=EMAIL)["licenses"][0]["key"]
    assert call(shop.client, "validate", {"key": key}).status_code == 200
    with app.app_context():
        license_id = db.session.execute(select(License.id)).scalar_one()
        db.session.add(
            SecurityEvent(
                kind="rate_limited",
                scope="key",
                ip_hash=keyed_hash(SECURITY_IP_HASH, IP),
                path="/api/v1/licenses/validate",
                license_id=license_id,
            )
        )
        db.session.commit()
    assert call(shop.client, "validate", {"key": key}).status_code == 429
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(SecurityEvent)) == 1
