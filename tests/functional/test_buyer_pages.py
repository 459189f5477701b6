"""What a buyer reads: portal, mails and download refusals say what happened, in words a
buyer understands (found by a buyer's-eye audit)."""

from __future__ import annotations

import datetime as dt
import re

from flask import Flask
from sqlalchemy import select, update

from connector.db import db, utcnow
from connector.jobs import run_pending
from connector.models import DownloadGrant, License, Mail
from tests.factories import WebhookSender, line_item, shifted, wc_order
from tests.licensing_helpers import call

BASE = "http://keygate.test"


def _csrf(html: str) -> str:
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert token, html
    return token.group(1)


def _last_mail(app: Flask) -> str:
    run_pending(app)
    with app.app_context():
        body = db.session.scalars(select(Mail.body_text).order_by(Mail.id.desc())).first()
    assert body is not None
    return body


def test_a_download_the_owner_withdrew_is_not_called_a_refund(shop: WebhookSender) -> None:
    """An owner's revocation ends the links with words that fit it (not "refunded")."""
    shop.configure(501)
    shop.deliver(wc_order(9900, "processing", [line_item(501)]))
    body = shop.order(9900)
    assert shop.admin("POST", f"/licenses/{body['licenses'][0]['key']}/revoke").status_code == 200
    page = shop.client.get(body["downloads"][0]["link"].removeprefix(BASE))
    assert page.status_code == 410
    html = page.get_data(as_text=True)
    assert "withdrawn" in html
    assert "paused or ended" in html


def test_the_download_limit_page_does_not_say_to_wait(shop: WebhookSender) -> None:
    """Waiting never brings a used-up link back: the page says to ask the shop."""
    shop.configure(501, download_limit=1)
    shop.deliver(wc_order(9901, "processing", [line_item(501)]))
    link = shop.order(9901)["downloads"][0]["link"].removeprefix(BASE)
    with shop.client.application.app_context():
        db.session.execute(update(DownloadGrant).values(download_count=1))
        db.session.commit()
    page = shop.client.get(link)
    assert page.status_code == 429
    html = page.get_data(as_text=True)
    assert (
        'Contact <a href="https://shop.example">Test Shop</a> if you need more downloads.' in html
    )
    assert "wait" not in html


