"""Real WooCommerce orders come in many shapes: statuses added by plugins, orders put on hold
after payment, free orders, bundles, decimal quantities. Each is judged by what the store owner
expects: a paid order's keys exactly once, and access taken back with the money."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from connector.db import db
from connector.models import Store
from connector.orders.service import apply_shop_order
from plugin.woocommerce.webhooks import parse_order
from tests.factories import WebhookSender, line_item, wc_order


def read_from_shop(app: Flask, shop: WebhookSender, payload: dict[str, Any]) -> None:
    """The order as a read of the shop's REST API finds it (its refunds with their lines),
    as the refresh job that a delivery listing a new refund queues applies it."""
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        apply_shop_order(db.session, store, parse_order(payload), reread=True)
        db.session.commit()


def refund_of(line_id: int, quantity: int, refund_id: int = 801) -> dict[str, Any]:
    """A refund as /orders/<id>/refunds lists it (negative quantity, _refunded_item_id)."""
    return {
        "id": refund_id,
        "reason": "one seat returned",
        "total": f"-{49 * quantity:.2f}",
        "line_items": [
            {
                "id": refund_id * 10,
                "quantity": -quantity,
                "meta_data": [{"id": 1, "key": "_refunded_item_id", "value": str(line_id)}],
            }
        ],
    }


def statuses(shop: WebhookSender, order_id: int) -> list[tuple[str, str]]:
    return sorted((lic["product_id"], lic["status"]) for lic in shop.order(order_id)["licenses"])


def test_units_refunded_stay_refunded_when_the_quantity_goes_under_them_and_back(
    app: Flask, shop: WebhookSender
) -> None:
    """Three seats, two refunded (read from the shop); the owner lowers the quantity to 1
    and raises it to 3 again, each change delivered listing the same refund without its
    lines: one seat is paid for throughout, never two."""
    shop.configure(501)
    item = line_item(501, quantity=3, line_id=62)
    shop.deliver(wc_order(9602, "completed", [item], modified=1))
    read_from_shop(
        app, shop, wc_order(9602, "completed", [item], modified=2, refunds=[refund_of(62, 2)])
    )
    listed = [{"id": 801, "total": "-98.00"}]  # as a webhook lists it: no lines
    shop.deliver(wc_order(9602, "completed", [{**item, "quantity": 1}], modified=3, refunds=listed))
    shop.deliver(wc_order(9602, "completed", [item], modified=4, refunds=listed))
    assert statuses(shop, 9602) == [("501", "active"), ("501", "revoked"), ("501", "revoked")]


@pytest.mark.parametrize("status", ["on-hold", "delivered"])
def test_a_refund_takes_its_unit_back_whatever_status_the_order_is_in(
    app: Flask, shop: WebhookSender, status: str
) -> None:
    """A paid order for two seats moved on to a status that neither pays nor revokes (put on
    hold, as a payment dispute does; a plugin's "delivered"), then one seat refunded:
    WooCommerce keeps the status (a partial refund does not change it), and the refunded
    seat's key and links must go as they would from a processing order."""
    shop.configure(501)
    item = line_item(501, quantity=2, line_id=61)
    shop.deliver(wc_order(9601, "completed", [item], modified=1))
    assert statuses(shop, 9601) == [("501", "active"), ("501", "active")]
    shop.deliver(wc_order(9601, status, [item], modified=2))
    assert statuses(shop, 9601) == [("501", "active"), ("501", "active")]  # kept meanwhile

    refunded = wc_order(9601, status, [item], modified=3, refunds=[refund_of(61, 1)])
    read_from_shop(app, shop, refunded)

    assert statuses(shop, 9601) == [("501", "active"), ("501", "revoked")]
    assert sorted(d["revoked"] for d in shop.order(9601)["downloads"]) == [False, True]


def test_an_order_with_nothing_to_pay_is_paid_like_any_other(shop: WebhookSender) -> None:
    """A 100% coupon, store credit or a free trial: total 0.00 and no payment date, but
    completed. Fee and coupon lines issue nothing, nor does a line of quantity 0."""
    shop.configure(501)
    free = wc_order(9621, "completed", [line_item(501), line_item(501, quantity=0)])
    free.update(total="0.00", date_paid_gmt=None, payment_method="", transaction_id="")
    free["line_items"][0]["total"] = "0.00"
    free["fee_lines"] = [{"id": 5, "name": "Handling", "total": "2.00"}]
    free["coupon_lines"] = [{"id": 6, "code": "free100", "discount": "49.00"}]
    assert shop.deliver(free).status_code == 200
    assert statuses(shop, 9621) == [("501", "active")]


def test_a_status_a_plugin_adds_issues_nothing_until_the_order_is_paid(
    shop: WebhookSender,
) -> None:
    """partially-paid (a deposit) issues nothing; completed then issues once; moved on to a
    plugin's "delivered", the keys stay."""
    shop.configure(501)
    item = line_item(501, line_id=62)
    shop.deliver(wc_order(9622, "partially-paid", [item], modified=1))
    assert statuses(shop, 9622) == []
    shop.deliver(wc_order(9622, "completed", [item], modified=2))
    shop.deliver(wc_order(9622, "delivered", [item], modified=3))
    assert statuses(shop, 9622) == [("501", "active")]


def test_a_bundle_and_its_bundled_items_are_each_licensed_for_their_own_product(
    shop: WebhookSender,
) -> None:
    """Product Bundles: the bundle's line (meta ``_bundled_items``) and each bundled item's
    line (meta ``_bundled_by``, often at 0.00) are lines like any other: each configured
    product on them gets its key, once; a product nobody configured gets none."""
    shop.configure(600)  # the bundle itself, configured with a key of its own
    shop.configure(501)
    bundle = line_item(600, line_id=71, name="Suite")
    bundle["meta_data"] = [
        {"id": 1, "key": "_bundled_items", "value": ["c1", "c2"]},
        {"id": 2, "key": "_bundle_cart_key", "value": "c0"},
    ]
    children = [line_item(501, line_id=72), line_item(503, line_id=73)]
    for child in children:
        child["total"] = "0.00"
        child["meta_data"] = [{"id": 3, "key": "_bundled_by", "value": "c0"}]
    order = wc_order(9623, "completed", [bundle, *children])
    shop.deliver(order)
    shop.deliver(order)
    assert statuses(shop, 9623) == [("501", "active"), ("600", "active")]


def test_a_decimal_quantity_beside_a_licensed_line_does_not_refuse_the_order(
    shop: WebhookSender,
) -> None:
    """A decimal-quantity plugin (``woocommerce_stock_amount`` filtered to floatval: coffee
    sold by the kilo) makes WooCommerce send ``"quantity": 2.5``, as it sends a refund of
    half a kilo: the order is real and paid, and the licensed plugin on it gets its key; a
    400 would lose it (and count toward WooCommerce disabling the webhook)."""
    shop.configure(501)
    coffee = line_item(999, line_id=81, name="Coffee (kg)")
    coffee["quantity"] = 2.5
    order = wc_order(9631, "processing", [coffee, line_item(501, line_id=82)])
    assert shop.deliver(order).status_code == 200
    assert statuses(shop, 9631) == [("501", "active")]


def test_a_unit_refunded_in_parts_over_two_refunds_takes_one_seat_not_two(
    app: Flask, shop: WebhookSender
) -> None:
    """With a decimal-quantity plugin a seat can be refunded in parts: half of it, then the
    other half. One unit is then refunded (and one key taken back), as one refund of the
    whole unit would take it; rounding each refund up on its own took a second seat that
    was fully paid for."""
    shop.configure(501)
    item = line_item(501, quantity=3, line_id=91)
    shop.deliver(wc_order(9641, "completed", [item], modified=1))
    halves = []
    for refund_id in (841, 842):
        half = refund_of(91, 1, refund_id=refund_id)
        half["total"] = "-24.50"
        half["line_items"][0]["quantity"] = -0.5
        halves.append(half)
    read_from_shop(app, shop, wc_order(9641, "completed", [item], modified=2, refunds=halves))

    assert statuses(shop, 9641) == [("501", "active"), ("501", "active"), ("501", "revoked")]


def test_a_part_of_a_unit_refunded_keeps_every_unit_still_wholly_paid_for(
    app: Flask, shop: WebhookSender
) -> None:
    """With a decimal-quantity plugin, 2.5 seats bought and the half seat refunded leave 2.0
    wholly paid for: both keys stay. Rounding what was bought down (2) and what was refunded
    up (1) each on its own took a paid seat back. One more seat refunded (1.5 in all) leaves
    one."""
    shop.configure(501)
    item = line_item(501, line_id=95)
    item["quantity"] = 2.5
    shop.deliver(wc_order(9651, "completed", [item], modified=1))
    assert statuses(shop, 9651) == [("501", "active"), ("501", "active")]

    half = refund_of(95, 1, refund_id=851)
    half["total"] = "-24.50"
    half["line_items"][0]["quantity"] = -0.5
    read_from_shop(app, shop, wc_order(9651, "completed", [item], modified=2, refunds=[half]))
    assert statuses(shop, 9651) == [("501", "active"), ("501", "active")]

    whole = refund_of(95, 1, refund_id=852)
    read_from_shop(
        app, shop, wc_order(9651, "completed", [item], modified=3, refunds=[half, whole])
    )
    assert statuses(shop, 9651) == [("501", "active"), ("501", "revoked")]
