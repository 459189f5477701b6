"""Admin product pages: the configured products, their settings form and their releases.

The forms save through the JSON API's own parsing and verbs, so what a form saves is what
``GET /api/v1/admin/products/<id>`` then answers, and a bad value gets the API's message.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from markupsafe import escape
from sqlalchemy import select, update

from connector.admin.products import POLICY_LABELS
from connector.catalog import POLICY_FIELDS
from connector.db import db, utcnow
from connector.models import AuditEvent, Product
from connector.stores import create_store
from tests.factories import WebhookSender, line_item, shifted, wc_order
from tests.functional.test_admin_pages import (
    admin_client,
    csrf_token,
    sign_in,
    store_admin,
)
from tests.functional.test_downloads import put_file

__all__ = ["admin_client"]

SHA = "ab" * 32
FULL_POLICY = {
    "activation_limit": 3,
    "duration_days": 365,
    "update_days": 180,
    "staging_free": False,
    "download_limit": 5,
    "download_days": 30,
    "perpetual_fallback": True,
    "abuse_threshold": 12,
    "abuse_suspend": True,
    "offline_days": 14,
}


class _FormFields(HTMLParser):
    """The fields a browser would send for the first form with a ``name`` input: inputs'
    values, selects' selected options, checked checkboxes and textareas."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, str]] = []
        self._select: str | None = None
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({})
        elif not self.forms:
            return
        elif tag == "input" and "name" in a and a.get("type") not in ("checkbox", "submit"):
            self.forms[-1][a["name"]] = a.get("value", "")
        elif tag == "input" and a.get("type") == "checkbox" and "checked" in a:
            self.forms[-1][a["name"]] = a.get("value", "on")
        elif tag == "select":
            self._select = a["name"]
            self.forms[-1].setdefault(a["name"], "")
        elif tag == "option" and self._select and "selected" in a:
            self.forms[-1][self._select] = a.get("value", "")
        elif tag == "textarea":
            self._textarea = a["name"]
            self.forms[-1][a["name"]] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea and self.forms:
            self.forms[-1][self._textarea] += data


def product_form(html: str) -> dict[str, str]:
    parser = _FormFields()
    parser.feed(html)
    return next(form for form in parser.forms if "name" in form)


def page_of(shop: WebhookSender, shop_product_id: str | int) -> str:
    return f"/admin/products/{shop.store.store.id}/{shop_product_id}"


def api_product(shop: WebhookSender, shop_product_id: str | int) -> dict[str, Any]:
    response = shop.admin("GET", f"/products/{shop_product_id}")
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def form_for(shop: WebhookSender, **fields: str) -> dict[str, str]:
    """A new-product form: every policy field empty (its default) unless given."""
    data = {
        "store": str(shop.store.store.id),
        "shop_product_id": "501",
        "name": "Plugin Pro",
        "watermark_fallback": "refuse",
        **{name: "" for name in POLICY_FIELDS},
        "files-0-object_key": "",
        "files-0-filename": "",
        "files-0-watermark": "none",
        "action": "save",
    }
    data.update(fields)
    return data


def test_every_policy_field_has_a_label_on_the_form() -> None:
    """A policy field added to the contract but not to the form would be reset by every save."""
    assert list(POLICY_LABELS) == list(POLICY_FIELDS)


