"""Links given to buyers and products name their rows without showing them: a buyer's own
links say nothing of how many orders, downloads or releases the store has, and links mailed
before keep working."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
from flask import Flask
from itsdangerous import Signer, TimestampSigner, URLSafeSerializer, URLSafeTimedSerializer
from sqlalchemy import select

from connector.db import db
from connector.downloads.watermark import read_fingerprints
from connector.models import DownloadGrant, Order, Release, WatermarkCopy
from connector.tokens import (
    ACTIVATION,
    COPY_KEY,
    DOWNLOAD,
    FINGERPRINT,
    PORTAL,
    RELEASE,
    download_token,
    fingerprint_token,
    grant_id_from_fingerprint,
    portal_url,
    sealed_id,
    sealed_id_token,
)
from tests.conftest import SECRET_KEY
from tests.factories import SHIFT, WebhookSender, line_item, wc_order
from tests.functional.test_downloads import get, put_file
from tests.licensing_helpers import call, issue_key

PAID = dt.datetime(2026, 11, 20, 11, 59, 30, tzinfo=dt.UTC) + SHIFT  # wc_order's date_paid
BASE = "http://keygate.test"


def parts(token: str) -> list[bytes]:
    """Each dot-separated part of a token, base64-decoded (what anyone can read of it)."""
    return [base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)) for part in token.split(".")]


def assert_shows_no_id(token: str, row_id: int, field: str) -> None:
    for part in parts(token):
        assert f'"{field}"'.encode() not in part, token
        assert f":{row_id}}}".encode() not in part, token
        assert row_id.to_bytes(8, "big") not in part, token
        with pytest.raises(ValueError):  # JSONDecodeError, UnicodeDecodeError
            json.loads(part)
    assert len(parts(token)[0]) == 16  # one AES block, whatever the id


def sold(app: Flask, shop: WebhookSender, order_id: int, quantity: int = 2) -> dict[str, object]:
    put_file(app, "products/501/manual.pdf", b"%PDF-1.4 manual")
    shop.configure(501)
    response = shop.deliver(wc_order(order_id, "processing", [line_item(501, quantity=quantity)]))
    assert response.status_code == 200
    return shop.order(order_id)


def rows(app: Flask, shop_order_id: int) -> tuple[int, list[int]]:
    """The order's row id and its grants' row ids, in link order."""
    with app.app_context():
        order = db.session.execute(
            select(Order).where(Order.shop_order_id == str(shop_order_id))
        ).scalar_one()
        grants = db.session.scalars(
            select(DownloadGrant.id).where(DownloadGrant.order_id == order.id)
        ).all()
        return order.id, sorted(grants)


def tokens_of(body: dict[str, object]) -> tuple[str, list[str]]:
    portal = str(body["portal_url"]).removeprefix(f"{BASE}/my/")
    downloads = body["downloads"]
    assert isinstance(downloads, list)
    return portal, [str(d["link"]).removeprefix(f"{BASE}/d/") for d in downloads]


def test_download_and_portal_links_show_no_ids(app: Flask, shop: WebhookSender) -> None:
    """A buyer decoding their links finds neither their order's nor their grants' ids."""
    body = sold(app, shop, 7301)
    order_id, grant_ids = rows(app, 7301)
    portal, downloads = tokens_of(body)
    assert_shows_no_id(portal, order_id, "o")
    assert len(downloads) == len(grant_ids) == 2
    for token in downloads:
        for grant_id in grant_ids:
            assert_shows_no_id(token, grant_id, "g")
    # Short enough for mail clients to keep whole (the readable ones were 40 to 50).
    assert len(downloads[0]) <= 50 and len(portal) <= 60
    # Every link works.
    assert get(shop.client, f"/my/{portal}").status_code == 200
    for token in downloads:
        response = get(shop.client, f"/d/{token}")
        assert response.status_code == 200
        assert response.data == b"%PDF-1.4 manual"


def test_two_grants_links_differ_unpredictably_and_each_stays_the_same(
    app: Flask, shop: WebhookSender
) -> None:
    """Grants made one after the other get unrelated tokens (nothing to count by), and a
    grant's link is the same every time it is shown."""
    body = sold(app, shop, 7302)
    first, second = tokens_of(body)[1]
    a, b = parts(first)[0], parts(second)[0]
    differing_bits = sum(bin(x ^ y).count("1") for x, y in zip(a, b, strict=True))
    assert differing_bits >= 24  # about 64 of 128 for unrelated blocks, 1 or 2 for 1 and 2
    portal, downloads = tokens_of(body)
    portal_again, downloads_again = tokens_of(shop.order(7302))
    assert downloads_again == downloads
    # A portal link is timed: made in another second, only its sealed id is the same.
    assert parts(portal_again)[0] == parts(portal)[0]


