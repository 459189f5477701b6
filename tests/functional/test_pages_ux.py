"""The admin and buyer pages as a person meets them in a browser (found by clicking through
them in Chromium): a form left open too long, a dropped cookie, a limit reached, a refused
form, a button on a stale page."""

from __future__ import annotations

import re
import time

import pytest
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner
from sqlalchemy import select, update

from connector.admin.attention import counted
from connector.audit import record_audit
from connector.db import db, utcnow
from connector.errors import wait_in_words
from connector.models import DownloadGrant, License, Mail, Order, Store
from connector.stores import create_store
from connector.tokens import portal_url
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_admin_pages import PASSWORD, admin_client, csrf_token, sign_in
from tests.licensing_helpers import call

__all__ = ["admin_client"]

BASE = "http://keygate.test"


def _csrf(html: str) -> str:
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert token, html
    return token.group(1)


def _portal(shop: WebhookSender, order_id: int) -> tuple[str, str]:
    """A paid order's portal path and its first license key."""
    shop.configure(501, activation_limit=3)
    shop.deliver(wc_order(order_id, "processing", [line_item(501)]))
    body = shop.order(order_id)
    return body["portal_url"].removeprefix(BASE), body["licenses"][0]["key"]


def _license_id(app: Flask) -> int:
    with app.app_context():
        return db.session.scalars(select(License.id)).one()


def test_a_form_sent_after_signing_out_in_another_tab_leads_to_the_sign_in(
    admin_client: FlaskClient,
) -> None:
    """Signed out in one tab, a form still open in another is sent: the admin is asked to
    sign in again, and comes back to the form's page, not shown "Bad Request: The CSRF
    tokens do not match"."""
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, "/admin/password")
    assert admin_client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    csrf_token(admin_client, "/admin/login")  # the sign-in page the other tab now shows

    answer = admin_client.post(
        "/admin/password",
        data={"csrf_token": token, "current": PASSWORD, "new": "x" * 12, "repeat": "x" * 12},
    )

    assert "CSRF" not in answer.get_data(as_text=True)
    assert answer.status_code == 302
    assert answer.headers["Location"] == "/admin/login?next=/admin/password"
    login = _csrf(admin_client.get("/admin/login").get_data(as_text=True))
    signed_in = admin_client.post(
        "/admin/login?next=/admin/password",
        data={"username": "owner", "password": PASSWORD, "csrf_token": login},
    )
    assert signed_in.headers["Location"] == "/admin/password"


def test_a_button_sent_after_signing_out_comes_back_to_its_page_after_the_sign_in(
    app: Flask, shop: WebhookSender, admin_client: FlaskClient
) -> None:
    """A button posts to an address that is no page (``.../revoke``): the sign-in leads
    back to the page the button was on."""
    _portal(shop, 9960)
    license_id = _license_id(app)
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, f"/admin/licenses/{license_id}")
    admin_client.post("/admin/logout", data={"csrf_token": token})
    csrf_token(admin_client, "/admin/login")

    answer = admin_client.post(f"/admin/licenses/{license_id}/revoke", data={"csrf_token": token})

    assert answer.status_code == 302
    assert answer.headers["Location"] == f"/admin/login?next=/admin/licenses/{license_id}"


def test_a_stale_form_of_a_signed_in_admin_says_to_reload(admin_client: FlaskClient) -> None:
    """Signed out and back in while a form stayed open: its token is stale, the admin is
    signed in. The page says to reload and leads back to the form's page."""
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, "/admin/password")
    admin_client.post("/admin/logout", data={"csrf_token": token})
    assert sign_in(admin_client) == 302

    answer = admin_client.post("/admin/password", data={"csrf_token": token, "current": "x"})

    assert answer.status_code == 400
    html = answer.get_data(as_text=True)
    assert "CSRF" not in html and "Bad Request" not in html
    assert "reload the page and try again" in html
    assert 'href="/admin/password"' in html


def test_a_sign_in_form_left_open_is_shown_again(admin_client: FlaskClient) -> None:
    """The sign-in page itself, its cookie gone: shown again with a word on why, the name
    as typed, and still leading where it was to lead once sent again."""
    token = csrf_token(admin_client, "/admin/login")
    admin_client.delete_cookie("session")
    typed = {"username": "owner", "password": PASSWORD}

    answer = admin_client.post(
        "/admin/login?next=/admin/orders", data={**typed, "csrf_token": token}
    )

    assert answer.status_code == 400
    html = answer.get_data(as_text=True)
    assert "CSRF" not in html and "open too long" in html
    assert 'value="owner"' in html and PASSWORD not in html
    again = admin_client.post(
        "/admin/login?next=/admin/orders", data={**typed, "csrf_token": _csrf(html)}
    )
    assert again.headers["Location"] == "/admin/orders"