def test_an_expired_license_reads_expired_on_the_portal_and_in_mail(
    app: Flask, shop: WebhookSender
) -> None:
    """The stored status stays "active" past the end (a renewal extends it): the buyer
    reads "expired", and a mail says when it expired instead of "valid until"."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9902, "processing", [line_item(501)]))
    body = shop.order(9902)
    with app.app_context():
        db.session.execute(update(License).values(expires_at=utcnow() - dt.timedelta(days=3)))
        db.session.commit()
    portal = body["portal_url"].removeprefix(BASE)
    html = shop.client.get(portal).get_data(as_text=True)
    assert '<td data-label="Status">expired</td>' in html
    assert '<td data-label="Status">active</td>' not in html
    assert shop.client.post(portal + "/resend", data={"csrf_token": _csrf(html)}).status_code == 302
    text = _last_mail(app)
    assert "expired on" in text
    assert "valid until" not in text


def test_downloads_of_several_products_and_copies_are_told_apart(
    app: Flask, shop: WebhookSender
) -> None:
    """Two products with a file of the same name, one bought twice: each link names its
    product, and the second copy says so, on the portal and in the mail."""
    manual = [{"object_key": "files/manual.pdf", "filename": "manual.pdf"}]
    shop.configure(501, files=manual)
    shop.configure(502, files=manual)
    shop.deliver(
        wc_order(
            9903,
            "processing",
            [line_item(501, line_id=1, quantity=2), line_item(502, line_id=2)],
        )
    )
    portal = shop.order(9903)["portal_url"].removeprefix(BASE)
    html = shop.client.get(portal).get_data(as_text=True).split("<h2>Downloads</h2>")[1]
    assert html.count("<td>Product 501</td>") == 1
    assert 'Product 501 <span class="muted">(copy 2)</span>' in html
    assert "<td>Product 502</td>" in html
    text = _last_mail(app)
    assert "Product 501, manual.pdf: " in text
    assert "Product 501 (copy 2), manual.pdf: " in text
    assert "Product 502, manual.pdf: " in text


def test_a_site_with_an_idna_name_is_shown_as_the_buyer_knows_it(shop: WebhookSender) -> None:
    """A buyer knows their site as bücher.example, not as the xn--bcher-kva.example it is
    kept in: both are shown (the ASCII form tells a look-alike host apart)."""
    shop.configure(501)
    shop.deliver(wc_order(9905, "processing", [line_item(501)]))
    body = shop.order(9905)
    key, portal = body["licenses"][0]["key"], body["portal_url"].removeprefix(BASE)
    call(shop.client, "activate", {"key": key, "site": "https://www.Bücher.example/shop"})
    call(shop.client, "activate", {"key": key, "site": "shop.example.org"})
    html = shop.client.get(portal).get_data(as_text=True)
    # In its own direction: a right-to-left host does not reorder the cell around it.
    assert 'data-label="Site"><bdi>bücher.example (xn--bcher-kva.example)</bdi> <span' in html
    assert 'aria-label="Deactivate on bücher.example (xn--bcher-kva.example)"' in html
    assert 'data-label="Site"><bdi>shop.example.org</bdi></td>' in html  # an ASCII host as it is


def test_the_last_deactivation_is_confirmed_and_deactivation_is_rate_limited(
    shop: WebhookSender,
) -> None:
    """Freeing the only seat still says it worked (the activations table is gone then);
    deactivations from one address are limited like the portal's other buttons."""
    shop.configure(501)
    shop.deliver(wc_order(9904, "processing", [line_item(501)]))
    body = shop.order(9904)
    key, portal = body["licenses"][0]["key"], body["portal_url"].removeprefix(BASE)
    call(shop.client, "activate", {"key": key, "site": "https://shop.example.org/"})
    html = shop.client.get(portal).get_data(as_text=True)
    action = re.search(r'action="([^"]+/deactivate)"', html)
    assert action is not None
    assert 'aria-label="Deactivate on shop.example.org"' in html
    form = {"csrf_token": _csrf(html)}
    done = shop.client.post(action.group(1), data=form)
    assert done.status_code == 302
    after = shop.client.get(done.headers["Location"]).get_data(as_text=True)
    assert "Deactivated: that seat is free again." in after
    assert "Where your licenses are activated" not in after
    answers = [shop.client.post(action.group(1), data=form).status_code for _ in range(30)]
    assert set(answers[:29]) == {404}  # nothing left to deactivate, but each one counted
    assert answers[29] == 429


def test_a_refunded_orders_portal_offers_no_empty_mail(shop: WebhookSender) -> None:
    """After a refund nothing of the order works: the portal says so instead of offering
    to mail "thank you for your order" with no key or link in it."""
    shop.configure(501)
    item = line_item(501, line_id=91)
    shop.deliver(wc_order(9905, "processing", [item], modified=1))
    portal = shop.order(9905)["portal_url"].removeprefix(BASE)
    assert "Email me my keys and links again" in shop.client.get(portal).get_data(as_text=True)
    shop.deliver(wc_order(9905, "refunded", [item], modified=2))
    html = shop.client.get(portal).get_data(as_text=True)
    assert "Email me my keys and links again" not in html
    assert "nothing to email" in html


def test_the_mail_and_portal_say_the_hour_and_zone_of_an_end(
    app: Flask, shop: WebhookSender
) -> None:
    """A license paid at 03:00 UTC ends at 03:00 UTC: in Honolulu (UTC-10) the evening
    before. "Valid until 2027-11-20" alone promises a day the buyer west of UTC does not
    get; the mail and the portal give the moment the API gives, hour and zone said, and
    the mail says until when each link works too."""
    shop.configure(501, duration_days=365, download_days=30)
    order = wc_order(9905, "processing", [line_item(501)])
    order["date_paid"] = shifted("2026-11-19T17:00:00")  # the shop's own time, Pacific/Honolulu
    order["date_paid_gmt"] = shifted("2026-11-20T03:00:00")
    shop.deliver(order)
    body = shop.order(9905)
    assert body["licenses"][0]["expires_at"] == shifted("2027-11-20T03:00:00Z")
    assert body["downloads"][0]["expires_at"] == shifted("2026-12-20T03:00:00Z")
    text = _last_mail(app)
    assert shifted("(valid until 2027-11-20 03:00 UTC)") in text
    assert shifted("available until 2026-12-20 03:00 UTC") in text
    with app.app_context():
        html_mail = db.session.scalars(select(Mail.body_html)).one()
    assert shifted("(valid until 2027-11-20 03:00 UTC)") in html_mail
    assert shifted("available until 2026-12-20 03:00 UTC") in html_mail
    page = shop.client.get(body["portal_url"].removeprefix(BASE)).get_data(as_text=True)
    assert shifted('<td data-label="Valid until">2027-11-20 03:00 UTC</td>') in page
    assert shifted('<td data-label="Available until">2026-12-20 03:00 UTC</td>') in page


