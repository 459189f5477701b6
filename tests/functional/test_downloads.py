"""Buyers' download links on embedded storage: counted, logged, refused with friendly pages."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pikepdf
import psycopg
import pytest
from flask import Flask
from pypdf import PdfReader
from sqlalchemy import event, select, update

import connector.downloads.service as service
from connector.db import db
from connector.downloads.service import MAX_WATERMARK_ATTEMPTS, ip_hash
from connector.downloads.watermark import Stamp, WatermarkError
from connector.jobs import run_pending
from connector.models import DownloadEvent, DownloadGrant, Job, WatermarkCopy
from tests.conftest import MASTER_KEY, SECRET_KEY
from tests.factories import WebhookSender, line_item, wc_order
from tests.peers import drop_database_connections

BUYER = "Jürgen Ørsted 山田"


def make_pdf(path: Path, pages: int = 3, *, password: str | None = None) -> Path:
    pdf = pikepdf.new()
    for number in range(pages):
        pdf.add_blank_page(page_size=(595, 842))
        font = pikepdf.Dictionary(
            Type=pikepdf.Name.Font, Subtype=pikepdf.Name.Type1, BaseFont=pikepdf.Name.Helvetica
        )
        page = pdf.pages[-1]
        page.Resources = pikepdf.Dictionary(Font=pikepdf.Dictionary(F1=font))
        page.Contents = pdf.make_stream(b"BT /F1 24 Tf 72 700 Td (Chapter %d) Tj ET" % number)
    path.parent.mkdir(parents=True, exist_ok=True)
    encryption = pikepdf.Encryption(user=password, owner=password) if password else False
    pdf.save(path, encryption=encryption)
    return path


def put_file(app: Flask, key: str, data: bytes) -> Path:
    path = Path(app.extensions["keygate.settings"].storage_dir) / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def paid_order(
    shop: WebhookSender, order_id: int, files: list[dict[str, Any]], **policy: Any
) -> list[dict[str, Any]]:
    shop.configure(501, files=files, **policy)
    response = shop.deliver(wc_order(order_id, "processing", [line_item(501)]))
    assert response.status_code == 200
    downloads: list[dict[str, Any]] = shop.order(order_id)["downloads"]
    return downloads


def get(client: Any, path: str, **kwargs: Any) -> Any:
    """GET and close (a streamed file stays open until its response is closed)."""
    response = client.get(path, **kwargs)
    response.get_data()
    response.close()
    return response


def link_path(download: dict[str, Any]) -> str:
    return download["link"].removeprefix("http://keygate.test")


def events(app: Flask) -> list[DownloadEvent]:
    with app.app_context():
        return list(db.session.scalars(select(DownloadEvent).order_by(DownloadEvent.id)))


def test_link_streams_the_local_file_with_its_unicode_filename(
    app: Flask, shop: WebhookSender
) -> None:
    """Embedded mode streams the file itself, named per RFC 6266 so Unicode survives."""
    put_file(app, "files/handbuch.pdf", b"%PDF-1.4 manual bytes")
    downloads = paid_order(
        shop, 7001, [{"object_key": "files/handbuch.pdf", "filename": "Handbuch Ü 山.pdf"}]
    )
    response = get(
        shop.client, link_path(downloads[0]), environ_base={"REMOTE_ADDR": "198.51.100.9"}
    )
    assert response.status_code == 200
    assert response.data == b"%PDF-1.4 manual bytes"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''Handbuch%20%C3%9C%20%E5%B1%B1.pdf" in disposition
    # What is not ASCII is "_" for a client that reads only filename=, as on R2: never
    # dropped ("山.pdf" would become ".pdf", a hidden file).
    assert 'filename="Handbuch _ _.pdf"' in disposition
    assert response.headers["Cache-Control"] == "no-store"

    [event] = events(app)
    assert (event.outcome, event.served) == ("served", "original")
    with app.app_context():
        assert event.ip_hash == ip_hash(event.store_id, "198.51.100.9")  # the store's hash
    assert "198.51.100.9" not in (event.ip_hash or "")
    assert event.user_agent is not None


def test_range_requests_resume_local_downloads(app: Flask, shop: WebhookSender) -> None:
    """A Range request gets 206 and just the asked-for bytes."""
    put_file(app, "files/big.bin", bytes(range(256)) * 40)
    downloads = paid_order(shop, 7002, [{"object_key": "files/big.bin", "filename": "big.bin"}])
    response = get(shop.client, link_path(downloads[0]), headers={"Range": "bytes=100-199"})
    assert response.status_code == 206
    assert response.data == (bytes(range(256)) * 40)[100:200]


def test_a_download_resumed_from_the_same_address_costs_nothing(
    app: Flask, shop: WebhookSender
) -> None:
    """A dropped connection, resumed (Range past byte 0) by the address that was served
    within the hour, is free even at the limit; another address, a Range from byte 0, an
    hour later or a revoked link is a click like any other."""
    data = bytes(range(256)) * 40
    put_file(app, "files/big.bin", data)
    downloads = paid_order(
        shop, 7013, [{"object_key": "files/big.bin", "filename": "big.bin"}], download_limit=1
    )
    path = link_path(downloads[0])
    buyer = {"REMOTE_ADDR": "203.0.113.7"}
    assert get(shop.client, path, environ_base=buyer).status_code == 200
    resumed = get(shop.client, path, headers={"Range": "bytes=4000-"}, environ_base=buyer)
    assert (resumed.status_code, resumed.data) == (206, data[4000:])
    assert shop.order(7013)["downloads"][0]["downloads_left"] == 0  # the resume cost nothing
    other = {"REMOTE_ADDR": "198.51.100.8"}
    assert (
        get(shop.client, path, headers={"Range": "bytes=4000-"}, environ_base=other).status_code
        == 429
    )
    assert (
        get(shop.client, path, headers={"Range": "bytes=0-"}, environ_base=buyer).status_code == 429
    )
    assert [e.outcome for e in events(app)] == ["served", "resumed", "limit", "limit"]
    with app.app_context():
        db.session.execute(
            update(DownloadEvent).values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
        )
        db.session.commit()
    late = get(shop.client, path, headers={"Range": "bytes=4000-"}, environ_base=buyer)
    assert late.status_code == 429
    with app.app_context():
        db.session.execute(update(DownloadEvent).values(created_at=dt.datetime.now(dt.UTC)))
        db.session.execute(update(DownloadGrant).values(revoked_at=dt.datetime.now(dt.UTC)))
        db.session.commit()
    revoked = get(shop.client, path, headers={"Range": "bytes=4000-"}, environ_base=buyer)
    assert revoked.status_code == 410


def test_resumes_of_one_download_are_bounded(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume may hand out the whole file (R2, a stale If-Range): one download allows a
    bounded number of them, then a Range request counts like any click."""
    monkeypatch.setattr("connector.downloads.service.RESUMES_PER_DOWNLOAD", 2)
    put_file(app, "files/big.bin", bytes(range(256)) * 40)
    downloads = paid_order(
        shop, 7014, [{"object_key": "files/big.bin", "filename": "big.bin"}], download_limit=1
    )
    path, buyer = link_path(downloads[0]), {"REMOTE_ADDR": "203.0.113.9"}
    assert get(shop.client, path, environ_base=buyer).status_code == 200
    statuses = [
        get(shop.client, path, headers={"Range": "bytes=10-"}, environ_base=buyer).status_code
        for _ in range(3)
    ]
    assert statuses == [206, 206, 429]


