"""The downloads log and stamped copies in export, erasure and retention."""

from __future__ import annotations

import datetime as dt
import io
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from pypdf import PdfReader
from sqlalchemy import insert, select, text, update

import connector.downloads.service as service
from connector.db import db, transaction, utcnow
from connector.downloads.watermark import STAMP_VERSION
from connector.jobs import run_pending, schedule_periodic
from connector.models import DownloadEvent, DownloadGrant, Job, Order, Store, WatermarkCopy
from connector.privacy.service import erase_customer, erase_order_buyer, purge_expired_records
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_downloads import (
    events,
    get,
    link_path,
    make_pdf,
    paid_order,
    put_file,
    stamps_counted,
)

EMAIL = "jurgen@example.org"


def stamped_order(app: Flask, shop: WebhookSender, order_id: int) -> tuple[str, Path]:
    storage = Path(app.extensions["keygate.settings"].storage_dir)
    make_pdf(storage / "books/guide.pdf")
    downloads = paid_order(
        shop,
        order_id,
        [{"object_key": "books/guide.pdf", "filename": "guide.pdf", "watermark": "pdf"}],
    )
    run_pending(app)
    path = link_path(downloads[0])
    assert get(shop.client, path, environ_base={"REMOTE_ADDR": "198.51.100.9"}).status_code == 200
    with app.app_context():
        copy = db.session.execute(select(WatermarkCopy)).scalar_one()
        assert copy.object_key is not None
        return path, storage / copy.object_key


def test_export_lists_the_customers_clicks(app: Flask, shop: WebhookSender) -> None:
    stamped_order(app, shop, 7901)
    exported = shop.admin("GET", f"/customers/{EMAIL}/export").get_json()
    [click] = exported["download_log"]
    assert (click["outcome"], click["served"]) == ("served", "watermarked")


def test_export_has_the_clicks_ip_hash_and_the_stamped_copies(
    app: Flask, shop: WebhookSender
) -> None:
    """The export shows the IP hash kept for each click and every watermarked copy made for
    the buyer, with the fingerprint hidden in it: both are stored about them."""
    stamped_order(app, shop, 7904)
    with app.app_context():
        stored_hash = db.session.execute(select(DownloadEvent.ip_hash)).scalar_one()
        copy = db.session.execute(select(WatermarkCopy)).scalar_one()
    exported = shop.admin("GET", f"/customers/{EMAIL}/export").get_json()
    [click] = exported["download_log"]
    assert stored_hash is not None and click["ip_hash"] == stored_hash
    [exported_copy] = exported["watermarked_copies"]
    assert exported_copy["filename"] == "guide.pdf"
    assert (exported_copy["status"], exported_copy["kind"]) == (copy.status, copy.kind)
    assert copy.fingerprint is not None and exported_copy["fingerprint"] == copy.fingerprint
    assert exported["download_extensions"] == []


def test_erasure_forgets_ips_agents_and_stamped_copies(app: Flask, shop: WebhookSender) -> None:
    path, copy_file = stamped_order(app, shop, 7902)
    assert copy_file.is_file()
    assert shop.admin("DELETE", f"/customers/{EMAIL}").status_code == 200
    run_pending(app)  # the job deletes the stamped copy from storage
    assert not copy_file.exists()
    with app.app_context():
        event = db.session.execute(select(DownloadEvent)).scalar_one()
        assert (event.ip_hash, event.user_agent) == (None, None)
        assert db.session.execute(select(WatermarkCopy)).scalar_one_or_none() is None
        assert db.session.execute(select(DownloadGrant.watermarked_key)).scalar_one() is None
    # The link still works (the buyer paid); the new copy carries no erased name.
    again = get(shop.client, path)
    assert again.status_code == 200
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(again.data)).pages)
    assert "erased" in text
    assert "Jürgen" not in text and EMAIL not in text


