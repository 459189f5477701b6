"""Stores that share one instance's storage cannot reach each other's files.

The embedded folder (and the instance-wide R2 bucket) is shared by every store of the
instance: ``stores/<id>/`` is one store's own area, ``watermarked/<id>/`` holds Keygate's
stamped copies of that store's buyers (names and license keys inside).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select, update

from connector import create_app
from connector.db import db
from connector.downloads.storage import LocalStore, SharedArea, check_in_reach
from connector.errors import ValidationFailed
from connector.models import Product, ProductFile, Release, Store
from connector.stores import create_store
from connector.vault.service import put_credentials
from tests.conftest import app_overrides
from tests.factories import SHIFT, WebhookSender, line_item, wc_order
from tests.licensing_helpers import call, issue_key


def put_file(app: Flask, key: str, data: bytes) -> None:
    path = Path(app.extensions["keygate.settings"].storage_dir) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def other_shop(app: Flask, shop: WebhookSender) -> WebhookSender:
    with app.app_context():
        created = create_store(db.session, "Other shop", "https://other.example")
        db.session.commit()
    return WebhookSender(shop.client, created)


def store_id(shop: WebhookSender) -> int:
    return shop.store.store.id


def first_link(shop: WebhookSender, order_id: int, object_key: str) -> str:
    files = [{"object_key": object_key, "filename": "pro.zip"}]
    shop.configure(501, files=files, download_limit=5)
    assert shop.deliver(wc_order(order_id, "processing", [line_item(501)])).status_code == 200
    link: str = shop.order(order_id)["downloads"][0]["link"]
    return link.removeprefix("http://keygate.test")


def test_a_store_cannot_name_another_stores_area(app: Flask, shop: WebhookSender) -> None:
    """Another store's folder or its buyers' stamped copies are refused (422, naming the
    store's own area), whether or not the object exists; nothing is configured."""
    other = other_shop(app, shop)
    owner = store_id(shop)
    put_file(app, f"stores/{owner}/pro.zip", b"the owner's file")
    put_file(app, f"watermarked/{owner}/1/1/pro.zip", b"a buyer's stamped copy")
    for key in [
        f"stores/{owner}/pro.zip",
        f"watermarked/{owner}/1/1/pro.zip",
        f"stores//{owner}/pro.zip",
        "stores/not-a-store/pro.zip",
        f"stores/{owner}/missing.zip",
    ]:
        answer = other.admin(
            "PUT", "/products/900", {"name": "Grab", "policy": {}, "files": [{"object_key": key}]}
        )
        assert answer.status_code == 422, key
        assert answer.mimetype == "application/problem+json"
        assert f"stores/{store_id(other)}/" in answer.get_json()["detail"]
    with app.app_context():
        assert db.session.execute(select(Product)).scalars().all() == []


def test_a_store_is_served_its_own_area_and_the_common_files(
    app: Flask, shop: WebhookSender
) -> None:
    """A store's own ``stores/<id>/`` folder and the files outside every store's area are
    served to its buyers."""
    other_shop(app, shop)
    own = f"stores/{store_id(shop)}/pro.zip"
    put_file(app, own, b"own file")
    response = shop.client.get(first_link(shop, 8101, own))
    assert (response.status_code, response.get_data()) == (200, b"own file")
    response.close()
    put_file(app, "common/pro.zip", b"common file")
    response = shop.client.get(first_link(shop, 8102, "common/pro.zip"))
    assert (response.status_code, response.get_data()) == (200, b"common file")
    response.close()


def test_a_file_recorded_in_another_stores_area_is_never_served(
    app: Flask, shop: WebhookSender
) -> None:
    """A file row that names another store's area (say, recorded while the store had its own
    bucket, which it has since removed) is not served: a 503 page without the content, and
    the click is not counted."""
    other = other_shop(app, shop)
    owner = store_id(shop)
    put_file(app, f"stores/{owner}/secret.zip", b"the owner's secret")
    put_file(app, f"watermarked/{owner}/1/1/pro.zip", b"a buyer's key")
    put_file(app, "common/pro.zip", b"common file")
    link = first_link(other, 8103, "common/pro.zip")
    for key in [f"stores/{owner}/secret.zip", f"watermarked/{owner}/1/1/pro.zip"]:
        with app.app_context():
            db.session.execute(update(ProductFile).values(object_key=key))
            db.session.commit()
        response = other.client.get(link)
        assert response.status_code == 503, key
        served = response.get_data()
        assert b"the owner's secret" not in served and b"a buyer's key" not in served
        assert response.mimetype == "text/html"
    assert other.order(8103)["downloads"][0]["downloads_left"] == 5


def test_releases_cannot_name_or_reach_another_stores_area(app: Flask, shop: WebhookSender) -> None:
    """A release naming another store's area is refused; one recorded there anyway is not
    downloadable through the update URL."""
    other = other_shop(app, shop)
    owner = store_id(shop)
    put_file(app, f"stores/{owner}/plugin-2.0.zip", b"the owner's release")
    key = issue_key(other)
    release = {
        "version": "2.0.0",
        "object_key": f"stores/{owner}/plugin-2.0.zip",
        "sha256": hashlib.sha256(b"x").hexdigest(),
        "size": 10,
        "published_at": (dt.datetime(2026, 11, 1, tzinfo=dt.UTC) + SHIFT).isoformat(),
    }
    refused = other.admin("POST", "/products/501/releases", release)
    assert refused.status_code == 422
    published = other.admin(
        "POST", "/products/501/releases", {**release, "object_key": "common/plugin-2.0.zip"}
    )
    assert published.status_code == 201
    with app.app_context():
        db.session.execute(update(Release).values(object_key=f"stores/{owner}/plugin-2.0.zip"))
        db.session.commit()
    body = call(other.client, "update-check", {"key": key, "product": "501", "version": "1.0"})
    url = body.get_json()["update"]["download_url"].removeprefix("http://keygate.test")
    download = other.client.get(url)
    assert download.status_code == 404
    assert b"the owner's release" not in download.get_data()


def test_a_store_with_its_own_bucket_may_use_any_key_in_it(app: Flask, shop: WebhookSender) -> None:
    """The areas divide shared storage only: in a store's own R2 bucket every key is its own."""
    with app.app_context():
        store = db.session.get(Store, store_id(shop))
        assert store is not None
        check_in_reach(store, ["common/pro.zip"])
        with pytest.raises(ValidationFailed):
            check_in_reach(store, ["stores/999/pro.zip"])
        put_credentials(
            db.session,
            store,
            "r2",
            {
                "account_id": "0123456789abcdef",
                "access_key_id": "key-id",
                "secret_access_key": "very-secret",
                "bucket": "own-bucket",
            },
            actor="test",
        )
        check_in_reach(store, ["stores/999/pro.zip", "watermarked/999/1/1/x.zip"])


def test_update_check_of_a_release_in_another_stores_area_of_the_shared_bucket(
    tmp_path: Path, database_url: str
) -> None:
    """On the instance-wide bucket, a release recorded in another store's area gets no
    presigned URL: the update is still answered (signed, 200) with Keygate's own link,
    which says the file is not in storage."""
    overrides = app_overrides(
        tmp_path,
        database_url,
        r2_bucket="shared",
        r2_access_key_id="key-id",
        r2_secret_access_key="very-secret",
        r2_endpoint_url="http://127.0.0.1:9",  # presigning is local: nothing is contacted
    )
    (tmp_path / "instance" / "files").mkdir(parents=True)
    app = create_app(overrides)
    try:
        with app.app_context():
            created = create_store(db.session, "Owner", "https://owner.example")
            other_created = create_store(db.session, "Other", "https://other.example")
            db.session.commit()
        other = WebhookSender(app.test_client(), other_created)
        key = issue_key(other)
        release = {
            "version": "2.0.0",
            "object_key": "common/plugin-2.0.zip",
            "sha256": hashlib.sha256(b"x").hexdigest(),
            "size": 10,
            "published_at": (dt.datetime(2026, 11, 1, tzinfo=dt.UTC) + SHIFT).isoformat(),
        }
        assert other.admin("POST", "/products/501/releases", release).status_code == 201
        with app.app_context():
            db.session.execute(
                update(Release).values(object_key=f"stores/{created.store.id}/plugin-2.0.zip")
            )
            db.session.commit()
        answer = call(other.client, "update-check", {"key": key, "product": "501", "version": "1"})
        assert answer.status_code == 200
        assert "Keygate-Signature" in answer.headers
        url = answer.get_json()["update"]["download_url"]
        assert url.startswith("http://keygate.test/api/v1/releases/download/")
        assert other.client.get(url.removeprefix("http://keygate.test")).status_code == 404
    finally:
        app.extensions["keygate.db"].engine.dispose()


def test_a_store_may_empty_only_its_own_areas(tmp_path: Path) -> None:
    """Deleting a folder wholesale is allowed in the store's two areas only: never another
    store's, the common files, or the whole storage."""
    backend = LocalStore(tmp_path)
    for key in ("stores/5/a.pdf", "watermarked/5/1/2/a.pdf", "stores/6/b.pdf", "common.pdf"):
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(b"x")
    area = SharedArea(backend, 5)
    refused = ["", "stores/", "stores/6/", "watermarked/6/", "stores/5", "stores/5/../6/"]
    for prefix in refused:
        with pytest.raises(ValueError):
            area.delete_prefix(prefix)
    for prefix in ("stores/6/../6/", "stores//6/", "./stores/6/", "stores/6"):
        with pytest.raises(ValueError):
            backend.delete_prefix(prefix)
    (tmp_path / "stores/7").symlink_to(tmp_path / "stores/6")
    with pytest.raises(ValueError):
        backend.delete_prefix("stores/7/")
    assert area.delete_prefix("stores/5/") == 1
    assert area.delete_prefix("watermarked/5/") == 1
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["common.pdf", "stores/6/b.pdf"]


def test_a_store_may_list_only_its_own_areas(tmp_path: Path) -> None:
    """Listing (the sweep of unrecorded copies) reaches the store's two areas only, and
    embedded storage lists files: not links, nor a folder that is a link elsewhere."""
    backend = LocalStore(tmp_path)
    for key in ("watermarked/5/a/b.pdf", "watermarked/6/c.pdf", "stores/5/d.pdf", "common.pdf"):
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(b"x")
    (tmp_path / "watermarked/5/link.pdf").symlink_to(tmp_path / "watermarked/6/c.pdf")
    (tmp_path / "watermarked/5/folder").symlink_to(tmp_path / "watermarked/6")
    area = SharedArea(backend, 5)
    for prefix in ("", "watermarked/", "watermarked/6/", "stores/6/", "stores/"):
        with pytest.raises(ValueError):
            area.list_objects(prefix)
    (tmp_path / "watermarked/7").symlink_to(tmp_path / "watermarked/6")
    with pytest.raises(ValueError):
        list(backend.list_objects("watermarked/7/"))
    assert [item.key for item in area.list_objects("watermarked/5/")] == ["watermarked/5/a/b.pdf"]
    assert [item.key for item in area.list_objects("stores/5/")] == ["stores/5/d.pdf"]