def test_tampered_token_is_a_404_page_not_json(app: Flask, shop: WebhookSender) -> None:
    """A link with one character changed answers a friendly 404 page."""
    put_file(app, "files/a.pdf", b"x")
    downloads = paid_order(shop, 7003, [{"object_key": "files/a.pdf", "filename": "a.pdf"}])
    path = link_path(downloads[0])
    tampered = path[:-1] + ("A" if path[-1] != "A" else "B")
    response = get(shop.client, tampered)
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "not valid" in response.get_data(as_text=True)
    assert events(app) == []


def test_expired_grant_is_410(app: Flask, shop: WebhookSender) -> None:
    """After its download period a link answers 410 and logs the refusal."""
    put_file(app, "files/a.pdf", b"x")
    downloads = paid_order(shop, 7004, [{"object_key": "files/a.pdf", "filename": "a.pdf"}])
    with app.app_context():
        db.session.execute(
            update(DownloadGrant).values(
                expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            )
        )
        db.session.commit()
    response = get(shop.client, link_path(downloads[0]))
    assert response.status_code == 410
    assert response.mimetype == "text/html"
    assert "expired" in response.get_data(as_text=True)
    assert [e.outcome for e in events(app)] == ["expired"]


def test_refund_makes_the_link_410(app: Flask, shop: WebhookSender) -> None:
    """A refunded order's links stop at once."""
    put_file(app, "files/a.pdf", b"x")
    downloads = paid_order(shop, 7005, [{"object_key": "files/a.pdf", "filename": "a.pdf"}])
    assert get(shop.client, link_path(downloads[0])).status_code == 200
    shop.deliver(wc_order(7005, "refunded", [line_item(501)], modified=60))
    response = get(shop.client, link_path(downloads[0]))
    assert response.status_code == 410
    assert "withdrawn" in response.get_data(as_text=True)
    assert [e.outcome for e in events(app)] == ["served", "revoked"]