def test_a_buyer_whose_browser_dropped_its_cookie_is_told_what_to_do(
    shop: WebhookSender,
) -> None:
    """A phone's browser drops the session cookie of a page left open (the app closed and
    the tab restored): "Email me my keys and links again" then says to reload the order
    page and leads back to it, not "Bad Request: The CSRF session token is missing"."""
    portal, _ = _portal(shop, 9951)
    token = _csrf(shop.client.get(portal).get_data(as_text=True))
    shop.client.delete_cookie("session")

    answer = shop.client.post(portal + "/resend", data={"csrf_token": token})

    assert answer.status_code == 400
    html = answer.get_data(as_text=True)
    assert "CSRF" not in html and "Bad Request" not in html
    assert "did not keep its cookie" in html
    assert f'href="{portal}"' in html


def test_the_expired_pages_button_without_its_cookie_leads_back_to_that_page(
    shop: WebhookSender,
) -> None:
    """ "Email me a fresh link" on the expired page, and the deactivate button, sent
    without the cookie (or with a wrong token) lead back to the page they were on, whatever
    the Referer says."""
    portal, _ = _portal(shop, 9952)
    for path in (f"{portal}/renew", f"{portal}/activations/1/deactivate"):
        answer = shop.client.post(
            path, data={"csrf_token": "stale"}, headers={"Referer": "https://evil.example/"}
        )
        assert answer.status_code == 400
        html = answer.get_data(as_text=True)
        assert f'href="{portal}"' in html
        assert "evil.example" not in html


def test_the_resend_limit_page_says_how_long_and_leads_back_to_the_order(
    shop: WebhookSender,
) -> None:
    """The fourth "mail me again" in an hour: the buyer reads when to try again in words
    matching Retry-After (not the limiter's "3 per 1 hour" followed by "wait a moment") and
    finds the way back to the order page, whose keys and links still work."""
    portal, _ = _portal(shop, 9953)
    token = _csrf(shop.client.get(portal).get_data(as_text=True))
    for _ in range(3):
        assert shop.client.post(portal + "/resend", data={"csrf_token": token}).status_code == 302

    answer = shop.client.post(portal + "/resend", data={"csrf_token": token})

    assert answer.status_code == 429
    html = answer.get_data(as_text=True)
    assert "per 1 hour" not in html and "a moment" not in html
    assert f"You can ask again in {wait_in_words(int(answer.headers['Retry-After']))}." in html
    assert "The keys and links on your order page still work." in html
    assert f'href="{portal}"' in html


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (1, "about a minute"),
        (60, "about a minute"),
        (61, "about 2 minutes"),
        (2400, "about 40 minutes"),
        (3599, "about an hour"),
        (3600, "about an hour"),
        (5000, "about 84 minutes"),
        (7200, "about 2 hours"),
        (3 * 3600, "about 3 hours"),
        (3 * 86400, "about 3 days"),
    ],
)
def test_a_wait_is_said_in_words_never_shorter_than_it_is(seconds: int, words: str) -> None:
    assert wait_in_words(seconds) == words


def test_the_sign_in_limit_says_how_long_in_the_same_words(admin_client: FlaskClient) -> None:
    """The sign-in's own 429 (an account's budget spent) and the per-address limit say
    when to try again in the words the portal uses, matching Retry-After."""
    for _ in range(10):
        assert sign_in(admin_client, "wrong") == 401
    answer = admin_client.post(
        "/admin/login",
        data={
            "username": "owner",
            "password": "x",
            "csrf_token": csrf_token(admin_client, "/admin/login"),
        },
    )
    assert answer.status_code == 429
    html = answer.get_data(as_text=True)
    assert f"try again in {wait_in_words(int(answer.headers['Retry-After']))}" in html
    assert "minute(s)" not in html and "per 1 minute" not in html


