"""Admin pages for licenses and customers: search, one license and its actions, a customer's
data with export and erasure, and the leak lookup; CSRF, escaping, store scope, bad input."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pikepdf
import pytest
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape
from sqlalchemy import Connection, select, text
from werkzeug.test import TestResponse

from connector.db import db
from connector.models import Activation, AuditEvent, DownloadEvent, License, Order
from connector.privacy.service import erased_addresses
from connector.stores import create_store
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_admin_pages import (
    admin_client,
    csrf_token,
    sign_in,
    store_admin,
)
from tests.functional.test_downloads import get, link_path, make_pdf, put_file
from tests.functional.test_renewals_and_payments import renewal_line
from tests.licensing_helpers import call
from tests.transactions import while_another_transaction

__all__ = ["admin_client"]

BASE = "http://keygate.test"
XSS = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def sell(shop: WebhookSender, order_id: int, product_id: int = 501, **order: Any) -> dict[str, Any]:
    """Deliver a paid order of one unit of ``product_id``; the admin API's view of it."""
    response = shop.deliver(wc_order(order_id, "processing", [line_item(product_id)], **order))
    assert response.status_code == 200, response.get_data(as_text=True)
    return shop.order(order_id)


def license_id(app: Flask, shop_order_id: int) -> int:
    with app.app_context():
        order = db.session.execute(
            select(Order).where(Order.shop_order_id == str(shop_order_id))
        ).scalar_one()
        return db.session.execute(
            select(License.id).where(License.order_id == order.id)
        ).scalar_one()


def order_pk(app: Flask, shop_order_id: int) -> int:
    with app.app_context():
        return db.session.execute(
            select(Order.id).where(Order.shop_order_id == str(shop_order_id))
        ).scalar_one()


def post(client: FlaskClient, path: str, token: str, **form: Any) -> TestResponse:
    return client.post(path, data={"csrf_token": token, **form})


def audit(app: Flask, action: str) -> list[AuditEvent]:
    with app.app_context():
        return list(
            db.session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            )
        )


def other_shop(app: Flask) -> WebhookSender:
    with app.app_context():
        other = create_store(db.session, "Other shop", "https://other.example")
        db.session.commit()
    return WebhookSender(app.test_client(), other)


def test_the_license_list_filters_as_the_api_does_and_pages_back(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Email, status and product filter the list as the JSON list; rows link to the id page
    (never to a key); older licenses are a page away."""
    monkeypatch.setattr("connector.admin.licenses.PAGE", 2)
    shop.configure(501)
    shop.configure(502)
    keys = {
        9501: sell(shop, 9501, email="ann@example.org")["licenses"][0]["key"],
        9502: sell(shop, 9502, 502, email="bob@example.org")["licenses"][0]["key"],
        9503: sell(shop, 9503, email="Bob@Example.org")["licenses"][0]["key"],
    }
    assert shop.admin("POST", f"/licenses/{keys[9503]}/suspend").status_code == 200
    ids = {order: license_id(app, order) for order in keys}
    assert sign_in(admin_client) == 302

    token = csrf_token(admin_client, "/admin/licenses")

    def shown(query: str = "") -> list[int]:
        """The ids listed for the filters in ``query``, page after page: posted (with the
        CSRF token) as the filter form does, the older pages as its Older button posts them."""
        form: dict[str, str] | None = dict(parse_qsl(query))
        found: list[int] = []
        for _ in range(len(keys) + 1):  # a page that never ends fails instead of looping
            if form is None:
                return found
            page = admin_client.post("/admin/licenses", data={"csrf_token": token, **form})
            assert page.status_code == 200, form
            html = page.get_data(as_text=True)
            hrefs = re.findall(r'href="([^"]+)"', html)
            assert not any(key in href for key in keys.values() for href in hrefs)
            assert not any("@" in href for href in hrefs)  # no buyer address in a link
            found += [int(n) for n in re.findall(r'href="/admin/licenses/(\d+)"', html)]
            older = re.search(r'name="before" value="(\d+)"', html)
            form = {**form, "before": older.group(1)} if older else None
        raise AssertionError(f"more pages than licenses for {query}")

    assert shown() == [ids[9503], ids[9502], ids[9501]]
    assert shown("email=BOB@example.org") == [ids[9503], ids[9502]]
    assert shown("email=bob@example.org&status=active") == [ids[9502]]
    assert shown("status=suspended") == [ids[9503]]
    assert shown("product=501") == [ids[9503], ids[9501]]
    for query in ("email=bob@example.org", "status=suspended", "product=501"):
        api = [lic["key"] for lic in shop.admin("GET", f"/licenses?{query}").get_json()["licenses"]]
        on_page = shown(query)
        assert [keys[order] for order in sorted(ids, reverse=True) if ids[order] in on_page] == api
    assert admin_client.post("/admin/licenses", data={"status": "active"}).status_code == 400


def test_an_unknown_status_in_the_address_lists_every_status_with_a_notice(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """A stale or mistyped ``?status=`` (or a tampered form) shows the list, that filter reset
    and a short notice saying so; the other filters still apply."""
    shop.configure(501)
    shop.configure(502)
    sell(shop, 9505)
    sell(shop, 9506, 502)
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, "/admin/licenses")
    for answer in (
        admin_client.get("/admin/licenses?status=lost"),
        admin_client.get(f"/admin/licenses?status={XSS}"),
        post(admin_client, "/admin/licenses", token, status="lost"),
    ):
        assert answer.status_code == 200
        html = answer.get_data(as_text=True)
        assert "is not a status" in html and "every status" in html
        assert XSS not in html
        assert html.count('href="/admin/licenses/') == 2  # both licenses, whatever their status
        assert '<option value="" selected>any status</option>' in html or "selected" not in html
    narrowed = admin_client.get("/admin/licenses?status=lost&product=502")
    assert narrowed.status_code == 200
    assert narrowed.get_data(as_text=True).count('href="/admin/licenses/') == 1
    fine = admin_client.get("/admin/licenses?status=active").get_data(as_text=True)
    assert "is not a status" not in fine


def test_a_key_is_looked_up_by_a_posted_form_and_never_put_in_an_address(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """The key search posts the key (CSRF) and redirects to the license's id page."""
    shop.configure(501)
    key = sell(shop, 9510)["licenses"][0]["key"]
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, "/admin/licenses")
    assert admin_client.post("/admin/licenses/find", data={"key": key}).status_code == 400
    found = post(admin_client, "/admin/licenses/find", token, key=f"  {key.lower()} ")
    assert found.status_code == 302
    assert found.headers["Location"] == f"/admin/licenses/{license_id(app, 9510)}"
    for typed, status, message in [
        ("KG-AAAAA-BBBBB-CCCCC-DDDDD", 404, "No license of your stores has this key."),
        ("x" * 5000, 404, "No license of your stores has this key."),
        ("   ", 422, "Type a license key to find it."),
    ]:
        answer = post(admin_client, "/admin/licenses/find", token, key=typed)
        assert answer.status_code == status, typed
        assert message in answer.get_data(as_text=True)


