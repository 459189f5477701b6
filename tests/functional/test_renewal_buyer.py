"""What the buyer of a renewal sees: a mail naming the key and its new end, the renewed key
on the renewal order's page (with its activations), and a mail when keys work again."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from connector.db import db
from connector.jobs import run_pending
from connector.models import License, Mail, Order
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_admin_pages import admin_client, sign_in
from tests.functional.test_renewals_and_payments import renewal_line, subscription_renewal
from tests.licensing_helpers import call

__all__ = ["admin_client"]  # a fixture, used by name


def mails(app: Flask) -> list[Mail]:
    run_pending(app)
    with app.app_context():
        return list(db.session.scalars(select(Mail).order_by(Mail.id)))


def portal_path(shop: WebhookSender, order_id: int) -> str:
    return str(shop.order(order_id)["portal_url"]).removeprefix("http://keygate.test")


def test_a_paid_renewal_mails_the_key_and_its_new_end_once(app: Flask, shop: WebhookSender) -> None:
    shop.configure(501, duration_days=365, update_days=365)
    shop.deliver(wc_order(9801, "completed", [line_item(501)]))
    key = shop.order(9801)["licenses"][0]["key"]
    assert len(mails(app)) == 1

    items = [renewal_line(501, key, 381)]
    shop.deliver(wc_order(9802, "processing", items, modified=5))
    shop.deliver(wc_order(9802, "processing", items, modified=5))  # redelivered
    shop.deliver(wc_order(9802, "completed", items, modified=6))  # completed later
    sent = mails(app)
    assert len(sent) == 2
    renewal_mail = sent[1]
    new_end = shop.order(9801)["licenses"][0]["expires_at"][:10]
    assert renewal_mail.subject == "Your license renewal for order 9802"
    assert key in renewal_mail.body_text
    assert f"now valid until {new_end}" in renewal_mail.body_text
    assert f"updates until {new_end}" in renewal_mail.body_text
    assert renewal_mail.body_html is not None and key in renewal_mail.body_html

    # A refund mails nothing; the renewal paid again is mailed again.
    shop.deliver(wc_order(9802, "refunded", items, modified=10))
    assert len(mails(app)) == 2
    shop.deliver(wc_order(9802, "completed", items, modified=15))
    sent = mails(app)
    assert len(sent) == 3
    assert f"now valid until {new_end}" in sent[2].body_text


def test_the_renewal_orders_page_shows_the_renewed_key_and_frees_its_seats(
    app: Flask, shop: WebhookSender
) -> None:
    shop.configure(501, duration_days=30, activation_limit=1)
    shop.deliver(wc_order(9803, "completed", [line_item(501)]))
    key = shop.order(9803)["licenses"][0]["key"]
    items = [renewal_line(501, key, 382)]
    shop.deliver(wc_order(9804, "processing", items, modified=5))
    assert shop.order(9804)["licenses"] == []  # the admin API's licenses: issued by the order
    call(shop.client, "activate", {"key": key, "site": "renewed-shop.com"})

    page = portal_path(shop, 9804)
    html = shop.client.get(page).get_data(as_text=True)
    assert "Renewed by this order" in html
    assert key in html
    assert "No licenses." not in html
    assert "renewed-shop.com" in html
    assert "Email me my keys and links again" in html
    action = re.search(r'action="([^"]+/deactivate)"', html)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert action and token
    freed = shop.client.post(action.group(1), data={"csrf_token": token.group(1)})
    assert freed.status_code == 302
    assert call(shop.client, "activate", {"key": key, "site": "other.com"}).get_json()["valid"]

    # Refunded, the renewal order no longer shows the key nor reaches its seats.
    shop.deliver(wc_order(9804, "refunded", items, modified=10))
    html = shop.client.get(page).get_data(as_text=True)
    assert key not in html and "Renewed by this order" not in html
    other = re.search(
        r"/activations/([^/\"]+)/deactivate",
        shop.client.get(portal_path(shop, 9803)).get_data(as_text=True),
    )
    assert other
    refused = shop.client.post(
        f"{page}/activations/{other.group(1)}/deactivate", data={"csrf_token": token.group(1)}
    )
    assert refused.status_code == 404


def test_keys_working_again_after_a_cancellation_are_mailed(
    app: Flask, shop: WebhookSender
) -> None:
    shop.configure(501)
    item = line_item(501, line_id=383)
    shop.deliver(wc_order(9805, "processing", [item], modified=1))
    key = shop.order(9805)["licenses"][0]["key"]
    assert len(mails(app)) == 1
    shop.deliver(wc_order(9805, "cancelled", [item], modified=2))
    assert len(mails(app)) == 1  # nothing to give: no mail
    shop.deliver(wc_order(9805, "processing", [item], modified=3))
    shop.deliver(wc_order(9805, "completed", [item], modified=4))
    sent = mails(app)
    assert len(sent) == 2
    assert sent[1].subject == "Your licenses and downloads for order 9805"
    assert key in sent[1].body_text


def test_the_owner_sees_what_a_renewal_order_renews(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9806, "completed", [line_item(501)]))
    key = shop.order(9806)["licenses"][0]["key"]
    shop.deliver(wc_order(9807, "processing", [renewal_line(501, key, 384)], modified=5))
    assert sign_in(admin_client) == 302
    with app.app_context():
        renewal_order = db.session.execute(
            select(Order).where(Order.shop_order_id == "9807")
        ).scalar_one()
        license_id = db.session.execute(select(License.id)).scalar_one()
    html = admin_client.get(f"/admin/orders/{renewal_order.id}").get_data(as_text=True)
    assert "<h2>Renews</h2>" in html
    assert key in html
    assert f"/admin/licenses/{license_id}" in html


def test_paying_a_renewal_of_someone_elses_key_shows_none_of_its_seats(
    app: Flask, shop: WebhookSender
) -> None:
    """A renewal may name any key (the payer typed it): its page shows the key and its new
    end, never where the owner of the key activated it, and frees none of those seats."""
    shop.configure(501, duration_days=30, activation_limit=2)
    shop.deliver(wc_order(9808, "completed", [line_item(501)], customer_id=11))
    key = shop.order(9808)["licenses"][0]["key"]
    call(shop.client, "activate", {"key": key, "site": "victim-intranet.com", "label": "Laptop"})
    owner_page = shop.client.get(portal_path(shop, 9808)).get_data(as_text=True)
    seat = re.search(r'action="([^"]+/activations/([^/"]+)/deactivate)"', owner_page)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', owner_page)
    assert seat and token
    stranger = wc_order(
        9809, "processing", [renewal_line(501, key, 385)], customer_id=22, email="x@example.net"
    )
    shop.deliver(stranger)

    page = portal_path(shop, 9809)
    html = shop.client.get(page).get_data(as_text=True)
    assert "Renewed by this order" in html and key in html
    assert "victim-intranet.com" not in html and "Laptop" not in html
    refused = shop.client.post(
        f"{page}/activations/{seat.group(2)}/deactivate", data={"csrf_token": token.group(1)}
    )
    assert refused.status_code == 404
    assert "victim-intranet.com" in shop.client.get(portal_path(shop, 9808)).get_data(as_text=True)


def test_a_renewal_of_a_paused_license_says_so_in_its_mail(app: Flask, shop: WebhookSender) -> None:
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9810, "completed", [line_item(501)]))
    key = shop.order(9810)["licenses"][0]["key"]
    shop.admin("POST", f"/licenses/{key}/suspend")
    shop.deliver(wc_order(9811, "processing", [renewal_line(501, key, 386)], modified=5))
    [renewal_mail] = [m for m in mails(app) if m.subject.endswith(" 9811")]
    assert renewal_mail.subject == "Your license renewal for order 9811"
    assert "Product 501: renewed, but the license is suspended (paused by the shop" in (
        renewal_mail.body_text
    )
    assert key not in renewal_mail.body_text


def test_a_multi_seat_renewal_mails_every_renewed_key_and_its_new_end(
    app: Flask, shop: WebhookSender
) -> None:
    """A 2-seat subscription's renewal mails the buyer both keys, each with its new end."""
    shop.configure(501, duration_days=30)
    parent = wc_order(9812, "completed", [line_item(501, quantity=2, line_id=387)], customer_id=42)
    shop.deliver(parent)
    shop.deliver(subscription_renewal(9813, 7201, 5, line_item(501, quantity=2, line_id=388)))
    [renewal_mail] = [m for m in mails(app) if m.subject.endswith(" 9813")]
    assert renewal_mail.subject == "Your license renewal for order 9813"
    for license_ in shop.order(9812)["licenses"]:
        assert license_["key"] in renewal_mail.body_text
        assert f"now valid until {license_['expires_at'][:10]}" in renewal_mail.body_text


