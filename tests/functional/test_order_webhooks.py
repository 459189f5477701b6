"""The spine: a signed WooCommerce order webhook becomes licenses and grants, exactly once."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import re
import threading
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import event, func, select, text, update
from werkzeug.test import TestResponse

from connector.db import db, utcnow
from connector.jobs import run_pending
from connector.licensing.keys import KeyFormat, normalize_key
from connector.models import DownloadGrant, Job, License, Mail, Order, Store, WebhookDelivery
from connector.orders.reconcile import RECONCILE_JOB, REFRESH_JOB
from connector.orders.service import apply_shop_order
from connector.stores import create_store
from plugin.woocommerce.webhooks import parse_order
from tests.factories import WebhookSender, line_item, shifted, sign, wc_order
from tests.peers import drop_database_connections
from tests.wc_rest import FakeShop, connect_store, fake_shop

__all__ = ["fake_shop"]  # a fixture, used by name


def count(app: Flask, model: type) -> int:
    with app.app_context():
        return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def test_paid_order_with_quantity_two_issues_two_licenses_and_grants(
    app: Flask, shop: WebhookSender
) -> None:
    """Quantity 2 of a configured product: two licenses, one grant per file per unit."""
    shop.configure(501, activation_limit=3, duration_days=365, download_limit=5)
    response = shop.deliver(
        wc_order(9001, "processing", [line_item(501, quantity=2)]), "order.created"
    )
    assert response.status_code == 200
    assert response.get_json()["outcome"] == "applied"

    body = shop.order(9001)
    assert body["order"]["status"] == "processing"
    assert len(body["licenses"]) == 2
    keys = {lic["key"] for lic in body["licenses"]}
    assert len(keys) == 2
    for lic in body["licenses"]:
        assert normalize_key(lic["key"]) == lic["key"]
        assert lic["product_id"] == "501"
        assert lic["status"] == "active"
        assert lic["expires_at"].startswith(shifted("2027-11-20"))
    assert len(body["downloads"]) == 2
    for download in body["downloads"]:
        assert download["filename"] == "manual.pdf"
        assert download["link"].startswith("http://keygate.test/d/")
        assert download["downloads_left"] == 5
    assert body["portal_url"].startswith("http://keygate.test/my/")


def test_variation_is_matched_before_its_parent_product(shop: WebhookSender) -> None:
    """A line item matches its variation_id first, then its product_id."""
    shop.configure(501, activation_limit=1)
    shop.configure(777, activation_limit=5)
    shop.deliver(wc_order(9002, "completed", [line_item(501, variation_id=777), line_item(501)]))
    licenses = shop.order(9002)["licenses"]
    assert sorted((lic["product_id"], lic["activation_limit"]) for lic in licenses) == [
        ("501", 1),
        ("777", 5),
    ]


def test_guest_order_with_non_ascii_names_is_stored(app: Flask, shop: WebhookSender) -> None:
    """customer_id 0 is a guest; names in any script survive."""
    shop.configure(501)
    shop.deliver(
        wc_order(9003, "processing", customer_id=0, first_name="Zoë", last_name="Ørsted 山田")
    )
    order = shop.order(9003)["order"]
    assert order["name"] == "Zoë Ørsted 山田"
    assert order["company"] == "Bücher GmbH"
    assert order["email"] == "jurgen@example.org"
    with app.app_context():
        stored = db.session.execute(select(Order)).scalar_one()
        assert stored.customer_id is None


def test_a_name_no_database_could_store_still_gets_the_buyer_their_order(
    app: Flask, shop: WebhookSender
) -> None:
    """A NUL character (PostgreSQL cannot store one), half a surrogate pair or a name far
    longer than any column: the order is applied with the name cleaned, never refused (the
    shop would only send it again)."""
    shop.configure(501)
    order = wc_order(9004, "processing", first_name="Jo\x00hn", last_name="\ud800" + "x" * 400)
    body = json.dumps(order).encode()  # ASCII escapes, as PHP's json_encode writes them
    assert b"\\u0000" in body and b"\\ud800" in body
    response = shop.deliver(None, raw=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(shop.order(9004)["licenses"]) == 1
    name = shop.order(9004)["order"]["name"]
    assert name.startswith("John ?xxx") and len(name) == 300


def test_a_delivery_right_after_a_database_restart_is_applied(
    app: Flask, shop: WebhookSender
) -> None:
    """WooCommerce does not send a failed delivery again: the one that meets a dead pooled
    connection runs once more on a fresh one instead of failing."""
    shop.configure(501)
    drop_database_connections(app)
    response = shop.deliver(wc_order(9005, "processing", [line_item(501)]))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(shop.order(9005)["licenses"]) == 1
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(WebhookDelivery)).scalar() == 1


def test_redelivery_issues_no_second_license(app: Flask, shop: WebhookSender) -> None:
    """A redelivered webhook (and created + updated with the same state) issues nothing twice."""
    shop.configure(501)
    payload = wc_order(9004, "processing", [line_item(501, quantity=2)])
    for topic in ("order.created", "order.updated", "order.updated"):
        assert shop.deliver(payload, topic).status_code == 200
    assert count(app, License) == 2
    assert count(app, DownloadGrant) == 2
    with app.app_context():
        assert (
            db.session.execute(
                select(func.count()).select_from(Job).where(Job.kind == "order.issued")
            ).scalar_one()
            == 1
        )


def test_the_cost_of_a_delivery_does_not_grow_with_units_already_issued(
    app: Flask, shop: WebhookSender
) -> None:
    """Redelivering a paid order runs as many statements for 40 units as for 2 (one pass
    per line, not per unit), and a first delivery inserts each unit's license and grant
    without reading them back."""

    def statements_of(payload: dict[str, object]) -> int:
        seen: list[str] = []

        def record(*args: object) -> None:
            seen.append(str(args[2]))

        with app.app_context():
            engine = db.engine
        event.listen(engine, "before_cursor_execute", record)
        try:
            assert shop.deliver(payload).status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", record)
        return len(seen)

    shop.configure(501)
    small = wc_order(9005, "processing", [line_item(501, quantity=2, line_id=1)])
    large = wc_order(9006, "processing", [line_item(501, quantity=40, line_id=2)])
    first_small, first_large = statements_of(small), statements_of(large)
    assert first_large - first_small <= 2 * (40 - 2)  # a license and a grant per new unit
    assert statements_of(small) == statements_of(large)
    assert count(app, License) == 42 and count(app, DownloadGrant) == 42


@pytest.mark.parametrize("permutation", list(itertools.permutations(range(3))))
def test_shuffled_deliveries_converge_on_the_true_state(
    app: Flask, shop: WebhookSender, permutation: tuple[int, ...]
) -> None:
    """pending -> processing -> completed in any delivery order ends completed and licensed."""
    shop.configure(501)
    item = line_item(501, quantity=1, line_id=71)
    states = [
        wc_order(9005, "pending", [item], modified=0),
        wc_order(9005, "processing", [item], modified=10),
        wc_order(9005, "completed", [item], modified=20),
    ]
    for index in permutation:
        assert shop.deliver(states[index]).status_code == 200
    body = shop.order(9005)
    assert body["order"]["status"] == "completed"
    assert [lic["status"] for lic in body["licenses"]] == ["active"]


def test_refund_after_completion_revokes_and_a_stale_redelivery_changes_nothing(
    app: Flask, shop: WebhookSender
) -> None:
    """Refunded takes the licenses and links away; the older 'completed' delivery can't undo it."""
    shop.configure(501)
    item = line_item(501, quantity=2, line_id=72)
    completed = wc_order(9006, "completed", [item], modified=10)
    shop.deliver(completed)
    shop.deliver(wc_order(9006, "refunded", [item], modified=20))
    body = shop.order(9006)
    assert [lic["status"] for lic in body["licenses"]] == ["revoked", "revoked"]
    assert all(d["revoked"] for d in body["downloads"])

    assert shop.deliver(completed).get_json()["outcome"] == "stale"
    assert [lic["status"] for lic in shop.order(9006)["licenses"]] == ["revoked", "revoked"]
    assert count(app, License) == 2