def test_products_page_lists_policy_files_state_and_storage_warnings(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    put_file(app, "products/501/plugin.zip", b"PK")
    shop.configure(
        501,
        activation_limit=3,
        duration_days=365,
        download_limit=5,
        download_days=30,
        offline_days=1,
        files=[
            {"object_key": "products/501/plugin.zip", "filename": "plugin.zip"},
            {"object_key": "products/501/guide.pdf", "filename": "guide.pdf", "watermark": "pdf"},
        ],
    )
    shop.configure(502, staging_free=False, files=[])
    with app.app_context():
        db.session.execute(
            update(Product)
            .where(Product.shop_product_id == "502")
            .values(source="shop", retired_at=utcnow())
        )
        db.session.commit()
    assert sign_in(admin_client) == 302
    response = admin_client.get("/admin/products")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'href="/admin/products">Products</a>' in html  # the nav line
    assert html.index(">502</a>") < html.index(">501</a>")  # newest first
    row_501 = html[html.index(">501</a>") :]
    assert "Product 501" in row_501 and "Test Shop" in row_501
    assert "3 seats" in row_501 and "365 days" in row_501
    assert "downloads 5" in row_501 and "for 30 days" in row_501
    assert "offline files at most 1 day<" in row_501
    assert "staging free" in " ".join(row_501.split())
    assert "guide.pdf (pdf watermark)" in row_501 and "plugin.zip" in row_501
    assert "products/501/guide.pdf: not found in storage yet" in row_501
    assert "plugin.zip: not found" not in row_501
    assert "licensed" in row_501
    row_502 = html[html.index(">502</a>") : html.index(">501</a>")]
    assert "unlimited seats" in row_502 and "lifetime" in row_502
    assert "staging counts" in " ".join(row_502.split())
    assert "offline files" not in row_502
    assert "retired" in row_502 and "from shop meta" in row_502


def test_owner_text_is_escaped_on_the_list_and_the_product_page(
    admin_client: FlaskClient, shop: WebhookSender
) -> None:
    name = "<script>alert(1)</script>"
    response = shop.admin("PUT", "/products/501", {"name": name})
    assert response.status_code == 200
    assert sign_in(admin_client) == 302
    for path in ("/admin/products", page_of(shop, 501)):
        html = admin_client.get(path).get_data(as_text=True)
        assert name not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path


def test_a_new_product_saved_from_the_form_is_what_the_api_answers(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, "/admin/products/new")
    data = form_for(
        shop,
        csrf_token=token,
        activation_limit="2",
        update_days="0",
        staging_free="no",
        download_limit="10",
        download_days="14",
        abuse_threshold="20",
        offline_days=" 3 ",
        watermark_fallback="original",
        **{
            "files-0-object_key": " products/501/plugin.zip ",
            "files-0-filename": "",
            "files-1-object_key": "",  # a spare row, ignored
            "files-1-filename": "",
            "files-2-object_key": "products/501/manual.pdf",
            "files-2-filename": "Manual.pdf",
            "files-2-watermark": "pdf",
        },
    )
    response = admin_client.post("/admin/products/new", data=data)
    assert response.status_code == 302, response.get_data(as_text=True)
    assert response.headers["Location"] == page_of(shop, 501) + "?saved=1"
    assert api_product(shop, 501) == {
        "product_id": "501",
        "name": "Plugin Pro",
        "policy": {
            "activation_limit": 2,
            "duration_days": None,  # empty: lifetime
            "update_days": 0,
            "staging_free": False,
            "download_limit": 10,
            "download_days": 14,
            "perpetual_fallback": None,
            "abuse_threshold": 20,
            "abuse_suspend": None,
            "offline_days": 3,
        },
        "watermark_fallback": "original",
        "retired_at": None,
        "files": [
            {
                "object_key": "products/501/plugin.zip",
                "filename": "plugin.zip",
                "watermark": "none",
            },
            {"object_key": "products/501/manual.pdf", "filename": "Manual.pdf", "watermark": "pdf"},
        ],
        "warnings": [
            "products/501/plugin.zip: not found in storage yet",
            "products/501/manual.pdf: not found in storage yet",
        ],
    }
    page = admin_client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Saved." in page
    assert "products/501/manual.pdf: not found in storage yet" in page  # the API's warnings
    with app.app_context():
        event = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "product.configured")
        ).one()
        assert (event.actor, event.subject) == ("admin:owner", "product:501")