def test_the_order_page_fits_a_phone(shop: WebhookSender) -> None:
    """At 375px the order page's tables become one card per row (each cell on its own
    line, named), inside a box that scrolls sideways rather than the page; a key breaks
    inside its box. Checked in Chromium at 375px: nothing wider than the screen."""
    portal, key = _portal(shop, 9954)
    assert (
        call(shop.client, "activate", {"key": key, "site": "https://site-a.com"}).status_code == 200
    )

    html = shop.client.get(portal).get_data(as_text=True)

    assert f'<code class="key">{key}</code>' in html
    assert html.count('<div class="table-wrap"><table class="stack">') == 3  # keys, seats, files
    assert '<td data-label="Site">' not in html  # every long cell may break
    assert 'data-label="Since"' in html and 'data-label="Downloads left"' in html
    css = re.search(r"<style>(.*?)</style>", html, re.S)
    assert css
    rules = re.sub(r"\s+", " ", css.group(1))
    assert ".table-wrap { overflow-x: auto;" in rules
    assert "code.key { overflow-wrap: anywhere; }" in rules
    assert (
        "@media (max-width: 30rem)" in rules and "table.stack tr.head { display: none; }" in rules
    )


def test_the_admin_pages_use_a_desktops_width_and_the_buyers_pages_a_readable_one(
    shop: WebhookSender, admin_client: FlaskClient
) -> None:
    """An owner reads the audit log's details, the clicks and the activations on a desktop:
    46rem folded every time into four lines. A buyer's page keeps its reading width."""
    shop.configure(501)
    shop.deliver(wc_order(9930, "processing", [line_item(501)]))
    portal = shop.order(9930)["portal_url"].removeprefix(BASE)
    assert sign_in(admin_client) == 302
    for path in ("/admin/", "/admin/audit", "/admin/licenses"):
        assert '<body class="wide">' in admin_client.get(path).get_data(as_text=True), path
    buyer = shop.client.get(portal).get_data(as_text=True)
    assert "<body>" in buyer
    rules = re.sub(r"\s+", " ", buyer)
    assert "body.wide { max-width: 76rem; }" in rules and "max-width: 46rem;" in rules


def test_a_paused_license_can_be_revoked_from_its_page(
    app: Flask, shop: WebhookSender, admin_client: FlaskClient
) -> None:
    """The API revokes a suspended key; the license page (and the order page) offered only
    "Reinstate", so an owner had to open the key again (links and checks working
    meanwhile) to revoke it. A revoked key offers no Revoke."""
    _, key = _portal(shop, 9955)
    assert shop.admin("POST", f"/licenses/{key}/suspend").status_code == 200
    license_id = _license_id(app)
    assert sign_in(admin_client) == 302
    page = f"/admin/licenses/{license_id}"
    with app.app_context():
        order_page = f"/admin/orders/{db.session.scalars(select(Order.id)).one()}"

    html = admin_client.get(page).get_data(as_text=True)
    assert 'value="revoke"' in html and 'value="reinstate"' in html
    assert 'value="suspend"' not in html
    order_html = admin_client.get(order_page).get_data(as_text=True)
    assert f"/admin/licenses/{license_id}/revoke" in order_html
    assert f"/admin/licenses/{license_id}/suspend" not in order_html

    answer = admin_client.post(
        f"{page}/change", data={"csrf_token": _csrf(html), "action": "revoke"}
    )
    assert answer.status_code in (302, 303), answer.get_data(as_text=True)
    with app.app_context():
        assert db.session.get(License, license_id).status == "revoked"  # type: ignore[union-attr]
    revoked = admin_client.get(page).get_data(as_text=True)
    assert 'value="revoke"' not in revoked and 'value="reinstate"' in revoked


def test_a_refused_credentials_form_shows_what_was_typed(
    shop: WebhookSender, admin_client: FlaskClient
) -> None:
    """A Brevo form refused for one field (a sender address without @) comes back with
    the other fields as typed, not silently reset to the stored values: the owner would
    otherwise retype them, or save the old ones believing they are the new. A secret typed
    is never echoed into the page."""
    assert sign_in(admin_client) == 302
    path = f"/admin/stores/{shop.store.store.id}/credentials"
    stored = {"api_key": "xkeysib-old", "sender_email": "old@shop.example", "sender_name": "Old"}
    token = csrf_token(admin_client, path)
    saved = admin_client.post(path, data={"csrf_token": token, "kind": "brevo", **stored})
    assert saved.status_code == 200, saved.get_data(as_text=True)

    typed = {"sender_email": "new-shop.example", "sender_name": "New name", "list_id": "12"}
    answer = admin_client.post(
        path, data={"csrf_token": token, "kind": "brevo", "api_key": "xkeysib-new", **typed}
    )

    assert answer.status_code == 422
    html = answer.get_data(as_text=True)
    for value in typed.values():
        assert f'value="{value}"' in html
    assert "xkeysib-new" not in html and 'value="old@shop.example"' not in html
    assert admin_client.get(path).get_data(as_text=True).count('value="old@shop.example"') == 1