@pytest.mark.parametrize("status", ["cancelled", "failed"])
def test_cancelled_and_failed_revoke(shop: WebhookSender, status: str) -> None:
    shop.configure(501)
    item = line_item(501, line_id=73)
    shop.deliver(wc_order(9007, "processing", [item], modified=1))
    shop.deliver(wc_order(9007, status, [item], modified=2))
    assert [lic["status"] for lic in shop.order(9007)["licenses"]] == ["revoked"]


def test_order_paid_again_after_cancellation_gets_its_licenses_back(shop: WebhookSender) -> None:
    """Revocations caused by the order's state are undone when the shop marks it paid again."""
    shop.configure(501)
    item = line_item(501, line_id=74)
    shop.deliver(wc_order(9008, "processing", [item], modified=1))
    key = shop.order(9008)["licenses"][0]["key"]
    shop.deliver(wc_order(9008, "cancelled", [item], modified=2))
    shop.deliver(wc_order(9008, "processing", [item], modified=3))
    licenses = shop.order(9008)["licenses"]
    assert [(lic["key"], lic["status"]) for lic in licenses] == [(key, "active")]


def test_the_owners_suspension_outlives_a_cancellation_and_payment(shop: WebhookSender) -> None:
    """Cancelled, then paid again: a license the owner suspended stays suspended, links too,
    until the owner reinstates it."""
    shop.configure(501)
    item = line_item(501, line_id=81)
    shop.deliver(wc_order(9011, "processing", [item], modified=1))
    key = shop.order(9011)["licenses"][0]["key"]
    assert shop.admin("POST", f"/licenses/{key}/suspend").status_code == 200
    shop.deliver(wc_order(9011, "cancelled", [item], modified=2))
    shop.deliver(wc_order(9011, "processing", [item], modified=3))
    body = shop.order(9011)
    assert [lic["status"] for lic in body["licenses"]] == ["suspended"]
    assert all(d["revoked"] for d in body["downloads"])
    # Paid again, the order pays for the key: the owner may reinstate it, links and all.
    assert shop.admin("POST", f"/licenses/{key}/reinstate").status_code == 200
    body = shop.order(9011)
    assert [lic["status"] for lic in body["licenses"]] == ["active"]
    assert not any(d["revoked"] for d in body["downloads"])


