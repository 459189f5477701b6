"""Product settings from the shop admin: _keygate_* product meta read over REST."""

from __future__ import annotations

import json
from typing import Any

from flask import Flask
from sqlalchemy import select

from connector.db import db, transaction
from connector.models import Product, Store
from connector.orders.product_sync import SyncResult, sync_products
from connector.vault.connection import shop_client_for
from tests.factories import WebhookSender, line_item, wc_order
from tests.wc_rest import FakeShop, connect_store, fake_shop

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
    assert licenses[0]["expires_at"].startswith("2027-11-20")
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