def test_a_stale_deactivate_button_says_the_seat_is_already_free(shop: WebhookSender) -> None:
    """A Deactivate button on a page open from before the seat was freed (another tab, the
    site itself): a word on what happened and the way back, not the framework's "The
    requested URL was not found on the server"."""
    portal, key = _portal(shop, 9956)
    assert (
        call(shop.client, "activate", {"key": key, "site": "https://site-a.com"}).status_code == 200
    )
    html = shop.client.get(portal).get_data(as_text=True)
    button = re.search(r'action="([^"]+/deactivate)"', html)
    assert button, html
    assert shop.client.post(button.group(1), data={"csrf_token": _csrf(html)}).status_code == 302

    answer = shop.client.post(button.group(1), data={"csrf_token": _csrf(html)})

    assert answer.status_code == 404
    page = answer.get_data(as_text=True)
    assert "This activation was already removed" in page
    assert f'href="{portal}"' in page
    assert "requested URL" not in page and "entered the URL" not in page
    assert answer.headers["X-Robots-Tag"] == "noindex"


def test_a_deleted_stores_page_and_an_unknown_page_say_so_in_words(
    app: Flask, shop: WebhookSender, admin_client: FlaskClient
) -> None:
    assert sign_in(admin_client) == 302
    store_id = shop.store.store.id
    with app.app_context():
        store = db.session.get(Store, store_id)
        assert store is not None
        store.deleted_at = utcnow()
        db.session.commit()

    for path, words in (
        (f"/admin/stores/{store_id}", "There is no such store: it may have been deleted."),
        ("/admin/no-such-page", "There is nothing at this address"),
        ("/my/not-a-token/nothing", "There is nothing at this address"),
    ):
        answer = admin_client.get(path)
        assert answer.status_code == 404, path
        page = answer.get_data(as_text=True)
        assert words in page, path
        assert "requested URL" not in page and "entered the URL" not in page


def _rename_store(app: Flask, store_id: int, name: str) -> None:
    with app.app_context():
        store = db.session.get(Store, store_id)
        assert store is not None
        store.name = name
        db.session.commit()


def test_a_refused_download_names_the_shop_to_contact(app: Flask, shop: WebhookSender) -> None:
    """ "Contact the shop" said which shop: a buyer with links from several shops (or a
    mail read months later) did not know whom to ask. The page names the store and links
    its site, escaped."""
    _rename_store(app, shop.store.store.id, "Ana's <b>Shop</b>")
    shop.configure(501, download_limit=1)
    shop.deliver(wc_order(9957, "processing", [line_item(501)]))
    body = shop.order(9957)
    link = body["downloads"][0]["link"].removeprefix(BASE)
    shop_link = '<a href="https://shop.example">Ana&#39;s &lt;b&gt;Shop&lt;/b&gt;</a>'
    with app.app_context():
        db.session.execute(update(DownloadGrant).values(download_count=1))
        db.session.commit()

    limited = shop.client.get(link)
    assert limited.status_code == 429
    assert f"Contact {shop_link} if you need more downloads." in limited.get_data(as_text=True)

    assert shop.admin("POST", f"/licenses/{body['licenses'][0]['key']}/revoke").status_code == 200
    withdrawn = shop.client.get(link)
    assert withdrawn.status_code == 410
    assert f"contact {shop_link}." in withdrawn.get_data(as_text=True)
    assert "<b>Shop</b>" not in withdrawn.get_data(as_text=True)


def test_a_file_missing_from_storage_names_the_shop_and_when_to_retry(
    shop: WebhookSender,
) -> None:
    shop.configure(501, files=[{"object_key": "files/gone.pdf", "filename": "gone.pdf"}])
    shop.deliver(wc_order(9958, "processing", [line_item(501)]))
    link = shop.order(9958)["downloads"][0]["link"].removeprefix(BASE)

    answer = shop.client.get(link)

    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "30"
    assert answer.headers["Cache-Control"] == "no-store"
    html = answer.get_data(as_text=True)
    assert "The file is missing from the shop&#39;s storage." in html
    assert 'contact <a href="https://shop.example">Test Shop</a>.' in html


@pytest.mark.parametrize(
    ("number", "words"),
    [(1, "1 buyer copy"), (2, "2 buyer copies"), (0, "0 buyer copies")],
)
def test_counts_are_said_in_the_singular_or_the_plural(number: int, words: str) -> None:
    assert counted(number, "buyer copy", "buyer copies") == words
    assert counted(number, "refund") == words.replace("buyer copy", "refund").replace(
        "buyer copies", "refunds"
    )