def test_a_link_whose_download_was_removed_is_not_called_invalid(
    app: Flask, shop: WebhookSender
) -> None:
    """The shop deleted its store in Keygate (its orders and links with it): the buyer's
    link is authentic and whole, so its page says the download was removed and to ask the
    shop, not that the link is not valid (the buyer would copy it again, and again)."""
    from connector.models import Store
    from connector.privacy.store_deletion import delete_store
    from tests.functional.test_downloads import get, link_path, put_file

    put_file(app, "files/removed.pdf", b"%PDF-1.4 removed")
    shop.configure(501, files=[{"object_key": "files/removed.pdf", "filename": "removed.pdf"}])
    shop.deliver(wc_order(9906, "processing", [line_item(501)]))
    path = link_path(shop.order(9906)["downloads"][0])
    assert get(shop.client, path).status_code == 200
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        delete_store(db.session, store, actor="test")
        db.session.commit()
    for answer in (get(shop.client, path), shop.client.head(path)):
        assert (answer.status_code, answer.mimetype) == (404, "text/html")
    page = get(shop.client, path).get_data(as_text=True)
    assert "This download no longer exists" in page
    assert "Contact the shop" in page and "not valid" not in page
    tampered = get(shop.client, path[:-2] + ("xx" if not path.endswith("xx") else "yy"))
    assert "not valid" in tampered.get_data(as_text=True)  # a link that is not whole still is


def test_a_revoked_key_is_not_said_to_be_valid_for_life(shop: WebhookSender) -> None:
    """A refunded order's keys read "revoked": their row no longer says "lifetime" or
    "valid until" a date they will never see; a paused key keeps its end (the shop may
    reinstate it)."""
    shop.configure(501)  # lifetime
    shop.configure(502, duration_days=365)
    shop.configure(503, duration_days=365)
    items = [line_item(501, line_id=1), line_item(502, line_id=2)]
    shop.deliver(wc_order(9907, "processing", items, modified=1))
    shop.deliver(wc_order(9908, "processing", [line_item(503, line_id=3)], modified=1))
    paused = shop.order(9908)["licenses"][0]
    assert shop.admin("POST", f"/licenses/{paused['key']}/suspend").status_code == 200
    shop.deliver(wc_order(9907, "refunded", items, modified=2))

    def ends(order_id: int) -> list[str]:
        portal = shop.order(order_id)["portal_url"].removeprefix(BASE)
        html = shop.client.get(portal).get_data(as_text=True)
        return re.findall(r'data-label="Valid until">([^<]*)<', html)

    assert ends(9907) == ["—", "—"]
    end = paused["expires_at"]
    assert ends(9908) == [f"{end[:10]} {end[11:16]} UTC"]


def test_a_key_refunded_from_an_order_that_stands_is_not_said_to_be_of_a_refunded_order(
    shop: WebhookSender,
) -> None:
    """Two seats bought, one refunded (WooCommerce keeps the order processing): the buyer's
    page says that one was refunded or removed from the order, not that "the order that
    bought it was refunded or cancelled" while the other key of that same order works."""
    shop.configure(501)
    shop.deliver(wc_order(9909, "processing", [line_item(501, quantity=2, line_id=1)]))
    shop.deliver(wc_order(9909, "processing", [line_item(501, quantity=1, line_id=1)], modified=5))
    body = shop.order(9909)
    assert [lic["status"] for lic in body["licenses"]] == ["active", "revoked"]
    html = shop.client.get(body["portal_url"].removeprefix(BASE)).get_data(as_text=True)
    assert "this one was refunded or removed from the order" in html
    assert "the order that bought it was refunded or cancelled" not in html
