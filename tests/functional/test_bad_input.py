"""Input no database could store the same way on both backends is a clear 4xx, never a 500.

PostgreSQL's text types refuse a NUL character (SQLite keeps it) and nothing can encode half
of a surrogate pair; JSON nested past the parser's stack is a RecursionError, not a
ValueError. Each is refused where it comes in: the field (422, named), the address or a
page's form (400), the body (400). Every case runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from connector.db import db
from connector.models import Product
from tests.factories import WebhookSender
from tests.functional.test_admin_pages import PASSWORD, admin_client, csrf_token
from tests.licensing_helpers import issue_key

__all__ = ["admin_client"]

NESTED = b"[" * 5000  # never closed: the parser runs out of stack first


def test_nul_or_half_a_surrogate_in_a_field_is_422_naming_it(
    app: Flask, shop: WebhookSender, client: FlaskClient
) -> None:
    key = issue_key(shop)
    label = client.post(
        "/api/v1/licenses/activate", json={"key": key, "site": "buyer.com", "label": "a\x00"}
    )
    assert label.status_code == 422
    assert label.get_json()["field"] == "label"
    assert "NUL" in label.get_json()["detail"]
    assert "Keygate-Signature" in label.headers  # license answers stay signed
    surrogate = client.post(
        "/api/v1/licenses/activate",
        data=json.dumps({"key": key, "site": "buyer.com", "label": "\ud800"}),
        content_type="application/json",
    )
    assert surrogate.status_code == 422
    assert surrogate.get_json()["field"] == "label"
    name = shop.admin("PUT", "/products/501", {"name": "Plugin\x00Pro"})
    assert name.status_code == 422
    assert name.get_json()["field"] == "name"
    # Nothing was half-written: the product keeps its name, the key has no activation.
    with app.app_context():
        assert db.session.scalars(select(Product.name)).all() == ["Product 501"]
    activations = shop.admin("GET", f"/licenses/{key}").get_json()["activations"]
    assert activations == []


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/admin/licenses?email=a%00b@example.org",
        "/api/v1/admin/customers/a%00b@example.org/export",
        "/api/v1/admin/products/5%0001",
    ],
)
def test_nul_in_an_api_address_is_a_400_problem(shop: WebhookSender, path: str) -> None:
    response = shop.client.get(path, headers={"Authorization": f"Bearer {shop.store.api_token}"})
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert "NUL" in response.get_json()["detail"]


@pytest.mark.parametrize("path", ["/d/a%00b", "/my/a%00b", "/admin/orders?email=%00"])
def test_nul_in_a_page_address_is_a_friendly_400_page(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert "NUL" in response.get_data(as_text=True)


def test_nul_in_a_page_form_is_a_friendly_400_page(admin_client: FlaskClient) -> None:
    token = csrf_token(admin_client, "/admin/login")
    response = admin_client.post(
        "/admin/login", data={"username": "own\x00er", "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 400
    assert response.mimetype == "text/html"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/admin/products/501",
        "/api/v1/admin/products/501/releases",
        "/api/v1/licenses/validate",
        "/webhooks/woocommerce/{store}/auth-callback",
    ],
)
def test_json_nested_past_the_stack_is_a_400(shop: WebhookSender, app: Flask, path: str) -> None:
    path = path.format(store=shop.store.store.public_id)
    method = "PUT" if path.endswith("/501") else "POST"
    response = shop.client.open(
        path,
        method=method,
        data=NESTED,
        content_type="application/json",
        headers={"Authorization": f"Bearer {shop.store.api_token}"},
    )
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
