"""Product settings from the shop admin: _keygate_* product meta read over REST."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from connector.catalog import MAX_FILES
from connector.client import verify_license_file
from connector.db import db, transaction
from connector.jobs import enqueue, run_pending
from connector.models import AuditEvent, Job, Order, Product, Store
from connector.orders.product_sync import SyncResult, sync_products
from connector.vault.connection import shop_client_for
from plugin.woocommerce import rest
from plugin.woocommerce.rest import ShopUnavailable
from tests.factories import WebhookSender, line_item, shifted, wc_order
from tests.wc_rest import FakeShop, connect_store, error, fake_shop

__all__ = ["fake_shop"]


def wc_product(product_id: int, name: str, meta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A product as GET /wc/v3/products lists it (the fields Keygate reads, and some others)."""
    return {
        "id": product_id,
        "name": name,
        "slug": name.lower().replace(" ", "-"),
        "type": extra.pop("type", "simple"),
        "status": "publish",
        "virtual": True,
        "downloadable": False,
        "price": "49.00",
        "sku": f"SKU-{product_id}",
        "meta_data": [
            {"id": 900 + i, "key": key, "value": value}
            for i, (key, value) in enumerate(meta.items())
        ],
        **extra,
    }


def sync(app: Flask, shop: WebhookSender) -> SyncResult:
    with app.app_context(), transaction() as session:
        store = session.get(Store, shop.store.store.id)
        assert store is not None
        client = shop_client_for(session, store)
        assert client is not None
        return sync_products(session, store, client)


