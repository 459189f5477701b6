"""Tenant isolation: an admin of one store, or its admin API token, reads and changes that
store only; a store's secrets, keys and links do nothing in another store.

Two stores with a bit of everything (orders, licenses, activations, downloads, mails,
releases, audit entries); everything of the other store ("theirs") carries markers that
must never show up in an answer to "mine"'s admin or token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from flask import Flask
from sqlalchemy import func, select
from werkzeug.security import generate_password_hash

from connector.db import db
from connector.jobs import run_pending
from connector.models import (
    Activation,
    AdminUser,
    AuditEvent,
    Job,
    License,
    LicenseRenewal,
    Mail,
    Order,
    Product,
    Release,
    Store,
)
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_admin_licenses_pages import other_shop, post, sell
from tests.functional.test_admin_pages import PASSWORD, csrf_token, store_admin
from tests.functional.test_downloads import get, link_path, put_file
from tests.functional.test_renewals_and_payments import renewal_line
from tests.licensing_helpers import call

THEIR_EMAIL = "theirbuyer@example.org"
THEIR_NAME = "Zebedee"


@dataclass
class Two:
    """Two stores: ``mine`` (whose admin and token attack) and ``theirs``."""

    mine: WebhookSender
    theirs: WebhookSender
    my_key: str
    their_key: str
    their_order: int  # Keygate's id of their order
    their_license: int
    their_activation: int
    their_mail: int
    their_job: int
    my_order: int


def _ids(app: Flask, shop_order_id: int) -> tuple[int, int]:
    with app.app_context():
        order = db.session.execute(
            select(Order).where(Order.shop_order_id == str(shop_order_id))
        ).scalar_one()
        lic = db.session.execute(select(License.id).where(License.order_id == order.id))
        return order.id, lic.scalar_one()


@pytest.fixture
def two(app: Flask, shop: WebhookSender) -> Two:
    shop.configure(501)
    put_file(app, "products/501/manual.pdf", b"%PDF-1.4 mine")
    mine = sell(shop, 7100, email="mybuyer@example.org")
    theirs_shop = other_shop(app)
    theirs_shop.configure(501)
    theirs = sell(theirs_shop, 7200, email=THEIR_EMAIL, first_name=THEIR_NAME)
    assert (
        theirs_shop.admin(
            "POST",
            "/products/501/releases",
            {
                "version": "9.9.9",
                "object_key": "products/501/their-9.9.9.zip",
                "sha256": "ab" * 32,
                "size": 3,
            },
        ).status_code
        == 201
    )
    get(theirs_shop.client, link_path(theirs["downloads"][0]))
    call(theirs_shop.client, "activate", {"key": theirs["licenses"][0]["key"], "site": "z.example"})
    run_pending(app)
    their_order, their_license = _ids(app, 7200)
    my_order, _ = _ids(app, 7100)
    with app.app_context():
        activation = db.session.execute(
            select(Activation.id).where(Activation.license_id == their_license)
        ).scalar_one()
        mail = db.session.execute(select(Mail).where(Mail.order_id == their_order)).scalar_one()
        job = db.session.get(Job, mail.job_id)
        assert job is not None
        job.status = "dead"
        db.session.commit()
        mail_id, job_id = mail.id, job.id
    return Two(
        mine=shop,
        theirs=theirs_shop,
        my_key=mine["licenses"][0]["key"],
        their_key=theirs["licenses"][0]["key"],
        their_order=their_order,
        their_license=their_license,
        their_activation=activation,
        their_mail=mail_id,
        their_job=job_id,
        my_order=my_order,
    )


def _markers(two: Two) -> list[str]:
    store = two.theirs.store.store
    return [THEIR_EMAIL, THEIR_NAME, two.their_key, "Other shop", store.public_id, "7200"]


def _clean(two: Two, text: str, where: str) -> None:
    for marker in _markers(two):
        # Not inside a longer number: the order number 7200 is in many a time's microseconds.
        found = re.search(rf"(?<!\d){re.escape(marker)}(?!\d)", text)
        assert found is None, f"{marker!r} of the other store in {where}"


def test_a_store_admins_pages_show_nothing_of_another_store(app: Flask, two: Two) -> None:
    client = store_admin(app, two.mine.store.store.id)
    for path in (
        "/admin/",
        "/admin/orders",
        "/admin/products",
        "/admin/licenses",
        "/admin/customers",
        "/admin/outbox",
        "/admin/audit",
        f"/admin/stores/{two.mine.store.store.id}",
        f"/admin/stores/{two.mine.store.store.id}/credentials",
        f"/admin/stores/{two.mine.store.store.id}/licenses.csv",
        f"/admin/products/{two.mine.store.store.id}/501",
        "/admin/products/new",
    ):
        answer = client.get(path)
        assert answer.status_code == 200, path
        _clean(two, answer.get_data(as_text=True), path)
    token = csrf_token(client, "/admin/orders")
    for path, form in (
        ("/admin/orders", {"q": THEIR_EMAIL}),
        ("/admin/orders", {"q": "7200"}),
        ("/admin/licenses", {"email": THEIR_EMAIL}),
        ("/admin/customers", {"email": THEIR_EMAIL}),
    ):
        answer = post(client, path, token, **form)
        assert answer.status_code == 200, (path, form)
        typed = next(iter(form.values()))
        _clean(two, answer.get_data(as_text=True).replace(f'value="{typed}"', ""), path)


def test_a_store_admin_gets_404_for_every_id_of_another_store(app: Flask, two: Two) -> None:
    client = store_admin(app, two.mine.store.store.id)
    theirs = two.theirs.store.store.id
    for path in (
        f"/admin/orders/{two.their_order}",
        f"/admin/licenses/{two.their_license}",
        f"/admin/outbox/mails/{two.their_mail}",
        f"/admin/stores/{theirs}",
        f"/admin/stores/{theirs}/credentials",
        f"/admin/stores/{theirs}/licenses.csv",
        f"/admin/products/{theirs}/501",
        f"/admin/products?store={theirs}",
    ):
        assert client.get(path).status_code == 404, path
    token = csrf_token(client, "/admin/orders")
    confirmed = {"confirm": "y"}
    for path, form in (
        (f"/admin/orders/{two.their_order}/resend", {}),
        (f"/admin/orders/{two.their_order}/buyer/export", {}),
        (f"/admin/orders/{two.their_order}/buyer/erase", {"confirm": "7200"}),
        (f"/admin/licenses/{two.their_license}/revoke", {}),
        (f"/admin/licenses/{two.their_license}/change", {"action": "suspend"}),
        (
            f"/admin/licenses/{two.their_license}/activations/{two.their_activation}/deactivate",
            {},
        ),
        (f"/admin/outbox/jobs/{two.their_job}/retry", {}),
        (f"/admin/stores/{theirs}/token", confirmed),
        (f"/admin/stores/{theirs}/webhook-secret", confirmed),
        (f"/admin/stores/{theirs}/disconnect", confirmed),
        (f"/admin/stores/{theirs}/credentials", {"kind": "brevo", "api_key": "x"}),
        (f"/admin/stores/{theirs}/delete", {"store_id": two.theirs.store.store.public_id}),
        (f"/admin/products/{theirs}/501", {"name": "Hijacked"}),
        (f"/admin/products/{theirs}/501/retire", confirmed),
        (
            f"/admin/products/{theirs}/501/releases",
            {"version": "6.6.6", "object_key": "x.zip", "sha256": "cd" * 32, "size": "3"},
        ),
        ("/admin/products/new", {"store": theirs, "shop_product_id": "777", "name": "Planted"}),
        ("/admin/customers/export", {"store_id": theirs, "email": THEIR_EMAIL}),
        (
            "/admin/customers/erase",
            {"store_id": theirs, "email": THEIR_EMAIL, "confirm": THEIR_EMAIL},
        ),
    ):
        answer = post(client, path, token, **form)
        assert answer.status_code == 404, (path, answer.status_code)
        _clean(two, answer.get_data(as_text=True), path)
    assert post(client, "/admin/licenses/find", token, key=two.their_key).status_code == 404
    with app.app_context():
        lic = db.session.get(License, two.their_license)
        assert lic is not None and lic.status == "active"
        assert db.session.get(Job, two.their_job).status == "dead"  # type: ignore[union-attr]
        order = db.session.get(Order, two.their_order)
        assert order is not None and order.email == THEIR_EMAIL
        assert db.session.scalar(select(func.count()).select_from(Activation)) == 1
        names = set(db.session.scalars(select(Product.name).where(Product.store_id == theirs)))
        assert names == {"Product 501"}
        assert db.session.scalar(select(func.count()).select_from(Release)) == 1
        assert db.session.get(Store, theirs).deleted_at is None  # type: ignore[union-attr]
        assert not db.session.scalars(
            select(AuditEvent).where(
                AuditEvent.store_id == theirs, AuditEvent.actor.startswith("admin:")
            )
        ).all()
    assert two.theirs.order(7200)["licenses"][0]["status"] == "active"


def test_a_store_token_reaches_nothing_of_another_store(app: Flask, two: Two) -> None:
    mine = two.mine
    for method, path in (
        ("GET", "/orders/7200"),
        ("GET", "/orders/7200/downloads"),
        ("GET", "/orders/7200/buyer/export"),
        ("DELETE", "/orders/7200/buyer"),
        ("POST", "/orders/7200/resend"),
        ("GET", f"/licenses/{two.their_key}"),
        ("POST", f"/licenses/{two.their_key}/revoke"),
        ("DELETE", f"/licenses/{two.their_key}/activations/{two.their_activation}"),
        ("GET", f"/customers/{THEIR_EMAIL}/export"),
        ("DELETE", f"/customers/{THEIR_EMAIL}"),
    ):
        answer = mine.admin(method, path)
        assert answer.status_code == 404, (method, path, answer.status_code)
        _clean(two, answer.get_data(as_text=True), path)
    for path in (
        "/licenses",
        f"/licenses?email={THEIR_EMAIL}",
        "/licenses.csv",
        "/products",
        "/audit",
        "/outbox",
        "/connection",
        f"/customers/{THEIR_EMAIL}/downloads",
        "/products/501/releases",
    ):
        answer = mine.admin("GET", path)
        assert answer.status_code == 200, path
        _clean(two, answer.get_data(as_text=True).replace(THEIR_EMAIL, ""), path)
    assert two.theirs.order(7200)["licenses"][0]["status"] == "active"


def test_a_webhook_signed_with_one_stores_secret_is_refused_by_another(
    app: Flask, two: Two
) -> None:
    forged = wc_order(7201, "processing", [line_item(501)], email="intruder@example.org")
    answer = two.theirs.deliver(forged, secret=two.mine.store.webhook_secret)
    assert answer.status_code == 401
    with app.app_context():
        assert db.session.scalar(select(Order).where(Order.shop_order_id == "7201")) is None


def test_a_key_of_another_store_is_a_mismatch_for_a_product_naming_its_store(
    app: Flask, two: Two
) -> None:
    """A product that names its store (the client's ``store=``) takes no key of another
    store: no activation, no update, no offline file."""
    mine = two.mine.store.store.public_id
    answer = call(
        two.mine.client, "validate", {"key": two.their_key, "product": "501", "store": mine}
    )
    assert answer.get_json()["code"] == "PRODUCT_MISMATCH"
    same = call(two.mine.client, "validate", {"key": two.my_key, "product": "501", "store": mine})
    assert same.get_json()["code"] == "VALID"
    for endpoint, body in (
        ("activate", {"site": "mine.example.com"}),
        ("update-check", {"product": "501", "version": "1.0.0"}),
        ("checkout", {"product": "501", "site": "mine.example.com"}),
    ):
        answer = call(two.mine.client, endpoint, {"key": two.their_key, "store": mine, **body})
        assert answer.get_json()["code"] == "PRODUCT_MISMATCH", endpoint
        assert "their-9.9.9" not in answer.get_data(as_text=True)
        assert not answer.get_json().get("license_file")
    with app.app_context():
        seats = select(func.count()).where(Activation.license_id == two.their_license)
        assert db.session.scalar(seats) == 1  # theirs only


def test_a_store_admin_is_no_admin_of_every_store(app: Flask, two: Two) -> None:
    client = store_admin(app, two.mine.store.store.id)
    assert client.get("/admin/stores/new").status_code == 404
    token = csrf_token(client, "/admin/orders")
    added = post(client, "/admin/stores/new", token, name="Mine too", url="https://new.example")
    assert added.status_code == 404
    with app.app_context():
        user = db.session.execute(select(AdminUser).where(AdminUser.username == "ana")).scalar_one()
        assert user.store_id == two.mine.store.store.id
        assert db.session.scalar(select(func.count()).select_from(Store)) == 2


def test_a_store_learns_no_name_of_an_admin_of_every_store(app: Flask, two: Two) -> None:
    """What an admin of every store did to a store is in its log as an admin's, not under
    the name they sign in with (half of their credentials, which the store's admins and
    token holders could then guess at and lock out); the store's own admins stay named."""
    with app.app_context():
        db.session.add(
            AdminUser(username="root-olga", password_hash=generate_password_hash(PASSWORD))
        )
        db.session.commit()
    owner = app.test_client()
    token = csrf_token(owner, "/admin/login")
    login = {"username": "root-olga", "password": PASSWORD}
    assert post(owner, "/admin/login", token, **login).status_code == 302
    my_license = _ids(app, 7100)[1]
    token = csrf_token(owner, f"/admin/licenses/{my_license}")
    changed = post(owner, f"/admin/licenses/{my_license}/change", token, action="suspend")
    assert changed.status_code == 302
    ana = store_admin(app, two.mine.store.store.id)
    token = csrf_token(ana, f"/admin/licenses/{my_license}")
    changed = post(ana, f"/admin/licenses/{my_license}/change", token, action="reinstate")
    assert changed.status_code == 302

    entries = two.mine.admin("GET", "/audit?action=license.suspend").get_json()["events"]
    assert [e["actor"] for e in entries] == ["admin"]
    entries = two.mine.admin("GET", "/audit?action=license.reinstate").get_json()["events"]
    assert [e["actor"] for e in entries] == ["admin:ana"]
    assert "root-olga" not in two.mine.admin("GET", "/audit").get_data(as_text=True)
    page = ana.get("/admin/audit").get_data(as_text=True)
    assert "root-olga" not in page
    assert '<td data-label="Who">admin</td><td data-label="What">license.suspend' in page
    assert '<td data-label="Who">admin:ana</td><td data-label="What">license.reinstate' in page
    everything = owner.get("/admin/audit").get_data(as_text=True)
    assert '<td data-label="Who">admin:root-olga</td><td data-label="What">license.suspend' in (
        everything
    )


def test_another_stores_order_renews_no_key_of_this_store(app: Flask, two: Two) -> None:
    """A shop can send any order it likes: one naming a key of another store to renew
    extends nothing there (the line is a new sale in its own store)."""
    two.mine.configure(502, duration_days=30)
    two.theirs.configure(502, duration_days=30)
    mine = sell(two.mine, 7300, 502)["licenses"][0]
    renewal = wc_order(7301, "processing", [renewal_line(502, mine["key"], 730101)])
    assert two.theirs.deliver(renewal).status_code == 200
    after = two.mine.admin("GET", f"/licenses/{mine['key']}").get_json()["license"]
    assert after["expires_at"] == mine["expires_at"]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(LicenseRenewal)) == 0
    assert two.theirs.order(7301)["licenses"][0]["key"] != mine["key"]


def test_a_buyers_links_reach_nothing_of_another_store(app: Flask, two: Two) -> None:
    """A portal link frees no seat of another store's key, and a link of one kind is no
    link of another (portal, download)."""
    mine = two.mine.order(7100)
    portal = urlsplit(mine["portal_url"]).path
    page = two.mine.client.get(portal).get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert token is not None
    freed = post(
        two.mine.client,
        f"{portal}/activations/{two.their_activation}/deactivate",
        token.group(1),
    )
    assert freed.status_code == 404
    with app.app_context():
        assert db.session.get(Activation, two.their_activation) is not None
    portal_token = portal.rsplit("/", 1)[1]
    download_token = link_path(mine["downloads"][0]).rsplit("/", 1)[1]
    assert two.mine.client.get(f"/d/{portal_token}").status_code == 404
    assert two.mine.client.get(f"/my/{download_token}").status_code == 404
