"""Input no database could store the same way on both backends is a clear 4xx, never a 500.

PostgreSQL's text types refuse a NUL character (SQLite keeps it) and nothing can encode half
of a surrogate pair; JSON nested past the parser's stack is a RecursionError, not a
ValueError. Each is refused where it comes in: the field (422, named), the address or a
page's form (400), the body (400). Every case runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from connector import create_app
from connector.db import db
from connector.models import (
    DownloadGrant,
    License,
    Order,
    Product,
    ProductFile,
    Store,
    WebhookDelivery,
)
from connector.vault.service import put_credentials
from tests.conftest import app_overrides
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_admin_pages import PASSWORD, admin_client, csrf_token, sign_in
from tests.functional.test_downloads import get, link_path, make_pdf, paid_order, put_file
from tests.licensing_helpers import issue_key

__all__ = ["admin_client"]

NESTED = b"[" * 5000  # never closed: the parser runs out of stack first


def test_nul_or_half_a_surrogate_in_a_field_is_422_naming_it(
    app: Flask, shop: WebhookSender, client: FlaskClient
) -> None:
    key = issue_key(shop)
    label = client.post(
        "/api/v1/licenses/activate", json={"key": key, "site": "buyer.com", "label": "a\x00"}
    )
    assert label.status_code == 422
    assert label.get_json()["field"] == "label"
    assert "NUL" in label.get_json()["detail"]
    assert "Keygate-Signature" in label.headers  # license answers stay signed
    surrogate = client.post(
        "/api/v1/licenses/activate",
        data=json.dumps({"key": key, "site": "buyer.com", "label": "\ud800"}),
        content_type="application/json",
    )
    assert surrogate.status_code == 422
    assert surrogate.get_json()["field"] == "label"
    name = shop.admin("PUT", "/products/501", {"name": "Plugin\x00Pro"})
    assert name.status_code == 422
    assert name.get_json()["field"] == "name"
    # Nothing was half-written: the product keeps its name, the key has no activation.
    with app.app_context():
        assert db.session.scalars(select(Product.name)).all() == ["Product 501"]
    activations = shop.admin("GET", f"/licenses/{key}").get_json()["activations"]
    assert activations == []


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/admin/licenses?email=a%00b@example.org",
        "/api/v1/admin/customers/a%00b@example.org/export",
        "/api/v1/admin/products/5%0001",
    ],
)
def test_nul_in_an_api_address_is_a_400_problem(shop: WebhookSender, path: str) -> None:
    response = shop.client.get(path, headers={"Authorization": f"Bearer {shop.store.api_token}"})
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert "NUL" in response.get_json()["detail"]


@pytest.mark.parametrize("path", ["/d/a%00b", "/my/a%00b", "/admin/orders?before=%00"])
def test_nul_in_a_page_address_is_a_friendly_400_page(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert "NUL" in response.get_data(as_text=True)


def test_nul_in_a_page_form_is_a_friendly_400_page(admin_client: FlaskClient) -> None:
    token = csrf_token(admin_client, "/admin/login")
    response = admin_client.post(
        "/admin/login", data={"username": "own\x00er", "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 400
    assert response.mimetype == "text/html"


@pytest.mark.parametrize(
    "body",
    [
        "1",
        '"x"',
        "[1]",
        "[[1, 2]]",
        "null",
        '{"username": 5, "password": "x"}',
        '{"username": {"a": 1}, "password": true}',
        '{"username": "own\\u0000er", "password": "x"}',
    ],
)
def test_json_posted_to_a_page_form_is_refused_like_an_empty_form(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender, body: str
) -> None:
    """Pages post forms: a JSON body (with the CSRF token in a header) fills no field, so the
    sign-in is refused as a wrong password and a button's form as a bad request, never a
    500 (Flask-WTF read JSON as form data, and a number or a list broke it)."""
    token = csrf_token(admin_client, "/admin/login")
    headers = {"X-CSRFToken": token, "Content-Type": "application/json"}
    login = admin_client.post("/admin/login", data=body, headers=headers)
    assert (login.status_code, login.mimetype) == (401, "text/html")
    assert "Wrong user or password." in login.get_data(as_text=True)
    assert sign_in(admin_client) == 302
    for path in ("/admin/logout", f"/admin/stores/{shop.store.store.id}/token"):
        refused = admin_client.post(path, data=body, headers=headers)
        assert (refused.status_code, refused.mimetype) == (400, "text/html"), path
    assert admin_client.get("/admin/").status_code == 200  # still signed in


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/admin/products/501",
        "/api/v1/admin/products/501/releases",
        "/api/v1/licenses/validate",
        "/webhooks/woocommerce/{store}/auth-callback",
    ],
)
def test_json_nested_past_the_stack_is_a_400(shop: WebhookSender, app: Flask, path: str) -> None:
    path = path.format(store=shop.store.store.public_id)
    method = "PUT" if path.endswith("/501") else "POST"
    response = shop.client.open(
        path,
        method=method,
        data=NESTED,
        content_type="application/json",
        headers={"Authorization": f"Bearer {shop.store.api_token}"},
    )
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"


def _chunked(
    client: FlaskClient, path: str, body: bytes, method: str = "POST", **headers: str
) -> Any:
    """``body`` sent without a Content-Length (chunked), from a server that ends it itself
    (gunicorn's ``wsgi.input_terminated``)."""
    return client.open(
        path,
        method=method,
        input_stream=io.BytesIO(body),
        headers={"Transfer-Encoding": "chunked", "Content-Type": "application/json", **headers},
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_a_body_sent_without_a_length_past_the_limit_is_a_413_not_cut_short(
    shop: WebhookSender,
) -> None:
    """A body sent without a length that goes on past KEYGATE_MAX_BODY_BYTES: werkzeug
    stopped reading at the limit, and the part read was refused as broken JSON (400); it
    is too large, as with a length (413). One within the limit is read whole."""
    token = {"Authorization": f"Bearer {shop.store.api_token}"}
    pad = 1024 * 1024  # KEYGATE_MAX_BODY_BYTES by default
    past = _chunked(
        shop.client, "/api/v1/admin/products/501", b'{"x": "' + b" " * pad + b'"}', "PUT", **token
    )
    assert past.status_code == 413, past.get_data(as_text=True)
    assert past.mimetype == "application/problem+json"
    body = json.dumps({"name": "Pro", "pad": "x" * (pad - 100)}).encode()
    within = _chunked(shop.client, "/api/v1/admin/products/501", body, "PUT", **token)
    assert within.status_code == 422, within.get_data(as_text=True)  # read whole: "pad" named
    assert within.get_json()["field"] == "pad"


def test_a_license_call_without_a_length_past_a_low_limit_is_a_signed_413(
    tmp_path: Path, database_url: str
) -> None:
    """The same under a KEYGATE_MAX_BODY_BYTES below the license API's own 16 KiB."""
    (tmp_path / "instance" / "files").mkdir(parents=True)
    application = create_app(app_overrides(tmp_path, database_url, max_body_bytes=4096))
    try:
        client = application.test_client()
        body = json.dumps({"key": "AAAAA-BBBBB", "label": "x" * 5000}).encode()
        past = _chunked(client, "/api/v1/licenses/validate", body)
        assert past.status_code == 413, past.get_data(as_text=True)
        assert past.mimetype == "application/problem+json"
        assert "Keygate-Signature" in past.headers
        within = _chunked(client, "/api/v1/licenses/validate", body.replace(b"x" * 1000, b""))
        assert within.get_json()["code"] == "NOT_FOUND"  # read whole, answered
    finally:
        application.extensions["keygate.db"].engine.dispose()


# --- Values a parser let through that broke later (an audit's findings) ---------------------

INFINITY = float("inf")  # json.dumps writes it as Infinity, which Python's parser reads back


def _with_refund_line(order: dict[str, Any], quantity: Any) -> None:
    refunded = order["line_items"][0]["id"]
    meta = [{"key": "_refunded_item_id", "value": str(refunded)}]
    order["refunds"] = [
        {"id": 1, "total": "1", "line_items": [{"id": 2, "quantity": quantity, "meta_data": meta}]}
    ]


@pytest.mark.parametrize(
    ("spoil", "detail"),
    [
        (lambda o: o.update(refunds=[{"id": 1, "total": "1", "line_items": 5}]), "must be a list"),
        (lambda o: _with_refund_line(o, INFINITY), "refund line quantity"),
        (lambda o: _with_refund_line(o, "9" * 5000), "refund line quantity"),
        (lambda o: o.update(date_modified_gmt="0001-01-01T00:00:00+01:00"), "out of range"),
        (lambda o: o.update(date_modified_gmt="9999-12-31T23:59:59-01:00"), "out of range"),
        (lambda o: o.update(date_paid_gmt="9999-12-31T23:59:59"), "date_paid_gmt is out of"),
        (lambda o: o.update(total="999999999999.995"), "total is out of range"),
        (lambda o: o["line_items"][0].update(total="-999999999999.995"), "line item total"),
        (
            lambda o: o.update(line_items=[line_item(501, line_id=7), line_item(501, line_id=7)]),
            "line item 7 appears twice",
        ),
    ],
    ids=[
        "refund-lines-not-a-list",
        "refund-quantity-infinite",
        "refund-quantity-5000-digits",
        "modified-before-year-1",
        "modified-after-year-9999",
        "paid-in-year-9999",
        "total-rounds-past-numeric-14-2",
        "line-total-rounds-past-numeric-14-2",
        "duplicate-line-ids",
    ],
)
def test_a_signed_order_with_one_malformed_part_is_a_recorded_400(
    app: Flask, shop: WebhookSender, spoil: Callable[[dict[str, Any]], Any], detail: str
) -> None:
    """A signed delivery with one malformed part is kept as a rejected delivery (WooCommerce
    will not resend it; the owner can see it) and answered 400: never a 500, which would
    roll the record back too, and nothing of the order is half-applied."""
    shop.configure(501, duration_days=365)
    order = wc_order(9401, "processing", [line_item(501)])
    spoil(order)
    response = shop.deliver(order)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert detail in response.get_json()["detail"]
    with app.app_context():
        delivery = db.session.execute(select(WebhookDelivery)).scalar_one()
        assert delivery.outcome == "rejected"
        assert detail in (delivery.detail or "")
        assert db.session.scalars(select(Order)).all() == []
        assert db.session.scalars(select(License)).all() == []


def test_amounts_are_rounded_to_cents_the_same_way_on_both_backends(
    app: Flask, shop: WebhookSender
) -> None:
    """Half a cent rounds away from zero, as PostgreSQL's NUMERIC does, on SQLite too; the
    largest amount that still fits is kept."""
    shop.configure(501)
    order = wc_order(9402, "processing", [line_item(501)])
    order["total"] = "999999999999.994"
    order["line_items"][0]["total"] = "12.345"
    assert shop.deliver(order).status_code == 200
    with app.app_context():
        stored = db.session.execute(select(Order)).scalar_one()
        assert stored.total == Decimal("999999999999.99")
        assert [line.total for line in stored.line_items] == [Decimal("12.35")]


@pytest.mark.parametrize(
    "published_at",
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "9999-12-31", "1066-10-14"],
)
def test_a_release_date_out_of_range_is_422_naming_it(
    shop: WebhookSender, published_at: str
) -> None:
    """Release dates share the shop's date parser and its range (years 1900 to 8999)."""
    shop.configure(501)
    release = {
        "version": "1.1.0",
        "object_key": "releases/plugin-1.1.0.zip",
        "sha256": "a" * 64,
        "size": 16,
        "published_at": published_at,
    }
    response = shop.admin("POST", "/products/501/releases", release)
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["field"] == "published_at"
    assert "out of range" in response.get_json()["detail"]
    assert shop.admin("GET", "/products/501/releases").get_json()["releases"] == []


def test_extending_a_license_past_the_last_representable_year_is_422(
    app: Flask, shop: WebhookSender
) -> None:
    """Repeated 100-year extensions stop with a 422 naming days, the expiry unchanged."""
    key = issue_key(shop, duration_days=365)
    for _ in range(100):
        response = shop.admin("POST", f"/licenses/{key}/extend", {"days": 36600})
        if response.status_code != 200:
            break
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["field"] == "days"
    with app.app_context():
        license_ = db.session.execute(select(License)).scalar_one()
        assert license_.expires_at is not None
        assert 9800 < license_.expires_at.year < 9999
        grant = db.session.execute(select(DownloadGrant)).scalar_one()
        assert grant.expires_at == license_.expires_at  # downloads last while it lasts


@pytest.mark.parametrize("field", ["filename", "object_key"])
@pytest.mark.parametrize(
    ("value", "detail"),
    [("a\ud800.pdf", "valid Unicode"), ("a\x00.pdf", "NUL"), ("a\r\nX: 1.pdf", "control")],
    ids=["half-a-surrogate", "nul", "crlf"],
)
def test_a_product_file_name_or_key_no_header_or_database_takes_is_422(
    app: Flask, shop: WebhookSender, field: str, value: str, detail: str
) -> None:
    """File names become a Content-Disposition header and both go to the database: text
    neither can take is refused, naming the field, and nothing is saved."""
    files = [{"object_key": "products/501/manual.pdf", "filename": "manual.pdf", field: value}]
    response = shop.client.put(
        "/api/v1/admin/products/501",
        data=json.dumps({"name": "Plugin", "files": files}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {shop.store.api_token}"},
    )
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["field"] == f"files[0].{field}"
    assert detail in response.get_json()["detail"]
    with app.app_context():
        assert db.session.scalars(select(ProductFile)).all() == []


def test_a_file_name_too_long_for_a_file_system_is_422_and_the_longest_stamps(
    app: Flask, shop: WebhookSender
) -> None:
    """The buyer's stamped copy is stored under the file's name (and written under a longer
    temporary one): a name past 200 bytes in UTF-8 is refused, naming the field; one of 200
    bytes (here 65 CJK letters and x.pdf) is stamped and downloaded."""
    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "products/501/manual.pdf")
    files = [{"object_key": "products/501/manual.pdf", "watermark": "pdf"}]
    too_long = shop.admin(
        "PUT",
        "/products/501",
        {"name": "Plugin", "files": [{**files[0], "filename": "山" * 66 + ".pdf"}]},
    )
    assert too_long.status_code == 422
    assert too_long.get_json()["field"] == "files[0].filename"
    assert "at most 200 bytes" in too_long.get_json()["detail"]
    longest = "山" * 65 + "x.pdf"
    assert len(longest.encode()) == 200
    [download] = paid_order(shop, 9404, [{**files[0], "filename": longest}])
    response = get(shop.client, link_path(download))
    assert response.status_code == 200
    assert response.data.startswith(b"%PDF")


def test_a_file_name_stored_before_the_check_still_downloads(
    app: Flask, shop: WebhookSender
) -> None:
    """A name with CR/LF saved before names were checked is served with the controls
    replaced: the buyer gets the file, and no header is split."""
    put_file(app, "products/501/manual.pdf", b"%PDF-1.4 manual")
    [download] = paid_order(
        shop, 9403, [{"object_key": "products/501/manual.pdf", "filename": "manual.pdf"}]
    )
    with app.app_context():
        db.session.execute(update(ProductFile).values(filename="a\r\nX-Injected: 1.pdf"))
        db.session.commit()
    response = get(shop.client, link_path(download))
    assert response.status_code == 200
    assert response.data == b"%PDF-1.4 manual"
    assert "X-Injected" not in response.headers
    assert 'filename="a__X-Injected: 1.pdf"' in response.headers["Content-Disposition"]


@pytest.mark.parametrize("path", ["/audit", "/outbox"])
@pytest.mark.parametrize("limit", ["%C2%B2", "9" * 5000, "-1", "0", "1001", "1.5", "%EF%BC%95"])
def test_a_limit_that_is_not_plain_digits_in_range_is_422(
    shop: WebhookSender, path: str, limit: str
) -> None:
    """``?limit=`` takes ASCII digits from 1 to 1000: not "²", not a full-width five, not a
    number too long for int()."""
    response = shop.admin("GET", f"{path}?limit={limit}")
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["field"] == "limit"


@pytest.mark.parametrize("list_id", ["²", "9" * 5000, "12a"])
def test_a_credentials_form_number_that_is_not_plain_digits_is_a_422_page(
    admin_client: FlaskClient, shop: WebhookSender, list_id: str
) -> None:
    """The credentials page answers an unreadable number with its own form and the field's
    name (422), and keeps what was stored."""
    assert sign_in(admin_client) == 302
    page = f"/admin/stores/{shop.store.store.id}/credentials"
    form = {
        "csrf_token": csrf_token(admin_client, page),
        "kind": "brevo",
        "api_key": "xkeysib-very-secret-key-9876",
        "sender_email": "shop@example.org",
        "sender_name": "Shop",
        "list_id": list_id,
    }
    response = admin_client.post(page, data=form)
    assert response.status_code == 422
    assert response.mimetype == "text/html"
    assert "list_id" in response.get_data(as_text=True)
    assert shop.admin("GET", "/credentials/brevo").status_code == 404


@pytest.mark.parametrize(
    "next_path", ["/admin%0aX", "/admin%0d%0aSet-Cookie:%20x=1", "/admin/orders%09", "/admin%7f"]
)
def test_sign_in_with_control_characters_in_next_goes_to_the_dashboard(
    admin_client: FlaskClient, next_path: str
) -> None:
    """``next`` with a control character is not followed (it would split the Location
    header): the admin lands on the dashboard, signed in."""
    token = csrf_token(admin_client, "/admin/login")
    response = admin_client.post(
        f"/admin/login?next={next_path}",
        data={"username": "owner", "password": PASSWORD, "csrf_token": token},
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/"
    assert "Set-Cookie" not in response.headers or "x=1" not in response.headers["Set-Cookie"]


BAD_ENDPOINTS = [
    "http://",
    "http://[::1",
    "http://127.0.0.1:99999",
    "http://127.0.0.1:0",
    "http://bad host",
    "ftp://127.0.0.1",
]
R2_CREDENTIALS = {
    "account_id": "acct",
    "access_key_id": "AKIAEXAMPLE",
    "secret_access_key": "s3cr3t-s3cr3t-s3cr3t",
    "bucket": "files",
}


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
def test_an_r2_endpoint_boto3_could_not_use_is_422(shop: WebhookSender, endpoint: str) -> None:
    """An endpoint needs an http(s) scheme, a valid host and, if any, a port 1-65535."""
    response = shop.admin("PUT", "/credentials/r2", {**R2_CREDENTIALS, "endpoint_url": endpoint})
    assert response.status_code == 422, response.get_data(as_text=True)
    assert response.get_json()["field"] == "endpoint_url"
    assert shop.admin("GET", "/credentials/r2").status_code == 404


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS[:3])
def test_an_r2_endpoint_stored_before_the_check_makes_storage_unavailable(
    app: Flask, shop: WebhookSender, endpoint: str
) -> None:
    """Credentials saved before endpoints were checked: the buyer's click is the friendly
    503 page (nothing counted), the owner's product update a warning, never a 500."""
    put_file(app, "products/501/manual.pdf", b"%PDF-1.4 manual")
    [download] = paid_order(
        shop, 9404, [{"object_key": "products/501/manual.pdf", "filename": "manual.pdf"}]
    )
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        values = {**R2_CREDENTIALS, "endpoint_url": endpoint}
        put_credentials(db.session, store, "r2", values, actor="test")
        db.session.commit()
    click = get(shop.client, link_path(download))
    assert click.status_code == 503
    assert click.mimetype == "text/html"
    assert shop.order(9404)["downloads"][0]["downloads_left"] == download["downloads_left"]
    update_product = shop.admin(
        "PUT",
        "/products/501",
        {"name": "Plugin", "files": [{"object_key": "manual.pdf", "filename": "manual.pdf"}]},
    )
    assert update_product.status_code == 200, update_product.get_data(as_text=True)
    assert any("did not answer" in w for w in update_product.get_json()["warnings"])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "n", "policy": {"activation_limt": 3}}, "policy.activation_limt"),
        ({"name": "n", "polcy": {"activation_limit": 3}}, "polcy"),
        ({"name": "n", "files": [{"object_key": "a.pdf", "watermak": "pdf"}]}, "files[0].watermak"),
        ({"name": "n", "policy": []}, "policy"),
        ({"name": "n", "policy": ""}, "policy"),
        ({"name": "n", "files": {}}, "files"),
        ({"name": "n", "files": ""}, "files"),
        ({"name": "n", "files": [{"object_key": "a.pdf", "filename": []}]}, "files[0].filename"),
        ({"name": "n", "files": [{"object_key": "a.pdf", "filename": {}}]}, "files[0].filename"),
        ({"name": "n", "files": [{"object_key": "a.pdf", "watermark": {}}]}, "files[0].watermark"),
        ({"name": "n", "files": [{"object_key": "a.pdf"}, "b.pdf"]}, "files[1]"),
        (
            {"name": "n", "files": [{"object_key": "a.pdf"}, {"object_key": ""}]},
            "files[1].object_key",
        ),
        (
            {"name": "n", "files": [{"object_key": "a.pdf"}, {"object_key": "a.pdf"}]},
            "files[1].object_key",
        ),
        ({"name": "n", "watermark_fallback": []}, "watermark_fallback"),
    ],
)
def test_a_product_field_misspelt_or_of_the_wrong_type_is_422_not_a_default(
    shop: WebhookSender, body: dict[str, Any], field: str
) -> None:
    """A typo or a wrong type must not quietly become a default: a misspelt activation limit
    would sell unlimited seats, a files of {} would remove every file."""
    shop.configure(501, activation_limit=2)
    response = shop.admin("PUT", "/products/501", body)
    assert response.status_code == 422, response.get_json()
    assert response.get_json()["field"] == field
    assert shop.admin("PUT", "/products/501", {"name": "n", "policy": None}).status_code == 200


def test_a_release_with_an_unknown_field_is_422(shop: WebhookSender) -> None:
    shop.configure(501)
    release = {"version": "1.0.0", "object_key": "r.zip", "sha256": "a" * 64, "size": 1}
    response = shop.admin("POST", "/products/501/releases", {**release, "change_log": "x"})
    assert (response.status_code, response.get_json()["field"]) == (422, "change_log")
    assert shop.admin("POST", "/products/501/releases", release).status_code == 201