def test_old_clicks_are_purged(app: Flask, shop: WebhookSender) -> None:
    put_file(app, "files/a.bin", b"x")
    downloads = paid_order(shop, 7903, [{"object_key": "files/a.bin", "filename": "a.bin"}])
    get(shop.client, link_path(downloads[0]))
    get(shop.client, link_path(downloads[0]))
    with app.app_context(), transaction() as session:
        first = (
            session.execute(select(DownloadEvent.id).order_by(DownloadEvent.id)).scalars().first()
        )
        session.execute(
            update(DownloadEvent)
            .where(DownloadEvent.id == first)
            .values(created_at=utcnow() - dt.timedelta(days=400))
        )
    with app.app_context(), transaction() as session:
        assert purge_expired_records(session)["download_events"] == 1
        assert len(session.execute(select(DownloadEvent)).all()) == 1


def test_an_erasure_while_a_copy_is_stamped_leaves_no_name_behind(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """The owner erases the buyer while their copy is being stamped on the spot: the copy with
    their name is thrown away (not recorded, not in storage, deleted with no transaction
    open); the next click stamps anew."""
    from connector.downloads.storage import LocalStore
    from tests.functional.test_downloads import held_elsewhere

    held = held_elsewhere(database_url)
    deletes: list[bool] = []
    real_delete = LocalStore.delete

    def delete(self: LocalStore, key: str) -> None:
        deletes.append(held())
        real_delete(self, key)

    monkeypatch.setattr(LocalStore, "delete", delete)
    storage = Path(app.extensions["keygate.settings"].storage_dir)
    make_pdf(storage / "books/guide.pdf")
    downloads = paid_order(
        shop, 7601, [{"object_key": "books/guide.pdf", "filename": "guide.pdf", "watermark": "pdf"}]
    )
    stamp_pdf = service.stamp_pdf
    erased: list[int] = []

    def stamp_while_erasing(source: Path, target: Path, stamp: Any) -> None:
        def erase() -> None:
            answer = app.test_client().delete(
                f"/api/v1/admin/customers/{EMAIL}",
                headers={"Authorization": f"Bearer {shop.store.api_token}"},
            )
            erased.append(answer.status_code)

        eraser = threading.Thread(target=erase)
        eraser.start()
        eraser.join()
        stamp_pdf(source, target, stamp)

    monkeypatch.setattr(service, "stamp_pdf", stamp_while_erasing)
    path = link_path(downloads[0])
    assert get(shop.client, path).status_code == 503
    assert erased == [200]
    assert deletes == [False]
    monkeypatch.setattr(service, "stamp_pdf", stamp_pdf)
    with app.app_context():
        assert db.session.execute(select(WatermarkCopy)).scalar_one_or_none() is None
    assert not [p for p in (storage / "watermarked").rglob("*") if p.is_file()]

    again = get(shop.client, path)
    assert again.status_code == 200
    text = PdfReader(io.BytesIO(again.data)).pages[0].extract_text()
    assert "Jürgen" not in text and EMAIL not in text


def test_the_daily_purge_deletes_stamped_copies_of_links_that_no_longer_give_the_file(
    app: Flask, shop: WebhookSender
) -> None:
    """A cancelled order's copy (the buyer's name and address stamped in) is not kept for
    ever; a live link's copy stays. Paid again, a click stamps a new one."""
    from tests.factories import line_item, wc_order

    path, copy_file = stamped_order(app, shop, 7906)
    item = line_item(501, line_id=int(shop.order(7906)["order"]["line_items"][0]["id"]))
    with app.app_context(), transaction() as session:
        assert purge_expired_records(session)["watermark_copies"] == 0
    run_pending(app)
    assert copy_file.is_file()  # the link still gives the file
    shop.deliver(wc_order(7906, "cancelled", [item], modified=5))
    with app.app_context(), transaction() as session:
        assert purge_expired_records(session)["watermark_copies"] == 1
    run_pending(app)  # the job deletes it from storage
    assert not copy_file.exists()
    with app.app_context():
        assert db.session.execute(select(WatermarkCopy)).scalar_one_or_none() is None
    shop.deliver(wc_order(7906, "processing", [item], modified=6))
    assert get(shop.client, path).status_code == 200
    run_pending(app)
    assert copy_file.is_file()


def test_a_copy_stamped_again_before_the_purges_delete_runs_is_kept(
    app: Flask, shop: WebhookSender
) -> None:
    """The purge queues the storage delete; the order is paid again and the link clicked
    (stamped anew at the same key) before the job runs: the job leaves that copy alone."""
    from tests.factories import line_item, wc_order

    path, copy_file = stamped_order(app, shop, 7907)
    item = line_item(501, line_id=int(shop.order(7907)["order"]["line_items"][0]["id"]))
    shop.deliver(wc_order(7907, "cancelled", [item], modified=5))
    with app.app_context(), transaction() as session:
        assert purge_expired_records(session)["watermark_copies"] == 1
    shop.deliver(wc_order(7907, "processing", [item], modified=6))
    assert get(shop.client, path).status_code == 200  # stamped again, at the same key
    run_pending(app)  # the purge's delete job
    assert copy_file.is_file()
    assert get(shop.client, path).status_code == 200


def test_zip_copies_stamped_with_the_key_are_purged_and_stamped_anew(
    app: Flask, shop: WebhookSender
) -> None:
    """ZIP copies made when LICENSE.txt still held the license key (stamp_version 1) are
    deleted by the daily purge, row and file; the next click stamps one without the key."""
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("plugin.php", "<?php")
    put_file(app, "zips/plugin.zip", archive.getvalue())
    files = [{"object_key": "zips/plugin.zip", "filename": "plugin.zip", "watermark": "zip"}]
    [download] = paid_order(shop, 7920, files)
    run_pending(app)  # the issuance's jobs: the copy is stamped
    with app.app_context(), transaction() as session:
        copy = session.execute(select(WatermarkCopy)).scalar_one()
        assert copy.stamp_version == STAMP_VERSION
        copy_file = Path(app.extensions["keygate.settings"].storage_dir) / str(copy.object_key)
        session.execute(update(WatermarkCopy).values(stamp_version=1))  # as before 0017
    with app.app_context(), transaction() as session:
        assert purge_expired_records(session)["watermark_copies"] == 1
    run_pending(app)
    assert not copy_file.exists()
    answer = get(shop.client, link_path(download))
    assert answer.status_code == 200
    with zipfile.ZipFile(io.BytesIO(answer.data)) as zipped:
        license_txt = zipped.read("LICENSE.txt").decode()
    assert shop.order(7920)["licenses"][0]["key"] not in license_txt
    with app.app_context():
        assert db.session.execute(select(WatermarkCopy.stamp_version)).scalar_one() == STAMP_VERSION


def test_a_keyed_zip_copy_whose_restamp_fails_is_still_purged(
    app: Flask, shop: WebhookSender
) -> None:
    """The owner replaced the original with a broken ZIP: stamping anew fails, and the old
    copy (with the key) keeps its version, so the purge still deletes it."""
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("plugin.php", "<?php")
    original = put_file(app, "zips/plugin.zip", archive.getvalue())
    files = [{"object_key": "zips/plugin.zip", "filename": "plugin.zip", "watermark": "zip"}]
    [download] = paid_order(shop, 7921, files)
    run_pending(app)
    with app.app_context(), transaction() as session:
        session.execute(update(WatermarkCopy).values(stamp_version=1))
    original.write_bytes(b"not a zip any more")  # a new version: the copy is stamped anew
    get(shop.client, link_path(download))
    with app.app_context():
        copy = db.session.execute(select(WatermarkCopy)).scalar_one()
        assert copy.status == "failed" and copy.stamp_version == 1
    with app.app_context(), transaction() as session:
        assert purge_expired_records(session)["watermark_copies"] == 1


def test_a_stamped_copy_gone_from_storage_is_stamped_anew_on_the_click(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The buyer's copy is recorded as made, but its file is gone from storage (deleted by
    hand, or lost to a deletion that raced a new stamp): the click stamps it anew and serves
    it, instead of answering 503 for ever."""
    path, copy_file = stamped_order(app, shop, 7908)
    made = stamps_counted(monkeypatch)
    storage = Path(app.extensions["keygate.settings"].storage_dir)
    for stamped in (storage / "watermarked").rglob("*"):
        if stamped.is_file():
            stamped.unlink()
    for _ in range(2):
        again = get(shop.client, path)
        assert again.status_code == 200
        assert "Order 7908" in PdfReader(io.BytesIO(again.data)).pages[0].extract_text()
    assert copy_file.is_file()
    assert len(made) == 1  # stamped anew once, not on every click
    assert [e.outcome for e in events(app)] == ["served"] * 3


def test_a_click_stamping_anew_while_the_erasures_delete_runs_keeps_its_copy(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The erasure queues the deletion of the buyer's copy. The job finds no copy recorded
    at its key, and before it deletes the file a click stamps the copy anew at that same key
    (the link still works) and records it: the delete takes that new file. The job sees the
    copy recorded meanwhile and stamps it again, so it is in storage and every click is
    served."""
    from connector.downloads.storage import LocalStore

    path, copy_file = stamped_order(app, shop, 7909)
    key = str(copy_file.relative_to(app.extensions["keygate.settings"].storage_dir))
    assert shop.admin("DELETE", f"/customers/{EMAIL}").status_code == 200
    real_delete = LocalStore.delete
    clicked: list[int] = []

    def click_first(self: LocalStore, deleted: str) -> None:
        if deleted == key and not clicked:  # checked, not yet deleted: a click comes in
            clicker = threading.Thread(
                target=lambda: clicked.append(get(app.test_client(), path).status_code)
            )
            clicker.start()
            clicker.join()
            assert copy_file.is_file()  # stamped anew at the same key, and recorded
        real_delete(self, deleted)

    monkeypatch.setattr(LocalStore, "delete", click_first)
    run_pending(app)  # the erasure's deletion job
    assert clicked == [200]
    assert copy_file.is_file()
    with app.app_context():
        copy = db.session.execute(select(WatermarkCopy)).scalar_one()
        assert (copy.status, copy.object_key) == ("ready", key)
    for _ in range(2):
        again = get(shop.client, path)
        assert again.status_code == 200
        text = PdfReader(io.BytesIO(again.data)).pages[0].extract_text()
        assert "Jürgen" not in text and EMAIL not in text


def test_the_daily_purge_deletes_a_copy_naming_someone_the_order_no_longer_names(
    app: Flask, shop: WebhookSender
) -> None:
    """The shop corrected the buyer's name and address on the order, and the buyer has not
    clicked since: the daily purge deletes the copy naming the wrong person (row and file);
    the next click stamps it for the right one."""
    from tests.factories import line_item, wc_order

    path, copy_file = stamped_order(app, shop, 7910)
    item = line_item(501, line_id=int(shop.order(7910)["order"]["line_items"][0]["id"]))
    with app.app_context(), transaction() as session:
        assert purge_expired_records(session)["watermark_copies"] == 0
    right = {"first_name": "Anna", "last_name": "Right", "email": "anna@example.org"}
    shop.deliver(wc_order(7910, "processing", [item], modified=60, **right))
    with app.app_context(), transaction() as session:
        assert purge_expired_records(session)["watermark_copies"] == 1
    run_pending(app)  # the job deletes it from storage
    assert not copy_file.exists()
    again = get(shop.client, path)
    assert again.status_code == 200
    text = PdfReader(io.BytesIO(again.data)).pages[0].extract_text()
    assert "Anna Right <anna@example.org>" in text and EMAIL not in text


def _copies_in_storage(app: Flask) -> list[str]:
    storage = Path(app.extensions["keygate.settings"].storage_dir)
    return sorted(p.name for p in (storage / "watermarked").rglob("*") if p.is_file())


def test_a_copy_stamped_under_a_renamed_file_deletes_the_old_one(
    app: Flask, shop: WebhookSender
) -> None:
    """A copy's key holds the file's name. The owner renames the file and uploads a new
    edition: the next click stamps a new copy under the new name, and the old copy (the
    buyer's name in it, recorded nowhere any more) is deleted from storage with it, so the
    erasure leaves no copy naming the buyer behind."""
    path, first_copy = stamped_order(app, shop, 7911)
    shop.configure(
        501,
        files=[{"object_key": "books/guide.pdf", "filename": "guide-2nd.pdf", "watermark": "pdf"}],
    )
    storage = Path(app.extensions["keygate.settings"].storage_dir)
    make_pdf(storage / "books/guide.pdf", pages=4)  # the owner uploads a new edition
    assert get(shop.client, path).status_code == 200  # stamped anew, under the new name
    run_pending(app)  # the old copy's deletion, queued with the new one's record
    assert not first_copy.exists()
    assert _copies_in_storage(app) == ["guide-2nd.pdf"]
    assert get(shop.client, path).status_code == 200  # the new copy is kept and served
    assert shop.admin("DELETE", f"/customers/{EMAIL}").status_code == 200
    run_pending(app)
    assert _copies_in_storage(app) == []


def test_a_copy_thrown_away_under_a_renamed_file_takes_the_old_one_too(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner renamed the file and the shop corrects the buyer's name while the copy is
    being stamped under the new name: the new copy is thrown away, and so is the old one
    (under the old name, naming the old buyer), whose record goes with it."""
    from tests.factories import line_item, wc_order

    path, first_copy = stamped_order(app, shop, 7912)
    item = line_item(501, line_id=int(shop.order(7912)["order"]["line_items"][0]["id"]))
    shop.configure(
        501,
        files=[{"object_key": "books/guide.pdf", "filename": "guide-2nd.pdf", "watermark": "pdf"}],
    )
    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf", pages=4)
    stamp_pdf = service.stamp_pdf
    corrected: list[int] = []

    def stamp_while_the_shop_corrects(source: Path, target: Path, stamp: Any) -> None:
        right = {"first_name": "Anna", "last_name": "Right", "email": "anna@example.org"}
        corrector = threading.Thread(
            target=lambda: corrected.append(
                shop.deliver(wc_order(7912, "processing", [item], modified=60, **right)).status_code
            )
        )
        corrector.start()
        corrector.join()
        stamp_pdf(source, target, stamp)

    monkeypatch.setattr(service, "stamp_pdf", stamp_while_the_shop_corrects)
    assert get(shop.client, path).status_code == 503
    assert corrected == [200]
    monkeypatch.setattr(service, "stamp_pdf", stamp_pdf)
    run_pending(app)
    with app.app_context():
        assert db.session.execute(select(WatermarkCopy)).scalar_one_or_none() is None
    assert not first_copy.exists()
    assert _copies_in_storage(app) == []


@pytest.mark.parametrize("watermark", ["none", "zip"])
def test_the_daily_purge_deletes_a_copy_the_files_watermark_no_longer_makes(
    app: Flask, shop: WebhookSender, watermark: str
) -> None:
    """The owner turns watermarking off for the file (its links serve the original) or
    changes its kind (its links stamp a new copy on their next click): the copy made
    before is never served again, so the daily purge deletes it (row and file), even while
    the link lives on; a copy is kept only while it can be downloaded."""
    path, copy_file = stamped_order(app, shop, 7913)
    shop.configure(
        501,
        files=[{"object_key": "books/guide.pdf", "filename": "guide.pdf", "watermark": watermark}],
    )
    if watermark == "none":
        original = Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf"
        served = get(shop.client, path)
        assert served.status_code == 200 and served.data == original.read_bytes()
    with app.app_context(), transaction() as session:
        assert purge_expired_records(session)["watermark_copies"] == 1
    run_pending(app)
    assert not copy_file.exists()
    with app.app_context():
        assert db.session.execute(select(WatermarkCopy)).scalar_one_or_none() is None
        assert db.session.execute(select(DownloadGrant.watermarked_key)).scalar_one() is None


def test_the_daily_purge_keeps_a_copy_its_file_still_serves(
    app: Flask, shop: WebhookSender
) -> None:
    """The owner saves the product again with the same watermark (a new file name even): the
    buyer's copy still serves the link, so the purge keeps it."""
    path, copy_file = stamped_order(app, shop, 7914)
    shop.configure(
        501,
        files=[{"object_key": "books/guide.pdf", "filename": "guide-2nd.pdf", "watermark": "pdf"}],
    )
    with app.app_context(), transaction() as session:
        assert purge_expired_records(session)["watermark_copies"] == 0
    run_pending(app)
    assert copy_file.is_file()
    assert get(shop.client, path).status_code == 200
    assert copy_file.is_file()  # served as it was: the original did not change


@pytest.mark.parametrize("erasure", ["customer", "order_buyer"])
def test_an_erasure_does_not_wait_for_a_click_logged_under_its_order(
    app: Flask, shop: WebhookSender, database_url: str, erasure: str
) -> None:
    """PostgreSQL: a click counts its grant (the grant's row locked) and logs under the
    order, a foreign-key check that holds ``FOR KEY SHARE`` on the order's row until the
    click commits. An erasure changes no key of the order and locks it ``FOR NO KEY
    UPDATE``, which that does not block: were it ``FOR UPDATE``, the erasure would wait for
    the click, and the click for the erasure wherever the erasure holds the grant (a
    deadlock). Here a click holds both locks, uncommitted; the erasure must not wait."""
    if not database_url.startswith("postgresql"):
        pytest.skip("row lock modes are PostgreSQL's")
    email = EMAIL if erasure == "customer" else ""
    shop.configure(501)
    put_file(app, "products/501/manual.pdf", b"%PDF-1.4 manual")
    delivered = shop.deliver(wc_order(7950, "processing", [line_item(501)], email=email))
    assert delivered.status_code == 200
    with app.app_context():
        order = db.session.execute(select(Order).where(Order.shop_order_id == "7950")).scalar_one()
        store = db.session.get(Store, order.store_id)
        grant = db.session.execute(select(DownloadGrant)).scalar_one()
        order_id, grant_id, store_id = order.id, grant.id, order.store_id
        db.session.commit()
        with db.engine.connect() as clicking:
            clicking.execute(
                update(DownloadGrant)
                .where(DownloadGrant.id == grant_id)
                .values(download_count=DownloadGrant.download_count + 1)
            )
            clicking.execute(
                insert(DownloadEvent).values(
                    store_id=store_id,
                    order_id=order_id,
                    grant_id=grant_id,
                    outcome="served",
                    created_at=utcnow(),
                )
            )
            db.session.execute(text("SET LOCAL lock_timeout = '1s'"))
            assert store is not None
            if erasure == "customer":
                erase_customer(db.session, store, EMAIL, actor="api")
            else:
                erase_order_buyer(
                    db.session, store, db.session.get_one(Order, order_id), actor="api"
                )
            db.session.commit()
            clicking.commit()
        assert db.session.get_one(Order, order_id).is_erased


def test_the_daily_sweep_deletes_stamped_copies_no_record_refers_to(
    app: Flask, shop: WebhookSender, caplog: pytest.LogCaptureFixture
) -> None:
    """A stamped copy in storage with no row (a restored backup's files copied after its
    database, a process killed between upload and record, a half-written upload) is
    reached by no erasure, refund or purge: the daily sweep deletes it once a day old, and
    logs how many, never a key or a name. A copy its row records stays, however old, and so
    does a young one (its row may be about to be committed), and the owner's files."""
    path, copy_file = stamped_order(app, shop, 7960)
    storage = Path(app.extensions["keygate.settings"].storage_dir)
    area = storage / f"watermarked/{shop.store.store.id}"
    restored, partial, young = (
        area / "restored/guide.pdf",
        area / "killed/.guide.pdf.0123abcd.partial",
        area / "young/guide.pdf",
    )
    owners = storage / f"stores/{shop.store.store.id}/old.pdf"
    for unrecorded in (restored, partial, young, owners):
        unrecorded.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(copy_file, unrecorded)
    two_days_ago = time.time() - 2 * 86400
    for old in (restored, partial, copy_file, owners, storage / "books/guide.pdf"):
        os.utime(old, (two_days_ago, two_days_ago))
    caplog.set_level(logging.INFO, logger="connector.downloads.sweep")
    schedule_periodic(app)
    run_pending(app)
    assert not restored.exists() and not partial.exists()
    assert copy_file.is_file() and young.is_file() and owners.is_file()
    assert (storage / "books/guide.pdf").is_file()
    assert "2 unrecorded stamped copies queued for deletion" in caplog.text
    for secret in ("guide", "restored", "Jürgen", EMAIL, "watermarked/"):
        assert secret not in caplog.text
    with app.app_context():
        jobs = db.session.scalars(select(Job).where(Job.kind == "downloads.sweep_copies")).all()
        assert [job.status for job in jobs] == ["done"]
    assert get(shop.client, path).status_code == 200  # the recorded copy, still served


def test_the_daily_purge_names_stale_copies_a_batch_at_a_time(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many copies name someone their order no longer names (all of them, once how a
    buyer is hashed changes), the purge deletes them in statements of a bounded size: one
    statement naming them all is refused past 65535 values by PostgreSQL, and the whole
    daily purge with it, every day."""
    import connector.downloads.privacy as downloads_privacy

    monkeypatch.setattr(downloads_privacy, "COPY_BATCH", 4, raising=False)
    _thirteen_copies(app, shop, 7930)
    with app.app_context():
        db.session.execute(update(WatermarkCopy).values(buyer_hash="stamped for someone else"))
        db.session.commit()
        engine = db.engine
    largest: list[int] = []

    def note(_conn: Any, _cursor: Any, _sql: str, params: Any, _ctx: Any, many: bool) -> None:
        if not many and params:
            largest.append(len(params))

    from sqlalchemy import event

    event.listen(engine, "before_cursor_execute", note)
    try:
        with app.app_context(), transaction() as session:
            assert purge_expired_records(session)["watermark_copies"] == 13
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert max(largest) < 13, largest  # 13 copies, never all named in one statement
    with app.app_context():
        assert db.session.execute(select(WatermarkCopy)).first() is None


def test_the_daily_purge_reads_the_copies_buyers_a_batch_at_a_time(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whom each copy names was read for every copy at once (its order's name and address
    with it), before any was deleted: an old shop's copies all in memory. A batch at a time,
    each batch's stale copies deleted and committed before the next is read; copies naming
    their buyer, and those made before whom they name was recorded, stay."""
    import connector.downloads.privacy as downloads_privacy

    monkeypatch.setattr(downloads_privacy, "COPY_BATCH", 4, raising=False)
    _thirteen_copies(app, shop, 7935)
    with app.app_context():
        ids = list(db.session.scalars(select(WatermarkCopy.id).order_by(WatermarkCopy.id)))
        stale, unrecorded = ids[1:10], ids[10:]
        db.session.execute(
            update(WatermarkCopy)
            .where(WatermarkCopy.id.in_(stale))
            .values(buyer_hash="stamped for someone else")
        )
        db.session.execute(
            update(WatermarkCopy).where(WatermarkCopy.id.in_(unrecorded)).values(buyer_hash=None)
        )
        db.session.commit()
        engine = db.engine
    steps: list[str] = []
    real_hash = service.buyer_hash

    def hashed(*args: Any) -> str:
        steps.append("read")
        return real_hash(*args)

    def committed(_conn: Any) -> None:
        steps.append("commit")

    from sqlalchemy import event

    monkeypatch.setattr(service, "buyer_hash", hashed)
    event.listen(engine, "commit", committed)
    try:
        with app.app_context(), transaction() as session:
            assert purge_expired_records(session)["watermark_copies"] == len(stale)
    finally:
        event.remove(engine, "commit", committed)
    reads = "".join("r" if step == "read" else "," for step in steps).split(",")
    assert max(len(run) for run in reads) <= 4, steps  # never more than a batch at once
    with app.app_context():
        left = list(db.session.scalars(select(WatermarkCopy.id).order_by(WatermarkCopy.id)))
    assert left == [ids[0], *unrecorded]


def _thirteen_copies(app: Flask, shop: WebhookSender, order_id: int) -> None:
    """One stamped copy, and twelve more of other units of its line."""
    stamped_order(app, shop, order_id)
    with app.app_context():
        grant = db.session.execute(select(DownloadGrant)).scalar_one()
        fields = {
            c.key: getattr(grant, c.key)
            for c in DownloadGrant.__table__.columns
            if c.key not in ("id", "unit")
        }
        for unit in range(2, 14):
            extra = DownloadGrant(**fields, unit=unit)
            db.session.add(extra)
            db.session.flush()
            copy = WatermarkCopy(grant_id=extra.id, status="ready", kind="pdf")
            db.session.add(copy)
        db.session.commit()


def test_the_daily_purge_deletes_an_old_shops_copies_a_committed_batch_at_a_time(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first purge of an old shop's copies (every link of theirs long expired: 100k
    copies took 10 s on SQLite) deletes them a batch at a time, each committed: not one
    transaction holding SQLite's write lock while webhooks and activations wait."""
    import connector.downloads.privacy as downloads_privacy

    monkeypatch.setattr(downloads_privacy, "COPY_BATCH", 4, raising=False)
    _thirteen_copies(app, shop, 7940)
    with app.app_context():
        db.session.execute(update(DownloadGrant).values(expires_at=utcnow() - dt.timedelta(days=1)))
        db.session.commit()
        engine = db.engine
    steps: list[Any] = []

    def deleted(_conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
        if sql.startswith("DELETE FROM watermark_copies"):
            steps.append(len(params) if many else 1)

    def committed(_conn: Any) -> None:
        steps.append("commit")

    from sqlalchemy import event

    event.listen(engine, "before_cursor_execute", deleted)
    event.listen(engine, "commit", committed)
    try:
        with app.app_context(), transaction() as session:
            assert purge_expired_records(session)["watermark_copies"] == 13
    finally:
        event.remove(engine, "before_cursor_execute", deleted)
        event.remove(engine, "commit", committed)
    batches = [step for step in steps if step != "commit"]
    assert batches == [4, 4, 4, 1], steps
    for at, step in enumerate(steps):
        if step != "commit":
            assert steps[at + 1] == "commit", steps  # each batch committed before the next
    with app.app_context():
        assert db.session.execute(select(WatermarkCopy)).first() is None


def test_the_daily_purge_reads_the_copies_it_keeps_once_not_once_per_batch(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    """Copies of live links (kept) lie among those of ended ones. Each batch looked for the
    next copies to delete from the first copy on, reading the kept ones again: once per
    batch. Each batch now starts after the last copy of the one before."""
    import connector.downloads.privacy as downloads_privacy
    from tests.functional.test_big_tables import plan_of

    if not database_url.startswith("postgresql"):
        pytest.skip("plans are PostgreSQL's")
    monkeypatch.setattr(downloads_privacy, "COPY_BATCH", 2, raising=False)
    _thirteen_copies(app, shop, 7945)
    with app.app_context():
        ids = list(db.session.scalars(select(WatermarkCopy.id).order_by(WatermarkCopy.id)))
        ended = select(WatermarkCopy.grant_id).where(WatermarkCopy.id.in_(ids[9:]))
        db.session.execute(
            update(DownloadGrant)
            .where(DownloadGrant.id.in_(ended))
            .values(expires_at=utcnow() - dt.timedelta(days=1))
        )
        db.session.commit()
    # The copies naming someone else are read after: not this walk's.
    monkeypatch.setattr(downloads_privacy, "_naming_someone_else", lambda *_: (None, []))

    nodes = plan_of(
        app,
        lambda session: downloads_privacy.purge_download_log(session, utcnow()),
        index_scans=True,
        last_on="watermark_copies JOIN",
    )
    read = sum(
        n["Actual Loops"] * (n["Actual Rows"] + n.get("Rows Removed by Filter", 0))
        for n in nodes
        if n.get("Relation Name") == "watermark_copies"
    )
    assert read == 0, nodes
    with app.app_context():
        left = list(db.session.scalars(select(WatermarkCopy.id).order_by(WatermarkCopy.id)))
    assert left == ids[:9]