def test_a_license_the_owner_revoked_gets_no_link_to_a_file_added_later(
    app: Flask, shop: WebhookSender
) -> None:
    """The product gains a file, the order is delivered again: no working link for a
    license the owner revoked."""
    shop.configure(501)
    item = line_item(501, line_id=82)
    shop.deliver(wc_order(9012, "processing", [item], modified=1))
    key = shop.order(9012)["licenses"][0]["key"]
    assert shop.admin("POST", f"/licenses/{key}/revoke").status_code == 200
    files = [
        {"object_key": "products/501/manual.pdf", "filename": "manual.pdf"},
        {"object_key": "products/501/v2.zip", "filename": "v2.zip"},
    ]
    shop.configure(501, files=files)
    shop.deliver(wc_order(9012, "completed", [item], modified=2))
    assert all(d["revoked"] for d in shop.order(9012)["downloads"])
    assert count(app, DownloadGrant) == 1


def test_a_file_removed_from_the_product_gets_no_link_in_later_sales(shop: WebhookSender) -> None:
    """The owner takes a file off the product: orders paid after that get links only to
    the files it has now."""
    manual = {"object_key": "products/501/manual.pdf", "filename": "manual.pdf"}
    plugin = {"object_key": "products/501/v2.zip", "filename": "v2.zip"}
    shop.configure(501, files=[manual, plugin])
    shop.configure(501, files=[plugin])
    shop.deliver(wc_order(9019, "processing", [line_item(501, line_id=84)], modified=1))
    assert [d["filename"] for d in shop.order(9019)["downloads"]] == ["v2.zip"]


def test_links_stay_shut_when_the_owner_revoked_a_cancelled_orders_license(
    shop: WebhookSender,
) -> None:
    """Cancelled, revoked by the owner, paid again: neither the license nor its links
    come back."""
    shop.configure(501)
    item = line_item(501, line_id=83)
    shop.deliver(wc_order(9013, "processing", [item], modified=1))
    key = shop.order(9013)["licenses"][0]["key"]
    shop.deliver(wc_order(9013, "cancelled", [item], modified=2))
    assert shop.admin("POST", f"/licenses/{key}/revoke").status_code == 200
    shop.deliver(wc_order(9013, "processing", [item], modified=3))
    body = shop.order(9013)
    assert [lic["status"] for lic in body["licenses"]] == ["revoked"]
    assert all(d["revoked"] for d in body["downloads"])


def test_in_a_same_second_tie_the_revocation_stands(shop: WebhookSender) -> None:
    """Paid and cancelled in the same second (a fraud check): the cancellation stands,
    whichever of the two is delivered last."""
    shop.configure(501)
    item = line_item(501, line_id=89)
    shop.deliver(wc_order(9016, "processing", [item], modified=1))
    shop.deliver(wc_order(9016, "cancelled", [item], modified=2))
    late = shop.deliver(wc_order(9016, "processing", [item], modified=2), "order.created")
    assert late.get_json()["outcome"] == "stale"
    assert [lic["status"] for lic in shop.order(9016)["licenses"]] == ["revoked"]


def test_an_undated_update_after_a_dated_one_is_stale(shop: WebhookSender) -> None:
    """A payload with no modification date (a plugin's or a hand-made webhook's) cannot be
    placed after the dated one applied: it is taken as older and changes nothing."""
    shop.configure(501)
    item = line_item(501, line_id=78)
    shop.deliver(wc_order(9017, "processing", [item], modified=1))
    undated = wc_order(9017, "cancelled", [item])
    del undated["date_modified"], undated["date_modified_gmt"]
    assert shop.deliver(undated).get_json()["outcome"] == "stale"
    assert [lic["status"] for lic in shop.order(9017)["licenses"]] == ["active"]


def test_in_a_same_second_tie_of_two_paid_payloads_the_last_delivered_stands(
    app: Flask, shop: WebhookSender
) -> None:
    """Two paid payloads of one second (the owner adds a seat right after payment), equally
    decided: the one delivered last is applied (a store without a REST key cannot read
    which is the order now), not dropped as stale."""
    shop.configure(501)
    shop.deliver(wc_order(9018, "processing", [line_item(501, line_id=79)], modified=1))
    more = wc_order(9018, "processing", [line_item(501, quantity=2, line_id=79)], modified=1)
    assert shop.deliver(more).get_json()["outcome"] == "applied"
    assert [lic["status"] for lic in shop.order(9018)["licenses"]] == ["active", "active"]
    with app.app_context():  # nothing queued to read the order: there is no key to read it
        assert not db.session.scalars(select(Job).where(Job.kind == REFRESH_JOB)).all()


def test_order_deleted_revokes_and_older_updates_stay_stale(shop: WebhookSender) -> None:
    shop.configure(501)
    item = line_item(501, line_id=75)
    paid = wc_order(9009, "processing", [item], modified=1)
    shop.deliver(paid)
    assert shop.deliver({"id": 9009}, "order.deleted").status_code == 200
    assert [lic["status"] for lic in shop.order(9009)["licenses"]] == ["revoked"]
    assert shop.deliver(paid).get_json()["outcome"] == "stale"
    assert [lic["status"] for lic in shop.order(9009)["licenses"]] == ["revoked"]


