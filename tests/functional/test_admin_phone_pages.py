"""Every admin page fits a phone: a store owner checks an order or refunds from a 375px-wide
screen without scrolling the whole page sideways. Each page carries the viewport meta; each
table sits in a box that scrolls sideways on its own (a list's rows turn into cards, a form's
fields stack); long addresses, keys, URLs and errors break inside their cell. Checked by eye
in Chromium at 375px with the long values below; here the structural guarantees are held."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from connector.audit import record_audit
from connector.db import db
from connector.jobs import run_pending
from connector.models import Job, License, Mail, Order
from connector.stores import create_store
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_admin_licenses_pages import _watermarked_copy, upload
from tests.functional.test_admin_pages import admin_client, csrf_token, sign_in
from tests.licensing_helpers import call

__all__ = ["admin_client"]

EMAIL = "a.remarkably.long.buyer.address.for.testing@an-equally-long-company-domain.example"
SITE = "https://staging.a-remarkably-long-customer-site-name.example"
URL = "https://a-remarkably-long-shop-domain-name-for-testing.example/shop"
ERROR = "ConnectionError: " + "x" * 120 + " (the mail service did not answer in time)"


def admin_pages(app: Flask, shop: WebhookSender, client: FlaskClient) -> dict[str, str]:
    """Every admin page as an owner meets it, filled with values as long as real ones get."""
    with app.app_context():
        create_store(db.session, "A shop with a rather long name for a phone", URL)
        db.session.commit()
    pages = {"sign-in": client.get("/admin/login").get_data(as_text=True)}
    copy = _watermarked_copy(app, shop, 9701, email=EMAIL)
    shop.configure(
        502,
        files=[{"object_key": "products/502/" + "long-file-name-" * 4 + ".zip", "filename": "x"}],
    )
    shop.deliver(wc_order(9702, "processing", [line_item(502)], email=EMAIL))
    key = shop.order(9702)["licenses"][0]["key"]
    assert call(shop.client, "activate", {"key": key, "site": SITE}).status_code == 200
    release = {"version": "1.0.0", "object_key": "products/502/plugin-1.0.0.zip", "size": 1}
    release |= {"sha256": "ab" * 32, "changelog": "Fixes " * 30}
    assert shop.admin("POST", "/products/502/releases", release).status_code == 201
    run_pending(app)
    with app.app_context():
        store_id = shop.store.store.id
        record_audit(
            db.session, store_id=store_id, actor="owner", action="test.long", detail={"url": URL}
        )
        db.session.add(
            Job(kind="mail.send", payload={}, status="dead", attempts=5, last_error=ERROR)
        )
        db.session.commit()
        order_id = db.session.scalars(select(Order.id).where(Order.shop_order_id == "9702")).one()
        license_id = db.session.scalars(
            select(License.id).where(License.order_id == order_id)
        ).one()
        mail_id = db.session.scalars(select(Mail.id)).first()
    assert sign_in(client) == 302
    for name, path in {
        "dashboard": "/admin/",
        "orders": "/admin/orders",
        "order": f"/admin/orders/{order_id}",
        "licenses": "/admin/licenses",
        "license": f"/admin/licenses/{license_id}",
        "products": "/admin/products",
        "product": f"/admin/products/{store_id}/502",
        "new product": "/admin/products/new",
        "store": f"/admin/stores/{store_id}",
        "credentials": f"/admin/stores/{store_id}/credentials",
        "new store": "/admin/stores/new",
        "outbox": "/admin/outbox",
        "mail": f"/admin/outbox/mails/{mail_id}",
        "audit": "/admin/audit",
        "customers": "/admin/customers",
        "leak lookup": "/admin/leaks",
        "password": "/admin/password",
    }.items():
        answer = client.get(path)
        assert answer.status_code == 200, path
        pages[name] = answer.get_data(as_text=True)
    token = csrf_token(client, "/admin/customers")
    found = client.post("/admin/customers", data={"csrf_token": token, "email": EMAIL})
    pages["customer"] = found.get_data(as_text=True)
    assert "Export (JSON)" in pages["customer"]
    pages["leak found"] = upload(client, token, copy).get_data(as_text=True)
    assert "<h2>Made for</h2>" in pages["leak found"]
    added = client.post(
        "/admin/stores/new",
        data={
            "csrf_token": token,
            "name": "Third",
            "url": URL + "/third",
            "key_groups": "4",
            "key_group_length": "5",
        },
    )
    pages["store added"] = added.get_data(as_text=True)
    assert "Third is added" in pages["store added"]
    replaced = client.post(
        f"/admin/stores/{store_id}/token", data={"csrf_token": token, "confirm": "y"}
    )
    pages["token replaced"] = replaced.get_data(as_text=True)
    assert "Copy it now" in pages["token replaced"]
    erased = client.post(
        "/admin/customers/erase",
        data={"csrf_token": token, "store_id": store_id, "email": EMAIL, "confirm": EMAIL},
    )
    pages["customer erased"] = erased.get_data(as_text=True)
    assert "<h1>Customer erased</h1>" in pages["customer erased"]
    return pages


VIEWPORT = '<meta name="viewport" content="width=device-width, initial-scale=1">'
WRAPPED = '<div class="table-wrap"><table class="stack">'
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}
LONGEST_WORD = 24  # characters that fit a 375px screen's text column in any case


class _Words(HTMLParser):
    """The words of a page's text too long for a phone's width, with the elements around
    them: a long word must sit where it may break (a ``long`` cell, a ``wrap`` paragraph, a
    heading, a ``pre``, a ``code`` in a cell)."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[tuple[str, str]] = []
        self.unbreakable: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.open.append((tag, dict(attrs).get("class") or ""))

    def handle_endtag(self, tag: str) -> None:
        while self.open and self.open.pop()[0] != tag:
            pass

    def handle_data(self, data: str) -> None:
        tags = [tag for tag, _ in self.open]
        if {"title", "style", "option", "textarea"} & set(tags):
            return
        breaks = (
            any({"long", "wrap", "key"} & set(classes.split()) for _, classes in self.open)
            or {"h1", "pre"} & set(tags)
            or ("code" in tags and "td" in tags)
        )
        if not breaks:
            self.unbreakable += [word for word in data.split() if len(word) > LONGEST_WORD]