def test_each_purpose_seals_ids_under_its_own_key(app: Flask) -> None:
    """The same row id sealed for two purposes gives two unrelated blocks: a buyer's
    download link and the fingerprint in their copy (one grant) share nothing, neither
    names the folder of that copy in storage, and an order's portal link says nothing of
    which seat has the same id."""
    with app.test_request_context():
        for row_id in (1, 7306):
            blocks = [
                parts(download_token(row_id))[0],
                parts(fingerprint_token(row_id))[0],
                bytes.fromhex(sealed_id(COPY_KEY, row_id)),
                parts(sealed_id_token(PORTAL, row_id, timed=True))[0],
                parts(sealed_id_token(ACTIVATION, row_id))[0],
                parts(sealed_id_token(RELEASE, row_id, timed=True))[0],
            ]
            assert all(len(block) == 16 for block in blocks)
            assert len(set(blocks)) == len(blocks), row_id


def test_links_mailed_before_ids_were_sealed_keep_working(app: Flask, shop: WebhookSender) -> None:
    """A download link and a portal link made the old way (the id readable) still work."""
    sold(app, shop, 7303, quantity=1)
    order_id, [grant_id] = rows(app, 7303)
    old_download = URLSafeSerializer(SECRET_KEY, salt=DOWNLOAD).dumps({"g": grant_id})
    response = get(shop.client, f"/d/{old_download}")
    assert response.status_code == 200
    assert response.data == b"%PDF-1.4 manual"
    old_portal = URLSafeTimedSerializer(SECRET_KEY, salt=PORTAL).dumps({"o": order_id})
    page = shop.client.get(f"/my/{old_portal}")
    assert page.status_code == 200
    assert shop.order(7303)["licenses"][0]["key"] in page.get_data(as_text=True)
    # A fingerprint stamped in a copy before still names its grant.
    old_fingerprint = URLSafeSerializer(SECRET_KEY, salt=FINGERPRINT).dumps({"g": grant_id})
    with app.app_context():
        assert grant_id_from_fingerprint(old_fingerprint) == grant_id


def test_tampered_or_foreign_tokens_are_404(app: Flask, shop: WebhookSender) -> None:
    """A changed character, another secret key, another purpose's token, or a signed value
    that is no sealed id: 404, never a 500 and never another row."""
    sold(app, shop, 7304, quantity=1)
    order_id, [grant_id] = rows(app, 7304)
    with app.test_request_context():
        download = sealed_id_token(DOWNLOAD, grant_id)
        portal = sealed_id_token(PORTAL, order_id, timed=True)
    other = Flask("another-keygate")
    other.config["SECRET_KEY"] = "another-secret-" + "y" * 40
    with other.app_context():
        foreign_download = sealed_id_token(DOWNLOAD, grant_id)
        foreign_portal = sealed_id_token(PORTAL, order_id, timed=True)

    def flipped(token: str, at: int) -> str:
        return token[:at] + ("A" if token[at] != "A" else "B") + token[at + 1 :]

    not_ids = [
        Signer(SECRET_KEY, salt=f"{DOWNLOAD}.sealed").sign("abc").decode(),
        # A 16-byte block that opens to no row id (a number far past 64 bits).
        Signer(SECRET_KEY, salt=f"{DOWNLOAD}.sealed").sign("A" * 22).decode(),
    ]
    for path in [
        f"/d/{flipped(download, 3)}",
        f"/d/{flipped(download, len(download) - 2)}",
        f"/d/{foreign_download}",
        f"/d/{portal}",
        *(f"/d/{token}" for token in not_ids),
        f"/my/{flipped(portal, 3)}",
        f"/my/{foreign_portal}",
        f"/my/{download}",
    ]:
        assert get(shop.client, path).status_code == 404, path


