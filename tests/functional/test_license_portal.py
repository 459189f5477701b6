"""The buyer sees where their keys are activated on the portal and can free a seat."""

from __future__ import annotations

import re

from flask import Flask
from sqlalchemy import select

from connector.db import db
from connector.models import Activation, AuditEvent
from connector.tokens import ACTIVATION, DOWNLOAD, PORTAL, sealed_id_token
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_link_tokens import assert_shows_no_id
from tests.licensing_helpers import call

CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


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
    back = shop.client.get(response.headers["Location"]).get_data(as_text=True)
    assert "that seat is free again" in back
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
    activation = re.search(r"/activations/([^/\"]+)/deactivate", html_a)
    assert activation
    path_b = b["portal_url"].removeprefix("http://keygate.test")
    html_b = shop.client.get(path_b).get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html_b)
    assert token
    response = shop.client.post(
        f"{path_b}/activations/{activation.group(1)}/deactivate",
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


def _seated_page(shop: WebhookSender, order_id: int, sites: list[str]) -> tuple[str, str, str]:
    """An order whose key is activated on ``sites``: its page path, the page, its CSRF token."""
    shop.configure(501, activation_limit=len(sites))
    shop.deliver(wc_order(order_id, "processing", [line_item(501)]))
    body = shop.order(order_id)
    for site in sites:
        answer = call(shop.client, "activate", {"key": body["licenses"][0]["key"], "site": site})
        assert answer.get_json()["valid"]
    path = body["portal_url"].removeprefix("http://keygate.test")
    html = shop.client.get(path).get_data(as_text=True)
    token = CSRF.search(html)
    assert token
    return path, html, token.group(1)


def test_deactivate_buttons_show_no_activation_id_and_older_pages_still_work(
    app: Flask, shop: WebhookSender
) -> None:
    """A seat's deactivate button names it sealed: the buyer's page says nothing of how many
    activations the instance has (the API's activation ids are the products' own). A page
    opened before seats were sealed, its button naming the plain id, still frees its seat."""
    path, html, csrf = _seated_page(shop, 9720, ["one.example.com", "two.example.com"])
    with app.app_context():
        seats = dict(db.session.execute(select(Activation.site, Activation.id)).all())
    buttons = re.findall(r"/activations/([^/\"]+)/deactivate", html)
    assert len(buttons) == 2
    for button, seat in zip(
        buttons, (seats["one.example.com"], seats["two.example.com"]), strict=True
    ):
        assert str(seat) not in button.split(".")
        assert_shows_no_id(button, seat, "a")

    sealed = shop.client.post(
        f"{path}/activations/{buttons[0]}/deactivate", data={"csrf_token": csrf}
    )
    assert sealed.status_code == 302
    older = f"{path}/activations/{seats['two.example.com']}/deactivate"
    assert shop.client.post(older, data={"csrf_token": csrf}).status_code == 302
    with app.app_context():
        assert db.session.scalars(select(Activation.site)).all() == []
        details = db.session.scalars(
            select(AuditEvent.detail).where(AuditEvent.action == "license.deactivated")
        ).all()
        assert sorted(d["activation_id"] for d in details) == sorted(seats.values())


def test_a_deactivate_button_tampered_with_is_the_404_page_and_frees_nothing(
    app: Flask, shop: WebhookSender
) -> None:
    """A seat named by anything but its own sealed name or plain id (tampered with, sealed
    for another purpose, no row id at all) gets the friendly 404 page, never a 500."""
    path, html, csrf = _seated_page(shop, 9721, ["seat.example.com"])
    button = re.search(r"/activations/([^/\"]+)/deactivate", html)
    assert button
    sealed = button.group(1)
    with app.app_context():
        seat = db.session.scalars(select(Activation.id)).one()
        other_kinds = [sealed_id_token(purpose, seat) for purpose in (PORTAL, DOWNLOAD)]
        other_seat = sealed_id_token(ACTIVATION, seat + 1)
    flipped = ("A" if sealed[0] != "A" else "B") + sealed[1:]
    for activation in (
        flipped,
        sealed.split(".")[0],
        *other_kinds,
        other_seat,
        "0",
        "-1",
        "99999999999999999999",
        "2147483648",  # past the id column's type (PostgreSQL's integer): no row id
        "9223372036854775807",
        "9" * 5000,
        "\u0661\u0662",  # Arabic-Indic digits: no plain id
    ):
        answer = shop.client.post(
            f"{path}/activations/{activation}/deactivate", data={"csrf_token": csrf}
        )
        assert answer.status_code == 404, activation
        assert answer.mimetype == "text/html", activation
    with app.app_context():
        assert db.session.scalars(select(Activation.site)).all() == ["seat.example.com"]


def test_the_page_of_an_order_of_many_seats_asks_the_database_a_few_times(
    app: Flask, shop: WebhookSender
) -> None:
    """An order of 40 seats (a quantity may be 10,000) opens its page with the same few
    queries as an order of 2, not two per license: a large buyer's page must not time out.
    Every seat's activation is still listed."""
    from sqlalchemy import event

    shop.configure(501, activation_limit=1)
    engine = app.extensions["keygate.db"].engine

    def page_queries(order_id: int, quantity: int) -> tuple[int, str]:
        shop.deliver(wc_order(order_id, "processing", [line_item(501, quantity=quantity)]))
        body = shop.order(order_id)
        for n, lic in enumerate(body["licenses"]):
            call(shop.client, "activate", {"key": lic["key"], "site": f"s{order_id}-{n}.com"})
        queries: list[str] = []

        def note(*args: object) -> None:
            queries.append(str(args[2]))

        event.listen(engine, "before_cursor_execute", note)
        try:
            html = shop.client.get(body["portal_url"].removeprefix("http://keygate.test")).text
        finally:
            event.remove(engine, "before_cursor_execute", note)
        return len(queries), html

    few, _ = page_queries(9720, 2)
    many, html = page_queries(9721, 40)
    assert many == few
    assert all(f"s9721-{n}.com" in html for n in range(40))


def _page_text(html: str) -> str:
    """The page as read: tags dropped, whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", html).split()).replace(" :", ":").replace(" .", ".")


def test_the_portal_says_how_many_activations_each_key_uses_of_its_limit(
    shop: WebhookSender,
) -> None:
    """A buyer told TOO_MANY_ACTIVATIONS sees, beside where each active key is activated,
    "N of M activations used" (or unlimited), counted as the server counts seats: a staging
    site is free while the policy says so, and takes a seat when it does not."""
    shop.configure(501, activation_limit=2)  # staging_free by default
    shop.configure(502)  # no limit
    shop.configure(503, activation_limit=3, staging_free=False)
    shop.deliver(wc_order(9790, "processing", [line_item(501), line_item(502), line_item(503)]))
    body = shop.order(9790)
    keys = {lic["product_id"]: lic["key"] for lic in body["licenses"]}
    portal_path = body["portal_url"].removeprefix("http://keygate.test")
    for site in ("site-a.com", "site-b.com", "localhost"):
        assert call(shop.client, "activate", {"key": keys["501"], "site": site}).get_json()["valid"]
    refused = call(shop.client, "activate", {"key": keys["501"], "site": "site-c.com"}).get_json()
    assert refused["code"] == "TOO_MANY_ACTIVATIONS"
    assert call(shop.client, "activate", {"key": keys["502"], "site": "a.com"}).get_json()["valid"]
    assert call(shop.client, "activate", {"key": keys["503"], "site": "dev.shop.com"}).get_json()[
        "valid"
    ]

    html = shop.client.get(portal_path).get_data(as_text=True)
    text = _page_text(html)
    assert f"Product 501 {keys['501']}: 2 of 2 activations used." in text, text
    assert "All in use: deactivate one below to use this key elsewhere." in text
    assert f"Product 502 {keys['502']}: 1 activation used, no limit." in text
    assert f"Product 503 {keys['503']}: 1 of 3 activations used." in text  # staging counted
    assert text.count("All in use") == 1

    # The seat freed on the page is counted free at once, as the API counts it.
    action = re.search(r'action="([^"]+/deactivate)"[^>]*>\s*<input[^>]*value="([^"]+)"', html)
    assert action
    freed = shop.client.post(action.group(1), data={"csrf_token": action.group(2)})
    assert freed.status_code == 302
    text = _page_text(shop.client.get(portal_path).get_data(as_text=True))
    assert f"Product 501 {keys['501']}: 1 of 2 activations used." in text, text
    assert "All in use" not in text