@pytest.fixture
def pages(app: Flask, shop: WebhookSender, admin_client: FlaskClient) -> dict[str, str]:
    return admin_pages(app, shop, admin_client)


def test_every_admin_page_is_made_for_a_phone(pages: dict[str, str]) -> None:
    """Each page (the sign-in too) sets the viewport to the phone's width and carries the
    rules: a table's box scrolls sideways, not the page; at 30rem and under a list's rows
    are cards and a form's fields stack; a field or button is never wider than the screen."""
    for name, html in pages.items():
        assert html.count(VIEWPORT) == 1, name
        css = re.search(r"<style>(.*?)</style>", html, re.S)
        assert css, name
        rules = re.sub(r"\s+", " ", css.group(1))
        assert ".table-wrap { overflow-x: auto; max-width: 100%; }" in rules
        assert "td.long { overflow-wrap: anywhere;" in rules
        assert ".wrap { overflow-wrap: anywhere; }" in rules
        assert "pre, td code { overflow-wrap: anywhere; }" in rules
        assert (
            "input, select, textarea, button { max-width: 100%; box-sizing: border-box; }" in rules
        )
        phone = rules.split("@media (max-width: 30rem) {", 1)[1]
        assert (
            "table.stack, table.stack tbody, table.stack tr, table.stack td, table.stack th"
            " { display: block; }" in phone
        )
        assert "table.stack tr.head { display: none; }" in phone


def test_every_admin_table_scrolls_in_its_own_box(pages: dict[str, str]) -> None:
    """No table can widen a page: each one, on every page, is inside a box that scrolls."""
    tables = 0
    for name, html in pages.items():
        assert html.count("<table") == html.count(WRAPPED), name
        assert html.count("</table>") == html.count("</table></div>"), name
        tables += html.count("<table")
    assert tables >= 25  # the pages above show their tables, not only their forms


def test_long_addresses_keys_and_errors_break_instead_of_widening_a_page(
    pages: dict[str, str],
) -> None:
    """The buyer's long email address, a long site or shop URL, a long file name, a key,
    an audit detail and a long job error are shown, each where it may break."""
    shown = "\n".join(pages.values())
    for value in (
        EMAIL,
        SITE.removeprefix("https://"),
        URL,
        "long-file-name-long",
        "ConnectionError: xxx",
    ):
        assert value in shown
    for name, html in pages.items():
        words = _Words()
        words.feed(html)
        assert words.unbreakable == [], name


def test_a_list_row_on_a_phone_names_each_of_its_cells(pages: dict[str, str]) -> None:
    """A card shows each cell on its own line: each cell of a list but the row's first
    (its title) is named as its column is (a column of buttons or links has no name)."""
    rows = 0
    for name, html in pages.items():
        for table in re.findall(r'<table class="stack">(.*?)</table>', html, re.S):
            head = re.search(r'<tr class="head">(.*?)</tr>', table, re.S)
            if head is None:
                continue  # a label/value table or a form: its labels are its own cells
            # A column named for a screen reader only (its buttons) has no name on a card.
            columns = [
                re.sub(r'<span class="visually-hidden">.*?</span>', "", column)
                for column in re.findall(r"<th[^>]*>(.*?)</th>", head.group(1))
            ]
            for row in re.findall(r"<tr>(.*?)</tr>", table, re.S):
                cells = re.findall(r"<td([^>]*)>", row)
                if len(cells) != len(columns):
                    continue  # "No licenses." and the like
                rows += 1
                for column, attributes in list(zip(columns, cells, strict=True))[1:]:
                    label = re.search(r'data-label="([^"]*)"', attributes)
                    assert (label.group(1) if label else "") == column, (name, row)
    assert rows >= 20