def test_timed_tokens_still_expire(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A portal link past its days answers the expired page (410), not the order; so does
    one made the old way (the id readable) past its days."""
    sold(app, shop, 7305, quantity=1)
    order_id, _ = rows(app, 7305)
    days = app.extensions["keygate.settings"].portal_link_days
    now = time.time()
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(now) - days * 86400 - 60)
    with app.test_request_context():
        old = portal_url(order_id).removeprefix(BASE)
    old_readable = URLSafeTimedSerializer(SECRET_KEY, salt=PORTAL).dumps({"o": order_id})
    monkeypatch.undo()
    for stale in (old, f"/my/{old_readable}"):
        page = shop.client.get(stale)
        assert page.status_code == 410, stale
        assert "Email me a fresh link" in page.get_data(as_text=True)


def publish(shop: WebhookSender, version: str) -> None:
    body = {
        "version": version,
        "object_key": f"releases/plugin-{version}.zip",
        "sha256": "0" * 64,
        "size": 5,
        "published_at": (PAID + dt.timedelta(days=1)).isoformat(),
    }
    response = shop.admin("POST", "/products/501/releases", body)
    assert response.status_code == 201, response.get_data(as_text=True)


def test_release_links_show_no_ids_and_older_ones_work_while_they_last(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The download URL update-check gives a product names its release unreadably; one made
    the old way still works for its few minutes; both expire."""
    key = issue_key(shop, update_days=5)
    publish(shop, "1.1.0")
    put_file(app, "releases/plugin-1.1.0.zip", b"1.1.0")
    asked = {"key": key, "product": "501", "version": "1.0.0"}
    url = call(shop.client, "update-check", asked).get_json()["update"]["download_url"]
    token = url.removeprefix(f"{BASE}/api/v1/releases/download/")
    with app.app_context():
        release_id = db.session.execute(select(Release.id)).scalar_one()
    assert_shows_no_id(token, release_id, "r")
    assert get(shop.client, url.removeprefix(BASE)).data == b"1.1.0"

    old = URLSafeTimedSerializer(SECRET_KEY, salt=RELEASE).dumps({"r": release_id})
    assert get(shop.client, f"/api/v1/releases/download/{old}").data == b"1.1.0"

    ttl = app.extensions["keygate.settings"].download_url_ttl
    now = time.time()
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(now) - ttl - 5)
    with app.test_request_context():
        expired = sealed_id_token(RELEASE, release_id, timed=True)
    expired_old = URLSafeTimedSerializer(SECRET_KEY, salt=RELEASE).dumps({"r": release_id})
    monkeypatch.undo()
    for stale in (expired, expired_old):
        assert get(shop.client, f"/api/v1/releases/download/{stale}").status_code == 410


def _sell_a_stamped_zip(app: Flask, shop: WebhookSender) -> None:
    """Product 501 sells a ZIP stamped for each buyer."""
    archive = BytesIO()
    with zipfile.ZipFile(archive, "w") as plugin:
        plugin.writestr("plugin/plugin.php", "<?php")
    put_file(app, "zips/plugin.zip", archive.getvalue())
    files = [{"object_key": "zips/plugin.zip", "filename": "plugin.zip", "watermark": "zip"}]
    shop.configure(501, files=files)


def test_a_stamped_copys_fingerprint_shows_no_grant_id(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """The fingerprint hidden in a buyer's copy is as unreadable as their link, and still
    names the buyer when the copy leaks."""
    _sell_a_stamped_zip(app, shop)
    shop.deliver(wc_order(7306, "processing", [line_item(501)]))
    [download] = shop.order(7306)["downloads"]
    copy = get(shop.client, download["link"].removeprefix(BASE))
    assert copy.status_code == 200
    (tmp_path / "copy.zip").write_bytes(copy.data)
    [fingerprint] = set(read_fingerprints(tmp_path / "copy.zip"))
    _, [grant_id] = rows(app, 7306)
    assert_shows_no_id(fingerprint, grant_id, "g")
    with app.app_context():
        assert grant_id_from_fingerprint(fingerprint) == grant_id


def test_a_copy_stamped_before_under_readable_ids_is_still_served(
    app: Flask, shop: WebhookSender
) -> None:
    """A copy stored under ``<order id>/<grant id>/`` (stamped before its folder was sealed)
    is served from there, not stamped again for nothing."""
    _sell_a_stamped_zip(app, shop)
    shop.deliver(wc_order(7307, "processing", [line_item(501)]))
    [download] = shop.order(7307)["downloads"]
    first = get(shop.client, download["link"].removeprefix(BASE))
    assert first.status_code == 200
    with app.app_context():
        copy = db.session.execute(select(WatermarkCopy)).scalar_one()
        grant = db.session.get(DownloadGrant, copy.grant_id)
        assert grant is not None and copy.object_key is not None
        store_id, order_id = grant.store_id, grant.order_id
        folders = copy.object_key.removeprefix(f"watermarked/{store_id}/").split("/")
        assert len(folders) == 2 and not {str(grant.id), str(order_id)} & set(folders)
        old_key = f"watermarked/{store_id}/{order_id}/{grant.id}/plugin.zip"
        storage = Path(app.extensions["keygate.settings"].storage_dir)
        (storage / old_key).parent.mkdir(parents=True)
        (storage / copy.object_key).rename(storage / old_key)
        copy.object_key = grant.watermarked_key = old_key
        db.session.commit()
    again = get(shop.client, download["link"].removeprefix(BASE))
    assert again.status_code == 200
    assert again.data == first.data
    with app.app_context():
        assert db.session.execute(select(WatermarkCopy.object_key)).scalar_one() == old_key
