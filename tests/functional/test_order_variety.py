"""Real WooCommerce orders come in many shapes: statuses added by plugins, orders put on hold
after payment, WooCommerce Subscriptions switch orders. Each is judged by what the store owner
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
