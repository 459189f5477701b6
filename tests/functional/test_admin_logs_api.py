"""The owner's audit log and outbox over the admin API, scoped to their store."""

from __future__ import annotations

from flask import Flask

from connector.db import db
from connector.jobs import run_pending
from connector.stores import create_store
from tests.factories import WebhookSender, line_item, wc_order


def test_audit_log_and_outbox_show_only_this_store(app: Flask, shop: WebhookSender) -> None:
    shop.configure(501)
    shop.deliver(wc_order(9700, "processing", [line_item(501)]))
    run_pending(app)
    with app.app_context():
        other = create_store(db.session, "Other", "https://other.example")
        db.session.commit()
    other_shop = WebhookSender(app.test_client(), other)

    audit = shop.admin("GET", "/audit").get_json()["events"]
    assert "order.fulfilled" in [e["action"] for e in audit]
    assert (
        shop.admin("GET", "/audit?action=product.configured").get_json()["events"][0]["subject"]
        == "product:501"
    )
    assert other_shop.admin("GET", "/audit?action=order.fulfilled").get_json()["events"] == []

    mails = shop.admin("GET", "/outbox").get_json()["mails"]
    assert [m["to"] for m in mails] == ["j***@example.org"]
    assert mails[0]["sent_at"] is not None
    assert other_shop.admin("GET", "/outbox").get_json()["mails"] == []
    assert shop.admin("GET", "/outbox?limit=0").status_code == 422
    assert shop.client.get("/api/v1/admin/audit").status_code == 401


def test_a_customers_downloads_are_found_by_the_address_as_the_shop_shows_it(
    shop: WebhookSender,
) -> None:
    """Order emails are stored in lower case; the owner pastes them as WooCommerce shows
    them. Export, erase and the licenses filter match any case: so do the downloads."""
    shop.configure(501)
    shop.deliver(wc_order(9701, "processing", [line_item(501)], email="Bob@Example.org"))
    for address in ("bob@example.org", "Bob@Example.org", " BOB@EXAMPLE.ORG "):
        assert shop.admin("GET", f"/customers/{address}/downloads").get_json()["orders"] == ["9701"]
    missing_at = shop.admin("GET", "/customers/no-at/downloads")
    assert (missing_at.status_code, missing_at.get_json()["field"]) == (422, "email")


def test_the_owner_reads_back_what_a_product_is_configured_as(
    app: Flask, shop: WebhookSender
) -> None:
    put = shop.configure(501, activation_limit=2, duration_days=365).get_json()
    shop.configure(502)
    got = shop.admin("GET", "/products/501")
    assert got.status_code == 200
    assert got.get_json() == put
    assert got.get_json()["policy"]["activation_limit"] == 2
    edited = {**got.get_json(), "name": "Renamed"}  # read, edited, sent back as it is
    assert shop.admin("PUT", "/products/501", edited).get_json()["name"] == "Renamed"
    elsewhere = shop.admin("PUT", "/products/502", edited)
    assert (elsewhere.status_code, elsewhere.get_json()["field"]) == (422, "product_id")
    listed = shop.admin("GET", "/products").get_json()["products"]
    assert [p["product_id"] for p in listed] == ["501", "502"]
    unknown = shop.admin("GET", "/products/999")
    assert (unknown.status_code, unknown.mimetype) == (404, "application/problem+json")
    with app.app_context():
        other = create_store(db.session, "Other", "https://other.example")
        db.session.commit()
    other_shop = WebhookSender(app.test_client(), other)
    assert other_shop.admin("GET", "/products/501").status_code == 404
    assert other_shop.admin("GET", "/products").get_json()["products"] == []