def test_a_product_read_in_the_form_and_saved_unchanged_stays_as_it_was(
    admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """Every setting the API takes is on the form: saving it as shown drops none (an abuse
    threshold set through the API survives an edit of the name in the page)."""
    body = {
        "name": "Plugin Pro",
        "policy": FULL_POLICY,
        "watermark_fallback": "original",
        "files": [
            {"object_key": "a/plugin.zip", "filename": "plugin.zip", "watermark": "zip"},
            {"object_key": "a/manual.pdf", "filename": "manual.pdf", "watermark": "pdf"},
        ],
    }
    assert shop.admin("PUT", "/products/501", body).status_code == 200
    before = api_product(shop, 501)
    assert sign_in(admin_client) == 302
    page = admin_client.get(page_of(shop, 501)).get_data(as_text=True)
    fields = product_form(page)
    assert fields["abuse_threshold"] == "12" and fields["staging_free"] == "no"
    assert fields["offline_days"] == "14"
    response = admin_client.post(page_of(shop, 501), data={**fields, "action": "save"})
    assert response.status_code == 302, response.get_data(as_text=True)
    assert api_product(shop, 501) == before
    fields["name"] = "Plugin Pro 2"
    fields["duration_days"] = ""  # lifetime now
    assert admin_client.post(page_of(shop, 501), data=fields).status_code == 302
    after = api_product(shop, 501)
    assert after["name"] == "Plugin Pro 2"
    assert after["policy"] == {**FULL_POLICY, "duration_days": None}
    assert after["files"] == before["files"]


def _api_error(shop: WebhookSender, body: dict[str, Any]) -> str:
    response = shop.admin("PUT", "/products/501", body)
    assert response.status_code == 422
    detail: str = response.get_json()["detail"]
    return detail


@pytest.mark.parametrize(
    ("fields", "api_body"),
    [
        ({"activation_limit": "three"}, {"policy": {"activation_limit": "three"}}),
        ({"activation_limit": "-1"}, {"policy": {"activation_limit": -1}}),
        ({"duration_days": "0"}, {"policy": {"duration_days": 0}}),
        ({"download_days": "99999999"}, {"policy": {"download_days": 99999999}}),
        ({"offline_days": "366"}, {"policy": {"offline_days": 366}}),
        ({"offline_days": "0"}, {"policy": {"offline_days": 0}}),
        ({"offline_days": "a week"}, {"policy": {"offline_days": "a week"}}),
        ({"staging_free": "maybe"}, {"policy": {"staging_free": "maybe"}}),
        ({"name": "  "}, {"name": "  "}),
        ({"watermark_fallback": "stamp"}, {"watermark_fallback": "stamp"}),
        (
            {"files-0-object_key": "../etc/passwd"},
            {"files": [{"object_key": "../etc/passwd"}]},
        ),
        (
            {"files-0-object_key": "a/b.zip", "files-0-watermark": "gif"},
            {"files": [{"object_key": "a/b.zip", "watermark": "gif"}]},
        ),
        (
            {"files-0-filename": "orphan.zip"},
            {"files": [{"object_key": "", "filename": "orphan.zip"}]},
        ),
        (
            {
                "files-0-object_key": "a/b.zip",
                "files-1-object_key": "a/c.zip",
                "files-1-filename": ".hidden",
            },
            {
                "files": [
                    {"object_key": "a/b.zip"},
                    {"object_key": "a/c.zip", "filename": ".hidden"},
                ]
            },
        ),
        (
            {"files-0-object_key": "a/b.zip", "files-1-object_key": "a/b.zip"},
            {"files": [{"object_key": "a/b.zip"}, {"object_key": "a/b.zip"}]},
        ),
    ],
)
def test_a_bad_value_shows_the_form_again_with_the_apis_own_error(
    admin_client: FlaskClient, shop: WebhookSender, fields: dict[str, str], api_body: dict[str, Any]
) -> None:
    shop.configure(501, activation_limit=1, files=[])
    before = api_product(shop, 501)
    detail = _api_error(shop, {"name": "Plugin Pro", **api_body})
    assert sign_in(admin_client) == 302
    page = page_of(shop, 501)
    data = {**product_form(admin_client.get(page).get_data(as_text=True)), **fields}
    data["csrf_token"] = csrf_token(admin_client, page)
    response = admin_client.post(page, data=data)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert str(escape(detail)) in html
    assert "text/html" in response.content_type
    for name, value in fields.items():  # the form shows what was sent, to correct it
        if value.strip():
            assert str(escape(value.strip())) in html, name
    assert api_product(shop, 501) == before  # nothing saved


def test_a_nul_in_the_form_is_a_friendly_400(
    admin_client: FlaskClient, shop: WebhookSender
) -> None:
    shop.configure(501)
    assert sign_in(admin_client) == 302
    page = page_of(shop, 501)
    data = product_form(admin_client.get(page).get_data(as_text=True))
    response = admin_client.post(page, data={**data, "name": "Plugin\x00Pro"})
    assert response.status_code == 400
    assert "text/html" in response.content_type
    assert api_product(shop, 501)["name"] == "Product 501"


def test_more_rows_and_removing_a_file(admin_client: FlaskClient, shop: WebhookSender) -> None:
    shop.configure(501, files=[{"object_key": "a/one.zip"}, {"object_key": "a/two.zip"}])
    assert sign_in(admin_client) == 302
    page = page_of(shop, 501)
    fields = product_form(admin_client.get(page).get_data(as_text=True))
    rows = {k for k in fields if k.endswith("-object_key")}
    assert len(rows) == 5  # two files, three spare rows
    # Wide enough for a key such as stores/1/plugin/plugin-pro.zip (the default 20 cut it).
    html = admin_client.get(page).get_data(as_text=True)
    assert len(re.findall(r'name="files-\d-object_key" value="[^"]*" size="36"', html)) == 5
    more = admin_client.post(page, data={**fields, "action": "more", "name": "Edited"})
    assert more.status_code == 200
    more_fields = product_form(more.get_data(as_text=True))
    assert len({k for k in more_fields if k.endswith("-object_key")}) == 10
    assert more_fields["name"] == "Edited"  # what was typed stays
    assert api_product(shop, 501)["name"] == "Product 501"  # and nothing was saved
    more_fields["files-0-remove"] = "1"
    more_fields["files-7-object_key"] = "a/three.zip"
    more_fields["files-7-watermark"] = "zip"
    assert admin_client.post(page, data={**more_fields, "action": "save"}).status_code == 302
    product = api_product(shop, 501)
    assert product["name"] == "Edited"
    assert product["files"] == [
        {"object_key": "a/two.zip", "filename": "two.zip", "watermark": "none"},
        {"object_key": "a/three.zip", "filename": "three.zip", "watermark": "zip"},
    ]


def test_a_file_removed_and_listed_again_is_served_again(shop: WebhookSender) -> None:
    """A file taken off a product and listed again later is the product's again: a new
    sale gets its link, a sale made while it was off gets it when its order is applied
    again, and the product answers it."""
    manual = {"object_key": "products/501/manual.pdf", "filename": "manual.pdf"}
    plugin = {"object_key": "products/501/plugin.zip", "filename": "plugin.zip"}
    shop.configure(501, files=[manual, plugin])
    shop.configure(501, files=[manual])
    item = line_item(501, line_id=81)
    shop.deliver(wc_order(9960, "processing", [item], modified=1))
    assert [d["filename"] for d in shop.order(9960)["downloads"]] == ["manual.pdf"]
    shop.configure(501, files=[manual, plugin])
    assert [f["object_key"] for f in api_product(shop, 501)["files"]] == [
        manual["object_key"],
        plugin["object_key"],
    ]
    shop.deliver(wc_order(9961, "processing", [line_item(501)]))
    assert sorted(d["filename"] for d in shop.order(9961)["downloads"]) == [
        "manual.pdf",
        "plugin.zip",
    ]
    shop.deliver(wc_order(9960, "processing", [item], modified=2))
    assert sorted(d["filename"] for d in shop.order(9960)["downloads"]) == [
        "manual.pdf",
        "plugin.zip",
    ]


def test_every_form_refuses_a_post_without_its_csrf_token(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    shop.configure(501)
    assert sign_in(admin_client) == 302
    page = page_of(shop, 501)
    fields = product_form(admin_client.get(page).get_data(as_text=True))
    del fields["csrf_token"]
    assert admin_client.post(page, data={**fields, "name": "Changed"}).status_code == 400
    new = admin_client.post("/admin/products/new", data=form_for(shop, shop_product_id="502"))
    assert new.status_code == 400
    release = {"version": "1.0.0", "object_key": "a/b.zip", "sha256": SHA, "size": "10"}
    assert admin_client.post(page + "/releases", data=release).status_code == 400
    assert api_product(shop, 501)["name"] == "Product 501"
    assert shop.admin("GET", "/products/502").status_code == 404
    assert shop.admin("GET", "/products/501/releases").get_json() == {"releases": []}


def test_a_new_product_needs_a_shop_id_and_one_not_configured_yet(
    admin_client: FlaskClient, shop: WebhookSender
) -> None:
    shop.configure(501)
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, "/admin/products/new")
    bad = admin_client.post(
        "/admin/products/new", data=form_for(shop, csrf_token=token, shop_product_id="50 1")
    )
    assert bad.status_code == 422
    assert "letters and digits" in bad.get_data(as_text=True)
    taken = admin_client.post(
        "/admin/products/new", data=form_for(shop, csrf_token=token, name="Other")
    )
    assert taken.status_code == 409
    assert "already configured" in taken.get_data(as_text=True)
    assert api_product(shop, 501)["name"] == "Product 501"  # not replaced


def test_saving_a_product_from_shop_meta_or_retired_configures_it_in_keygate(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """As a PUT of the API: the page's settings win over the shop's meta from then on, and
    a retired product licenses new sales again. The page says so before saving."""
    shop.configure(501)
    with app.app_context():
        db.session.execute(
            update(Product).where(Product.shop_product_id == "501").values(source="shop")
        )
        db.session.commit()
    assert sign_in(admin_client) == 302
    page = page_of(shop, 501)
    html = " ".join(admin_client.get(page).get_data(as_text=True).split())
    assert "Configured from the shop's product meta" in html
    assert "Saving this form takes it over" in html
    with app.app_context():
        db.session.execute(
            update(Product).where(Product.shop_product_id == "501").values(retired_at=utcnow())
        )
        db.session.commit()
    assert api_product(shop, 501)["retired_at"] is not None
    html = admin_client.get(page).get_data(as_text=True)
    assert "Retired" in html
    fields = product_form(html)
    assert admin_client.post(page, data=fields).status_code == 302
    assert api_product(shop, 501)["retired_at"] is None
    with app.app_context():
        product = db.session.scalars(select(Product)).one()
        assert product.source == "keygate"
    assert "Set in Keygate" in admin_client.get(page).get_data(as_text=True)


def test_a_release_published_on_the_page_warns_of_its_file_as_the_api_does(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """Published from the page, a release whose file is missing, or not the size typed,
    is said on the page the owner lands on (products would refuse its download), as the
    API's answer says it; a release whose file is right gets no warning."""
    shop.configure(501)
    put_file(app, "products/501/plugin-2.0.zip", b"PK 2.0")  # 6 bytes
    assert sign_in(admin_client) == 302
    page = page_of(shop, 501)
    form = {
        "csrf_token": csrf_token(admin_client, page),
        "version": "2.0",
        "object_key": "products/501/plugin-2.0.zip",
        "sha256": SHA,
        "size": "60",
    }
    said = {}
    for version, changes in (
        ("2.0", {}),
        ("2.1", {"object_key": "products/501/plugin-2.1.zip"}),
        ("2.2", {"size": "6"}),
    ):
        response = admin_client.post(
            page + "/releases", data={**form, **changes, "version": version}
        )
        assert response.status_code == 302, response.get_data(as_text=True)
        said[version] = admin_client.get(response.headers["Location"]).get_data(as_text=True)
    assert "the file in storage has 6 bytes, the release says 60" in said["2.0"]
    assert "products/501/plugin-2.1.zip: not found in storage yet" in said["2.1"]
    assert "Published version 2.2" in said["2.2"]
    assert "plugin-2.0.zip: not found" not in said["2.2"]
    assert "bytes, the release says" not in said["2.2"]


def test_releases_are_listed_and_published_as_the_api_does(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    shop.configure(501)
    api_release = {
        "version": "1.0.0",
        "object_key": "products/501/plugin-1.0.0.zip",
        "sha256": SHA,
        "size": 1234,
        "published_at": shifted("2026-11-01T10:00:00Z"),
        "changelog": "<b>First</b>",
    }
    assert shop.admin("POST", "/products/501/releases", api_release).status_code == 201
    assert sign_in(admin_client) == 302
    page = page_of(shop, 501)
    html = admin_client.get(page).get_data(as_text=True)
    assert "1.0.0" in html and "&lt;b&gt;First&lt;/b&gt;" in html
    token = csrf_token(admin_client, page)
    form = {
        "csrf_token": token,
        "version": "1.1.0",
        "object_key": "products/501/plugin-1.1.0.zip",
        "sha256": SHA.upper(),
        "size": "2048",
        "published_at": shifted("2026-11-20T10:00:00Z"),
        "changelog": "Fixes",
    }
    response = admin_client.post(page + "/releases", data=form)
    assert response.status_code == 302, response.get_data(as_text=True)
    assert "Published version 1.1.0" in admin_client.get(response.headers["Location"]).get_data(
        as_text=True
    )
    releases = shop.admin("GET", "/products/501/releases").get_json()["releases"]
    assert releases[1] == {
        "version": "1.1.0",
        "object_key": "products/501/plugin-1.1.0.zip",
        "sha256": SHA,
        "size": 2048,
        "published_at": shifted("2026-11-20T10:00:00Z"),
        "changelog": "Fixes",
    }
    again = admin_client.post(page + "/releases", data=form)
    assert again.status_code == 409
    assert "version 1.1.0 is already published for this product" in again.get_data(as_text=True)
    for field, value in (
        ("sha256", "xyz"),
        ("size", "big"),
        ("version", "1 0"),
        ("published_at", "soon"),
    ):
        bad = admin_client.post(page + "/releases", data={**form, "version": "2.0", field: value})
        detail = shop.admin(
            "POST",
            "/products/501/releases",
            {**api_release, "version": "2.0", field: value},
        ).get_json()["detail"]
        assert bad.status_code == 422, field
        html = bad.get_data(as_text=True)
        assert str(escape(detail)) in html, field
        assert str(escape(value)) in html, field  # shown again to correct
    assert len(shop.admin("GET", "/products/501/releases").get_json()["releases"]) == 2
    with app.app_context():
        actors = [
            e.actor
            for e in db.session.scalars(
                select(AuditEvent).where(AuditEvent.action == "release.published")
            )
        ]
    assert actors == ["api", "admin:owner"]


def test_a_store_admin_sees_and_changes_only_their_stores_products(
    app: Flask, shop: WebhookSender
) -> None:
    shop.configure(501)
    with app.app_context():
        other = create_store(db.session, "Other shop", "https://other.example")
        db.session.commit()
    theirs = WebhookSender(app.test_client(), other)
    theirs.configure(601)
    client = store_admin(app, shop.store.store.id)
    listing = client.get("/admin/products").get_data(as_text=True)
    assert ">501</a>" in listing and ">601</a>" not in listing
    assert "Other shop" not in listing
    assert client.get(page_of(shop, 501)).status_code == 200
    their_page = page_of(theirs, 601)
    assert client.get(their_page).status_code == 404
    assert client.get(f"/admin/products?store={other.store.id}").status_code == 404
    assert "Other shop" not in client.get("/admin/products/new").get_data(as_text=True)
    fields = product_form(client.get(page_of(shop, 501)).get_data(as_text=True))
    token = fields["csrf_token"]
    assert client.post(their_page, data={**fields, "name": "Mine now"}).status_code == 404
    release = {
        "csrf_token": token,
        "version": "9.0",
        "object_key": "x.zip",
        "sha256": SHA,
        "size": "1",
    }
    assert client.post(their_page + "/releases", data=release).status_code == 404
    new = form_for(theirs, csrf_token=token, shop_product_id="602")
    assert client.post("/admin/products/new", data=new).status_code == 404
    # Their store's area of the shared storage is out of reach of this store's products too.
    own = {**fields, "files-0-object_key": f"stores/{other.store.id}/secret.zip"}
    refused = client.post(page_of(shop, 501), data=own)
    assert refused.status_code == 422
    assert "another store&#39;s area" in refused.get_data(as_text=True)
    assert api_product(theirs, 601)["name"] == "Product 601"
    assert theirs.admin("GET", "/products/601/releases").get_json() == {"releases": []}
    assert theirs.admin("GET", "/products/602").status_code == 404
    # The same store admin can configure a product of their own store.
    mine = form_for(shop, csrf_token=token, shop_product_id="502")
    assert client.post("/admin/products/new", data=mine).status_code == 302
    assert api_product(shop, 502)["name"] == "Plugin Pro"


def test_a_full_admin_sees_every_store_with_its_name_or_one_store(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    shop.configure(501)
    with app.app_context():
        other = create_store(db.session, "Other shop", "https://other.example")
        db.session.commit()
    WebhookSender(app.test_client(), other).configure(601)
    assert sign_in(admin_client) == 302
    every = admin_client.get("/admin/products").get_data(as_text=True)
    assert ">501</a>" in every and ">601</a>" in every
    assert '<td data-label="Store">Other shop</td>' in every
    assert '<td data-label="Store">Test Shop</td>' in every
    one = admin_client.get(f"/admin/products?store={other.store.id}").get_data(as_text=True)
    assert ">601</a>" in one and ">501</a>" not in one


@pytest.mark.parametrize(
    "path",
    [
        "/admin/products?store=abc",
        "/admin/products?store=999",
        "/admin/products/999/501",
        "/admin/products/1/no-such",
        "/admin/products/1/777",
        "/admin/products/1/99999999999999999999999999999999999999999999999999999999999999999",
        "/admin/products/99999999999999999999999/501",
    ],
)
def test_unknown_stores_and_products_are_a_friendly_404(
    admin_client: FlaskClient, shop: WebhookSender, path: str
) -> None:
    shop.configure(501)
    assert sign_in(admin_client) == 302
    response = admin_client.get(path)
    assert response.status_code == 404
    assert "text/html" in response.content_type


def test_products_page_back_to_the_oldest(
    admin_client: FlaskClient, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("connector.admin.products.PAGE", 2)
    for product_id in (501, 502, 503):
        shop.configure(product_id)
    assert sign_in(admin_client) == 302
    shown: list[str] = []
    page = "/admin/products"
    while page:
        html = admin_client.get(page).get_data(as_text=True)
        shown += re.findall(r">(50\d)</a>", html)
        older = re.search(r'href="([^"]+)">Older</a>', html)
        page = older.group(1).replace("&amp;", "&") if older else ""
    assert shown == ["503", "502", "501"]


def test_an_owner_stops_licensing_a_product_and_takes_it_up_again(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """Retired by the API or the page: a new sale is recorded without keys, a key sold
    before keeps working and its paid renewal still extends it; saving the settings again
    licenses new sales again."""
    from tests.functional.test_renewals_and_payments import renewal_line
    from tests.licensing_helpers import call

    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9870, "completed", [line_item(501)]))
    key = shop.order(9870)["licenses"][0]["key"]
    assert shop.admin("DELETE", "/products/999").status_code == 404
    retired = shop.admin("DELETE", "/products/501")
    assert retired.status_code == 200 and retired.get_json()["retired_at"]
    shop.deliver(wc_order(9871, "processing", [line_item(501)]))
    assert shop.order(9871)["licenses"] == []
    assert call(shop.client, "validate", {"key": key}).get_json()["valid"]
    before = shop.order(9870)["licenses"][0]["expires_at"]
    shop.deliver(wc_order(9872, "processing", [renewal_line(501, key, 396)], modified=5))
    assert shop.order(9870)["licenses"][0]["expires_at"] > before

    shop.configure(501, duration_days=30)  # saved again: licensed again
    shop.deliver(wc_order(9873, "processing", [line_item(501)]))
    assert len(shop.order(9873)["licenses"]) == 1
    assert sign_in(admin_client) == 302
    owner = admin_client
    page = f"/admin/products/{shop.store.store.id}/501"
    token = csrf_token(owner, page)
    assert owner.post(f"{page}/retire", data={"csrf_token": token}).status_code == 400  # no box
    answer = owner.post(f"{page}/retire", data={"csrf_token": token, "confirm": "y"})
    assert answer.status_code == 302
    html = owner.get(page).get_data(as_text=True)
    assert "<strong>Retired</strong>" in html and "Stop licensing new sales</button>" not in html
    assert (
        owner.post(f"{page}/retire", data={"csrf_token": token, "confirm": "y"}).status_code == 302
    )
    events = shop.admin("GET", "/audit").get_json()["events"]
    assert [e["actor"] for e in events if e["action"] == "product.retired"] == [
        "admin",  # retiring it again (another tab) records nothing more; the store's
        "api",  # token reads an admin of every store by no name
    ]


def test_a_variation_the_owner_stopped_licensing_does_not_follow_its_parent(
    shop: WebhookSender,
) -> None:
    """Unlike a variation whose shop meta is gone (it follows its parent again), one the
    owner stopped licensing gets nothing for new sales; its renewals still extend."""
    from tests.functional.test_renewals_and_payments import renewal_line

    shop.configure(600, duration_days=30)
    shop.configure(601, duration_days=365)
    shop.deliver(wc_order(9901, "processing", [line_item(600, variation_id=601)]))
    [sold] = shop.order(9901)["licenses"]
    assert shop.admin("DELETE", "/products/601").status_code == 200
    shop.deliver(wc_order(9902, "processing", [line_item(600, variation_id=601)]))
    assert shop.order(9902)["licenses"] == []
    shop.deliver(wc_order(9903, "processing", [line_item(600)]))
    assert [lic["product_id"] for lic in shop.order(9903)["licenses"]] == ["600"]
    renewal = renewal_line(600, sold["key"], 397)
    renewal["variation_id"] = 601
    shop.deliver(wc_order(9904, "processing", [renewal], modified=5))
    assert shop.order(9901)["licenses"][0]["expires_at"] > sold["expires_at"]


LONG_PART_KEY = "products/501/" + "a" * 300 + ".zip"


def test_an_object_key_part_no_file_system_holds_is_refused(shop: WebhookSender) -> None:
    """A part of an object key longer than 255 bytes (one name on a file system) is a 422
    naming the field, for a product's files and a release alike."""
    files = [{"object_key": LONG_PART_KEY, "filename": "a.zip"}]
    answer = shop.admin("PUT", "/products/501", {"name": "x", "files": files})
    assert answer.status_code == 422 and "255 bytes" in answer.get_json()["detail"]
    shop.configure(501)
    release = {"version": "1.0", "object_key": LONG_PART_KEY, "sha256": "ab" * 32, "size": 1}
    answer = shop.admin("POST", "/products/501/releases", release)
    assert answer.status_code == 422 and answer.get_json()["field"] == "object_key"


def test_a_product_stored_with_such_a_key_still_opens(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """Stored before keys were checked for it: its file is reported missing, and the API's
    read, the products list and its page answer (the owner can open it to fix it)."""
    from connector.models import ProductFile

    put_file(app, "products/501/a.zip", b"PK")  # its folder is there: the name is looked up
    shop.configure(501, files=[{"object_key": "products/501/a.zip", "filename": "a.zip"}])
    with app.app_context():
        db.session.execute(update(ProductFile).values(object_key=LONG_PART_KEY))
        db.session.commit()
    answer = shop.admin("GET", "/products/501")
    assert answer.status_code == 200
    assert answer.get_json()["warnings"] == [f"{LONG_PART_KEY}: not found in storage yet"]
    assert sign_in(admin_client) == 302
    assert admin_client.get("/admin/products").status_code == 200
    assert admin_client.get(f"/admin/products/{shop.store.store.id}/501").status_code == 200


def test_the_product_and_store_pages_say_only_what_happened(
    admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """The notes a redirect's address asks for ("Published version …", "The shop is
    disconnected") show only where the product or store agrees: a link someone sent the
    owner can't put its own words on Keygate's pages."""
    shop.configure(501)
    assert sign_in(admin_client) == 302
    bait = "9.9. Your session has expired: sign in again at keygate-login.example"
    page = admin_client.get(
        f"/admin/products/{shop.store.store.id}/501", query_string={"released": bait}
    ).get_data(as_text=True)
    assert "keygate-login.example" not in page and "Published version" not in page
    store_page = admin_client.get(
        f"/admin/stores/{shop.store.store.id}", query_string={"disconnected": "4"}
    ).get_data(as_text=True)
    assert "is disconnected" not in store_page


def test_a_release_published_by_mistake_is_withdrawn_from_its_page(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """Each release has a Withdraw button (box ticked first): the release is gone from
    update-check and the page, which says so; the version can be published again. A store
    admin of another store withdraws nothing here."""
    shop.configure(501)
    release = {"object_key": "products/501/p.zip", "sha256": SHA, "size": 1}
    for version in ("1.0.0", "11.0"):
        answer = shop.admin("POST", "/products/501/releases", {**release, "version": version})
        assert answer.status_code == 201
    page = page_of(shop, 501)
    with app.app_context():
        other = create_store(db.session, "Other shop", "https://other.example")
        db.session.commit()
    outsider = store_admin(app, other.store.id)
    token = csrf_token(outsider, "/admin/products")
    refused = outsider.post(
        page + "/releases/11.0/withdraw", data={"csrf_token": token, "confirm": "y"}
    )
    assert refused.status_code == 404

    assert sign_in(admin_client) == 302
    html = admin_client.get(page).get_data(as_text=True)
    assert 'action="' + page + '/releases/11.0/withdraw"' in html
    token = csrf_token(admin_client, page)
    unticked = admin_client.post(page + "/releases/11.0/withdraw", data={"csrf_token": token})
    assert unticked.status_code == 400
    done = admin_client.post(
        page + "/releases/11.0/withdraw", data={"csrf_token": token, "confirm": "y"}
    )
    assert done.status_code == 302
    shown = admin_client.get(done.headers["Location"]).get_data(as_text=True)
    assert "Withdrew version 11.0" in shown
    listed = shop.admin("GET", "/products/501/releases").get_json()["releases"]
    assert [r["version"] for r in listed] == ["1.0.0"]
    # A second click (another tab) lands on the same page, nothing more to do.
    twice = admin_client.post(
        page + "/releases/11.0/withdraw", data={"csrf_token": token, "confirm": "y"}
    )
    assert twice.status_code == 302
    # A link can't make the page say a version was withdrawn that is still published.
    assert "Withdrew" not in admin_client.get(page + "?withdrawn=1.0.0").get_data(as_text=True)
    assert (
        shop.admin("POST", "/products/501/releases", {**release, "version": "11.0"}).status_code
        == 201
    )
    with app.app_context():
        actors = db.session.scalars(
            select(AuditEvent.actor).where(AuditEvent.action == "release.withdrawn")
        ).all()
    assert actors == ["admin:owner"]