def test_a_variation_configured_after_a_sale_does_not_change_the_buyers_key(
    shop: WebhookSender,
) -> None:
    """The line matched its parent product; the owner configures the variation later. The
    next update of the old order (processing -> completed) keeps the key the buyer has."""
    shop.configure(501)
    item = line_item(501, variation_id=601, line_id=76)
    shop.deliver(wc_order(9015, "processing", [item], modified=0))
    [before] = shop.order(9015)["licenses"]
    shop.configure(601)
    shop.deliver(wc_order(9015, "completed", [item], modified=10))
    assert shop.order(9015)["licenses"] == [before]
    assert before["status"] == "active"


def test_a_read_of_the_order_settles_a_same_second_tie(app: Flask, shop: WebhookSender) -> None:
    """failed and processing within one second (a declined card paid at once): the webhook
    tie keeps the revocation, but a read of the order now is the order as it is."""
    shop.configure(501)
    item = line_item(501, line_id=77)
    shop.deliver(wc_order(9016, "failed", [item], modified=5))
    paid = wc_order(9016, "processing", [item], modified=5)
    assert shop.deliver(paid).get_json()["outcome"] == "stale"
    with app.app_context():
        result = apply_shop_order(
            db.session, db.session.get(Store, shop.store.store.id), parse_order(paid), reread=True
        )
        db.session.commit()
    assert result.outcome == "applied"
    assert [lic["status"] for lic in shop.order(9016)["licenses"]] == ["active"]


@pytest.mark.parametrize("status", ["pending", "on-hold"])
def test_waiting_orders_issue_nothing_until_paid(
    app: Flask, shop: WebhookSender, status: str
) -> None:
    shop.configure(501)
    item = line_item(501, line_id=76)
    shop.deliver(wc_order(9010, status, [item], modified=1))
    assert count(app, License) == 0
    assert shop.order(9010)["order"]["status"] == status
    shop.deliver(wc_order(9010, "processing", [item], modified=2))
    assert count(app, License) == 1


def test_unconfigured_products_are_recorded_not_licensed(app: Flask, shop: WebhookSender) -> None:
    shop.configure(501)
    shop.deliver(wc_order(9011, "completed", [line_item(501), line_item(999, name="T-shirt")]))
    body = shop.order(9011)
    assert len(body["order"]["line_items"]) == 2
    assert sorted(li["licensed"] for li in body["order"]["line_items"]) == [False, True]
    assert len(body["licenses"]) == 1


def test_a_line_swapped_to_another_variation_is_licensed_for_it(shop: WebhookSender) -> None:
    """The owner edits a paid line to another variation: the old key is revoked, the new
    variation's issued; swapped back, the first key is active again."""
    shop.configure(501, activation_limit=1)
    shop.configure(502, activation_limit=5)
    shop.deliver(wc_order(9014, "processing", [line_item(500, variation_id=501, line_id=86)]))
    first = shop.order(9014)["licenses"][0]["key"]
    shop.deliver(
        wc_order(9014, "processing", [line_item(500, variation_id=502, line_id=86)], modified=60)
    )
    licenses = shop.order(9014)["licenses"]
    assert sorted((lic["product_id"], lic["status"]) for lic in licenses) == [
        ("501", "revoked"),
        ("502", "active"),
    ]
    # The old key's link stays shut with it; only the new variation's is open.
    assert sorted(d["revoked"] for d in shop.order(9014)["downloads"]) == [False, True]
    shop.deliver(
        wc_order(9014, "processing", [line_item(500, variation_id=501, line_id=86)], modified=90)
    )
    active = [lic["key"] for lic in shop.order(9014)["licenses"] if lic["status"] == "active"]
    assert active == [first]


def test_a_line_swapped_to_an_unlicensed_product_loses_its_license(shop: WebhookSender) -> None:
    """A line now for a product nobody configured: its license and links are revoked; a line
    whose product was deleted from the shop (product_id 0) keeps them."""
    shop.configure(501)
    shop.deliver(
        wc_order(9015, "processing", [line_item(501, line_id=87), line_item(501, line_id=88)])
    )
    deleted_product = line_item(501, line_id=88)
    deleted_product["product_id"] = 0
    shop.deliver(
        wc_order(9015, "processing", [line_item(999, line_id=87), deleted_product], modified=60)
    )
    body = shop.order(9015)
    assert sorted(lic["status"] for lic in body["licenses"]) == ["active", "revoked"]
    assert sorted(d["revoked"] for d in body["downloads"]) == [False, True]


def test_wrong_or_missing_signature_is_401_and_stores_no_order(
    app: Flask, shop: WebhookSender
) -> None:
    """Refused, and nothing of the order kept; one trace a minute for the owner (a wrong
    secret pasted into WooCommerce), never one per request (anyone can post to the URL)."""
    shop.configure(501)
    response = shop.deliver(wc_order(9012), secret="not-the-secret")
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert "WWW-Authenticate" not in response.headers  # no token would help a webhook
    assert response.get_json()["status"] == 401
    body = json.dumps(wc_order(9012)).encode()
    unsigned = shop.client.post(
        shop.url, data=body, headers={"X-WC-Webhook-Topic": "order.created"}
    )
    assert unsigned.status_code == 401
    assert count(app, Order) == 0
    with app.app_context():
        [trace] = db.session.scalars(select(WebhookDelivery)).all()
    assert (trace.outcome, trace.resource_id) == ("bad_signature", None)
    assert "webhook secret" in (trace.detail or "")


