"""A WooCommerce shop behind ``responses``: REST v3 shaped as WooCommerce documents it.

Holds webhooks, orders, refunds, notes and products in memory, answers the endpoints Keygate
uses (with Basic auth checked, paging with X-WP-Total / X-WP-TotalPages, WooCommerce error
bodies), and can deliver a signed webhook to Keygate the way WooCommerce would.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from connector.jobs import run_pending
from tests.factories import WebhookSender, sign, wc_time

SHOP = "https://shop.example"
API = f"{SHOP}/wp-json/wc/v3"
CONSUMER_KEY = "ck_" + "a1b2c3d4e5" * 4
CONSUMER_SECRET = "cs_" + "f6e7d8c9b0" * 4


def error(status: int, code: str, message: str) -> tuple[int, dict[str, str], str]:
    body = {"code": code, "message": message, "data": {"status": status}}
    return status, {"Content-Type": "application/json"}, json.dumps(body)


@dataclass
class FakeShop:
    consumer_key: str = CONSUMER_KEY
    consumer_secret: str = CONSUMER_SECRET
    webhooks: dict[int, dict[str, Any]] = field(default_factory=dict)
    webhook_secrets: dict[int, str] = field(default_factory=dict)
    orders: dict[int, dict[str, Any]] = field(default_factory=dict)
    refunds: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    notes: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    products: dict[int, dict[str, Any]] = field(default_factory=dict)
    variations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    down: bool = False
    # A security plugin or a broken permalink setting: the REST API answers WordPress's own
    # 404 (rest_no_route) to everything, while webhooks still go out.
    rest_blocked: bool = False
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(70))

    # --- wiring -----------------------------------------------------------------------

    def install(self, mock: responses.RequestsMock) -> None:
        route = re.compile(re.escape(API) + r"/.*")
        for method in ("GET", "POST", "PUT", "DELETE"):
            mock.add_callback(method, route, callback=self._handle)

    def _handle(self, request: Any) -> tuple[int, dict[str, str], str]:
        parts = urlsplit(request.url)
        path = parts.path.removeprefix("/wp-json/wc/v3/")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.requests.append((request.method, path))
        if self.down:
            return error(503, "service_unavailable", "Maintenance")
        if self.rest_blocked:
            return error(404, "rest_no_route", "No route was found matching the URL.")
        expected = base64.b64encode(f"{self.consumer_key}:{self.consumer_secret}".encode())
        if request.headers.get("Authorization") != "Basic " + expected.decode():
            return error(401, "woocommerce_rest_cannot_view", "Sorry, you cannot list resources.")
        body = json.loads(request.body) if request.body else None
        return self._dispatch(request.method, path, query, body)

    def _json(self, value: Any, status: int = 200, **headers: str) -> tuple[int, dict, str]:
        return status, {"Content-Type": "application/json", **headers}, json.dumps(value)

    def _page(self, items: list[dict[str, Any]], query: dict[str, str]) -> tuple[int, dict, str]:
        per_page = int(query.get("per_page", 10))
        page = int(query.get("page", 1))
        total_pages = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        return self._json(
            chunk, **{"X-WP-Total": str(len(items)), "X-WP-TotalPages": str(total_pages)}
        )

    def _dispatch(
        self, method: str, path: str, query: dict[str, str], body: Any
    ) -> tuple[int, dict, str]:
        segments = path.strip("/").split("/")
        if segments[0] == "webhooks":
            return self._webhooks(method, segments[1:], query, body)
        if segments[0] == "orders":
            return self._orders(method, segments[1:], query, body)
        if segments[0] == "products":
            if len(segments) == 1:  # as WooCommerce: trashed products are not listed
                listed = [p for p in self.products.values() if p.get("status") != "trash"]
                return self._page(listed, query)
            if len(segments) == 2:
                return self._product(int(segments[1]))
            if len(segments) == 3 and segments[2] == "variations":
                return self._page(self.variations.get(int(segments[1]), []), query)
        return error(
            404, "rest_no_route", "No route was found matching the URL and request method."
        )

    def _product(self, product_id: int) -> tuple[int, dict, str]:
        """products/<id> answers a product, trashed or not, or a variation."""
        if product_id in self.products:
            return self._json(self.products[product_id])
        for variations in self.variations.values():
            for variation in variations:
                if variation.get("id") == product_id:
                    return self._json(variation)
        return error(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")

    # --- webhooks ---------------------------------------------------------------------

    def _webhooks(self, method: str, rest: list[str], query: dict[str, str], body: Any) -> Any:
        if not rest and method == "GET":
            return self._page(list(self.webhooks.values()), query)
        if not rest and method == "POST":
            webhook_id = next(self._ids)
            resource, event = body["topic"].split(".")
            webhook = {
                "id": webhook_id,
                "name": body["name"],
                "status": body.get("status", "active"),
                "topic": body["topic"],
                "resource": resource,
                "event": event,
                "hooks": [f"woocommerce_{event}_{resource}"],
                "delivery_url": body["delivery_url"],
                "date_created": wc_time(),
                "date_created_gmt": wc_time(),
                "date_modified": wc_time(),
                "date_modified_gmt": wc_time(),
                "_links": {"self": [{"href": f"{API}/webhooks/{webhook_id}"}]},
            }
            self.webhooks[webhook_id] = webhook
            self.webhook_secrets[webhook_id] = body["secret"]
            return self._json(webhook, 201)
        webhook_id = int(rest[0])
        if webhook_id not in self.webhooks:
            return error(404, "woocommerce_rest_webhook_invalid_id", "Invalid ID.")
        if method == "PUT":
            self.webhooks[webhook_id].update({k: v for k, v in body.items() if k != "secret"})
            return self._json(self.webhooks[webhook_id])
        if method == "DELETE":
            if query.get("force") != "true":
                return error(
                    501, "woocommerce_rest_trash_not_supported", "Webhooks do not support trashing."
                )
            self.webhook_secrets.pop(webhook_id)
            return self._json(self.webhooks.pop(webhook_id))
        return self._json(self.webhooks[webhook_id])

    def active_webhooks(self, url: str) -> dict[str, int]:
        """topic -> webhook id of the webhooks delivering to ``url``."""
        return {w["topic"]: w["id"] for w in self.webhooks.values() if w["delivery_url"] == url}

    # --- orders -----------------------------------------------------------------------

    def _orders(self, method: str, rest: list[str], query: dict[str, str], body: Any) -> Any:
        if not rest:
            after = query.get("modified_after")
            assert query.get("dates_are_gmt") == "true"
            # As WooCommerce: the default ("any") leaves trashed orders out.
            trashed = query.get("status") == "trash"
            items = [
                o
                for o in self.orders.values()
                if (after is None or o["date_modified_gmt"] > after)
                and (o["status"] == "trash") == trashed
            ]
            items.sort(key=lambda o: (o["date_modified_gmt"], o["id"]))
            return self._page(items, query)
        order_id = int(rest[0])
        if order_id not in self.orders:
            return error(404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
        if len(rest) == 1:
            return self._json(self.orders[order_id])
        if rest[1] == "refunds":
            return self._page(self.refunds.get(order_id, []), query)
        if rest[1] == "notes" and method == "GET":
            return self._json(self.notes.get(order_id, []))
        if rest[1] == "notes" and method == "POST":
            note = {
                "id": next(self._ids),
                "author": "Keygate",
                "date_created": wc_time(),
                "date_created_gmt": wc_time(),
                "note": body["note"],
                "customer_note": bool(body.get("customer_note")),
                "added_by_user": False,
            }
            self.notes.setdefault(order_id, []).append(note)
            return self._json(note, 201)
        return error(404, "rest_no_route", "No route.")

    def add_refund(self, order_id: int, line_id: int, quantity: int, amount: str) -> dict:
        """A refund as /orders/<id>/refunds lists it; the order lists it as WooCommerce does."""
        refund_id = next(self._ids)
        refund = {
            "id": refund_id,
            "date_created": wc_time(60),
            "date_created_gmt": wc_time(60),
            "amount": amount,
            "reason": "changed mind",
            "refunded_by": 1,
            "refunded_payment": False,
            "meta_data": [],
            "line_items": [
                {
                    "id": next(self._ids),
                    "name": "Plugin Pro",
                    "product_id": 501,
                    "variation_id": 0,
                    "quantity": -quantity,
                    "tax_class": "",
                    "subtotal": f"-{amount}",
                    "subtotal_tax": "0.00",
                    "total": f"-{amount}",
                    "total_tax": "0.00",
                    "taxes": [],
                    "meta_data": [
                        {"id": next(self._ids), "key": "_refunded_item_id", "value": str(line_id)}
                    ],
                    "sku": "PLUGIN-PRO",
                    "price": -49,
                }
            ],
        }
        self.refunds.setdefault(order_id, []).insert(0, refund)
        self.orders[order_id]["refunds"].insert(
            0, {"id": refund_id, "reason": "changed mind", "total": f"-{amount}"}
        )
        return refund

    # --- deliveries -------------------------------------------------------------------

    def deliver(self, client: FlaskClient, topic: str, payload: dict[str, Any]) -> TestResponse:
        """POST ``payload`` to the webhook registered for ``topic``, signed with its secret."""
        (webhook,) = [w for w in self.webhooks.values() if w["topic"] == topic]
        body = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "X-WC-Webhook-Source": SHOP + "/",
            "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Resource": webhook["resource"],
            "X-WC-Webhook-Event": webhook["event"],
            "X-WC-Webhook-Signature": sign(body, self.webhook_secrets[webhook["id"]]),
            "X-WC-Webhook-ID": str(webhook["id"]),
            "X-WC-Webhook-Delivery-ID": "d41d8cd98f",
        }
        path = urlsplit(webhook["delivery_url"]).path
        return client.post(path, data=body, headers=headers)


def auth_callback_body(state: str, key_id: int = 17, **overrides: Any) -> dict[str, Any]:
    """The JSON WooCommerce POSTs to callback_url after the owner approves."""
    body: dict[str, Any] = {
        "key_id": key_id,
        "user_id": state,
        "consumer_key": CONSUMER_KEY,
        "consumer_secret": CONSUMER_SECRET,
        "key_permissions": "read_write",
    }
    body.update(overrides)
    return body


# --- fixtures (import them into a test module to use them) ------------------------------


@pytest.fixture
def fake_shop() -> Iterator[FakeShop]:
    """The shop's REST API on https://shop.example, answered in memory."""
    shop = FakeShop()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        shop.install(mock)
        yield shop


def connect_store(app: Flask, shop: WebhookSender, fake: FakeShop) -> dict[str, Any]:
    """Run the owner's wc-auth approval and the jobs it starts; returns the connection."""
    connect_url = shop.admin("GET", "/connection").get_json()["connect_url"]
    query = {k: v[-1] for k, v in parse_qs(urlsplit(connect_url).query).items()}
    callback_path = urlsplit(query["callback_url"]).path
    response = shop.client.post(callback_path, json=auth_callback_body(query["user_id"]))
    assert response.status_code == 200, response.get_data(as_text=True)
    run_pending(app)
    connection: dict[str, Any] = shop.admin("GET", "/connection").get_json()
    return connection
