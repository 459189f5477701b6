"""The buyer sees where their keys are activated on the portal and can free a seat."""

from __future__ import annotations

import re

from flask import Flask
from sqlalchemy import select

from connector.db import db
from connector.models import Activation, AuditEvent
from tests.factories import WebhookSender, line_item, wc_order
from tests.licensing_helpers import call


def test_portal_lists_activations_and_deactivates_one(app: Flask, shop: WebhookSender) -> None:
    shop.configure(501, activation_limit=1)
    shop.deliver(wc_order(9700, "processing", [line_item(501)]))
    body = shop.order(9700)
    key = body["licenses"][0]["key"]
    portal_path = body["portal_url"].removeprefix("http://keygate.test")
    assert "Where your licenses are activated" not in shop.client.get(portal_path).get_data(
        as_text=True
    )

    call(shop.client, "activate", {"key": key, "site": "https://www.bücher.de/", "label": "Shop"})
    html = shop.client.get(portal_path).get_data(as_text=True)
    assert "xn--bcher-kva.de" in html
    action = re.search(r'action="([^"]+/deactivate)"', html)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert action and token
    assert shop.client.post(action.group(1)).status_code == 400  # no CSRF token
    response = shop.client.post(action.group(1), data={"csrf_token": token.group(1)})
    assert response.status_code == 302
    assert "deactivated=1" in response.headers["Location"]
    again = shop.client.post(action.group(1), data={"csrf_token": token.group(1)})
    assert again.status_code == 404

    assert call(shop.client, "activate", {"key": key, "site": "other.com"}).get_json()["valid"]
    with app.app_context():
        actions = db.session.scalars(select(AuditEvent.action)).all()
        assert "license.deactivated" in actions


def test_a_stale_deactivate_button_never_frees_another_sites_seat(
    app: Flask, shop: WebhookSender
) -> None:
    """A portal page opened before its seat was freed, its "Deactivate on site-a.com" used
    again after the license moved to site-b.com: site-b keeps its seat. On SQLite the new
    activation took the freed one's id (activations were not AUTOINCREMENT), and the old
    button removed site-b's activation."""
    shop.configure(501, activation_limit=3)
    shop.deliver(wc_order(9703, "processing", [line_item(501)]))
    body = shop.order(9703)
    key = body["licenses"][0]["key"]
    portal_path = body["portal_url"].removeprefix("http://keygate.test")
    assert (
        call(shop.client, "activate", {"key": key, "site": "https://site-a.com"}).status_code == 200
    )
    html = shop.client.get(portal_path).get_data(as_text=True)
    action = re.search(r'action="([^"]+/deactivate)"', html)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert action and token
    form = {"csrf_token": token.group(1)}
    assert shop.client.post(action.group(1), data=form).status_code == 302
    assert (
        call(shop.client, "activate", {"key": key, "site": "https://site-b.com"}).status_code == 200
    )

    assert shop.client.post(action.group(1), data=form).status_code == 404  # the other tab's
    with app.app_context():
        assert db.session.scalars(select(Activation.site)).all() == ["site-b.com"]


def test_another_orders_token_cannot_deactivate(shop: WebhookSender) -> None:
    """An activation of order A is not reachable through order B's portal token."""
    shop.configure(501, activation_limit=1)
    shop.deliver(wc_order(9701, "processing", [line_item(501)]))
    shop.deliver(wc_order(9702, "processing", [line_item(501)]))
    a, b = shop.order(9701), shop.order(9702)
    call(shop.client, "activate", {"key": a["licenses"][0]["key"], "site": "a-shop.com"})
    html_a = shop.client.get(a["portal_url"].removeprefix("http://keygate.test")).get_data(
        as_text=True
    )
    activation_id = re.search(r"/activations/(\d+)/deactivate", html_a)
    assert activation_id
    path_b = b["portal_url"].removeprefix("http://keygate.test")
    html_b = shop.client.get(path_b).get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html_b)
    assert token
    response = shop.client.post(
        f"{path_b}/activations/{activation_id.group(1)}/deactivate",
        data={"csrf_token": token.group(1)},
    )
    assert response.status_code == 404


def test_the_portal_says_why_a_license_stopped_working(shop: WebhookSender) -> None:
    """A buyer who freed seats until the abuse signal paused the key reads why, and what to
    do, instead of a bare "suspended"; so does one whose key the owner or a refund took."""
    shop.configure(501, activation_limit=1, abuse_threshold=2, abuse_suspend=True)
    shop.deliver(wc_order(9710, "processing", [line_item(501)]))
    body = shop.order(9710)
    key = body["licenses"][0]["key"]
    portal_path = body["portal_url"].removeprefix("http://keygate.test")
    call(shop.client, "activate", {"key": key, "site": "first.com"})
    html = shop.client.get(portal_path).get_data(as_text=True)
    assert "unusually often" not in html
    action = re.search(r'action="([^"]+/deactivate)"', html)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert action and token
    shop.client.post(action.group(1), data={"csrf_token": token.group(1)})
    call(shop.client, "activate", {"key": key, "site": "second.com"})  # the 3rd change
    html = shop.client.get(portal_path).get_data(as_text=True)
    assert "suspended" in html
    assert "activations changed unusually often; the shop can reinstate it" in html

    shop.deliver(wc_order(9711, "processing", [line_item(501)]))
    other = shop.order(9711)
    shop.admin("POST", f"/licenses/{other['licenses'][0]['key']}/revoke")
    html = shop.client.get(other["portal_url"].removeprefix("http://keygate.test")).get_data(
        as_text=True
    )
    assert "withdrawn by the shop; contact them" in html
    shop.deliver(wc_order(9711, "refunded", [line_item(501)], modified=5))
    html = shop.client.get(other["portal_url"].removeprefix("http://keygate.test")).get_data(
        as_text=True
    )
    assert "withdrawn by the shop" in html  # the owner's revocation stays what it was

    shop.deliver(wc_order(9712, "processing", [line_item(501)]))
    shop.deliver(wc_order(9712, "refunded", [line_item(501)], modified=5))
    refunded = shop.order(9712)["portal_url"].removeprefix("http://keygate.test")
    assert "the order that bought it was refunded or cancelled" in shop.client.get(
        refunded
    ).get_data(as_text=True)