def test_creation_ping_answers_200_and_changes_nothing(app: Flask, shop: WebhookSender) -> None:
    response = shop.client.post(
        shop.url,
        data=b"webhook_id=12",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert count(app, WebhookDelivery) == 0
    assert count(app, Order) == 0


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"{not json", "JSON"),
        (json.dumps({"status": "processing"}).encode(), "no id"),
        (json.dumps({"id": 5, "status": "processing", "line_items": "x"}).encode(), "line_items"),
        (json.dumps([1, 2]).encode(), "object"),
        (
            json.dumps(
                {"id": 5, "status": "processing", "line_items": [{"id": 1, "quantity": "two"}]}
            ).encode(),
            "quantity",
        ),
        (b'{"id": 5, "line_items": ' + b"[" * 100_000, "JSON"),  # nested past any stack
        (json.dumps({"id": "5\x00", "status": "processing"}).encode(), "letters and digits"),
        (json.dumps({"id": 5, "status": "wc-\x00"}).encode(), "status"),
        (
            json.dumps(
                {"id": 5, "status": "processing", "line_items": [{"id": 1, "total": "1e999999"}]}
            ).encode(),
            "out of range",
        ),
        (
            json.dumps(
                {"id": 5, "status": "processing", "line_items": [{"id": 1, "total": "NaN"}]}
            ).encode(),
            "out of range",
        ),
    ],
)
def test_malformed_body_is_400_and_recorded_as_rejected(
    app: Flask, shop: WebhookSender, raw: bytes, detail: str
) -> None:
    response = shop.deliver(None, raw=raw)
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert detail in response.get_json()["detail"]
    with app.app_context():
        delivery = db.session.execute(select(WebhookDelivery)).scalar_one()
        assert delivery.outcome == "rejected"
    assert count(app, Order) == 0


@pytest.mark.parametrize(
    ("error", "explained"),
    [
        (
            {
                "code": "woocommerce_rest_shop_order_invalid_id",
                "message": "Invalid ID.",
                "data": {"status": 404},
            },
            "deleted for good",
        ),
        (
            {
                "code": "woocommerce_rest_cannot_view",
                "message": "Sorry, you cannot view this resource.",
                "data": {"status": 401},
            },
            "may not read orders",
        ),
        (
            {"code": "internal_server_error", "message": "Error.", "data": {"status": 500}},
            "could not read the order",
        ),
    ],
)
def test_a_delivery_of_the_shops_rest_error_is_200_and_says_why(
    app: Flask, shop: WebhookSender, error: dict[str, object], explained: str
) -> None:
    """WooCommerce builds the payload when it sends, by reading the order over its REST API
    as the webhook's user: an order deleted for good meanwhile, or a user who may no longer
    read orders, makes the body WooCommerce's error instead of an order. Nothing can be
    applied and a refusal would only count towards disabling the webhook (nothing is sent
    again): it is answered 200 and kept as rejected, saying what the shop said and why."""
    response = shop.deliver(error, "order.updated")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["outcome"] == "rejected"
    with app.app_context():
        delivery = db.session.execute(select(WebhookDelivery)).scalar_one()
    assert delivery.outcome == "rejected"
    assert str(error["code"]) in (delivery.detail or "")
    assert explained in (delivery.detail or "")
    assert count(app, Order) == 0


def v1_order(order_id: int, status: str) -> dict[str, object]:
    """The order as a webhook set to API version "WP REST API Integration v1" sends it: no
    ``*_gmt`` dates (``date_modified`` in UTC, ``date_paid`` in the shop's time), no order
    ``meta_data``, line item ``meta`` without the keys that start with an underscore."""
    order = wc_order(order_id, status, [line_item(501)])
    for name in [key for key in order if key.endswith("_gmt")] + ["meta_data"]:
        del order[name]
    for item in order["line_items"]:
        item["meta"] = item.pop("meta_data")
    return order


def test_an_order_from_a_webhook_set_to_api_v1_is_refused_saying_to_set_v3(
    app: Flask, shop: WebhookSender
) -> None:
    """A v1 payload has no date_modified_gmt to order deliveries by, and none of the order
    meta renewals, payment notes and consent are read from: applied, its first delivery
    would stand for good (every later one taken for an older one: a refund or cancellation
    never revoking). It is refused, and the owner is told which setting to change."""
    shop.configure(501)
    response = shop.deliver(v1_order(9031, "processing"), "order.created")
    assert response.status_code == 400
    assert "WP REST API Integration v3" in response.get_json()["detail"]
    with app.app_context():
        delivery = db.session.execute(select(WebhookDelivery)).scalar_one()
    assert delivery.outcome == "rejected"
    assert "WP REST API Integration v3" in (delivery.detail or "")
    assert count(app, License) == 0


def test_an_order_from_a_webhook_set_to_the_legacy_api_is_refused_saying_to_set_v3(
    app: Flask, shop: WebhookSender
) -> None:
    """The Legacy REST API (an old shop, or its add-on plugin) wraps the order in
    ``{"order": {...}}``, in another shape (``updated_at``, item ``meta``): refused, saying
    which setting to change rather than that the order has no id."""
    shop.configure(501)
    legacy = {
        "order": {"id": 9032, "status": "processing", "updated_at": shifted("2026-11-20T12:00:00Z")}
    }
    response = shop.deliver(legacy, "order.created")
    assert response.status_code == 400
    assert "WP REST API Integration v3" in response.get_json()["detail"]
    assert count(app, Order) == 0


