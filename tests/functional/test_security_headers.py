"""Security headers: every answer is nosniff; pages cannot be framed, leak no Referer (portal
and download URLs carry tokens) and load no <base> or plugins; HSTS only when the public
base URL is https. The license API gets nosniff only, and stays signed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from connector import create_app
from connector.jobs import stop_worker_thread
from connector.stores import create_store
from tests.conftest import app_overrides
from tests.factories import WebhookSender, line_item, wc_order
from tests.licensing_helpers import call, issue_key

BASE = "http://keygate.test"
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
PAGE_ONLY = ("X-Frame-Options", "Content-Security-Policy", "Referrer-Policy")


def _assert_page_headers(response: TestResponse) -> None:
    assert response.mimetype == "text/html"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert "no-store" in response.headers["Cache-Control"]


def _assert_no_page_headers(response: TestResponse) -> None:
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    for name in PAGE_ONLY:
        assert name not in response.headers, name


def _sold(shop: WebhookSender, order_id: int, tmp_path: Path) -> dict[str, str]:
    """A sold order with a local file: its portal and download paths."""
    data = bytes(range(256)) * 40
    stored = tmp_path / "instance" / "files" / "files" / "big.bin"
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(data)
    shop.configure(701, files=[{"object_key": "files/big.bin", "filename": "big.bin"}])
    assert shop.deliver(wc_order(order_id, "processing", [line_item(701)])).status_code == 200
    body = shop.order(order_id)
    return {
        "portal": body["portal_url"].removeprefix(BASE),
        "download": body["downloads"][0]["link"].removeprefix(BASE),
    }


def test_admin_login_page_has_the_page_headers(app: Flask, shop: WebhookSender) -> None:
    """The admin sign-in page cannot be framed (clickjacking) and sends no Referer."""
    response = shop.client.get("/admin/login")
    assert response.status_code == 200
    _assert_page_headers(response)
    assert "Strict-Transport-Security" not in response.headers  # base URL is http here


def test_portal_page_has_the_page_headers(app: Flask, shop: WebhookSender, tmp_path: Path) -> None:
    """The buyer's portal page (token in its URL) sends no Referer and cannot be framed."""
    paths = _sold(shop, 9700, tmp_path)
    response = shop.client.get(paths["portal"])
    assert response.status_code == 200
    _assert_page_headers(response)


def test_download_error_page_has_the_page_headers(app: Flask, shop: WebhookSender) -> None:
    """A refused download link's page gets the page headers too."""
    response = shop.client.get("/d/not-a-real-token")
    assert response.status_code == 404
    _assert_page_headers(response)


def test_a_streamed_download_still_resumes_and_is_nosniff(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """A local file is still streamed with Range (206), with nosniff and the view's own
    no-referrer; it is no page, so no page-only framing headers."""
    paths = _sold(shop, 9701, tmp_path)
    response = shop.client.get(paths["download"], headers={"Range": "bytes=100-199"})
    body = response.get_data()
    response.close()  # a streamed file stays open until its response is closed
    assert response.status_code == 206
    assert body == (bytes(range(256)) * 40)[100:200]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Robots-Tag"] == "noindex"  # nor the file indexed
    assert "X-Frame-Options" not in response.headers
    assert "Content-Security-Policy" not in response.headers


def test_license_api_answer_is_nosniff_only_and_stays_signed(
    app: Flask, shop: WebhookSender
) -> None:
    """A license answer (JSON) gets nosniff and no page headers; its signature verifies."""
    key = issue_key(shop)
    response = call(shop.client, "validate", {"key": key, "nonce": "h1"})  # checks signature
    assert response.status_code == 200
    assert response.get_json()["valid"] is True
    _assert_no_page_headers(response)
    assert "Strict-Transport-Security" not in response.headers


def test_admin_api_answer_is_nosniff_without_page_headers(app: Flask, shop: WebhookSender) -> None:
    """An admin API answer (JSON) is nosniff; framing and CSP headers are for pages."""
    response = shop.admin("GET", "/licenses")
    assert response.status_code == 200
    _assert_no_page_headers(response)


def test_admin_api_answers_are_never_cached(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """The owner's JSON answers carry license keys, download and portal links and buyers'
    addresses: no browser or proxy may keep a copy (no-store), refusals included."""
    _sold(shop, 9710, tmp_path)
    for path in ("/orders/9710", "/licenses", "/orders/9710/downloads", "/orders/0"):
        response = shop.admin("GET", path)
        assert response.status_code in (200, 404), path
        assert response.headers.get("Cache-Control") == "no-store", path


@pytest.fixture
def https_app(tmp_path: Path, database_url: str) -> Iterator[Flask]:
    (tmp_path / "instance" / "files").mkdir(parents=True)
    application = create_app(
        app_overrides(tmp_path, database_url, base_url="https://keygate.example")
    )
    application.config["TESTING"] = True
    yield application
    stop_worker_thread(application)
    application.extensions["keygate.db"].engine.dispose()


def test_hsts_only_with_an_https_base_url(https_app: Flask) -> None:
    """With an https public base URL, pages and the admin API carry HSTS; the license API
    (products, not browsers) does not."""
    from connector.db import db

    with https_app.app_context():
        created = create_store(db.session, "Shop", "https://shop.example")
        db.session.commit()
    shop = WebhookSender(https_app.test_client(), created)
    hsts = "max-age=31536000"

    page = shop.client.get("/admin/login", base_url="https://keygate.example")
    _assert_page_headers(page)
    assert page.headers["Strict-Transport-Security"] == hsts
    assert shop.client.get("/d/nope").headers["Strict-Transport-Security"] == hsts
    assert shop.admin("GET", "/licenses").headers["Strict-Transport-Security"] == hsts

    key = issue_key(shop)
    answer = call(shop.client, "validate", {"key": key})
    assert answer.status_code == 200
    assert "Strict-Transport-Security" not in answer.headers
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_pages_name_an_empty_icon_the_policy_allows(client: FlaskClient) -> None:
    """Every page names its icon (an empty data: URL, allowed by img-src): a browser does
    not ask for /favicon.ico and log a 404 on each page."""
    page = client.get("/admin/login")
    assert '<link rel="icon" href="data:,">' in page.get_data(as_text=True)
    assert "img-src 'self' data:" in page.headers["Content-Security-Policy"]