def test_the_license_page_shows_the_license_its_activations_and_downloads_escaped(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """Key, status, product, dates, seats, order, activations (label escaped) and the click
    log of its links (user agent escaped, IP as a hash prefix)."""
    shop.configure(501, activation_limit=3, duration_days=365, update_days=30)
    put_file(app, "products/501/manual.pdf", b"%PDF-1.4 manual")
    sold = sell(shop, 9520, first_name=XSS)
    key = sold["licenses"][0]["key"]
    assert call(shop.client, "activate", {"key": key, "site": "shop.example.com", "label": XSS})
    clicked = get(
        shop.client,
        link_path(sold["downloads"][0]),
        headers={"User-Agent": f"Agent {XSS}"},
        environ_base={"REMOTE_ADDR": "198.51.100.20"},
    )
    assert clicked.status_code == 200
    another = sell(shop, 9521)
    get(shop.client, link_path(another["downloads"][0]), headers={"User-Agent": "Not this one"})
    assert sign_in(admin_client) == 302
    page = admin_client.get(f"/admin/licenses/{license_id(app, 9520)}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert f"<code>{key}</code>" in html
    assert XSS not in html and ESCAPED in html
    assert "shop.example.com" in html and "1 used of 3" in html
    # An IDNA site in its own script, beside the xn-- form it is kept in (no look-alike).
    assert call(shop.client, "activate", {"key": key, "site": "https://www.Bücher.example/"})
    html = admin_client.get(f"/admin/licenses/{license_id(app, 9520)}").get_data(as_text=True)
    assert "bücher.example (xn--bcher-kva.example)" in html
    assert 'aria-label="Deactivate on bücher.example (xn--bcher-kva.example)"' in html
    assert "Product 501" in html
    assert sold["licenses"][0]["expires_at"][:10] in html
    assert f'href="/admin/orders/{order_pk(app, 9520)}"' in html
    assert "manual.pdf" in html and sold["downloads"][0]["link"] in html
    assert f"Agent {ESCAPED}" in html and "Not this one" not in html
    with app.app_context():
        ip_hash = db.session.execute(
            select(DownloadEvent.ip_hash).where(DownloadEvent.user_agent == f"Agent {XSS}")
        ).scalar_one()
    assert ip_hash is not None and f"<code>{ip_hash[:12]}</code>" in html
    assert ip_hash not in html  # a prefix tells clicks apart; the whole hash is not shown
    assert admin_client.get("/admin/licenses/99999").status_code == 404


def test_license_actions_are_the_api_verbs_audited_as_the_admin(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """Revoke, reinstate, extend and deactivate from the license page change what the
    admin API shows and leave audit entries naming the admin; no CSRF token, no change."""
    shop.configure(501, duration_days=365)
    sold = sell(shop, 9530)
    key = sold["licenses"][0]["key"]
    call(shop.client, "activate", {"key": key, "site": "one.example.com"})
    lic = license_id(app, 9530)
    page = f"/admin/licenses/{lic}"
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, page)

    assert admin_client.post(f"{page}/change", data={"action": "revoke"}).status_code == 400
    assert shop.admin("GET", f"/licenses/{key}").get_json()["license"]["status"] == "active"
    revoked = post(admin_client, f"{page}/change", token, action="revoke")
    assert revoked.status_code == 302 and revoked.headers["Location"].startswith(page)
    assert shop.order(9530)["licenses"][0]["status"] == "revoked"
    assert [d["revoked"] for d in shop.order(9530)["downloads"]] == [True]
    assert "The license is revoked" in admin_client.get(revoked.headers["Location"]).get_data(
        as_text=True
    )
    post(admin_client, f"{page}/change", token, action="reinstate")
    assert shop.order(9530)["licenses"][0]["status"] == "active"

    before = dt.datetime.fromisoformat(shop.order(9530)["licenses"][0]["expires_at"])
    assert (
        post(admin_client, f"{page}/change", token, action="extend", days=" 30 ").status_code == 302
    )
    after = dt.datetime.fromisoformat(shop.order(9530)["licenses"][0]["expires_at"])
    assert after - before == dt.timedelta(days=30)

    [activation] = shop.admin("GET", f"/licenses/{key}").get_json()["activations"]
    deactivate = f"{page}/activations/{activation['id']}/deactivate"
    assert admin_client.post(deactivate).status_code == 400
    assert post(admin_client, deactivate, token).status_code == 302
    assert shop.admin("GET", f"/licenses/{key}").get_json()["activations"] == []
    assert post(admin_client, deactivate, token).status_code == 404  # gone already

    for action in ("license.revoke", "license.reinstate", "license.extend"):
        assert [e.actor for e in audit(app, action)] == ["admin:owner"], action
    [removed] = audit(app, "license.activation_removed")
    assert (removed.actor, removed.subject) == ("admin:owner", f"license:{lic}")
    # Its id only: the audit log outlives the activation, and the site is about the buyer.
    assert removed.detail == {"activation_id": activation["id"]}


def test_a_stale_suspend_button_on_a_revoked_key_is_refused_with_the_reason(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """A Suspend button left open on a page (license or order) while the key was revoked by
    its refund: a 409 page saying it is revoked and why; the key stays revoked by the refund.
    A second revoke from a stale page changes nothing and writes no second audit entry."""
    shop.configure(501)
    sell(shop, 9535)
    lic = license_id(app, 9535)
    page = f"/admin/licenses/{lic}"
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, page)
    shop.deliver(wc_order(9535, "refunded", [line_item(501)], modified=60))
    for path, form in (
        (f"{page}/change", {"action": "suspend"}),
        (f"/admin/licenses/{lic}/suspend", {}),  # the order page's button
    ):
        refused = post(admin_client, path, token, **form)
        assert refused.status_code == 409, path
        assert "text/html" in refused.content_type
        html = refused.get_data(as_text=True)
        assert "This license is revoked" in html and "refunded" in html, path
    assert shop.order(9535)["licenses"][0]["status"] == "revoked"
    with app.app_context():
        revoked = db.session.get(License, lic)
        assert revoked is not None and revoked.status_reason == "order:refunded"
    assert audit(app, "license.suspend") == []

    sell(shop, 9536)
    other = f"/admin/licenses/{license_id(app, 9536)}"
    for _ in range(2):
        assert post(admin_client, f"{other}/change", token, action="revoke").status_code == 302
    assert len(audit(app, "license.revoke")) == 1


@pytest.mark.parametrize(
    ("days", "message"),
    [
        ("", "days is required"),
        ("thirty", "days must be a whole number"),
        ("-5", "days must be a whole number"),
        ("1.5", "days must be a whole number"),
        ("²", "days must be a whole number"),
        ("9" * 40, "days must be a whole number"),
        ("0", "days must be between 1 and 36600"),
        ("36601", "days must be between 1 and 36600"),
    ],
)
def test_a_bad_extension_is_a_form_message_not_a_500(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender, days: str, message: str
) -> None:
    shop.configure(501, duration_days=365)
    sell(shop, 9540)
    before = shop.order(9540)["licenses"][0]["expires_at"]
    page = f"/admin/licenses/{license_id(app, 9540)}"
    assert sign_in(admin_client) == 302
    answer = post(
        admin_client, f"{page}/change", csrf_token(admin_client, page), action="extend", days=days
    )
    assert answer.status_code == 422
    assert "text/html" in answer.content_type
    html = answer.get_data(as_text=True)
    assert message in html and "<h2>Activations</h2>" in html  # the license page, with the message
    # What was typed is in the field again, to correct rather than type anew.
    assert f'name="days" inputmode="numeric" size="6" value="{escape(days)}"' in html
    assert shop.order(9540)["licenses"][0]["expires_at"] == before
    assert audit(app, "license.extend") == []


def test_a_lifetime_license_or_an_unknown_action_is_refused_with_a_page(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    shop.configure(501)  # no duration: a lifetime license
    sell(shop, 9541)
    page = f"/admin/licenses/{license_id(app, 9541)}"
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, page)
    lifetime = post(admin_client, f"{page}/change", token, action="extend", days="30")
    assert lifetime.status_code == 422
    assert "a lifetime license cannot be extended" in lifetime.get_data(as_text=True)
    for action in ("", "delete", "revoke "):
        refused = post(admin_client, f"{page}/change", token, action=action)
        assert refused.status_code == 400 and "text/html" in refused.content_type, action
    assert shop.order(9541)["licenses"][0]["status"] == "active"


def test_the_license_page_lists_its_renewals(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    shop.configure(501, duration_days=365)
    key = sell(shop, 9550)["licenses"][0]["key"]
    renewal = wc_order(9551, "processing", [renewal_line(501, key, 955101)], modified=5)
    assert shop.deliver(renewal).status_code == 200
    assert sign_in(admin_client) == 302
    html = admin_client.get(f"/admin/licenses/{license_id(app, 9550)}").get_data(as_text=True)
    renewals = html.split("<h2>Renewals</h2>")[1].split("<h2>")[0]
    assert f'href="/admin/orders/{order_pk(app, 9551)}">9551</a>' in renewals
    assert "Never renewed." not in renewals


def test_a_store_admin_cannot_see_or_change_another_stores_license(
    app: Flask, shop: WebhookSender
) -> None:
    shop.configure(501)
    mine = sell(shop, 9560)["licenses"][0]["key"]
    theirs_shop = other_shop(app)
    theirs_shop.configure(601)
    theirs = sell(theirs_shop, 9561, 601)["licenses"][0]["key"]
    call(theirs_shop.client, "activate", {"key": theirs, "site": "their.example.com"})
    their_license = license_id(app, 9561)
    with app.app_context():
        their_activation = db.session.execute(select(Activation.id)).scalar_one()
    client = store_admin(app, shop.store.store.id)

    listing = client.get("/admin/licenses").get_data(as_text=True)
    assert f"/admin/licenses/{license_id(app, 9560)}" in listing
    assert f"/admin/licenses/{their_license}" not in listing
    assert client.get(f"/admin/licenses/{license_id(app, 9560)}").status_code == 200
    assert client.get(f"/admin/licenses/{their_license}").status_code == 404
    token = csrf_token(client, "/admin/licenses")
    assert post(client, "/admin/licenses/find", token, key=mine).status_code == 302
    assert post(client, "/admin/licenses/find", token, key=theirs).status_code == 404
    page = f"/admin/licenses/{their_license}"
    assert post(client, f"{page}/change", token, action="revoke").status_code == 404
    assert post(client, f"{page}/change", token, action="extend", days="9").status_code == 404
    assert (
        post(client, f"{page}/activations/{their_activation}/deactivate", token).status_code == 404
    )
    assert theirs_shop.order(9561)["licenses"][0]["status"] == "active"
    assert len(theirs_shop.admin("GET", f"/licenses/{theirs}").get_json()["activations"]) == 1


def look_up(client: FlaskClient, email: str) -> TestResponse:
    return post(client, "/admin/customers", csrf_token(client, "/admin/customers"), email=email)


def test_a_customer_is_looked_up_by_a_posted_email_with_orders_licenses_and_downloads(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    shop.configure(501)
    put_file(app, "products/501/manual.pdf", b"%PDF-1.4 manual")
    sold = sell(shop, 9570, first_name=XSS, email="carla@example.org")
    get(shop.client, link_path(sold["downloads"][0]), headers={"User-Agent": XSS})
    sell(shop, 9571, email="someone.else@example.org")
    assert sign_in(admin_client) == 302
    form = admin_client.get("/admin/customers").get_data(as_text=True)
    assert 'method="post"' in form and "carla" not in form
    assert (
        admin_client.post("/admin/customers", data={"email": "carla@example.org"}).status_code
        == 400
    )

    answer = look_up(admin_client, " Carla@Example.org ")
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    assert XSS not in html and ESCAPED in html
    assert f'href="/admin/orders/{order_pk(app, 9570)}"' in html
    assert f'href="/admin/licenses/{license_id(app, 9570)}"' in html
    assert sold["licenses"][0]["key"] in html
    assert "manual.pdf" in html and "served" in html
    assert "9571" not in html and "someone.else" not in html
    assert "Export (JSON)" in html and "Erase" in html

    assert "Keygate keeps no data about this customer" in look_up(
        admin_client, "nobody@example.org"
    ).get_data(as_text=True)
    malformed = look_up(admin_client, f"{XSS}")
    assert malformed.status_code == 422
    malformed_html = malformed.get_data(as_text=True)
    assert "an email address is expected" in malformed_html
    assert XSS not in malformed_html


def test_an_erased_customer_is_looked_up_with_what_was_kept_and_no_erase_button(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """After an erasure the page shows what is kept under the pseudonym, with its export,
    never "keeps no data"; the Erase form comes back with a new order of theirs."""
    shop.configure(501)
    sold = sell(shop, 9572, email="carla@example.org")
    assert shop.admin("DELETE", "/customers/carla@example.org").status_code == 200
    assert sign_in(admin_client) == 302
    html = look_up(admin_client, "carla@example.org").get_data(as_text=True)
    assert "keeps no data" not in html and "Export (JSON)" in html
    assert sold["licenses"][0]["key"] in html and "(customer erased)" in html
    assert "This customer was erased" in html and 'name="confirm"' not in html
    sell(shop, 9573, email="carla@example.org")
    html = look_up(admin_client, "carla@example.org").get_data(as_text=True)
    assert 'name="confirm"' in html and "This customer was erased" not in html


def test_export_downloads_exactly_what_the_export_api_gives(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    shop.configure(501)
    sell(shop, 9580, email="dora@example.org")
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, "/admin/customers")
    store_id = shop.store.store.id
    form = {"store_id": store_id, "email": "dora@example.org"}
    assert admin_client.post("/admin/customers/export", data=form).status_code == 400
    answer = post(admin_client, "/admin/customers/export", token, **form)
    assert answer.status_code == 200
    assert answer.mimetype == "application/json"
    assert answer.headers["Content-Disposition"].startswith("attachment; filename=")
    assert answer.headers["Cache-Control"] == "no-store"
    api = shop.admin("GET", "/customers/dora@example.org/export").get_json()
    exported = json.loads(answer.get_data(as_text=True))
    assert exported.pop("exported_at") and api.pop("exported_at")
    assert exported == api
    assert exported["orders"][0]["licenses"][0]["key"]

    nobody = post(
        admin_client, "/admin/customers/export", token, store_id=store_id, email="x@y.org"
    )
    assert nobody.status_code == 404 and "text/html" in nobody.content_type
    for bad in ({"store_id": "abc"}, {"store_id": "99999"}, {"store_id": ""}):
        assert (
            post(admin_client, "/admin/customers/export", token, **{**form, **bad}).status_code
            == 404
        )
    bad_email = post(
        admin_client, "/admin/customers/export", token, store_id=store_id, email="nope"
    )
    assert bad_email.status_code == 422 and "text/html" in bad_email.content_type


def test_erasure_needs_the_address_typed_again_and_answers_as_the_api(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    shop.configure(501)
    sell(shop, 9590, email="erin@example.org")
    sell(shop, 9591, email="erin@example.org")
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, "/admin/customers")
    form = {"store_id": shop.store.store.id, "email": "erin@example.org"}
    assert (
        admin_client.post(
            "/admin/customers/erase", data={**form, "confirm": "erin@example.org"}
        ).status_code
        == 400
    )
    for typed in ("", "erin@example.com", "yes"):
        refused = post(admin_client, "/admin/customers/erase", token, **form, confirm=typed)
        assert refused.status_code == 422, typed
        assert "Nothing was erased" in refused.get_data(as_text=True)
    assert shop.admin("GET", "/customers/erin@example.org/export").status_code == 200
    assert audit(app, "customer.erased") == []

    erased = post(
        admin_client, "/admin/customers/erase", token, **form, confirm=" Erin@Example.org"
    )
    assert erased.status_code == 200
    html = erased.get_data(as_text=True)
    assert "2 orders in Test Shop" in html and "never put them in a list" in html
    assert "stays in the Brevo account" not in html  # nothing of them is in Brevo
    assert shop.admin("GET", "/customers/erin@example.org/export").get_json()["erased"] is True
    assert shop.order(9590)["order"]["email"].endswith("@erased.invalid")
    [event] = audit(app, "customer.erased")
    assert event.actor == "admin:owner"
    assert event.detail == {"orders": 2, "brevo_removal": None}
    again = post(admin_client, "/admin/customers/erase", token, **form, confirm="erin@example.org")
    assert again.status_code == 404


def test_an_erasure_clicked_twice_at_once_erases_once(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """A second click of Erase while the first one's erasure is being committed (a double
    click) is the 404 of a customer erased already, not a second erasure: one
    ``customer.erased`` entry, the orders' ``erased_at`` the first one's."""
    shop.configure(501)
    sell(shop, 9595, email="dora@example.org")
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, "/admin/customers")
    order = order_pk(app, 9595)
    with app.app_context():
        pseudonym = erased_addresses(shop.store.store.id, "dora@example.org")[0]
    first_erased_at = dt.datetime(2026, 1, 2, 3, 4, 5)

    def first_erasure(connection: Connection) -> None:  # its fields, not yet committed
        connection.execute(
            text("UPDATE orders SET email = :email, erased_at = :at WHERE id = :id"),
            {"email": pseudonym, "at": first_erased_at, "id": order},
        )

    second = while_another_transaction(
        app,
        first_erasure,
        lambda: post(
            admin_client,
            "/admin/customers/erase",
            token,
            store_id=shop.store.store.id,
            email="dora@example.org",
            confirm="dora@example.org",
        ),
    )
    assert second.status_code == 404, second.get_data(as_text=True)
    assert "erased already" in second.get_data(as_text=True)
    assert audit(app, "customer.erased") == []  # the first one's is not in this sketch of it
    with app.app_context():
        kept = db.session.get(Order, order)
        assert kept is not None and kept.erased_at is not None
        assert kept.erased_at.replace(tzinfo=None) == first_erased_at


def test_a_store_admin_finds_exports_and_erases_only_in_their_store(
    app: Flask, shop: WebhookSender
) -> None:
    """An email that only another store knows is nobody here; that store's forms are 404."""
    shop.configure(501)
    sell(shop, 9600, email="mine@example.org")
    theirs_shop = other_shop(app)
    theirs_shop.configure(601)
    sell(theirs_shop, 9601, 601, email="theirs@example.org")
    sell(theirs_shop, 9602, 601, email="mine@example.org")
    client = store_admin(app, shop.store.store.id)

    html = look_up(client, "theirs@example.org").get_data(as_text=True)
    assert "Keygate keeps no data about this customer" in html and "9601" not in html
    html = look_up(client, "mine@example.org").get_data(as_text=True)
    assert "9600" in html and "9602" not in html and "Other shop" not in html

    token = csrf_token(client, "/admin/customers")
    mine, theirs = shop.store.store.id, theirs_shop.store.store.id
    for path in ("/admin/customers/export", "/admin/customers/erase"):
        extra = {"confirm": "theirs@example.org"} if path.endswith("erase") else {}
        here = post(client, path, token, store_id=mine, email="theirs@example.org", **extra)
        there = post(client, path, token, store_id=theirs, email="theirs@example.org", **extra)
        assert (here.status_code, there.status_code) == (404, 404), path
    mine_there = post(
        client,
        "/admin/customers/erase",
        token,
        store_id=theirs,
        email="mine@example.org",
        confirm="mine@example.org",
    )
    assert mine_there.status_code == 404
    assert theirs_shop.admin("GET", "/customers/theirs@example.org/export").status_code == 200
    assert theirs_shop.order(9602)["order"]["email"] == "mine@example.org"
    erased = post(
        client,
        "/admin/customers/erase",
        token,
        store_id=mine,
        email="mine@example.org",
        confirm="mine@example.org",
    )
    assert erased.status_code == 200 and "1 order in Test Shop" in erased.get_data(as_text=True)
    assert theirs_shop.order(9602)["order"]["email"] == "mine@example.org"  # the other store's


def test_the_buyer_of_an_order_without_an_email_address_is_exported_and_erased_from_its_page(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """An order entered by hand with no address: the Customers page cannot find its buyer,
    so the order's page exports their data and erases it once the number is typed again;
    the key and amounts stay, the name, company and mails go, audited under a pseudonym."""
    shop.configure(501)
    sold = sell(shop, 9700, email="", first_name="Nora", last_name="Phone")
    sell(shop, 9701, email="kept@example.org", first_name="Kept", last_name="Buyer")
    assert sold["order"]["email"] is None
    assert sign_in(admin_client) == 302
    page = f"/admin/orders/{order_pk(app, 9700)}"
    html = admin_client.get(page).get_data(as_text=True)
    assert "cannot find its buyer" in html and "/buyer/erase" in html
    # An order whose buyer has an address is the Customers page's: no form here, 409 posted.
    with_address = f"/admin/orders/{order_pk(app, 9701)}"
    assert "/buyer/erase" not in admin_client.get(with_address).get_data(as_text=True)
    token = csrf_token(admin_client, page)
    refused = post(admin_client, f"{with_address}/buyer/erase", token, confirm="9701")
    assert refused.status_code == 409 and "Customers page" in refused.get_data(as_text=True)
    assert post(admin_client, f"{with_address}/buyer/export", token).status_code == 409

    exported = post(admin_client, f"{page}/buyer/export", token)
    assert exported.status_code == 200 and exported.headers["Cache-Control"] == "no-store"
    assert exported.headers["Content-Disposition"].startswith("attachment; filename=")
    data = json.loads(exported.get_data(as_text=True))
    [order] = data["orders"]
    assert (data["email"], data["erased"], order["order"]) == (None, False, "9700")
    assert order["name"] == "Nora Phone" and order["licenses"][0]["key"]

    assert admin_client.post(f"{page}/buyer/erase", data={"confirm": "9700"}).status_code == 400
    for typed in ("", "9701", "erase"):
        wrong = post(admin_client, f"{page}/buyer/erase", token, confirm=typed)
        assert wrong.status_code == 422 and "Nothing was erased" in wrong.get_data(as_text=True)
    assert shop.order(9700)["order"]["name"] == "Nora Phone"
    assert audit(app, "customer.erased") == []

    erased = post(admin_client, f"{page}/buyer/erase", token, confirm=" #9700 ")
    assert erased.status_code == 200
    assert "1 order in Test Shop" in erased.get_data(as_text=True)
    after = shop.order(9700)["order"]
    assert after["name"] is None and after["company"] is None
    assert shop.order(9701)["order"]["name"] == "Kept Buyer"
    [event] = audit(app, "customer.erased")
    assert event.actor == "admin:owner" and event.subject.startswith("erased-")
    assert event.detail == {"orders": 1, "brevo_removal": None}
    with app.app_context():
        kept = db.session.execute(select(Order).where(Order.shop_order_id == "9700")).scalar_one()
        assert kept.is_erased and kept.email == f"{event.subject}@erased.invalid"
        assert db.session.scalar(select(License.status).where(License.order_id == kept.id)) == (
            "active"
        )
    # Erased: the page says so, offers the export of what is kept, and no second erasure.
    html = admin_client.get(page).get_data(as_text=True)
    assert "buyer was erased" in html and "/buyer/erase" not in html
    again = post(admin_client, f"{page}/buyer/erase", token, confirm="9700")
    assert again.status_code == 409 and "erased already" in again.get_data(as_text=True)
    data = json.loads(post(admin_client, f"{page}/buyer/export", token).get_data(as_text=True))
    assert data["erased"] is True and data["orders"][0]["name"] is None
    assert [entry["action"] for entry in data["audit"]][-1] == "customer.erased"
    # A later delivery of the order does not bring the name back.
    shop.deliver(wc_order(9700, "completed", email="", first_name="Nora", modified=5))
    assert shop.order(9700)["order"]["name"] is None


def test_a_store_admin_erases_no_buyer_of_another_stores_order(
    app: Flask, shop: WebhookSender
) -> None:
    shop.configure(501)
    theirs_shop = other_shop(app)
    theirs_shop.configure(601)
    sell(theirs_shop, 9710, 601, email="", first_name="Other")
    client = store_admin(app, shop.store.store.id)
    token = csrf_token(client, "/admin/customers")
    page = f"/admin/orders/{order_pk(app, 9710)}"
    assert client.get(page).status_code == 404
    for action in ("erase", "export"):
        answer = post(client, f"{page}/buyer/{action}", token, confirm="9710")
        assert answer.status_code == 404, action
    assert post(client, "/admin/orders/999999/buyer/export", token).status_code == 404
    assert theirs_shop.order(9710)["order"]["name"] == "Other Ørsted 山田"


def _watermarked_copy(app: Flask, shop: WebhookSender, order_id: int, **order: Any) -> bytes:
    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf")
    shop.configure(
        501, files=[{"object_key": "books/guide.pdf", "filename": "guide.pdf", "watermark": "pdf"}]
    )
    sold = sell(shop, order_id, **order)
    copy = get(shop.client, link_path(sold["downloads"][0]))
    assert copy.status_code == 200
    data: bytes = copy.data
    return data


def upload(
    client: FlaskClient, token: str | None, data: bytes, filename: str = "found.pdf"
) -> TestResponse:
    """Multipart encoded by hand: the test client spools large bodies to a file it never closes."""
    parts = b""
    if token is not None:
        parts += (
            b'--kgboundary\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'
            + token.encode()
            + b"\r\n"
        )
    parts += (
        b"--kgboundary\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename.encode() + b'"\r\n'
        b"Content-Type: application/pdf\r\n\r\n" + data + b"\r\n--kgboundary--\r\n"
    )
    return client.post(
        "/admin/leaks", data=parts, content_type="multipart/form-data; boundary=kgboundary"
    )


def test_the_leak_lookup_page_names_the_buyer_of_a_found_copy(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender, tmp_path: Path
) -> None:
    copy = _watermarked_copy(app, shop, 9610, first_name=XSS)
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, "/admin/leaks")
    assert upload(admin_client, None, copy).status_code == 400
    found = upload(admin_client, token, copy)
    assert found.status_code == 200, found.get_data(as_text=True)
    html = found.get_data(as_text=True)
    assert XSS not in html and ESCAPED in html and "jurgen@example.org" in html
    assert f'href="/admin/orders/{order_pk(app, 9610)}"' in html
    assert f'href="/admin/licenses/{license_id(app, 9610)}"' in html

    plain = upload(admin_client, token, make_pdf(tmp_path / "plain.pdf").read_bytes())
    assert plain.status_code == 404
    assert "No fingerprint of your stores was found" in plain.get_data(as_text=True)
    empty = upload(admin_client, token, b"")
    assert empty.status_code == 422 and "The file is empty" in empty.get_data(as_text=True)
    none = upload(admin_client, token, b"%PDF", filename="")
    assert none.status_code == 422 and "Choose the file" in none.get_data(as_text=True)


def test_a_leaked_copy_larger_than_the_page_limit_is_read_for_a_signed_in_admin_only(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender, tmp_path: Path
) -> None:
    """Leaked copies are big: the page takes what the API takes, once the admin is signed in
    (nobody else can make the server spool a large body)."""
    copy = _watermarked_copy(app, shop, 9620)
    with pikepdf.open(io.BytesIO(copy)) as pdf:
        pdf.pages[0].Resources.XObject = pikepdf.Dictionary(
            Pad=pdf.make_stream(os.urandom(1_500_000), Type=pikepdf.Name.XObject)
        )
        big = tmp_path / "big.pdf"
        pdf.save(big, compress_streams=False)
    assert big.stat().st_size > app.config["MAX_CONTENT_LENGTH"]
    token = csrf_token(admin_client, "/admin/login")
    assert upload(admin_client, token, big.read_bytes()).status_code == 413
    assert sign_in(admin_client) == 302
    found = upload(admin_client, csrf_token(admin_client, "/admin/leaks"), big.read_bytes())
    assert found.status_code == 200, found.get_data(as_text=True)
    assert f'href="/admin/orders/{order_pk(app, 9620)}"' in found.get_data(as_text=True)


def test_a_store_admin_learns_nothing_from_another_stores_copy(
    app: Flask, shop: WebhookSender
) -> None:
    copy = _watermarked_copy(app, shop, 9630)
    theirs_shop = other_shop(app)
    client = store_admin(app, theirs_shop.store.store.id)
    answer = upload(client, csrf_token(client, "/admin/leaks"), copy)
    assert answer.status_code == 404
    assert "jurgen" not in answer.get_data(as_text=True)


def test_the_new_pages_need_a_signed_in_admin_and_are_in_the_navigation(
    admin_client: FlaskClient,
) -> None:
    for path in ("/admin/licenses", "/admin/licenses/1", "/admin/customers", "/admin/leaks"):
        response = admin_client.get(path)
        assert response.status_code == 302 and "/admin/login" in response.headers["Location"]
    assert sign_in(admin_client) == 302
    nav = admin_client.get("/admin/").get_data(as_text=True)
    for link in ('href="/admin/licenses"', 'href="/admin/customers"', 'href="/admin/leaks"'):
        assert link in nav


def test_pages_showing_keys_are_never_cached(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """The license page and the customer lookup show keys: ``Cache-Control: no-store``."""
    shop.configure(501)
    key = sell(shop, 9810, email="cache@example.org")["licenses"][0]["key"]
    assert sign_in(admin_client) == 302
    page = admin_client.get(f"/admin/licenses/{license_id(app, 9810)}")
    assert key in page.get_data(as_text=True)
    assert page.headers["Cache-Control"] == "no-store"
    token = csrf_token(admin_client, "/admin/customers")
    found = post(admin_client, "/admin/customers", token, email="cache@example.org")
    assert key in found.get_data(as_text=True)
    assert found.headers["Cache-Control"] == "no-store"


def test_the_older_link_under_a_failed_key_search_pages_the_list(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key search that finds nothing shows the list again; its "Older" button pages the
    list (not the search)."""
    monkeypatch.setattr("connector.admin.licenses.PAGE", 2)
    shop.configure(501)
    for order in (9801, 9802, 9803):
        sell(shop, order)
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, "/admin/licenses")
    answer = post(admin_client, "/admin/licenses/find", token, key="KG-AAAAA-BBBBB-CCCCC-DDDDD")
    assert answer.status_code == 404
    html = answer.get_data(as_text=True)
    older = re.search(r'action="(/admin/licenses)">.*?name="before" value="(\d+)"', html, re.S)
    assert older is not None
    page = post(admin_client, older.group(1), token, before=older.group(2))
    assert page.status_code == 200
    assert len(re.findall(r'href="/admin/licenses/\d+"', page.get_data(as_text=True))) == 1


def test_ids_larger_than_any_row_find_nothing(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """Ids past 32 bits (the id columns' size on PostgreSQL) in paths, queries and forms
    are a 404 or are ignored, never a 500 from the database driver."""
    shop.configure(501)
    key = sell(shop, 9840)["licenses"][0]["key"]
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, "/admin/licenses")
    big = "9999999999"
    for path in (
        f"/admin/licenses/{big}",
        f"/admin/orders/{big}",
        f"/admin/stores/{big}",
        f"/admin/products/{big}/501",
        f"/admin/products?store={big}",
    ):
        assert admin_client.get(path).status_code == 404, path
    for path in (f"/admin/licenses?before={big}", f"/admin/orders?before={big}"):
        assert admin_client.get(path).status_code == 200, path
    for path, form in (
        (f"/admin/licenses/{big}/change", {"action": "revoke"}),
        ("/admin/customers/export", {"store_id": big, "email": "a@b.example"}),
        ("/admin/products/new", {"store": big, "shop_product_id": "5", "name": "n"}),
    ):
        assert post(admin_client, path, token, **form).status_code == 404, path
    assert shop.admin("DELETE", f"/licenses/{key}/activations/{big}").status_code == 404
