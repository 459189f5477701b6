"""The owner's licenses as CSV: every one, filtered like the list, safe in a spreadsheet."""

from __future__ import annotations

import csv
import io
import threading

from flask import Flask

from connector.db import db
from connector.licensing.admin import all_licenses
from connector.stores import create_store
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_admin_pages import signed_in_owner, store_admin


def sell(shop: WebhookSender, orders: range, quantity: int = 1) -> None:
    for order_id in orders:
        paid = wc_order(order_id, "processing", [line_item(501, quantity=quantity)])
        assert shop.deliver(paid).status_code == 200


def rows(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode())))


def test_the_csv_has_every_license_with_its_buyer_and_seats(shop: WebhookSender) -> None:
    shop.configure(501, activation_limit=3)
    sell(shop, range(8100, 8103))
    response = shop.admin("GET", "/licenses.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Disposition"] == 'attachment; filename="licenses.csv"'
    exported = rows(response.data)
    listed = shop.admin("GET", "/licenses").get_json()["licenses"]
    assert [r["key"] for r in exported] == [lic["key"] for lic in listed]
    first = exported[0]
    assert (first["order_id"], first["email"], first["product_id"]) == (
        "8102",
        "jurgen@example.org",
        "501",
    )
    assert (first["activation_limit"], first["activations_used"], first["expired"]) == (
        "3",
        "0",
        "no",
    )


def test_a_formula_in_a_cell_is_written_as_text(shop: WebhookSender) -> None:
    """A name a spreadsheet would run (=HYPERLINK, +, -, @) starts with ' in the file."""
    response = shop.admin(
        "PUT",
        "/products/501",
        {"name": '=HYPERLINK("http://evil.example","x")', "files": []},
    )
    assert response.status_code == 200
    sell(shop, range(8110, 8111))
    [row] = rows(shop.admin("GET", "/licenses.csv").data)
    assert row["product"] == '\'=HYPERLINK("http://evil.example","x")'


def test_filters_are_the_lists_and_a_bad_one_is_422(shop: WebhookSender) -> None:
    shop.configure(501)
    sell(shop, range(8120, 8122))
    refund = wc_order(8120, "refunded", [line_item(501)], modified=30)
    assert shop.deliver(refund).status_code == 200
    revoked = rows(shop.admin("GET", "/licenses.csv?status=revoked").data)
    assert [r["order_id"] for r in revoked] == ["8120"]
    bad = shop.admin("GET", "/licenses.csv?status=gone")
    assert bad.status_code == 422 and bad.mimetype == "application/problem+json"
    assert shop.client.get("/api/v1/admin/licenses.csv").status_code == 401


def test_every_license_is_read_page_by_page_once(app: Flask, shop: WebhookSender) -> None:
    """Past the list's 500: pages follow each other, none twice, none left out."""
    shop.configure(501)
    sell(shop, range(8130, 8132), quantity=3)
    with app.app_context():
        ids = [row.license.id for row in all_licenses(db.session, shop.store.store.id, page=2)]
    assert len(ids) == 6 and ids == sorted(set(ids), reverse=True)


def test_streaming_holds_no_lock_while_the_reader_is_slow(app: Flask, shop: WebhookSender) -> None:
    """Half-way through a download of the CSV, a sale is still written at once (on SQLite
    a transaction left open by the export would hold the database's write lock)."""
    shop.configure(501)
    sell(shop, range(8140, 8142), quantity=3)
    response = shop.client.get(
        "/api/v1/admin/licenses.csv",
        headers={"Authorization": f"Bearer {shop.store.api_token}"},
        buffered=False,
    )
    chunks = iter(response.response)
    assert next(chunks).startswith(b"key,")
    assert next(chunks)  # a page read, the reader pauses here
    sold: list[int] = []
    other_client = WebhookSender(app.test_client(), shop.store)
    paid = wc_order(8142, "processing", [line_item(501)])
    writer = threading.Thread(target=lambda: sold.append(other_client.deliver(paid).status_code))
    writer.start()
    writer.join(10)
    assert sold == [200], "a sale waited for the paused export"
    response.close()


def test_the_admin_page_exports_a_store_it_may_see(app: Flask, shop: WebhookSender) -> None:
    shop.configure(501)
    sell(shop, range(8150, 8151))
    store = shop.store.store
    client = signed_in_owner(app)
    page = client.get(f"/admin/stores/{store.id}")
    assert f"/admin/stores/{store.id}/licenses.csv" in page.get_data(as_text=True)
    exported = client.get(f"/admin/stores/{store.id}/licenses.csv")
    assert exported.status_code == 200
    assert [r["order_id"] for r in rows(exported.data)] == ["8150"]
    with app.app_context():
        other = create_store(db.session, "Other", "https://other.example").store
        db.session.commit()
        other_id = other.id
    other_admin = store_admin(app, other_id)
    assert other_admin.get(f"/admin/stores/{store.id}/licenses.csv").status_code == 404
    assert app.test_client().get(f"/admin/stores/{store.id}/licenses.csv").status_code == 302