def test_product_meta_configures_the_product(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """Documented meta keys become the product's policy and files; others are ignored."""
    fake_shop.products[501] = wc_product(
        501,
        "Plugin Pro",
        {
            "_keygate_activation_limit": "3",
            "_keygate_duration_days": "365",
            "_keygate_update_days": "",
            "_keygate_staging_free": "yes",
            "_keygate_files": json.dumps(
                [{"object_key": "plugin-pro/plugin.zip", "filename": "plugin.zip"}, "docs/a.pdf"]
            ),
            "_yoast_wpseo_title": "ignored",
        },
    )
    fake_shop.products[502] = wc_product(502, "T-shirt", {"_color": "blue"})
    connect_store(app, shop, fake_shop)  # the connection runs a first sync
    fake_shop.deliver(shop.client, "order.created", wc_order(9801, "processing", [line_item(501)]))
    licenses = shop.order(9801)["licenses"]
    assert [lic["activation_limit"] for lic in licenses] == [3]
    assert licenses[0]["expires_at"].startswith(shifted("2027-11-20"))
    downloads = shop.order(9801)["downloads"]
    assert [d["filename"] for d in downloads] == ["plugin.zip", "a.pdf"]
    fake_shop.deliver(shop.client, "order.created", wc_order(9802, "processing", [line_item(502)]))
    assert shop.order(9802)["licenses"] == []


def test_settings_made_in_keygate_win(app: Flask, shop: WebhookSender, fake_shop: FakeShop) -> None:
    """A product configured through Keygate keeps its settings whatever the meta says."""
    shop.configure(501, activation_limit=10)
    fake_shop.products[501] = wc_product(501, "Plugin Pro", {"_keygate_activation_limit": "1"})
    connect_store(app, shop, fake_shop)
    result = sync(app, shop)
    assert result.kept_keygate == ["501"]
    fake_shop.deliver(shop.client, "order.created", wc_order(9803, "processing", [line_item(501)]))
    assert shop.order(9803)["licenses"][0]["activation_limit"] == 10


def test_a_second_sync_changes_nothing_and_a_meta_change_is_applied(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """Unchanged meta is not re-applied; changed meta is."""
    fake_shop.products[501] = wc_product(501, "Plugin Pro", {"_keygate_activation_limit": "2"})
    connect_store(app, shop, fake_shop)
    assert sync(app, shop).unchanged == ["501"]
    fake_shop.products[501] = wc_product(501, "Plugin Pro", {"_keygate_activation_limit": "4"})
    assert sync(app, shop).configured == ["501"]
    fake_shop.deliver(shop.client, "order.created", wc_order(9804, "processing", [line_item(501)]))
    assert shop.order(9804)["licenses"][0]["activation_limit"] == 4


def test_variation_meta_configures_the_variation(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A variable product's variations are read; their meta wins over the parent's."""
    fake_shop.products[600] = wc_product(
        600, "Suite", {"_keygate_activation_limit": "1"}, type="variable", variations=[601]
    )
    fake_shop.variations[600] = [
        {
            "id": 601,
            "sku": "SUITE-5",
            "meta_data": [{"id": 1, "key": "_keygate_activation_limit", "value": "5"}],
        }
    ]
    connect_store(app, shop, fake_shop)
    fake_shop.deliver(
        shop.client,
        "order.created",
        wc_order(9805, "processing", [line_item(600, variation_id=601)]),
    )
    assert shop.order(9805)["licenses"][0]["activation_limit"] == 5
    assert shop.order(9805)["licenses"][0]["product_id"] == "601"


def test_unreadable_meta_is_reported_and_changes_nothing(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A bad value names the key; the product stays unconfigured."""
    fake_shop.products[501] = wc_product(501, "Plugin Pro", {"_keygate_activation_limit": "three"})
    fake_shop.products[502] = wc_product(502, "Other", {"_keygate_files": "[not json"})
    connect_store(app, shop, fake_shop)
    result = sync(app, shop)
    assert result.invalid == {
        "501": "_keygate_activation_limit must be a whole number",
        "502": "_keygate_files must be a JSON list",
    }
    fake_shop.deliver(shop.client, "order.created", wc_order(9806, "processing", [line_item(501)]))
    assert shop.order(9806)["licenses"] == []


def test_product_text_no_database_could_store_is_cleaned_or_skipped(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A NUL in a product name is dropped (PostgreSQL cannot store it); a product whose id
    is not an id is skipped; files meta nested past the parser's stack is reported, not a
    crashed sync. Nothing stops the other products."""
    meta = {"_keygate_activation_limit": "2"}
    fake_shop.products[501] = wc_product(501, "Plugin\x00Pro", meta)
    fake_shop.products[502] = {**wc_product(502, "Odd", meta), "id": "50\x002"}
    fake_shop.products[503] = wc_product(503, "Deep", {"_keygate_files": "[" * 5000})
    connect_store(app, shop, fake_shop)
    result = sync(app, shop)
    assert result.unchanged == ["501"]  # configured by the first sync, on connecting
    assert list(result.invalid) == ["503"]
    assert "_keygate_files" in result.invalid["503"]
    with app.app_context():
        assert db.session.scalars(select(Product.name)).all() == ["PluginPro"]


def test_files_meta_in_another_stores_area_is_reported_and_changes_nothing(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """Product meta cannot point a store at another store's area of shared storage: the
    product is reported invalid and stays unconfigured; the other products are synced."""
    other = shop.store.store.id + 1
    fake_shop.products[501] = wc_product(
        501, "Grab", {"_keygate_files": json.dumps([f"watermarked/{other}/1/1/a.zip"])}
    )
    fake_shop.products[502] = wc_product(502, "Fine", {"_keygate_files": json.dumps(["a.zip"])})
    connect_store(app, shop, fake_shop)
    result = sync(app, shop)
    assert list(result.invalid) == ["501"]
    assert "another store's area" in result.invalid["501"]
    with app.app_context():
        assert db.session.scalars(select(Product.shop_product_id)).all() == ["502"]


def test_a_sale_made_before_the_sync_configured_its_product_is_licensed_by_the_sync(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A product given meta in the shop is sold before the next sync: the sync that
    configures it reads the paid order again and licenses it."""
    connect_store(app, shop, fake_shop)
    fake_shop.products[510] = wc_product(510, "New Plugin", {"_keygate_activation_limit": "1"})
    order = wc_order(9810, "completed", [line_item(510)], modified=-3000)
    fake_shop.orders[9810] = order
    fake_shop.deliver(shop.client, "order.created", order)
    assert shop.order(9810)["licenses"] == []  # not configured yet: recorded, not licensed
    result = sync(app, shop)
    assert result.configured == ["510"]
    assert result.reapplied == ["9810"]
    assert [lic["activation_limit"] for lic in shop.order(9810)["licenses"]] == [1]
    assert sync(app, shop).reapplied == []  # once


def test_yes_no_meta_and_a_file_listed_twice(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """perpetual_fallback and abuse_suspend are yes/no; a bad value or a file listed twice
    makes that product invalid, never the whole sync."""
    from connector.orders.product_sync import spec_from_meta

    spec = spec_from_meta(
        "x", {"_keygate_abuse_suspend": "yes", "_keygate_perpetual_fallback": "no"}
    )
    assert (spec.policy["abuse_suspend"], spec.policy["perpetual_fallback"]) == (True, False)
    fake_shop.products[501] = wc_product(501, "Plugin Pro", {"_keygate_abuse_suspend": "2"})
    fake_shop.products[502] = wc_product(
        502, "Bundle", {"_keygate_files": json.dumps(["a/b.zip", "a/b.zip"])}
    )
    fake_shop.products[503] = wc_product(503, "Fine", {"_keygate_activation_limit": "2"})
    connect_store(app, shop, fake_shop)
    result = sync(app, shop)
    assert result.invalid == {
        "501": "_keygate_abuse_suspend must be yes or no",
        "502": "_keygate_files[1].object_key is files[0]'s again: each file once",
    }
    assert result.unchanged == ["503"]


def test_a_shop_down_half_way_through_a_sync_changes_nothing(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """The periodic sync reads the whole shop before applying anything: a shop failing at
    the variations leaves no parent configured without its variation."""
    connect_store(app, shop, fake_shop)
    fake_shop.products[600] = wc_product(
        600, "Suite", {"_keygate_activation_limit": "1"}, type="variable", variations=[601]
    )
    dispatch = fake_shop._dispatch

    def variations_down(method: str, path: str, query: dict[str, str], body: Any) -> Any:
        if "variations" in path:
            return error(503, "down", "Maintenance")
        return dispatch(method, path, query, body)

    fake_shop._dispatch = variations_down  # type: ignore[method-assign]
    with app.app_context(), transaction() as session:
        enqueue(session, "shop.sync_products", {"store_id": shop.store.store.id, "periodic": True})
    run_pending(app, kinds={"shop.sync_products"})
    with app.app_context():
        assert db.session.scalars(select(Product.shop_product_id)).all() == []


def test_variations_of_a_variable_subscription_are_read(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """WooCommerce Subscriptions' variable products (type variable-subscription) have their
    variations read like a variable product's."""
    fake_shop.products[700] = wc_product(
        700, "Suite subscription", {}, type="variable-subscription", variations=[701]
    )
    fake_shop.variations[700] = [
        {"id": 701, "meta_data": [{"id": 1, "key": "_keygate_activation_limit", "value": "5"}]}
    ]
    connect_store(app, shop, fake_shop)
    fake_shop.deliver(
        shop.client,
        "order.created",
        wc_order(9811, "processing", [line_item(700, variation_id=701)]),
    )
    assert [lic["activation_limit"] for lic in shop.order(9811)["licenses"]] == [5]


def test_meta_removed_retires_the_product_and_a_variation_follows_its_parent(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """Meta cleared in the shop: new sales are not licensed, keys sold before keep working;
    a variation whose own meta is removed follows its parent's; meta set again licenses
    again."""
    fake_shop.products[501] = wc_product(501, "Plugin Pro", {"_keygate_activation_limit": "3"})
    fake_shop.products[600] = wc_product(
        600, "Suite", {"_keygate_activation_limit": "1"}, type="variable", variations=[601]
    )
    fake_shop.variations[600] = [
        {"id": 601, "meta_data": [{"id": 1, "key": "_keygate_activation_limit", "value": "5"}]}
    ]
    connect_store(app, shop, fake_shop)
    fake_shop.deliver(shop.client, "order.created", wc_order(9812, "processing", [line_item(501)]))
    fake_shop.products[501] = wc_product(501, "Plugin Pro", {"_keygate_activation_limit": ""})
    fake_shop.variations[600] = [{"id": 601, "meta_data": []}]
    result = sync(app, shop)
    assert sorted(result.retired) == ["501", "601"]
    fake_shop.orders[9813] = wc_order(9813, "processing", [line_item(501)])
    fake_shop.deliver(shop.client, "order.created", fake_shop.orders[9813])
    fake_shop.deliver(
        shop.client,
        "order.created",
        wc_order(9814, "processing", [line_item(600, variation_id=601)]),
    )
    assert shop.order(9812)["licenses"][0]["status"] == "active"
    assert shop.order(9813)["licenses"] == []
    assert [lic["product_id"] for lic in shop.order(9814)["licenses"]] == ["600"]
    fake_shop.products[501] = wc_product(501, "Plugin Pro", {"_keygate_activation_limit": "3"})
    assert sync(app, shop).configured == ["501"]
    assert len(shop.order(9813)["licenses"]) == 1  # sold while retired: licensed now


def test_invalid_meta_is_shown_to_the_owner_once_per_problem(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """The periodic sync's invalid meta is in the owner's audit log (once per product and
    problem, naming the key, not its value) and in the connection answer until fixed."""
    fake_shop.products[501] = wc_product(501, "Plugin Pro", {"_keygate_activation_limit": "three"})
    connect_store(app, shop, fake_shop)
    sync(app, shop)
    problem = "_keygate_activation_limit must be a whole number"
    connection = shop.admin("GET", "/connection").get_json()
    assert connection["products_invalid"] == [{"product_id": "501", "problem": problem}]
    with app.app_context():
        entries = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "product.meta_invalid")
        ).all()
        assert [(e.subject, e.detail) for e in entries] == [("product:501", {"problem": problem})]
    fake_shop.products[501] = wc_product(501, "Plugin Pro", {"_keygate_activation_limit": "3"})
    sync(app, shop)
    assert shop.admin("GET", "/connection").get_json()["products_invalid"] == []


def retired_products(app: Flask) -> list[str]:
    with app.app_context():
        return sorted(
            db.session.scalars(
                select(Product.shop_product_id).where(Product.retired_at.is_not(None))
            )
        )


def test_an_incomplete_product_listing_retires_no_product_that_keeps_its_meta(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages that shift while read (a product trashed meanwhile: X-WP-Total disagrees) fail
    the sync instead of retiring; an empty 200 listing (a caching or security plugin)
    retires nothing; a listing that misses a product without saying so retires only what the
    shop, asked by id, confirms deleted, trashed or without meta."""
    monkeypatch.setattr(rest, "PER_PAGE", 2)
    for pid in (801, 802):
        fake_shop.products[pid] = wc_product(pid, f"Other {pid}", {})
    for pid in (803, 804, 805, 806):
        fake_shop.products[pid] = wc_product(pid, f"P{pid}", {"_keygate_activation_limit": "1"})
    connect_store(app, shop, fake_shop)
    dispatch = fake_shop._dispatch

    def trashed_after_page_one(method: str, path: str, query: dict[str, str], body: Any) -> Any:
        answer = dispatch(method, path, query, body)
        if path == "products" and query.get("page") == "1":
            fake_shop.products[801]["status"] = "trash"
        return answer

    fake_shop._dispatch = trashed_after_page_one  # type: ignore[method-assign]
    with pytest.raises(ShopUnavailable):
        sync(app, shop)

    def empty(method: str, path: str, query: dict[str, str], body: Any) -> Any:
        if path == "products":
            return fake_shop._json([], **{"X-WP-Total": "0", "X-WP-TotalPages": "0"})
        return dispatch(method, path, query, body)

    fake_shop._dispatch = empty  # type: ignore[method-assign]
    assert sync(app, shop).retired == []

    def missing_some(method: str, path: str, query: dict[str, str], body: Any) -> Any:
        if path == "products":  # no totals, and only the first product
            return fake_shop._json([fake_shop.products[802]] if query["page"] == "1" else [])
        return dispatch(method, path, query, body)

    fake_shop._dispatch = missing_some  # type: ignore[method-assign]
    fake_shop.products[804]["status"] = "trash"
    del fake_shop.products[805]
    fake_shop.products[806] = wc_product(806, "P806", {"_keygate_activation_limit": ""})
    assert sorted(sync(app, shop).retired) == ["804", "805", "806"]
    assert retired_products(app) == ["804", "805", "806"]
    fake_shop.deliver(shop.client, "order.created", wc_order(9820, "processing", [line_item(803)]))
    assert len(shop.order(9820)["licenses"]) == 1


def test_an_order_the_shop_cannot_read_holds_back_no_other_sale(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """Sales re-read after a sync configured their product: one the shop fails on (HTTP
    500) or answers unreadably is skipped and the others are licensed, the job does not
    fail; a shop that fails three in a row is taken to be down and asked no more."""
    connect_store(app, shop, fake_shop)
    fake_shop.products[510] = wc_product(510, "New Plugin", {"_keygate_activation_limit": "1"})
    for oid in (9001, 9002, 9003):
        fake_shop.orders[oid] = wc_order(oid, "completed", [line_item(510)], modified=-3000)
        fake_shop.deliver(shop.client, "order.created", fake_shop.orders[oid])
    fake_shop.orders[9002]["total"] = "NaN"  # as the shop answers it now
    dispatch = fake_shop._dispatch

    def broken_9001(method: str, path: str, query: dict[str, str], body: Any) -> Any:
        if path == "orders/9001":
            return error(500, "internal_server_error", "A plugin's fatal error")
        return dispatch(method, path, query, body)

    fake_shop._dispatch = broken_9001  # type: ignore[method-assign]
    with app.app_context(), transaction() as session:
        enqueue(session, "shop.sync_products", {"store_id": shop.store.store.id})
    run_pending(app, kinds={"shop.sync_products"})
    assert len(shop.order(9003)["licenses"]) == 1
    assert shop.order(9001)["licenses"] == shop.order(9002)["licenses"] == []
    with app.app_context():
        jobs = db.session.scalars(select(Job).where(Job.kind == "shop.sync_products")).all()
        ours = [(j.status, j.last_error) for j in jobs if not j.payload.get("periodic")]
        assert ours == [("done", None)]
    for oid in (9004, 9005, 9006, 9007):
        fake_shop.orders[oid] = wc_order(oid, "completed", [line_item(511)], modified=-3000)
        fake_shop.deliver(shop.client, "order.created", fake_shop.orders[oid])
    fake_shop.products[511] = wc_product(511, "Newer Plugin", {"_keygate_activation_limit": "1"})

    def orders_down(method: str, path: str, query: dict[str, str], body: Any) -> Any:
        if path.startswith("orders/"):
            return error(503, "down", "Maintenance")
        return dispatch(method, path, query, body)

    fake_shop._dispatch = orders_down  # type: ignore[method-assign]
    fake_shop.requests.clear()
    sync(app, shop)
    assert sum(1 for _, path in fake_shop.requests if path.startswith("orders/")) == 3


def test_sales_read_again_are_recent_and_bounded_per_sync(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Meta added to a product sold before licenses the sales of the last 30 days, newest
    first and a bounded number per sync (the others next sync), never older ones."""
    from connector.orders import product_sync

    monkeypatch.setattr(product_sync, "REREAD_LIMIT", 2, raising=False)
    connect_store(app, shop, fake_shop)
    for oid in (9030, 9031, 9032, 9033):
        fake_shop.orders[oid] = wc_order(oid, "completed", [line_item(510)], modified=-3000)
        fake_shop.deliver(shop.client, "order.created", fake_shop.orders[oid])
    with app.app_context(), transaction() as session:
        old = session.scalars(select(Order).where(Order.shop_order_id == "9030")).one()
        old.created_at = old.created_at - dt.timedelta(days=31)
    fake_shop.products[510] = wc_product(510, "New Plugin", {"_keygate_activation_limit": "1"})
    assert sync(app, shop).reapplied == ["9033", "9032"]
    assert sync(app, shop).reapplied == ["9031"]
    assert sync(app, shop).reapplied == []
    assert shop.order(9030)["licenses"] == []


def test_the_owner_sees_a_retired_product_and_can_send_it_back(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """GET /admin/products answers retired_at (set once the shop meta is gone); the product
    read can be PUT back as it is, which configures it in Keygate again."""
    fake_shop.products[501] = wc_product(501, "Plugin Pro", {"_keygate_activation_limit": "3"})
    connect_store(app, shop, fake_shop)
    assert shop.admin("GET", "/products/501").get_json()["retired_at"] is None
    fake_shop.products[501] = wc_product(501, "Plugin Pro", {})
    sync(app, shop)
    (listed,) = shop.admin("GET", "/products").get_json()["products"]
    assert listed["retired_at"] is not None
    read = shop.admin("GET", "/products/501").get_json()
    assert read["retired_at"] == listed["retired_at"]
    put = shop.admin("PUT", "/products/501", read)
    assert put.status_code == 200, put.get_json()
    assert put.get_json()["retired_at"] is None


def test_a_product_read_that_is_no_json_object_retires_nothing_and_breaks_no_sync(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A caching or security plugin answering ``[]`` for ``products/<id>`` (the check of a
    product the listing shows without meta) is the shop not answering: the product is not
    retired and the rest of the listing is applied."""
    fake_shop.products[811] = wc_product(811, "Kept", {"_keygate_activation_limit": "1"})
    fake_shop.products[812] = wc_product(812, "Cached", {"_keygate_activation_limit": "1"})
    connect_store(app, shop, fake_shop)
    fake_shop.products[811] = wc_product(811, "Kept", {"_keygate_activation_limit": "4"})
    fake_shop.products[812] = wc_product(812, "Cached", {})  # listed without meta
    dispatch = fake_shop._dispatch

    def cached(method: str, path: str, query: dict[str, str], body: Any) -> Any:
        if path == "products/812":
            return fake_shop._json([])
        return dispatch(method, path, query, body)

    fake_shop._dispatch = cached  # type: ignore[method-assign]
    assert sync(app, shop).retired == []
    assert retired_products(app) == []
    assert shop.admin("GET", "/products/811").get_json()["policy"]["activation_limit"] == 4


def test_meta_takes_what_the_api_takes_so_a_synced_product_can_be_sent_back(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """Product meta is checked by the admin API's rules: a number beyond the range a PUT
    takes (activation_limit and abuse_threshold up to 100,000, days up to 36,600) is
    reported and the product left unconfigured; a product synced at those limits reads back
    as a body that a PUT takes as it is."""
    fake_shop.products[501] = wc_product(501, "Too many", {"_keygate_activation_limit": "500000"})
    fake_shop.products[502] = wc_product(502, "Too long", {"_keygate_duration_days": "999999"})
    fake_shop.products[503] = wc_product(
        503,
        "At the limits",
        {
            "_keygate_activation_limit": "100000",
            "_keygate_abuse_threshold": "100000",
            "_keygate_duration_days": "36600",
            "_keygate_update_days": "0",
            "_keygate_download_limit": "1000000",
        },
    )
    connect_store(app, shop, fake_shop)
    result = sync(app, shop)
    assert result.invalid == {
        "501": "_keygate_activation_limit must be between 0 and 100000",
        "502": "_keygate_duration_days must be between 1 and 36600",
    }
    assert shop.admin("GET", "/products/501").status_code == 404
    body = shop.admin("GET", "/products/503").get_json()
    assert body["policy"]["activation_limit"] == 100000
    back = shop.admin("PUT", "/products/503", body)
    assert back.status_code == 200, back.get_json()


def test_meta_lists_no_more_files_than_the_api_takes(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """``_keygate_files`` holds at most as many files as a PUT does (100): more are
    reported and the product left unconfigured; 100 are stored and can be sent back."""
    too_many = [f"plugin/f{i}.zip" for i in range(MAX_FILES + 1)]
    fake_shop.products[501] = wc_product(501, "Many", {"_keygate_files": json.dumps(too_many)})
    fake_shop.products[502] = wc_product(
        502, "Enough", {"_keygate_files": json.dumps(too_many[:MAX_FILES])}
    )
    connect_store(app, shop, fake_shop)
    result = sync(app, shop)
    assert result.invalid == {"501": "_keygate_files must be a list of at most 100 files"}
    assert shop.admin("GET", "/products/501").status_code == 404
    body = shop.admin("GET", "/products/502").get_json()
    assert len(body["files"]) == MAX_FILES
    back = shop.admin("PUT", "/products/502", body)
    assert back.status_code == 200, back.get_json()


def test_a_misspelt_file_field_in_meta_is_reported_not_served_unstamped(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A file in ``_keygate_files`` with a field the API does not know (``"watermak":
    "pdf"``) is reported and the product not licensed, as a PUT refuses it: a typo never
    serves a file without the buyer's stamp."""
    files = [{"object_key": "books/book.pdf", "watermak": "pdf"}]
    fake_shop.products[501] = wc_product(
        501, "Book", {"_keygate_activation_limit": "1", "_keygate_files": json.dumps(files)}
    )
    connect_store(app, shop, fake_shop)
    result = sync(app, shop)
    assert result.invalid == {"501": "unknown field _keygate_files[0].watermak"}
    fake_shop.deliver(shop.client, "order.created", wc_order(9840, "processing", [line_item(501)]))
    assert shop.order(9840)["licenses"] == []


def test_a_misspelt_meta_key_is_reported_not_licensed_with_defaults(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A ``_keygate_*`` key that is no product meta key, holding a value, is reported and
    the product not licensed from that meta, as a PUT refuses an unknown field: a typo
    never quietly removes a limit (alone, or beside keys spelt right). A line's meta key on
    a product is no product meta either. One left empty sets nothing and is ignored."""
    fake_shop.products[501] = wc_product(501, "Alone", {"_keygate_activation_limt": "1"})
    fake_shop.products[502] = wc_product(
        502, "Beside", {"_keygate_duration_days": "365", "_keygate_activaton_limit": "1"}
    )
    fake_shop.products[503] = wc_product(503, "Line meta", {"_keygate_renew_license": "KG-1"})
    fake_shop.products[504] = wc_product(
        504, "Cleared", {"_keygate_activation_limit": "2", "_keygate_activation_limt": ""}
    )
    connect_store(app, shop, fake_shop)
    result = sync(app, shop)
    assert result.invalid == {
        "501": "unknown meta key _keygate_activation_limt",
        "502": "unknown meta key _keygate_activaton_limit",
        "503": "unknown meta key _keygate_renew_license",
    }
    assert result.unchanged == ["504"]
    lines = [line_item(501), line_item(502), line_item(503)]
    fake_shop.deliver(shop.client, "order.created", wc_order(9841, "processing", lines))
    assert shop.order(9841)["licenses"] == []


def test_a_variations_cleared_field_follows_its_parent(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """WooCommerce keeps a field cleared in the shop admin as "": a variation's "" is not
    set and follows its parent's value (here the parent's seat limit of 2 stays, never
    unlimited), while the values it sets override the parent's; a variation whose fields
    are all "" follows its parent (its sales match the parent product)."""
    fake_shop.products[600] = wc_product(
        600,
        "Suite",
        {"_keygate_activation_limit": "2", "_keygate_duration_days": "365"},
        type="variable",
        variations=[601, 602],
    )
    fake_shop.variations[600] = [
        {
            "id": 601,
            "meta_data": [
                {"id": 1, "key": "_keygate_duration_days", "value": "730"},
                {"id": 2, "key": "_keygate_activation_limit", "value": ""},
            ],
        },
        {"id": 602, "meta_data": [{"id": 3, "key": "_keygate_activation_limit", "value": ""}]},
    ]
    connect_store(app, shop, fake_shop)
    policy = shop.admin("GET", "/products/601").get_json()["policy"]
    assert (policy["activation_limit"], policy["duration_days"]) == (2, 730)
    assert shop.admin("GET", "/products/602").status_code == 404
    fake_shop.deliver(
        shop.client,
        "order.created",
        wc_order(9842, "processing", [line_item(600, variation_id=602)]),
    )
    licenses = shop.order(9842)["licenses"]
    assert [(lic["product_id"], lic["activation_limit"]) for lic in licenses] == [("600", 2)]


def test_offline_days_meta_caps_the_products_offline_files(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """``_keygate_offline_days`` configures how long the product's offline license files
    last, 1 to 365 days as a PUT takes: more is reported and the product left unconfigured."""
    from tests.licensing_helpers import call, public_keys

    fake_shop.products[501] = wc_product(501, "Plugin Pro", {"_keygate_offline_days": "2"})
    fake_shop.products[502] = wc_product(502, "Too long", {"_keygate_offline_days": "366"})
    connect_store(app, shop, fake_shop)
    result = sync(app, shop)
    assert result.invalid == {"502": "_keygate_offline_days must be between 1 and 365"}
    assert shop.admin("GET", "/products/501").get_json()["policy"]["offline_days"] == 2
    fake_shop.deliver(shop.client, "order.created", wc_order(9842, "processing", [line_item(501)]))
    key = shop.order(9842)["licenses"][0]["key"]
    answer = call(shop.client, "checkout", {"key": key, "ttl": 365 * 24 * 3600}).get_json()
    content = verify_license_file(answer["license_file"], public_keys(shop.client), key=key)
    assert content["ttl"] == 2 * 24 * 3600


def test_a_periodic_sync_the_shop_refuses_keeps_its_chain_and_does_not_retry_in_vain(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A key revoked in WooCommerce (401), or a shop that now redirects, refuses every sync
    alike: the run is logged and the next one queued, as when the shop is down, rather than
    retried all day and then reported dead (and another such job started every hour)."""
    connect_store(app, shop, fake_shop)
    with app.app_context(), transaction() as session:
        for job in session.scalars(select(Job).where(Job.kind == "shop.sync_products")):
            session.delete(job)
    fake_shop.consumer_secret = "cs_" + "revoked" * 4  # Keygate's key no longer works
    with app.app_context(), transaction() as session:
        enqueue(session, "shop.sync_products", {"store_id": shop.store.store.id, "periodic": True})
    run_pending(app, kinds={"shop.sync_products"})
    with app.app_context():
        jobs = db.session.scalars(
            select(Job).where(Job.kind == "shop.sync_products").order_by(Job.id)
        ).all()
        assert [j.status for j in jobs] == ["done", "pending"]
        assert jobs[1].run_after > dt.datetime.now(dt.UTC)
        assert jobs[1].attempts == 0


def test_a_product_read_the_shop_refuses_retires_nothing(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A product a listing misses is retired only on WooCommerce's own "no such product":
    another refusal of its read (a security plugin's 403, a REST route blocked) says nothing
    of its meta, and the product stays licensed."""
    for pid in (803, 804):
        fake_shop.products[pid] = wc_product(pid, f"P{pid}", {"_keygate_activation_limit": "1"})
    connect_store(app, shop, fake_shop)
    dispatch = fake_shop._dispatch
    refusal = [error(403, "woocommerce_rest_cannot_view", "Sorry, you cannot view this.")]

    def missing_803(method: str, path: str, query: dict[str, str], body: Any) -> Any:
        if path == "products":  # no totals, and 804 only
            return fake_shop._json([fake_shop.products[804]] if query["page"] == "1" else [])
        if path == "products/803":
            return refusal[0]
        return dispatch(method, path, query, body)

    fake_shop._dispatch = missing_803  # type: ignore[method-assign]
    assert sync(app, shop).retired == []
    refusal[0] = error(404, "rest_no_route", "No route was found matching the URL.")
    assert sync(app, shop).retired == []
    assert retired_products(app) == []
    fake_shop.deliver(shop.client, "order.created", wc_order(9960, "processing", [line_item(803)]))
    assert len(shop.order(9960)["licenses"]) == 1
    refusal[0] = error(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
    assert sync(app, shop).retired == ["803"]


def test_a_sync_asks_of_and_retires_only_its_own_stores_products_and_sales(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """Another store's products (configured from its meta, one of the same shop id) and its
    sales are no concern of this store's sync: none is asked of this shop, retired or read
    again; this store's sale of a product only the other store configured is not read."""
    from connector.catalog import configure_product
    from connector.orders.product_sync import spec_from_meta
    from connector.stores import create_store

    with app.app_context():
        other = create_store(db.session, "Other shop", "https://other.example")
        db.session.commit()
    theirs = WebhookSender(app.test_client(), other)
    sale = wc_order(9950, "completed", [line_item(510)])
    assert theirs.deliver(sale, "order.created").status_code == 200
    with app.app_context(), transaction() as session:
        store = session.get(Store, other.store.id)
        assert store is not None
        spec = spec_from_meta("Theirs", {"_keygate_activation_limit": "1"})
        for pid in ("805", "806", "512"):
            configure_product(session, store, pid, spec, actor="shop")
    fake_shop.products[805] = wc_product(805, "Ours", {"_keygate_activation_limit": "1"})
    connect_store(app, shop, fake_shop)
    fake_shop.orders[9951] = wc_order(9951, "completed", [line_item(512)], modified=-3000)
    fake_shop.deliver(shop.client, "order.created", fake_shop.orders[9951])
    fake_shop.products[805] = wc_product(805, "Ours", {"_keygate_activation_limit": ""})
    fake_shop.products[510] = wc_product(510, "New Plugin", {"_keygate_activation_limit": "1"})
    fake_shop.requests.clear()
    result = sync(app, shop)
    assert (result.configured, result.retired, result.reapplied) == (["510"], ["805"], [])
    asked = {path for _, path in fake_shop.requests}
    assert not asked & {"products/806", "products/512", "orders/9950", "orders/9951"}
    with app.app_context():
        theirs_retired = db.session.scalars(
            select(Product.shop_product_id).where(
                Product.store_id == other.store.id, Product.retired_at.is_not(None)
            )
        ).all()
    assert theirs_retired == []
    assert theirs.order(9950)["licenses"] == []


def test_a_change_of_the_files_or_the_name_alone_is_applied(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """Meta whose files alone changed configures the product again (new sales get the new
    file), as does a product renamed in the shop."""
    meta = {"_keygate_activation_limit": "2", "_keygate_files": json.dumps(["a/one.zip"])}
    fake_shop.products[501] = wc_product(501, "Plugin Pro", meta)
    connect_store(app, shop, fake_shop)
    meta["_keygate_files"] = json.dumps(["a/one.zip", "a/two.zip"])
    fake_shop.products[501] = wc_product(501, "Plugin Pro", meta)
    assert sync(app, shop).configured == ["501"]
    fake_shop.products[501] = wc_product(501, "Plugin Pro 2", meta)
    assert sync(app, shop).configured == ["501"]
    assert shop.admin("GET", "/products/501").get_json()["name"] == "Plugin Pro 2"
    fake_shop.deliver(shop.client, "order.created", wc_order(9961, "processing", [line_item(501)]))
    assert [d["filename"] for d in shop.order(9961)["downloads"]] == ["one.zip", "two.zip"]


def test_a_variation_sold_before_a_sync_configured_it_is_licensed_by_the_sync(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A variation given meta of its own (its parent has none) after it was sold: the sync
    reads the paid order again and licenses the line as the variation."""
    fake_shop.products[600] = wc_product(600, "Suite", {}, type="variable", variations=[601])
    fake_shop.variations[600] = [{"id": 601, "meta_data": []}]
    connect_store(app, shop, fake_shop)
    order = wc_order(9962, "completed", [line_item(600, variation_id=601)], modified=-3000)
    fake_shop.orders[9962] = order
    fake_shop.deliver(shop.client, "order.created", order)
    assert shop.order(9962)["licenses"] == []
    fake_shop.variations[600] = [
        {"id": 601, "meta_data": [{"id": 1, "key": "_keygate_activation_limit", "value": "5"}]}
    ]
    assert sync(app, shop).reapplied == ["9962"]
    licenses = shop.order(9962)["licenses"]
    assert [(lic["product_id"], lic["activation_limit"]) for lic in licenses] == [("601", 5)]


def test_a_product_the_owner_retired_stays_retired_whatever_the_shop_meta_says(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A product configured from shop meta that the owner stopped licensing in Keygate is
    not brought back by the next sync while its meta stays: new sales get no key."""
    fake_shop.products[501] = wc_product(501, "Plugin Pro", {"_keygate_activation_limit": "3"})
    connect_store(app, shop, fake_shop)
    assert shop.admin("DELETE", "/products/501").status_code == 200
    result = sync(app, shop)
    assert result.kept_keygate == ["501"] and result.configured == []
    assert retired_products(app) == ["501"]
    fake_shop.deliver(shop.client, "order.created", wc_order(9830, "processing", [line_item(501)]))
    assert shop.order(9830)["licenses"] == []


def test_a_sync_reads_again_only_paid_sales_still_in_the_shop_of_a_product_it_licenses(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """Sales recorded before a sync configured their product are read again from the shop
    only when they are paid, not deleted in the shop, their buyer not erased (an erased
    buyer is never brought back from the shop's copy) and their product not retired."""
    fake_shop.products[511] = wc_product(511, "Old Plugin", {"_keygate_activation_limit": "1"})
    connect_store(app, shop, fake_shop)
    fake_shop.products[511] = wc_product(511, "Old Plugin", {})
    assert sync(app, shop).retired == ["511"]
    orders = {
        9040: wc_order(9040, "completed", [line_item(510)], modified=-3000),
        9041: wc_order(9041, "pending", [line_item(510)], modified=-3000),
        9042: wc_order(9042, "completed", [line_item(510)], modified=-3000),
        9043: wc_order(
            9043, "completed", [line_item(510)], modified=-3000, email="erased@example.org"
        ),
        9044: wc_order(9044, "completed", [line_item(511)], modified=-3000),
    }
    for oid, order in orders.items():
        fake_shop.orders[oid] = order
        fake_shop.deliver(shop.client, "order.created", order)
    # Deleted for good with its status as it was (a delivery that carries the whole order).
    deleted = fake_shop.deliver(shop.client, "order.deleted", orders[9042])
    assert deleted.status_code == 200
    assert shop.admin("DELETE", "/customers/erased@example.org").status_code == 200
    fake_shop.products[510] = wc_product(510, "New Plugin", {"_keygate_activation_limit": "1"})
    fake_shop.requests.clear()
    assert sync(app, shop).reapplied == ["9040"]
    read = sorted(path for _, path in fake_shop.requests if path.startswith("orders/"))
    assert read == ["orders/9040"]
    for oid in (9041, 9042, 9043, 9044):
        assert shop.order(oid)["licenses"] == []
    assert "erased@example.org" not in json.dumps(shop.order(9043))


def test_the_owner_reads_each_retirement_and_each_new_meta_problem_in_the_audit_log(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A product the sync retires (its meta gone) is one product.retired entry by the shop;
    a product whose meta problem changes gets an entry for the new problem, and none again
    while that problem stays."""
    fake_shop.products[501] = wc_product(501, "Plugin Pro", {"_keygate_activation_limit": "3"})
    fake_shop.products[502] = wc_product(502, "Theme", {"_keygate_activation_limit": "three"})
    connect_store(app, shop, fake_shop)
    fake_shop.products[501] = wc_product(501, "Plugin Pro", {})
    fake_shop.products[502] = wc_product(502, "Theme", {"_keygate_duration_days": "year"})
    sync(app, shop)
    sync(app, shop)
    with app.app_context():
        entries = db.session.scalars(
            select(AuditEvent)
            .where(AuditEvent.action.in_(["product.retired", "product.meta_invalid"]))
            .order_by(AuditEvent.id)
        ).all()
        assert [(e.action, e.actor, e.subject, e.detail) for e in entries] == [
            (
                "product.meta_invalid",
                "shop",
                "product:502",
                {"problem": "_keygate_activation_limit must be a whole number"},
            ),
            (
                "product.retired",
                "shop",
                "product:501",
                {"reason": "no _keygate_* meta in the shop any more"},
            ),
            (
                "product.meta_invalid",
                "shop",
                "product:502",
                {"problem": "_keygate_duration_days must be a whole number"},
            ),
        ]
