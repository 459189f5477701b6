"""Forms over https, as the README deploys Keygate (behind a TLS-terminating proxy): the
owner's sign-in and the buyer's portal buttons post as a browser sends them under the pages'
Referrer-Policy (Flask-WTF checks the Referer of a secure POST against the page's origin)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from connector import create_app
from connector.db import db
from connector.jobs import stop_worker_thread
from connector.models import AdminUser
from connector.stores import create_store
from tests.conftest import app_overrides
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_admin_pages import PASSWORD

PUBLIC = "keygate.example"
# What a TLS-terminating proxy in front of Keygate adds (KEYGATE_PROXY_HOPS=1 trusts it).
FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}


@contextmanager
def owner_app(tmp_path: Path, database_url: str, **overrides: Any) -> Iterator[Flask]:
    """Keygate with these settings and one admin, ``owner`` (password PASSWORD)."""
    (tmp_path / "instance" / "files").mkdir(parents=True)
    application = create_app(app_overrides(tmp_path, database_url, **overrides))
    application.config["TESTING"] = True
    with application.app_context():
        db.session.add(AdminUser(username="owner", password_hash=generate_password_hash(PASSWORD)))
        db.session.commit()
    try:
        yield application
    finally:
        stop_worker_thread(application)
        application.extensions["keygate.db"].engine.dispose()


@pytest.fixture
def proxied_app(tmp_path: Path, database_url: str) -> Iterator[Flask]:
    """Keygate as the README deploys it: an https public address, behind one proxy."""
    with owner_app(tmp_path, database_url, base_url=f"https://{PUBLIC}", proxy_hops=1) as app:
        yield app


def _form_token(page: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def _browser_get(client: FlaskClient, path: str) -> tuple[str, dict[str, str]]:
    """A page as a browser opens it through the proxy, and the headers the browser sends
    with a form posted from it, as the page's Referrer-Policy makes them (Fetch: a POST's
    Origin is "null" under no-referrer; same-origin policies send a Referer)."""
    page = client.get(path, base_url=f"http://{PUBLIC}", headers=FORWARDED)
    assert page.status_code == 200
    policy = page.headers.get("Referrer-Policy", "strict-origin-when-cross-origin")
    policy = policy.split(",")[-1].strip()  # the last policy a browser knows wins
    if policy == "no-referrer":
        sent = {"Origin": "null"}
    elif policy in ("origin", "strict-origin"):
        sent = {"Origin": f"https://{PUBLIC}", "Referer": f"https://{PUBLIC}/"}
    else:  # same-origin and the policies that send the full URL to the page's own origin
        sent = {"Origin": f"https://{PUBLIC}", "Referer": f"https://{PUBLIC}{path}"}
    return page.get_data(as_text=True), sent


def _browser_post(
    client: FlaskClient, path: str, sent: dict[str, str], form: dict[str, str]
) -> tuple[int, str]:
    answer = client.post(
        path, base_url=f"http://{PUBLIC}", headers={**FORWARDED, **sent}, data=form
    )
    return answer.status_code, answer.get_data(as_text=True)


def test_the_owner_signs_in_over_https_behind_the_proxy(proxied_app: Flask) -> None:
    """Signed in through the README's deployment (https, KEYGATE_PROXY_HOPS=1) from the
    sign-in page as a browser submits it (with the Referer and Origin the page's
    Referrer-Policy lets it send: none and "null" under no-referrer)."""
    client = proxied_app.test_client()
    page, sent = _browser_get(client, "/admin/login")
    form = {"username": "owner", "password": PASSWORD, "csrf_token": _form_token(page)}
    status, body = _browser_post(client, "/admin/login", sent, form)
    assert status == 302, re.findall(r"<p>(.*?)</p>", body)


def test_a_buyer_portal_button_works_over_https_behind_the_proxy(proxied_app: Flask) -> None:
    """The buyer's "mail it again" button on /my/<token>, over https behind the proxy."""
    with proxied_app.app_context():
        created = create_store(db.session, "Shop", "https://shop.example")
        db.session.commit()
    shop = WebhookSender(proxied_app.test_client(), created)
    shop.configure(501)
    assert shop.deliver(wc_order(9800, "processing", [line_item(501)])).status_code == 200
    portal = shop.order(9800)["portal_url"].removeprefix(f"https://{PUBLIC}")
    buyer = proxied_app.test_client()
    page, sent = _browser_get(buyer, portal)
    status, body = _browser_post(buyer, f"{portal}/resend", sent, {"csrf_token": _form_token(page)})
    assert status == 302, re.findall(r"<p>(.*?)</p>", body)