def test_audit_subjects_and_a_mail_lead_to_their_pages(
    app: Flask, shop: WebhookSender, admin_client: FlaskClient
) -> None:
    """An audit entry's subject links to its order, license or store page (the order by the
    shop's order id within the entry's store); a mail links to its order; an order without
    a total or payment method has no dangling "· ·" in its header."""
    _portal(shop, 9959)
    store = shop.store.store
    with app.app_context():
        order_id = db.session.scalars(select(Order.id)).one()
        license_id = db.session.scalars(select(License.id)).one()
        for subject in (
            "order:9959",
            f"license:{license_id}",
            f"store:{store.public_id}",
            "order:404",
            "license:x",
        ):
            record_audit(db.session, store_id=store.id, actor="t", action="test.x", subject=subject)
        order = db.session.get(Order, order_id)
        assert order is not None
        order.total = order.currency = order.payment_method = order.payment_method_title = None
        db.session.add(
            Mail(
                store_id=store.id,
                order_id=order_id,
                to_email="a@b.example",
                subject="Hi",
                body_text="x",
                backend="console",
                kind="order_issued",
            )
        )
        db.session.commit()
        mail_id = db.session.scalars(select(Mail.id)).all()[-1]
    assert sign_in(admin_client) == 302

    audit = admin_client.get("/admin/audit?action=test.x").get_data(as_text=True)
    assert f'<a href="/admin/orders/{order_id}">order:9959</a>' in audit
    assert f'<a href="/admin/licenses/{license_id}">license:{license_id}</a>' in audit
    assert f'<a href="/admin/stores/{store.id}">store:{store.public_id}</a>' in audit
    assert (
        '<td class="long" data-label="Subject">order:404</td>' in audit
        and '<td class="long" data-label="Subject">license:x</td>' in audit
    )

    mail = admin_client.get(f"/admin/outbox/mails/{mail_id}").get_data(as_text=True)
    assert f'href="/admin/orders/{order_id}"' in mail

    header = admin_client.get(f"/admin/orders/{order_id}").get_data(as_text=True)
    line = re.search(r"<h1>Order [^<]*</h1>\s*<p class=\"wrap\">(.*?)</p>", header, re.S)
    assert line, header
    assert not re.search(r"·\s*·", line.group(1)) and not line.group(1).rstrip().endswith("·")


def test_a_new_instance_says_what_to_do_first_instead_of_offering_forms_that_fail(
    app: Flask, admin_client: FlaskClient
) -> None:
    """No store yet: configuring a product leads to adding a store (its form could only be
    refused, with no store to choose); the dashboard says no webhook came yet, not an empty
    table. Once there is a store, the form is there."""
    assert sign_in(admin_client) == 302
    new_product = admin_client.get("/admin/products/new").get_data(as_text=True)
    assert "There is no store yet" in new_product
    assert 'href="/admin/stores/new"' in new_product
    assert 'name="shop_product_id"' not in new_product
    assert "No webhook delivery yet." in admin_client.get("/admin/").get_data(as_text=True)
    with app.app_context():
        create_store(db.session, "First shop", "https://first.example")
        db.session.commit()
    dashboard = admin_client.get("/admin/").get_data(as_text=True)
    assert "No webhook delivery yet: the shop's orders show up here" in dashboard
    new_product = admin_client.get("/admin/products/new").get_data(as_text=True)
    assert "There is no store yet" not in new_product
    assert 'name="shop_product_id"' in new_product


def test_the_fresh_link_limit_page_of_an_expired_link_promises_no_keys_or_links(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fourth "Email me a fresh link" in an hour, on an expired link: the page says when
    to ask again and leads back to the expired page, and does not say the keys and links on
    the order page still work (that page shows none of them at this link)."""
    _portal(shop, 9954)
    with app.app_context():
        order_id = db.session.scalars(select(Order.id).where(Order.shop_order_id == "9954")).one()
    days = app.extensions["keygate.settings"].portal_link_days
    now = time.time()
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(now) - days * 86400 - 60)
    with app.test_request_context():
        old = portal_url(order_id).removeprefix(BASE)
    monkeypatch.undo()
    token = _csrf(shop.client.get(old).get_data(as_text=True))
    for _ in range(3):
        assert shop.client.post(old + "/renew", data={"csrf_token": token}).status_code == 303

    answer = shop.client.post(old + "/renew", data={"csrf_token": token})

    assert answer.status_code == 429
    html = answer.get_data(as_text=True)
    assert f"You can ask again in {wait_in_words(int(answer.headers['Retry-After']))}." in html
    assert "still work" not in html and "order page" not in html
    assert f'href="{old}"' in html