def test_limit_reached_is_429(app: Flask, shop: WebhookSender) -> None:
    """download_limit 2: two downloads, then a 429 page; the grant counts exactly two."""
    put_file(app, "files/a.pdf", b"x")
    downloads = paid_order(
        shop, 7006, [{"object_key": "files/a.pdf", "filename": "a.pdf"}], download_limit=2
    )
    statuses = [get(shop.client, link_path(downloads[0])).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert shop.order(7006)["downloads"][0]["downloads_left"] == 0
    assert [e.outcome for e in events(app)] == ["served", "served", "limit"]


def test_a_click_is_one_read_and_one_short_write(app: Flask, shop: WebhookSender) -> None:
    """What the database sees of a served click, read off the DBAPI connections themselves.
    PostgreSQL: the read and the count-and-log statement, each in autocommit (no BEGIN or
    COMMIT round trips). SQLite: the read outside any transaction, then the count and its
    log row in one short write transaction (the write lock held for two statements)."""
    put_file(app, "files/a.pdf", b"x")
    downloads = paid_order(shop, 7010, [{"object_key": "files/a.pdf", "filename": "a.pdf"}])
    seen: list[tuple[str, bool]] = []

    def first_word(sql: str) -> str:
        return sql.split(None, 1)[0].upper()

    class RecordingCursor(psycopg.Cursor[Any]):
        def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append((first_word(str(query)), self.connection.autocommit))
            return super().execute(query, *args, **kwargs)

    def watch(dbapi_connection: Any, _record: Any) -> None:
        if postgres:
            dbapi_connection.cursor_factory = RecordingCursor
        else:
            dbapi_connection.set_trace_callback(lambda sql: seen.append((first_word(sql), False)))

    with app.app_context():
        engine = db.engine
        postgres = engine.dialect.name == "postgresql"
    engine.dispose()  # every connection from now on is watched
    event.listen(engine, "connect", watch)
    try:
        assert get(shop.client, link_path(downloads[0])).status_code == 200
    finally:
        event.remove(engine, "connect", watch)
        engine.dispose()
    statements = [entry for entry in seen if entry[0] != "PRAGMA"]
    if postgres:
        assert statements == [("SELECT", True), ("WITH", True)]
    else:
        assert [kind for kind, _ in statements] == ["SELECT", "BEGIN", "UPDATE", "INSERT", "COMMIT"]
    assert [e.outcome for e in events(app)] == ["served"]
    assert shop.order(7010)["downloads"][0]["downloads_left"] is None  # unlimited, counted
    with app.app_context():
        assert db.session.execute(select(DownloadGrant.download_count)).scalar_one() == 1


def test_a_click_right_after_a_database_restart_is_served_and_counted_once(
    app: Flask, shop: WebhookSender
) -> None:
    put_file(app, "files/a.pdf", b"x")
    downloads = paid_order(shop, 7011, [{"object_key": "files/a.pdf", "filename": "a.pdf"}])
    drop_database_connections(app)
    assert get(shop.client, link_path(downloads[0])).status_code == 200
    assert [e.outcome for e in events(app)] == ["served"]
    with app.app_context():
        assert db.session.execute(select(DownloadGrant.download_count)).scalar_one() == 1


def test_concurrent_clicks_never_exceed_the_limit(app: Flask, shop: WebhookSender) -> None:
    """Twelve simultaneous clicks on a link allowing three: exactly three are served."""
    put_file(app, "files/a.pdf", b"x")
    downloads = paid_order(
        shop, 7007, [{"object_key": "files/a.pdf", "filename": "a.pdf"}], download_limit=3
    )
    path = link_path(downloads[0])
    statuses: list[int] = []
    barrier = threading.Barrier(12)

    def click() -> None:
        client = app.test_client()
        barrier.wait()
        statuses.append(get(client, path).status_code)

    threads = [threading.Thread(target=click) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] * 3 + [429] * 9
    with app.app_context():
        grant = db.session.execute(select(DownloadGrant)).scalar_one()
        assert grant.download_count == 3


def _pdf_files() -> list[dict[str, Any]]:
    return [{"object_key": "books/guide.pdf", "filename": "guide.pdf", "watermark": "pdf"}]


def test_paid_order_watermarks_pdf_and_leak_lookup_names_the_buyer(
    app: Flask, shop: WebhookSender, tmp_path: Path, database_url: str
) -> None:
    """The job stamps every page with the buyer; qpdf accepts it; the fingerprint leads back."""
    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf", pages=4)
    downloads = paid_order(shop, 7008, _pdf_files())
    run_pending(app)
    with app.app_context():
        copy = db.session.execute(select(WatermarkCopy)).scalar_one()
        assert copy.status == "ready", copy.error
        assert copy.object_key is not None and copy.object_key.startswith("watermarked/")

    response = get(shop.client, link_path(downloads[0]))
    assert response.status_code == 200
    stamped = tmp_path / "leaked.pdf"
    stamped.write_bytes(response.data)
    check = subprocess.run(["qpdf", "--check", str(stamped)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    pages = PdfReader(stamped).pages
    assert len(pages) == 4
    for number, page in enumerate(pages):
        text = page.extract_text()
        assert f"Chapter {number}" in text
        assert f"Licensed to {BUYER} <jurgen@example.org> · Order 7008" in text
    assert [e.served for e in events(app)] == ["watermarked"]

    # In a process of its own, as an owner runs it (a second app in this process would
    # rebind the shared ``db`` engine of the test's app).
    env = {
        **os.environ,
        "KEYGATE_DATABASE_URL": database_url,
        "KEYGATE_MASTER_KEY": MASTER_KEY,
        "KEYGATE_SECRET_KEY": SECRET_KEY,
        "KEYGATE_INSTANCE_DIR": str(tmp_path / "instance"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "connector.cli", "leak-lookup", "--json", str(stamped)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout)
    assert found["order"]["id"] == "7008"
    assert found["buyer"]["name"] == BUYER

    answer = shop.client.post(
        "/api/v1/admin/leak-lookup",
        data=stamped.read_bytes(),
        headers={
            "Authorization": f"Bearer {shop.store.api_token}",
            "Content-Type": "application/pdf",
        },
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["order"]["id"] == "7008"
    assert body["buyer"] == {"name": BUYER, "email": "jurgen@example.org"}
    with app.app_context():
        assert body["grant_id"] == db.session.execute(select(DownloadGrant.id)).scalar_one()


def test_unwatermarked_file_names_nobody_in_leak_lookup(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """A PDF without a fingerprint is a 404 from the leak lookup, not a guess."""
    plain = make_pdf(tmp_path / "plain.pdf")
    answer = shop.client.post(
        "/api/v1/admin/leak-lookup",
        data=plain.read_bytes(),
        headers={"Authorization": f"Bearer {shop.store.api_token}"},
    )
    assert answer.status_code == 404
    assert answer.mimetype == "application/problem+json"


def test_first_click_makes_the_missing_copy_on_the_spot(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watermarked file whose copy is not made yet is made on the spot, not refused."""
    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf")
    made = stamps_counted(monkeypatch)
    downloads = paid_order(shop, 7009, _pdf_files())
    response = get(shop.client, link_path(downloads[0]))  # no job has run
    assert response.status_code == 200
    assert "Order 7009" in PdfReader(io.BytesIO(response.data)).pages[0].extract_text()
    assert [e.served for e in events(app)] == ["watermarked"]
    # The job then finds the copy made and does not stamp again.
    run_pending(app)
    assert len(made) == 1
    with app.app_context():
        assert (
            db.session.execute(
                select(Job.status).where(Job.kind == "downloads.watermark")
            ).scalar_one()
            == "done"
        )


def test_encrypted_pdf_is_refused_by_default_and_the_owner_sees_why(
    app: Flask, shop: WebhookSender
) -> None:
    """An encrypted PDF cannot be stamped: a clear page for the buyer, an error for the owner."""
    make_pdf(
        Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf", password="pw"
    )
    downloads = paid_order(shop, 7010, _pdf_files())
    run_pending(app)
    response = get(shop.client, link_path(downloads[0]))
    assert response.status_code == 409
    assert response.mimetype == "text/html"
    assert "could not be prepared" in response.get_data(as_text=True)
    assert shop.order(7010)["downloads"][0]["downloads_left"] is None
    log = shop.admin("GET", "/orders/7010/downloads").get_json()
    assert log["grants"][0]["watermark_status"] == "failed"
    assert "encrypted" in log["grants"][0]["watermark_error"]
    assert [e["outcome"] for e in log["events"]] == ["refused"]


def test_a_pdf_whose_page_names_a_missing_content_stream_is_refused_with_a_reason(
    app: Flask, shop: WebhookSender
) -> None:
    """A damaged PDF whose page lists a content stream the file does not have (a dangling
    reference, read as null) cannot be stamped: the buyer gets the clear page and keeps their
    download, the owner sees why; not a 500 on every click and a job that never ends."""
    pdf = pikepdf.new()
    pdf.add_blank_page(page_size=(595, 842))
    pdf.pages[0].Contents = pikepdf.Array([pdf.make_stream(b"BT ET"), pdf.make_stream(b"BT ET")])
    saved = io.BytesIO()
    pdf.save(saved, object_stream_mode=pikepdf.ObjectStreamMode.disable)
    damaged, found = re.subn(rb"(/Contents \[ \d+ 0 R )\d+ 0 R", rb"\g<1>99 0 R", saved.getvalue())
    assert found == 1
    put_file(app, "books/guide.pdf", damaged)
    downloads = paid_order(shop, 7014, _pdf_files())
    run_pending(app)
    response = get(shop.client, link_path(downloads[0]))
    assert response.status_code == 409
    assert "could not be prepared" in response.get_data(as_text=True)
    assert shop.order(7014)["downloads"][0]["downloads_left"] is None
    log = shop.admin("GET", "/orders/7014/downloads").get_json()
    assert log["grants"][0]["watermark_status"] == "failed"
    assert "cannot be stamped" in log["grants"][0]["watermark_error"]
    with app.app_context():
        assert (
            db.session.execute(
                select(Job.status).where(Job.kind == "downloads.watermark")
            ).scalar_one()
            == "done"
        )


def test_a_copy_that_failed_is_made_once_the_owner_replaces_the_original(
    app: Flask, shop: WebhookSender
) -> None:
    """After its attempts a failed copy is not tried on every click, but the owner's fix (a
    new original under the same key) is: the next click gets the stamped copy."""
    path = Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf"
    make_pdf(path, password="pw")
    downloads = paid_order(shop, 7012, _pdf_files())
    for _ in range(MAX_WATERMARK_ATTEMPTS + 1):
        assert get(shop.client, link_path(downloads[0])).status_code == 409
    with app.app_context():
        copy = db.session.execute(select(WatermarkCopy)).scalar_one()
        assert copy.attempts == MAX_WATERMARK_ATTEMPTS  # the extra click did not try again
    make_pdf(path)  # unencrypted now
    fixed = get(shop.client, link_path(downloads[0]))
    assert fixed.status_code == 200
    assert "Order 7012" in PdfReader(io.BytesIO(fixed.data)).pages[0].extract_text()


def stamps_counted(monkeypatch: pytest.MonkeyPatch, *, failing: int = 0) -> list[str]:
    """Count the PDF stamps made from now on (each the stamp's name); the first ``failing``
    of them fail as a broken original would."""
    real_stamp = service.stamp_pdf
    made: list[str] = []

    def counted(source: Path, target: Path, stamp: Stamp) -> None:
        made.append(stamp.name)
        if len(made) <= failing:
            raise WatermarkError("the PDF could not be read")
        real_stamp(source, target, stamp)

    monkeypatch.setattr(service, "stamp_pdf", counted)
    return made


def test_a_copy_made_again_and_again_still_gets_its_retries_after_one_failure(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failures counted are those since the copy was last made: after more restamps
    than MAX_WATERMARK_ATTEMPTS (the owner replaced the original), one failure does not
    stop the next click from trying again."""
    path = Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf"
    make_pdf(path)
    downloads = paid_order(shop, 7013, _pdf_files())
    for pages in range(2, MAX_WATERMARK_ATTEMPTS + 3):
        make_pdf(path, pages=pages)  # a new version each time: the copy is made anew
        assert get(shop.client, link_path(downloads[0])).status_code == 200
    make_pdf(path, pages=1)
    made = stamps_counted(monkeypatch, failing=1)
    assert get(shop.client, link_path(downloads[0])).status_code == 409
    retried = get(shop.client, link_path(downloads[0]))
    assert retried.status_code == 200
    assert len(PdfReader(io.BytesIO(retried.data)).pages) == 1
    assert len(made) == 2
    with app.app_context():
        assert db.session.execute(select(WatermarkCopy.attempts)).scalar_one() == 0


def test_fallback_original_serves_the_unstamped_file(app: Flask, shop: WebhookSender) -> None:
    """With watermark_fallback "original", a file that cannot be stamped is served as is."""
    original = make_pdf(
        Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf", password="pw"
    )
    response = shop.admin(
        "PUT",
        "/products/501",
        {"name": "Guide", "policy": {}, "files": _pdf_files(), "watermark_fallback": "original"},
    )
    assert response.get_json()["watermark_fallback"] == "original"
    shop.deliver(wc_order(7011, "processing", [line_item(501)]))
    downloads = shop.order(7011)["downloads"]
    answer = get(shop.client, link_path(downloads[0]))
    assert answer.status_code == 200
    assert answer.data == original.read_bytes()
    assert [e.served for e in events(app)] == ["original-fallback"]


def test_zip_gets_license_txt_and_comment_without_recompression(
    app: Flask, shop: WebhookSender
) -> None:
    """The buyer's ZIP opens with LICENSE.txt (buyer, order, product; never the key, which
    would then sit in storage in the clear); other members are untouched."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("plugin/plugin.php", "<?php // plugin " * 200)
        archive.writestr("readme.txt", "Read me")
    original = put_file(app, "zips/plugin.zip", buffer.getvalue())
    downloads = paid_order(
        shop,
        7012,
        [{"object_key": "zips/plugin.zip", "filename": "plugin.zip", "watermark": "zip"}],
    )
    answer = get(shop.client, link_path(downloads[0]))
    assert answer.status_code == 200
    key = shop.order(7012)["licenses"][0]["key"]
    with zipfile.ZipFile(io.BytesIO(answer.data)) as archive:
        assert archive.testzip() is None
        license_txt = archive.read("LICENSE.txt").decode()
        assert key not in license_txt and key.replace("-", "") not in license_txt
        assert "Product: Product 501" in license_txt
        assert BUYER in license_txt and "Order: 7012" in license_txt
        assert b"keygate-fp:" in archive.comment
        for info in zipfile.ZipFile(original).infolist():
            stamped = archive.getinfo(info.filename)
            assert (stamped.compress_size, stamped.CRC) == (info.compress_size, info.CRC)
    # Byte for byte: the original archive's members are the start of the buyer's copy.
    members_end = min(zipfile.ZipFile(original).start_dir, len(answer.data))
    assert answer.data[:members_end] == original.read_bytes()[:members_end]


def _damaged_zips() -> dict[str, bytes]:
    """ZIPs that zipfile finds (an end record) but cannot rewrite."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("plugin/plugin.php", "<?php // plugin " * 200)
    whole = buffer.getvalue()
    end, entry = whole.rindex(b"PK\x05\x06"), whole.index(b"PK\x01\x02")
    # The central directory said to start far past the end of the file.
    past_the_end = whole[: end + 16] + (2**30).to_bytes(4, "little") + whole[end + 20 :]
    # A member that needs a version of the format (25.5) no tool knows.
    unknown_version = whole[: entry + 6] + b"\xff\x00" + whole[entry + 8 :]
    return {"past_the_end": past_the_end, "unknown_version": unknown_version}


@pytest.mark.parametrize("damage", sorted(_damaged_zips()))
def test_a_damaged_zip_is_refused_with_a_reason_not_a_500(
    app: Flask, shop: WebhookSender, damage: str
) -> None:
    """A ZIP damaged so that zipfile raises something else than BadZipFile while it is
    rewritten: the buyer gets the clear page and keeps the download, the owner sees why
    and the job ends (it was a 500 on every click, and a job failing for nothing)."""
    put_file(app, "zips/plugin.zip", _damaged_zips()[damage])
    files = [{"object_key": "zips/plugin.zip", "filename": "plugin.zip", "watermark": "zip"}]
    downloads = paid_order(shop, 7016, files, download_limit=2)
    run_pending(app)
    response = get(shop.client, link_path(downloads[0]))
    assert response.status_code == 409
    assert "could not be prepared" in response.get_data(as_text=True)
    assert shop.order(7016)["downloads"][0]["downloads_left"] == 2
    log = shop.admin("GET", "/orders/7016/downloads").get_json()
    assert log["grants"][0]["watermark_status"] == "failed"
    assert "cannot be rewritten" in log["grants"][0]["watermark_error"]
    with app.app_context():
        assert (
            db.session.execute(
                select(Job.status).where(Job.kind == "downloads.watermark")
            ).scalar_one()
            == "done"
        )
        assert not list(
            Path(app.extensions["keygate.settings"].storage_dir).glob("watermarked/**/*.zip")
        )


def test_downloads_log_per_order_and_per_buyer(app: Flask, shop: WebhookSender) -> None:
    """The owner sees each click with outcome, hashed IP and user agent, by order and buyer."""
    put_file(app, "files/a.pdf", b"x")
    downloads = paid_order(
        shop, 7013, [{"object_key": "files/a.pdf", "filename": "a.pdf"}], download_limit=1
    )
    for _ in range(2):
        get(
            shop.client,
            link_path(downloads[0]),
            headers={"User-Agent": "Firefox/140"},
            environ_base={"REMOTE_ADDR": "203.0.113.5"},
        )
    by_order = shop.admin("GET", "/orders/7013/downloads").get_json()
    assert [e["outcome"] for e in by_order["events"]] == ["limit", "served"]
    assert by_order["events"][0]["user_agent"] == "Firefox/140"
    assert by_order["events"][0]["filename"] == "a.pdf"
    assert "203.0.113.5" not in str(by_order)
    assert by_order["grants"][0]["download_count"] == 1
    by_buyer = shop.admin("GET", "/customers/jurgen@example.org/downloads").get_json()
    assert by_buyer["orders"] == ["7013"]
    assert by_buyer["events"] == by_order["events"]
    assert shop.admin("GET", "/customers/nobody@example.org/downloads").get_json()["events"] == []
    assert shop.admin("GET", "/orders/404404/downloads").status_code == 404


def test_admin_downloads_log_needs_the_store_token(client: Any) -> None:
    """Without the Bearer token the downloads log is a 401 problem."""
    response = client.get("/api/v1/admin/orders/1/downloads")
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"


@pytest.mark.parametrize("name", ["revoked", "expired"])
def test_refusal_pages_are_html_even_for_json_clients(
    app: Flask, shop: WebhookSender, name: str
) -> None:
    """A 410 on /d/ is a page for people, whatever the client asks for."""
    put_file(app, "files/a.pdf", b"x")
    downloads = paid_order(shop, 7014, [{"object_key": "files/a.pdf", "filename": "a.pdf"}])
    with app.app_context():
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        values = {"revoked_at": past} if name == "revoked" else {"expires_at": past}
        db.session.execute(update(DownloadGrant).values(**values))
        db.session.commit()
    response = get(shop.client, link_path(downloads[0]), headers={"Accept": "application/json"})
    assert response.status_code == 410
    assert response.mimetype == "text/html"


def test_head_requests_count_nothing(app: Flask, shop: WebhookSender) -> None:
    """A HEAD probe (link checkers, mail scanners) says whether the link works, uncounted."""
    put_file(app, "files/a.pdf", b"x")
    downloads = paid_order(
        shop, 7015, [{"object_key": "files/a.pdf", "filename": "a.pdf"}], download_limit=1
    )
    path = link_path(downloads[0])
    assert shop.client.head(path).status_code == 200
    assert shop.client.head(path).status_code == 200
    assert get(shop.client, path).status_code == 200
    assert shop.client.head(path).status_code == 429
    assert [e.outcome for e in events(app)] == ["served"]


def test_leak_lookup_accepts_files_larger_than_the_api_body_limit(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """Leaked copies are big: the lookup takes files past the 1 MB API limit, as multipart too."""
    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf")
    downloads = paid_order(shop, 7016, _pdf_files())
    stamped = get(shop.client, link_path(downloads[0])).data
    with pikepdf.open(io.BytesIO(stamped)) as pdf:
        # Pad the copy past the limit the way real books are big: an incompressible image.
        pdf.pages[0].Resources.XObject = pikepdf.Dictionary(
            Pad=pdf.make_stream(os.urandom(1_500_000), Type=pikepdf.Name.XObject)
        )
        big = tmp_path / "big.pdf"
        pdf.save(big, compress_streams=False)
    assert big.stat().st_size > app.config["MAX_CONTENT_LENGTH"]
    headers = {"Authorization": f"Bearer {shop.store.api_token}"}
    raw = shop.client.post("/api/v1/admin/leak-lookup", data=big.read_bytes(), headers=headers)
    assert raw.status_code == 200, raw.get_data(as_text=True)
    assert raw.get_json()["order"]["id"] == "7016"
    # Encoded by hand: the test client spools large multipart bodies to a file it never closes.
    body = (
        b"--kgboundary\r\n"
        b'Content-Disposition: form-data; name="file"; filename="found.pdf"\r\n'
        b"Content-Type: application/pdf\r\n\r\n" + big.read_bytes() + b"\r\n--kgboundary--\r\n"
    )
    multipart = shop.client.post(
        "/api/v1/admin/leak-lookup",
        data=body,
        headers=headers,
        content_type="multipart/form-data; boundary=kgboundary",
    )
    assert multipart.status_code == 200, multipart.get_data(as_text=True)
    assert multipart.get_json()["buyer"]["name"] == BUYER


def test_leak_lookup_does_not_reveal_other_stores_buyers(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """Another store's token cannot learn who a copy was made for."""
    from connector.stores import create_store

    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf")
    downloads = paid_order(shop, 7017, _pdf_files())
    stamped = get(shop.client, link_path(downloads[0])).data
    with app.app_context():
        other = create_store(db.session, "Other shop", "https://other.example")
        db.session.commit()
    answer = shop.client.post(
        "/api/v1/admin/leak-lookup",
        data=stamped,
        headers={"Authorization": f"Bearer {other.api_token}"},
    )
    assert answer.status_code == 404


def test_missing_file_is_a_503_page_and_costs_no_download(app: Flask, shop: WebhookSender) -> None:
    """A file missing from storage is the shop's fault: a 503 page, and the click is not counted."""
    downloads = paid_order(
        shop, 7018, [{"object_key": "files/gone.pdf", "filename": "gone.pdf"}], download_limit=1
    )
    response = get(shop.client, link_path(downloads[0]))
    assert response.status_code == 503
    assert response.mimetype == "text/html"
    assert shop.order(7018)["downloads"][0]["downloads_left"] == 1


def pdf_saying(path: Path, text: bytes) -> None:
    pdf = pikepdf.new()
    pdf.add_blank_page(page_size=(595, 842))
    font = pikepdf.Dictionary(
        Type=pikepdf.Name.Font, Subtype=pikepdf.Name.Type1, BaseFont=pikepdf.Name.Helvetica
    )
    page = pdf.pages[-1]
    page.Resources = pikepdf.Dictionary(Font=pikepdf.Dictionary(F1=font))
    page.Contents = pdf.make_stream(b"BT /F1 24 Tf 72 700 Td (" + text + b") Tj ET")
    path.parent.mkdir(parents=True, exist_ok=True)
    pdf.save(path)


def test_a_replaced_original_is_stamped_anew(app: Flask, shop: WebhookSender) -> None:
    """The owner uploads a corrected file under the same key: a buyer whose copy was already
    stamped gets the new edition (stamped), not the old copy for ever."""
    original = Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf"
    pdf_saying(original, b"EDITION ONE")
    downloads = paid_order(
        shop, 7019, [{"object_key": "books/guide.pdf", "filename": "guide.pdf", "watermark": "pdf"}]
    )
    first = get(shop.client, link_path(downloads[0]))
    assert "EDITION ONE" in PdfReader(io.BytesIO(first.data)).pages[0].extract_text()

    pdf_saying(original, b"EDITION TWO")
    second = get(shop.client, link_path(downloads[0]))
    text = PdfReader(io.BytesIO(second.data)).pages[0].extract_text()
    assert "EDITION TWO" in text and BUYER in text
    assert [e.served for e in events(app)] == ["watermarked", "watermarked"]


@pytest.mark.parametrize("filename", [".", "..", ".hidden.pdf"])
def test_a_file_name_starting_with_a_dot_is_refused(shop: WebhookSender, filename: str) -> None:
    """ "." or ".." as a file name would make a line's units share one stamped copy (the name
    ends its storage key): refused with 422, like any other name that is not a plain name."""
    response = shop.admin(
        "PUT",
        "/products/501",
        {
            "name": "P",
            "policy": {},
            "files": [{"object_key": "books/guide.pdf", "filename": filename, "watermark": "pdf"}],
        },
    )
    assert response.status_code == 422


def held_elsewhere(database_url: str) -> Callable[[], bool]:
    """Is a transaction of the app open in the database right now? SQLite: another
    connection cannot take the write lock at once (``BEGIN IMMEDIATE`` with no wait).
    PostgreSQL: a connection of the app is "idle in transaction" (it waits, inside a
    transaction, for the app to go on: its locks are held meanwhile)."""
    if database_url.startswith("sqlite"):
        path = database_url.removeprefix("sqlite:///")

        def sqlite_held() -> bool:
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                return False
            except sqlite3.OperationalError:
                return True
            finally:
                other.close()

        return sqlite_held

    def postgres_held() -> bool:
        with psycopg.connect(database_url, autocommit=True) as other:
            waiting = other.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%%'"
            ).fetchone()
        return waiting is not None and waiting[0] > 0

    return postgres_held


def test_a_click_holds_no_transaction_while_the_bucket_is_asked(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bucket that does not answer keeps a click waiting through boto3's timeouts and
    retries: meanwhile the click holds no transaction (on SQLite the database's one write
    lock: webhooks, activations and other clicks would fail with "database is locked").
    The click is the 503 page and costs no download."""
    from connector.downloads.storage import R2ObjectStore
    from connector.integrations.r2 import StorageUnavailable
    from connector.stores import create_store
    from tests.functional.test_downloads_r2 import make_r2_app
    from tests.licensing_helpers import free_port

    app = make_r2_app(tmp_path, database_url, f"http://127.0.0.1:{free_port()}", "gone")
    held = held_elsewhere(database_url)
    seen: list[bool] = []

    def bucket_is_slow(self: R2ObjectStore, key: str) -> str | None:
        seen.append(held())
        raise StorageUnavailable("R2 unreachable (ConnectTimeoutError)")

    try:
        with app.app_context():
            created = create_store(db.session, "R2 Shop", "https://shop.example")
            db.session.commit()
        shop = WebhookSender(app.test_client(), created)
        [download] = paid_order(
            shop, 7030, [{"object_key": "a.zip", "filename": "a.zip"}], download_limit=2
        )
        monkeypatch.setattr(R2ObjectStore, "version", bucket_is_slow)
        assert get(shop.client, link_path(download)).status_code == 503
        assert seen and not any(seen), seen
        assert shop.order(7030)["downloads"][0]["downloads_left"] == 2
    finally:
        app.extensions["keygate.db"].engine.dispose()


def test_making_a_copy_holds_no_transaction_while_storage_works(
    app: Flask, shop: WebhookSender, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stamping a buyer's copy on a click and in the job reads, downloads, uploads and
    delivers with no transaction open: every storage call finds the database free."""
    from connector.downloads.storage import LocalStore

    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf")
    held = held_elsewhere(database_url)
    seen: dict[str, list[bool]] = {}

    def checked(name: str) -> Callable[..., Any]:
        real = getattr(LocalStore, name)

        def call(self: LocalStore, *args: Any) -> Any:
            seen.setdefault(name, []).append(held())
            return real(self, *args)

        return call

    shop.configure(501, files=_pdf_files())
    for name in ("exists", "version", "download", "upload", "delivery", "delete"):
        monkeypatch.setattr(LocalStore, name, checked(name))
    shop.deliver(wc_order(7031, "processing", [line_item(501)]))
    [clicked_first] = shop.order(7031)["downloads"]
    response = get(shop.client, link_path(clicked_first))  # stamped on the spot
    assert response.status_code == 200
    assert "Order 7031" in PdfReader(io.BytesIO(response.data)).pages[0].extract_text()
    shop.deliver(wc_order(7032, "processing", [line_item(501, line_id=2)]))
    run_pending(app)  # stamped by the job
    [stamped_first] = shop.order(7032)["downloads"]
    assert get(shop.client, link_path(stamped_first)).status_code == 200
    assert {"version", "download", "upload", "delivery"} <= set(seen)
    assert not any(any(checks) for checks in seen.values()), seen


def test_a_refund_landing_while_a_resume_is_prepared_refuses_it(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The full path asks the storage with no transaction open, so a refund can land
    meanwhile: it is seen before a resumed download is let through for free (410)."""
    from connector.db import utcnow

    put_file(app, "files/big.bin", bytes(range(256)) * 40)
    [download] = paid_order(shop, 7033, [{"object_key": "files/big.bin", "filename": "big.bin"}])
    path = link_path(download)
    assert get(shop.client, path).status_code == 200
    while_the_storage_answers(app, monkeypatch, revoked_at=utcnow(), revoked_reason="refund")
    assert get(shop.client, path, headers={"Range": "bytes=100-"}).status_code == 410
    assert [e.outcome for e in events(app)] == ["served", "revoked"]


def test_a_copy_for_an_order_without_a_name_names_its_address(
    app: Flask, shop: WebhookSender
) -> None:
    """A buyer who gave no name is named on their copy by their address, not left blank."""
    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf", pages=1)
    shop.configure(501, files=_pdf_files())
    nameless = wc_order(7039, "processing", [line_item(501)], first_name="", last_name="")
    shop.deliver(nameless)
    [download] = shop.order(7039)["downloads"]
    response = get(shop.client, link_path(download))
    assert response.status_code == 200
    text = PdfReader(io.BytesIO(response.data)).pages[0].extract_text()
    assert "Licensed to jurgen@example.org <jurgen@example.org> · Order 7039" in text


def test_a_refund_landing_while_a_click_is_prepared_refuses_it(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refund that lands while the storage answers a plain click (no transaction open):
    the count sees it, and the click is refused (410), not served and counted."""
    from connector.db import utcnow

    put_file(app, "files/small.bin", b"paid for")
    [download] = paid_order(shop, 7036, [{"object_key": "files/small.bin", "filename": "s.bin"}])
    while_the_storage_answers(app, monkeypatch, revoked_at=utcnow(), revoked_reason="refund")
    assert get(shop.client, link_path(download)).status_code == 410
    assert [e.outcome for e in events(app)] == ["revoked"]
    with app.app_context():
        assert db.session.scalars(select(DownloadGrant.download_count)).all() == [0]


def test_a_refund_landing_while_the_buyers_copy_is_stamped_says_the_link_is_withdrawn(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first click on a watermarked file stamps the buyer's copy on the spot; a refund
    landing meanwhile refuses the click as withdrawn (410), not as over its limit (429)."""
    from connector.db import utcnow

    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf", pages=1)
    [download] = paid_order(shop, 7040, _pdf_files())
    while_the_storage_answers(app, monkeypatch, revoked_at=utcnow(), revoked_reason="refund")
    assert get(shop.client, link_path(download)).status_code == 410
    assert [e.outcome for e in events(app)] == ["revoked"]


def test_a_link_that_ends_while_a_click_is_prepared_is_not_served(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The link's download period ends while the storage answers a click: the count, made
    at the time of the write, refuses it (410 expired), and nothing is counted."""
    from connector.db import utcnow

    put_file(app, "files/small.bin", b"paid for")
    [download] = paid_order(shop, 7038, [{"object_key": "files/small.bin", "filename": "s.bin"}])
    while_the_storage_answers(app, monkeypatch, expires_at=utcnow() - dt.timedelta(seconds=1))
    assert get(shop.client, link_path(download)).status_code == 410
    assert [e.outcome for e in events(app)] == ["expired"]
    with app.app_context():
        assert db.session.scalars(select(DownloadGrant.download_count)).all() == [0]


def test_a_link_has_ended_at_the_very_moment_it_expires(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A click at the exact second a link ends finds it expired (410), as the count does;
    not let through by the check and then refused by the count as over its limit."""
    from connector.db import utcnow

    put_file(app, "files/small.bin", b"paid for")
    [download] = paid_order(shop, 7037, [{"object_key": "files/small.bin", "filename": "s.bin"}])
    end = utcnow().replace(microsecond=0) + dt.timedelta(hours=1)
    with app.app_context():
        db.session.execute(update(DownloadGrant).values(expires_at=end))
        db.session.commit()
    monkeypatch.setattr(service, "utcnow", lambda: end)
    assert get(shop.client, link_path(download)).status_code == 410
    assert [e.outcome for e in events(app)] == ["expired"]


def test_a_resume_of_a_withdrawn_link_is_refused_without_asking_the_storage(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A download served, then the order refunded: the buyer's download manager resuming
    it is told the link is withdrawn (410) at once; the storage is not asked (down, it
    would have made the answer a 503 "try again shortly")."""
    from connector.db import transaction, utcnow
    from connector.downloads.storage import LocalStore
    from connector.integrations.r2 import StorageUnavailable

    put_file(app, "files/big.bin", bytes(range(256)) * 40)
    [download] = paid_order(shop, 7041, [{"object_key": "files/big.bin", "filename": "big.bin"}])
    path = link_path(download)
    assert get(shop.client, path).status_code == 200
    with app.app_context(), transaction() as session:
        session.execute(update(DownloadGrant).values(revoked_at=utcnow(), revoked_reason="refund"))

    def storage_down(self: LocalStore, key: str, filename: str, ttl: int) -> Any:
        raise StorageUnavailable("the storage is down")

    monkeypatch.setattr(LocalStore, "delivery", storage_down)
    assert get(shop.client, path, headers={"Range": "bytes=100-"}).status_code == 410
    assert [e.outcome for e in events(app)] == ["served", "revoked"]


def test_a_copy_is_stamped_anew_when_the_shop_corrects_the_buyer(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order came in with the wrong person on it and the shop corrected it (a later
    delivery with another name and address): the next click stamps the copy anew for the
    right buyer, and the copy naming the wrong one is gone from storage."""
    storage = Path(app.extensions["keygate.settings"].storage_dir)
    make_pdf(storage / "books/guide.pdf")
    shop.configure(501, files=_pdf_files())
    item = line_item(501, line_id=34)
    made = stamps_counted(monkeypatch)
    wrong = {"first_name": "Wrong", "last_name": "Person", "email": "wrong@example.org"}
    shop.deliver(wc_order(7034, "processing", [item], **wrong))
    [download] = shop.order(7034)["downloads"]
    first = get(shop.client, link_path(download))
    assert (
        "Wrong Person <wrong@example.org>"
        in PdfReader(io.BytesIO(first.data)).pages[0].extract_text()
    )

    right = {"first_name": "Anna", "last_name": "Right", "email": "anna@example.org"}
    shop.deliver(wc_order(7034, "processing", [item], modified=60, **right))
    for _ in range(2):
        again = get(shop.client, link_path(download))
        assert again.status_code == 200
        text = PdfReader(io.BytesIO(again.data)).pages[0].extract_text()
        assert "Anna Right <anna@example.org>" in text
        assert "Wrong" not in text and "wrong@example.org" not in text
    [stored] = [path for path in (storage / "watermarked").rglob("*") if path.is_file()]
    stored_text = "".join(page.extract_text() for page in PdfReader(stored).pages)
    assert "Anna Right" in stored_text and "wrong@example.org" not in stored_text
    assert made == ["Wrong Person", "Anna Right"]  # stamped anew once, not on every click


def while_the_storage_answers(app: Flask, monkeypatch: pytest.MonkeyPatch, **grant: Any) -> None:
    """The links change to ``grant`` (a refund, their end) while Keygate's storage prepares
    a click's answer, committed by another transaction."""
    from connector.db import transaction
    from connector.downloads.storage import LocalStore

    real_delivery = LocalStore.delivery

    def changed_meanwhile(self: LocalStore, key: str, filename: str, ttl: int) -> Any:
        with app.app_context(), transaction() as session:
            session.execute(update(DownloadGrant).values(**grant))
        return real_delivery(self, key, filename, ttl)

    monkeypatch.setattr(LocalStore, "delivery", changed_meanwhile)
