"""The owner's audit log and outbox over the admin API, scoped to their store."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask

from connector.db import db
from connector.jobs import run_pending
from connector.stores import create_store
from tests.factories import WebhookSender, line_item, wc_order

API = "/api/v1/admin"


def follow_pages(shop: WebhookSender, path: str, field: str) -> list[list[Any]]:
    """The ``field`` list of ``path`` and of each page its ``Link: <...>; rel="next"`` leads
    to, page by page (a next link on the last page fails: more pages than rows)."""
    pages: list[list[Any]] = []
    target: str | None = path
    while target is not None:
        answer = shop.admin("GET", target)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        pages.append(answer.get_json()[field])
        assert len(pages) <= 50, "more pages than rows"
        links = answer.headers.get_all("Link")
        assert len(links) <= 1
        found = re.fullmatch(r'<([^>]+)>; rel="next"', links[0]) if links else None
        assert found is not None or not links, links
        target = found.group(1).removeprefix(API) if found else None
        assert target is None or target.startswith("/"), target
    return pages


def test_audit_log_and_outbox_show_only_this_store(app: Flask, shop: WebhookSender) -> None:
    shop.configure(501)
    shop.deliver(wc_order(9700, "processing", [line_item(501)]))
    run_pending(app)
    with app.app_context():
        other = create_store(db.session, "Other", "https://other.example")
        db.session.commit()
    other_shop = WebhookSender(app.test_client(), other)

    audit = shop.admin("GET", "/audit").get_json()["events"]
    assert "order.fulfilled" in [e["action"] for e in audit]
    assert (
        shop.admin("GET", "/audit?action=product.configured").get_json()["events"][0]["subject"]
        == "product:501"
    )
    assert other_shop.admin("GET", "/audit?action=order.fulfilled").get_json()["events"] == []

    mails = shop.admin("GET", "/outbox").get_json()["mails"]
    assert [m["to"] for m in mails] == ["j***@example.org"]
    assert mails[0]["sent_at"] is not None
    assert other_shop.admin("GET", "/outbox").get_json()["mails"] == []
    assert shop.admin("GET", "/outbox?limit=0").status_code == 422
    assert shop.client.get("/api/v1/admin/audit").status_code == 401


def test_a_customers_downloads_are_found_by_the_address_as_the_shop_shows_it(
    shop: WebhookSender,
) -> None:
    """Order emails are stored in lower case; the owner pastes them as WooCommerce shows
    them. Export, erase and the licenses filter match any case: so do the downloads."""
    shop.configure(501)
    shop.deliver(wc_order(9701, "processing", [line_item(501)], email="Bob@Example.org"))
    for address in ("bob@example.org", "Bob@Example.org", " BOB@EXAMPLE.ORG "):
        assert shop.admin("GET", f"/customers/{address}/downloads").get_json()["orders"] == ["9701"]
    missing_at = shop.admin("GET", "/customers/no-at/downloads")
    assert (missing_at.status_code, missing_at.get_json()["field"]) == (422, "email")


def test_the_owner_reads_back_what_a_product_is_configured_as(
    app: Flask, shop: WebhookSender
) -> None:
    put = shop.configure(501, activation_limit=2, duration_days=365).get_json()
    shop.configure(502)
    got = shop.admin("GET", "/products/501")
    assert got.status_code == 200
    assert got.get_json() == put
    assert got.get_json()["policy"]["activation_limit"] == 2
    edited = {**got.get_json(), "name": "Renamed"}  # read, edited, sent back as it is
    assert shop.admin("PUT", "/products/501", edited).get_json()["name"] == "Renamed"
    elsewhere = shop.admin("PUT", "/products/502", edited)
    assert (elsewhere.status_code, elsewhere.get_json()["field"]) == (422, "product_id")
    listed = shop.admin("GET", "/products").get_json()["products"]
    assert [p["product_id"] for p in listed] == ["501", "502"]
    unknown = shop.admin("GET", "/products/999")
    assert (unknown.status_code, unknown.mimetype) == (404, "application/problem+json")
    with app.app_context():
        other = create_store(db.session, "Other", "https://other.example")
        db.session.commit()
    other_shop = WebhookSender(app.test_client(), other)
    assert other_shop.admin("GET", "/products/501").status_code == 404
    assert other_shop.admin("GET", "/products").get_json()["products"] == []


def test_the_audit_log_and_outbox_page_on_past_their_limit_through_link_headers(
    app: Flask, shop: WebhookSender
) -> None:
    """``?limit=`` rows a page, and a ``Link: <...>; rel="next"`` while older rows exist:
    followed, the pages are the whole log, newest first, each row once, the filter kept; a
    ``before`` that is no row id is a 422 naming it; another store's token pages only its
    own rows."""
    shop.configure(501)
    for order_id in range(9710, 9713):
        shop.deliver(wc_order(order_id, "processing", [line_item(501)]))
    run_pending(app)
    whole = shop.admin("GET", "/audit?limit=1000")
    assert "Link" not in whole.headers
    events = whole.get_json()["events"]
    assert len(events) == 5  # created, configured, three orders fulfilled
    pages = follow_pages(shop, "/audit?limit=2", "events")
    assert [len(page) for page in pages[:-1]] == [2] * (len(pages) - 1)
    assert [e for page in pages for e in page] == events
    fulfilled = follow_pages(shop, "/audit?limit=1&action=order.fulfilled", "events")
    assert [[e["subject"] for e in page] for page in fulfilled] == [
        ["order:9712"],
        ["order:9711"],
        ["order:9710"],
    ]

    mails = shop.admin("GET", "/outbox").get_json()["mails"]
    assert len(mails) == 3
    mail_pages = follow_pages(shop, "/outbox?limit=2", "mails")
    assert [[m["id"] for m in page] for page in mail_pages] == [
        [mails[0]["id"], mails[1]["id"]],
        [mails[2]["id"]],
    ]

    for path in ("/audit", "/outbox"):
        for garbage in ("", "abc", "-1", "1.5", "²", "9" * 20):
            refused = shop.admin("GET", f"{path}?before={garbage}")
            assert refused.status_code == 422, (path, garbage)
            assert refused.mimetype == "application/problem+json"
            assert refused.get_json()["field"] == "before"

    with app.app_context():
        other = create_store(db.session, "Other", "https://other.example")
        db.session.commit()
    other_shop = WebhookSender(app.test_client(), other)
    newest = events[0]
    assert other_shop.admin("GET", "/outbox?before=2147483647").get_json()["mails"] == []
    theirs = follow_pages(other_shop, "/audit?limit=1&before=2147483647", "events")
    assert all(e["subject"] != newest["subject"] for page in theirs for e in page)
    assert all(e["action"] != "order.fulfilled" for page in theirs for e in page)


def test_a_query_argument_named_like_a_link_builders_own_keeps_the_next_link_plain(
    shop: WebhookSender,
) -> None:
    """The next page's link keeps the request's arguments as they were sent; one named like
    an option of Flask's ``url_for`` (``endpoint``, ``_method``, ``_anchor``, ``_external``)
    is just an argument: never a 500, nor a link made absolute or given a fragment."""
    shop.configure(501)
    shop.configure(502)
    for argument in ("endpoint=x", "_method=POST", "_anchor=x", "_external=1"):
        answer = shop.admin("GET", f"/audit?limit=1&{argument}")
        assert answer.status_code == 200, (argument, answer.get_data(as_text=True))
        found = re.fullmatch(r'<([^>]+)>; rel="next"', answer.headers["Link"])
        assert found is not None, answer.headers["Link"]
        path, _, query = found.group(1).partition("?")
        assert path == f"{API}/audit" and "#" not in query, found.group(1)
        assert argument in query.split("&"), found.group(1)