def test_unknown_store_is_404(client) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/webhooks/woocommerce/nope", data=b"{}")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"


LIMIT = 1024 * 1024  # KEYGATE_MAX_BODY_BYTES by default
HUGE = b'{"id": 1, "pad": "' + b"x" * (LIMIT + 10) + b'"}'


def deliver_huge(shop: WebhookSender, *, chunked: bool = False) -> TestResponse:
    """An order.created over the limit, with its Content-Length or (``chunked``) none, read
    from a stream the server ends (as gunicorn's wsgi.input_terminated says)."""
    headers = {
        "X-WC-Webhook-Topic": "order.created",
        "X-WC-Webhook-Delivery-ID": "d-huge",
        "X-WC-Webhook-Signature": sign(HUGE, shop.store.webhook_secret),
    }
    if not chunked:
        return shop.client.post(shop.url, data=HUGE, headers=headers)
    return shop.client.post(
        shop.url,
        input_stream=io.BytesIO(HUGE),
        headers={**headers, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


def too_large_jobs(app: Flask) -> list[Job]:
    with app.app_context():
        return list(
            db.session.scalars(
                select(Job).where(Job.kind == RECONCILE_JOB, Job.dedupe_key.contains(":soon:"))
            )
        )


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413_and_recorded_once_a_minute_without_the_body(
    app: Flask, shop: WebhookSender, chunked: bool
) -> None:
    """A delivery over KEYGATE_MAX_BODY_BYTES (an order of many lines, a plugin's blobs in
    meta_data) is refused unread, and WooCommerce does not send it again: the owner finds it
    in the latest deliveries, saying what to do; without a REST key nothing else can read the
    order, so nothing is queued. Unread, it may come from anyone: one record a minute."""
    for _ in range(3):
        response = deliver_huge(shop, chunked=chunked)
        assert response.status_code == 413
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["type"].endswith("/payload-too-large")  # as the API's own
        assert str(LIMIT) in response.get_json()["detail"]
    with app.app_context():
        [trace] = db.session.scalars(select(WebhookDelivery)).all()
    assert (trace.outcome, trace.topic, trace.shop_delivery_id) == (
        "too_large",
        "order.created",
        "d-huge",
    )
    assert trace.body_sha256 == ""  # nothing of the body was read, nor kept
    assert "KEYGATE_MAX_BODY_BYTES" in (trace.detail or "")
    assert "no WooCommerce REST key" in (trace.detail or "")
    assert too_large_jobs(app) == []
    assert count(app, Order) == 0
    with app.app_context():  # a minute later, another
        db.session.execute(
            update(WebhookDelivery).values(received_at=utcnow() - dt.timedelta(minutes=2))
        )
        db.session.commit()
    assert deliver_huge(shop, chunked=chunked).status_code == 413
    assert count(app, WebhookDelivery) == 2


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_order_over_the_limit_is_read_over_rest_at_once(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop, chunked: bool
) -> None:
    """With a REST key, the order refused for its size is read by a reconciliation queued
    now, not 15 minutes later; a flood of such bodies (anyone may send them) queues one a
    minute."""
    connect_store(app, shop, fake_shop)
    shop.configure(501)
    paid = wc_order(9090, "processing", [line_item(501)])
    paid["date_modified_gmt"] = utcnow().isoformat(timespec="seconds")  # after the last run
    fake_shop.orders[9090] = paid
    for _ in range(5):
        assert deliver_huge(shop, chunked=chunked).status_code == 413
    queued = too_large_jobs(app)
    # This minute's, run now, and the next minute's, run at its start (the first may read
    # the shop before a later delivery's order was saved); a third if a minute began meanwhile.
    assert 2 <= len(queued) <= 3
    assert queued[0].run_after <= utcnow() < queued[-1].run_after
    with app.app_context():
        [trace] = db.session.scalars(select(WebhookDelivery)).all()
    assert "REST key reads it" in (trace.detail or "")
    run_pending(app)
    [license_] = shop.order(9090)["licenses"]
    assert license_["status"] == "active"


def test_the_plain_text_mail_puts_every_key_and_link_on_a_line_of_its_own(
    app: Flask, shop: WebhookSender
) -> None:
    """Mail clients make a link of everything up to the next space: a link followed by the
    next line's words on the same line is a link that does not work."""
    shop.configure(501, download_limit=3, duration_days=365)
    stored = Path(app.extensions["keygate.settings"].storage_dir) / "products/501/manual.pdf"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"%PDF-1.4 not stamped: watermark none")
    shop.deliver(wc_order(9014, "processing", [line_item(501, quantity=2)]))
    run_pending(app)
    with app.app_context():
        text_body = db.session.execute(select(Mail.body_text)).scalar_one()
    lines = text_body.splitlines()
    keys = [lic["key"] for lic in shop.order(9014)["licenses"]]
    for key in keys:
        [line] = [line for line in lines if key in line]
        assert re.fullmatch(
            rf"  Product 501: {key} \(valid until \d{{4}}-\d\d-\d\d \d\d:\d\d UTC\)", line
        )
    links = re.findall(r"http://keygate\.test(/d/\S+)", text_body)
    assert len(links) == 2
    for link in links:
        with shop.client.get(link) as response:
            assert response.status_code == 200
    assert lines[-1].startswith("Manage your licenses and activations: http://keygate.test/my/")


def test_other_topics_are_acknowledged_and_ignored(app: Flask, shop: WebhookSender) -> None:
    response = shop.deliver({"id": 3, "name": "Plugin"}, "product.updated")
    assert response.status_code == 200
    assert response.get_json()["outcome"] == "ignored"
    assert count(app, Order) == 0


def test_issuing_mails_the_buyer_once_and_keeps_no_plaintext(
    app: Flask, shop: WebhookSender
) -> None:
    """The outbox mails keys and links; the stored mail and the jobs hold no key in clear."""
    shop.configure(501)
    payload = wc_order(9013, "processing", [line_item(501)])
    shop.deliver(payload)
    key = shop.order(9013)["licenses"][0]["key"]
    assert run_pending(app) >= 2  # order.issued fans out to mail.order_issued
    assert run_pending(app) == 0
    with app.app_context():
        mail = db.session.execute(select(Mail)).scalar_one()
        assert mail.sent_at is not None
        assert key in mail.body_text
        assert "/d/" in mail.body_text
        raw_rows = db.session.execute(text("SELECT to_email, subject, body_text FROM mails")).all()
        raw_licenses = db.session.execute(
            text("SELECT key_hash, key_encrypted FROM licenses")
        ).all()
        raw_jobs = db.session.execute(text("SELECT CAST(payload AS TEXT) FROM jobs")).all()
    dump = repr(raw_rows) + repr(raw_licenses) + repr(raw_jobs)
    assert key not in dump
    assert key.replace("-", "") not in dump
    assert "jurgen@example.org" not in repr(raw_rows)
    # Running a redelivery does not mail again.
    shop.deliver(payload)
    run_pending(app)
    assert count(app, Mail) == 1


def test_concurrent_deliveries_of_one_order_issue_exactly_once(
    app: Flask, shop: WebhookSender
) -> None:
    """Ten simultaneous deliveries of the same paid order: exactly quantity licenses."""
    shop.configure(501)
    payload = wc_order(9014, "processing", [line_item(501, quantity=3, line_id=77)])
    statuses: list[int] = []
    barrier = threading.Barrier(10)

    def deliver() -> None:
        client = app.test_client()
        sender = WebhookSender(client, shop.store)
        barrier.wait()
        statuses.append(sender.deliver(payload).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 10
    assert count(app, License) == 3
    assert count(app, DownloadGrant) == 3


def test_keys_follow_the_stores_format(app: Flask) -> None:
    """A store's key format (prefix, groups) shapes every key it issues."""
    with app.app_context():
        created = create_store(
            db.session, "Acme", "https://acme.example", key_format=KeyFormat("ACME", 5, 4)
        )
        db.session.commit()
    sender = WebhookSender(app.test_client(), created)
    sender.configure(501)
    sender.deliver(wc_order(9200, "processing", [line_item(501)]))
    (lic,) = sender.order(9200)["licenses"]
    assert lic["key"].startswith("ACME-")
    assert [len(part) for part in lic["key"].split("-")[1:]] == [4] * 5
    assert normalize_key(lic["key"].lower()) == lic["key"]


def test_a_lower_quantity_keeps_renewed_keys_and_gives_the_kept_key_new_files(
    shop: WebhookSender,
) -> None:
    """Four keys: the first renewed (paid for again), the second idle, the third and fourth
    activated. The quantity drops to 2 while a file is added: the renewed key stays (in use
    like an activated one), the fourth takes the idle second's place, and the two kept keys
    get the new file's link."""
    from tests.functional.test_renewals_and_payments import renewal_line
    from tests.licensing_helpers import call

    manual = {"object_key": "products/501/manual.pdf", "filename": "manual.pdf"}
    shop.configure(501, duration_days=30, files=[manual])
    item = line_item(501, quantity=4, line_id=91)
    shop.deliver(wc_order(9930, "processing", [item], modified=1))
    first, second, third, fourth = (lic["key"] for lic in shop.order(9930)["licenses"])
    shop.deliver(wc_order(9931, "processing", [renewal_line(501, first, 92)], modified=2))
    for key, site in ((third, "third.com"), (fourth, "fourth.com")):
        call(shop.client, "activate", {"key": key, "site": site})
    plugin = {"object_key": "products/501/plugin.zip", "filename": "plugin.zip"}
    shop.configure(501, duration_days=30, files=[manual, plugin])
    shop.deliver(wc_order(9930, "processing", [{**item, "quantity": 2}], modified=3))
    statuses = {lic["key"]: lic["status"] for lic in shop.order(9930)["licenses"]}
    assert statuses == {first: "active", second: "revoked", third: "revoked", fourth: "active"}
    live = [d["filename"] for d in shop.order(9930)["downloads"] if not d["revoked"]]
    assert sorted(live) == ["manual.pdf", "manual.pdf", "plugin.zip", "plugin.zip"]


def test_an_order_paid_again_for_fewer_units_brings_back_the_keys_in_use(
    shop: WebhookSender,
) -> None:
    """Three keys, the third activated; the order is cancelled (all revoked), then the
    owner lowers the quantity to 2 and it is paid again: the key in use comes back with
    one idle key, not the two idle ones."""
    from tests.licensing_helpers import call

    shop.configure(501)
    item = line_item(501, quantity=3, line_id=95)
    shop.deliver(wc_order(9940, "processing", [item], modified=1))
    *_, third = (lic["key"] for lic in shop.order(9940)["licenses"])
    assert call(shop.client, "activate", {"key": third, "site": "third.com"}).get_json()["valid"]
    shop.deliver(wc_order(9940, "cancelled", [item], modified=2))
    assert {lic["status"] for lic in shop.order(9940)["licenses"]} == {"revoked"}
    shop.deliver(wc_order(9940, "on-hold", [{**item, "quantity": 2}], modified=3))
    shop.deliver(wc_order(9940, "processing", [{**item, "quantity": 2}], modified=4))
    statuses = {lic["key"]: lic["status"] for lic in shop.order(9940)["licenses"]}
    assert statuses[third] == "active"
    assert sorted(statuses.values()) == ["active", "active", "revoked"]
    validated = call(shop.client, "validate", {"key": third, "site": "third.com"}).get_json()
    assert validated["valid"] is True
    shop.deliver(wc_order(9940, "processing", [{**item, "quantity": 2}], modified=4))
    assert {lic["key"]: lic["status"] for lic in shop.order(9940)["licenses"]} == statuses


def test_the_key_in_use_comes_back_after_the_quantity_is_lowered_twice_while_waiting(
    shop: WebhookSender,
) -> None:
    """Three keys, the third activated; the order is cancelled, then put on hold while the
    owner lowers the quantity to 2 and then to 1, and paid again: the one key it pays for
    is the one in use, however many steps the quantity took down."""
    from tests.licensing_helpers import call

    shop.configure(501)
    item = line_item(501, quantity=3, line_id=98)
    shop.deliver(wc_order(9943, "processing", [item], modified=1))
    *_, third = (lic["key"] for lic in shop.order(9943)["licenses"])
    assert call(shop.client, "activate", {"key": third, "site": "third.com"}).get_json()["valid"]
    shop.deliver(wc_order(9943, "cancelled", [item], modified=2))
    shop.deliver(wc_order(9943, "on-hold", [{**item, "quantity": 2}], modified=3))
    shop.deliver(wc_order(9943, "on-hold", [{**item, "quantity": 1}], modified=4))
    shop.deliver(wc_order(9943, "processing", [{**item, "quantity": 1}], modified=5))
    statuses = {lic["key"]: lic["status"] for lic in shop.order(9943)["licenses"]}
    assert [key for key, status in statuses.items() if status == "active"] == [third]


def test_a_key_in_use_kept_on_a_lower_quantity_gets_its_links_back_when_paid_again(
    shop: WebhookSender,
) -> None:
    """Three keys, the third activated; the quantity drops to 2 (the key in use takes the
    idle second's place, its link with it), the order is cancelled and paid again: both
    keys it pays for work again, and so do their links, the one in use included."""
    from tests.licensing_helpers import call

    shop.configure(501)
    item = line_item(501, quantity=3, line_id=97)
    shop.deliver(wc_order(9942, "processing", [item], modified=1))
    *_, third = (lic["key"] for lic in shop.order(9942)["licenses"])
    assert call(shop.client, "activate", {"key": third, "site": "third.com"}).get_json()["valid"]
    fewer = {**item, "quantity": 2}
    shop.deliver(wc_order(9942, "processing", [fewer], modified=2))
    shop.deliver(wc_order(9942, "cancelled", [fewer], modified=3))
    shop.deliver(wc_order(9942, "processing", [fewer], modified=4))
    body = shop.order(9942)
    statuses = {lic["key"]: lic["status"] for lic in body["licenses"]}
    assert statuses[third] == "active"
    assert sorted(statuses.values()) == ["active", "active", "revoked"]
    assert sorted(d["revoked"] for d in body["downloads"]) == [False, False, True]


def test_a_redelivery_after_paying_for_fewer_units_changes_no_key(shop: WebhookSender) -> None:
    """Two keys in use, the order cancelled and paid again for one: the kept key stays
    the buyer's even after they move it (deactivate, so it is in no use a moment), whatever
    is delivered again."""
    from tests.licensing_helpers import call

    shop.configure(501)
    item = line_item(501, quantity=2, line_id=96)
    shop.deliver(wc_order(9941, "processing", [item], modified=1))
    first, second = (lic["key"] for lic in shop.order(9941)["licenses"])
    for key, site in ((first, "one.com"), (second, "two.com")):
        assert call(shop.client, "activate", {"key": key, "site": site}).get_json()["valid"]
    shop.deliver(wc_order(9941, "cancelled", [item], modified=2))
    shop.deliver(wc_order(9941, "processing", [{**item, "quantity": 1}], modified=3))
    kept = {lic["key"]: lic["status"] for lic in shop.order(9941)["licenses"]}
    assert sorted(kept.values()) == ["active", "revoked"]
    [live] = [key for key, status in kept.items() if status == "active"]
    site = "one.com" if live == first else "two.com"
    call(shop.client, "deactivate", {"key": live, "site": site})
    shop.deliver(wc_order(9941, "completed", [{**item, "quantity": 1}], modified=4))
    assert {lic["key"]: lic["status"] for lic in shop.order(9941)["licenses"]} == kept
