"""Test data shaped like WooCommerce's REST v3 orders, and a client that signs as it does."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from connector.stores import NewStore

_ids = itertools.count(1000)

# The tests' orders are dated 2026-11-20 12:00 UTC moved by SHIFT: the days from 2026-12-03
# (when their licenses, links and update windows were last set against the clock: 13 days
# after the orders) to the day the tests run. Licenses and links are counted from an order's
# date and checked against the real clock, so with fixed dates a 30-day license would run
# out under the tests on 2026-12-20. Dates a test writes are moved the same way (shifted).
SHIFT = dt.timedelta(days=(dt.datetime.now(dt.UTC).date() - dt.date(2026, 12, 3)).days)
ORDERED = dt.datetime(2026, 11, 20, 12, 0, 0) + SHIFT


def shifted(text: str) -> str:
    """``text`` with each date in it (YYYY-MM-DD, alone, in a timestamp or a sentence)
    moved by :data:`SHIFT`, as the orders' dates are."""
    return re.sub(
        r"\d{4}-\d{2}-\d{2}",
        lambda day: (dt.date.fromisoformat(day.group()) + SHIFT).isoformat(),
        text,
    )


def wc_time(offset_seconds: int = 0) -> str:
    """A WooCommerce *_gmt timestamp (no zone, seconds resolution)."""
    moment = ORDERED + dt.timedelta(seconds=offset_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def line_item(
    product_id: int,
    quantity: int = 1,
    variation_id: int = 0,
    line_id: int | None = None,
    name: str = "Plugin Pro",
) -> dict[str, Any]:
    return {
        "id": line_id if line_id is not None else next(_ids),
        "name": name,
        "product_id": product_id,
        "variation_id": variation_id,
        "quantity": quantity,
        "tax_class": "",
        "subtotal": "49.00",
        "subtotal_tax": "0.00",
        "total": f"{49 * quantity:.2f}",
        "total_tax": "0.00",
        "taxes": [],
        "meta_data": [],
        "sku": "PLUGIN-PRO",
        "price": 49,
        "image": {"id": "", "src": ""},
        "parent_name": None,
    }


def wc_order(
    order_id: int,
    status: str = "processing",
    items: list[dict[str, Any]] | None = None,
    *,
    modified: int = 0,
    first_name: str = "Jürgen",
    last_name: str = "Ørsted 山田",
    email: str = "jurgen@example.org",
    customer_id: int = 0,
    refunds: list[dict[str, Any]] | None = None,
    payment_method: str = "stripe",
    transaction_id: str = "ch_3PZ",
) -> dict[str, Any]:
    """An order as WooCommerce's REST v3 (and its webhooks) shape it."""
    return {
        "id": order_id,
        "parent_id": 0,
        "status": status,
        "currency": "EUR",
        "version": "9.4.2",
        "prices_include_tax": False,
        "date_created": wc_time(-60),
        "date_modified": wc_time(modified),
        "date_created_gmt": wc_time(-60),
        "date_modified_gmt": wc_time(modified),
        "discount_total": "0.00",
        "shipping_total": "0.00",
        "total": "49.00",
        "total_tax": "0.00",
        "customer_id": customer_id,
        "order_key": "wc_order_abc123",
        "billing": {
            "first_name": first_name,
            "last_name": last_name,
            "company": "Bücher GmbH",
            "address_1": "Hauptstraße 1",
            "address_2": "",
            "city": "Köln",
            "state": "",
            "postcode": "50667",
            "country": "DE",
            "email": email,
            "phone": "+49 221 000000",
        },
        "shipping": {},
        "payment_method": payment_method,
        "payment_method_title": "Credit card",
        "transaction_id": transaction_id,
        "customer_ip_address": "203.0.113.7",
        "customer_user_agent": "Mozilla/5.0",
        "created_via": "checkout",
        "customer_note": "",
        "date_completed": None,
        "date_paid": wc_time(-30) if status in {"processing", "completed"} else None,
        "date_paid_gmt": wc_time(-30) if status in {"processing", "completed"} else None,
        "date_completed_gmt": None,
        "cart_hash": "",
        "number": str(order_id),
        "meta_data": [{"id": 1, "key": "_wc_order_attribution_source_type", "value": "typein"}],
        "line_items": items if items is not None else [line_item(501)],
        "tax_lines": [],
        "shipping_lines": [],
        "fee_lines": [],
        "coupon_lines": [],
        "refunds": refunds or [],
        "set_paid": False,
    }


def sign(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@dataclass
class WebhookSender:
    client: FlaskClient
    store: NewStore

    @property
    def url(self) -> str:
        return f"/webhooks/woocommerce/{self.store.store.public_id}"

    def deliver(
        self,
        payload: Any,
        topic: str = "order.updated",
        *,
        secret: str | None = None,
        raw: bytes | None = None,
    ) -> TestResponse:
        body = raw if raw is not None else json.dumps(payload, ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "WooCommerce/9.4.2 Hookshot (WordPress/6.7)",
            "X-WC-Webhook-Source": "https://shop.example/",
            "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Resource": topic.split(".")[0],
            "X-WC-Webhook-Event": topic.split(".")[1],
            "X-WC-Webhook-Signature": sign(body, secret or self.store.webhook_secret),
            "X-WC-Webhook-ID": "12",
            "X-WC-Webhook-Delivery-ID": "0b1c2d3e4f",
        }
        return self.client.post(self.url, data=body, headers=headers)

    def admin(self, method: str, path: str, json_body: Any = None) -> TestResponse:
        return self.client.open(
            "/api/v1/admin" + path,
            method=method,
            json=json_body,
            headers={"Authorization": f"Bearer {self.store.api_token}"},
        )

    def configure(self, product_id: int, **policy: Any) -> TestResponse:
        files = policy.pop(
            "files", [{"object_key": f"products/{product_id}/manual.pdf", "filename": "manual.pdf"}]
        )
        response = self.admin(
            "PUT",
            f"/products/{product_id}",
            {"name": f"Product {product_id}", "policy": policy, "files": files},
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        return response

    def order(self, order_id: int) -> dict[str, Any]:
        response = self.admin("GET", f"/orders/{order_id}")
        assert response.status_code == 200, response.get_data(as_text=True)
        body: dict[str, Any] = response.get_json()
        return body