def test_a_renewal_gives_its_buyer_the_renewed_licenses_downloads(
    app: Flask, shop: WebhookSender
) -> None:
    """A renewal extends the license's download links too: its mail and page give them, with
    their new end, instead of a page saying "No downloads." to the buyer who just paid for
    another period. A stranger paying the renewal of someone's key gets none of them (the
    copies are stamped with the key's buyer's name)."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9830, "completed", [line_item(501)], customer_id=11))
    key = shop.order(9830)["licenses"][0]["key"]
    link = shop.order(9830)["downloads"][0]["link"]
    run_pending(app)

    shop.deliver(wc_order(9831, "processing", [renewal_line(501, key, 391)], customer_id=11))
    [renewal_mail] = [m for m in mails(app) if m.subject.endswith(" 9831")]
    new_end = shop.order(9830)["downloads"][0]["expires_at"]
    shown_end = f"{new_end[:10]} {new_end[11:16]} UTC"
    assert f"  Product 501, manual.pdf: {link} (available until {shown_end})" in (
        renewal_mail.body_text.splitlines()
    )
    assert f'<a href="{link}">manual.pdf</a> (available until {shown_end})' in (
        renewal_mail.body_html or ""
    )
    html = shop.client.get(portal_path(shop, 9831)).get_data(as_text=True)
    assert f'href="{link}"' in html
    assert "No downloads." not in html

    stranger = wc_order(
        9832, "processing", [renewal_line(501, key, 392)], customer_id=22, email="x@example.net"
    )
    shop.deliver(stranger)
    [stranger_mail] = [m for m in mails(app) if m.subject.endswith(" 9832")]
    assert key in stranger_mail.body_text
    assert link not in stranger_mail.body_text and link not in (stranger_mail.body_html or "")
    html = shop.client.get(portal_path(shop, 9832)).get_data(as_text=True)
    assert key in html and link not in html


def test_a_line_renewing_a_key_of_its_own_order_lists_each_link_once(
    app: Flask, shop: WebhookSender
) -> None:
    """A line added to an order to renew the key the order bought (two periods in one
    order): the key's download link is the order's own, listed once on its page and in its
    mail, not again among the renewed license's."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9835, "processing", [line_item(501, line_id=1)]))
    key = shop.order(9835)["licenses"][0]["key"]
    link = shop.order(9835)["downloads"][0]["link"]
    items = [line_item(501, line_id=1), renewal_line(501, key, 393)]
    shop.deliver(wc_order(9835, "processing", items, modified=5))
    assert shop.admin("POST", "/orders/9835/resend").status_code == 202
    resent = mails(app)[-1]
    assert resent.body_text.count(link) == 1
    assert (resent.body_html or "").count(f'href="{link}"') == 1
    assert shop.client.get(portal_path(shop, 9835)).text.count(f'href="{link}"') == 1
