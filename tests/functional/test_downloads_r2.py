"""Downloads from R2, against LocalStack's S3, which checks presigned signatures and expiry."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pikepdf
import pytest
from botocore.config import Config
from flask import Flask
from pypdf import PdfReader
from sqlalchemy import select, update

from connector import create_app
from connector.db import db, utcnow
from connector.downloads.storage import R2ObjectStore, SharedArea, store_for
from connector.integrations.r2 import R2Config
from connector.jobs import run_pending
from connector.models import Activation, DownloadEvent, DownloadGrant, Store, WatermarkCopy
from connector.stores import create_store
from tests.conftest import app_overrides
from tests.factories import WebhookSender, line_item, shifted, wc_order
from tests.licensing_helpers import call, free_port, issue_key
from tests.localstack import ACCESS_KEY_ID, SECRET_ACCESS_KEY

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("localstack")]


@pytest.fixture
def app_settings() -> dict[str, Any]:
    """Stores' own buckets here are on LocalStack, at 127.0.0.1: a private endpoint."""
    return {"allow_private_endpoints": True}


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        region_name="auto",
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        ),
    )


@pytest.fixture
def bucket(localstack_endpoint: str) -> str:
    name = f"keygate-{uuid.uuid4().hex[:12]}"
    s3_client(localstack_endpoint).create_bucket(Bucket=name)
    return name


def make_r2_app(
    tmp_path: Path, database_url: str, endpoint: str, bucket: str, **extra: Any
) -> Flask:
    (tmp_path / "instance" / "files").mkdir(parents=True)
    application = create_app(
        app_overrides(
            tmp_path,
            database_url,
            r2_account_id="0123456789abcdef",
            r2_access_key_id=ACCESS_KEY_ID,
            r2_secret_access_key=SECRET_ACCESS_KEY,
            r2_bucket=bucket,
            r2_endpoint_url=endpoint,
            **extra,
        )
    )
    application.config["TESTING"] = True
    return application


@pytest.fixture
def r2_app(
    tmp_path: Path, database_url: str, localstack_endpoint: str, bucket: str
) -> Iterator[Flask]:
    application = make_r2_app(tmp_path, database_url, localstack_endpoint, bucket)
    yield application
    application.extensions["keygate.db"].engine.dispose()


@pytest.fixture
def r2_shop(r2_app: Flask) -> WebhookSender:
    with r2_app.app_context():
        created = create_store(db.session, "R2 Shop", "https://shop.example")
        db.session.commit()
    return WebhookSender(r2_app.test_client(), created)


def fetch(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def paid_link(shop: WebhookSender, order_id: int, files: list[dict[str, Any]]) -> str:
    shop.configure(501, files=files)
    assert shop.deliver(wc_order(order_id, "processing", [line_item(501)])).status_code == 200
    link: str = shop.order(order_id)["downloads"][0]["link"]
    return link.removeprefix("http://keygate.test")


def test_store_with_r2_settings_uses_r2(
    r2_app: Flask, r2_shop: WebhookSender, localstack_endpoint: str
) -> None:
    """With KEYGATE_R2_* set, a store's files live in R2; the account endpoint is derived."""
    with r2_app.app_context():
        store = db.session.execute(select(Store)).scalar_one()
        shared = store_for(store)  # the instance-wide bucket, shared by stores without their own
        assert isinstance(shared, SharedArea) and isinstance(shared.backend, R2ObjectStore)
        config = shared.backend.config
        assert config.endpoint == localstack_endpoint
        assert "secret" not in repr(config)
    # Without an endpoint override, the account's R2 endpoint.
    account = R2Config("0123456789abcdef", "key-id", "very-secret", "b")
    assert account.endpoint == "https://0123456789abcdef.r2.cloudflarestorage.com"
    assert "very-secret" not in repr(account)


def test_click_redirects_to_a_presigned_url_that_serves_the_file(
    r2_app: Flask, r2_shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """Upload, click, follow the 302: the bytes arrive with the Unicode filename intact."""
    s3_client(localstack_endpoint).put_object(
        Bucket=bucket, Key="apps/tool.zip", Body=b"PK tool bytes"
    )
    path = paid_link(
        r2_shop, 8001, [{"object_key": "apps/tool.zip", "filename": "Werkzeug ß 工具.zip"}]
    )
    response = r2_shop.client.get(path)
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(f"{localstack_endpoint}/{bucket}/apps/tool.zip?")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert query["X-Amz-Expires"] == ["300"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert "/auto/s3/aws4_request" in query["X-Amz-Credential"][0]
    assert response.headers["Cache-Control"] == "no-store"

    status, body, headers = fetch(location)
    assert status == 200
    assert body == b"PK tool bytes"
    assert headers["Cache-Control"] == "private, no-store"  # the bucket's answer is not kept
    disposition = headers["Content-Disposition"]
    assert "filename*=UTF-8''Werkzeug%20%C3%9F%20%E5%B7%A5%E5%85%B7.zip" in disposition
    with r2_app.app_context():
        [event] = db.session.scalars(select(DownloadEvent))
        assert (event.outcome, event.served) == ("served", "original")


def test_the_redirect_to_the_bucket_sends_no_referer(
    r2_app: Flask, r2_shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """The click's redirect says no-referrer: the bucket's request carries no Referer, not
    even the address of the page the buyer clicked on (their order page, its token in it),
    wherever the bucket is. The page headers gave it Keygate's same-origin, which sends
    that address to a bucket reached at Keygate's own origin (behind its proxy)."""
    s3_client(localstack_endpoint).put_object(Bucket=bucket, Key="apps/a.zip", Body=b"PK a")
    path = paid_link(r2_shop, 8011, [{"object_key": "apps/a.zip", "filename": "a.zip"}])
    response = r2_shop.client.get(path)
    assert response.status_code == 302
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Cache-Control"] == "no-store"


def test_presigned_url_is_refused_when_expired_or_tampered(
    r2_app: Flask, r2_shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """The server refuses a presigned URL after it expires and when any signed part changes."""
    s3_client(localstack_endpoint).put_object(Bucket=bucket, Key="k.bin", Body=b"secret")
    with r2_app.app_context():
        store = db.session.execute(select(Store)).scalar_one()
        shared = store_for(store)
        assert isinstance(shared, SharedArea) and isinstance(shared.backend, R2ObjectStore)
        backend = shared.backend
        fresh = backend.presigned_url("k.bin", "k.bin", ttl=300)
        short = backend.presigned_url("k.bin", "k.bin", ttl=1)
    assert fetch(fresh)[0] == 200

    signature = fresh.rsplit("X-Amz-Signature=", 1)[1][:64]
    flipped = ("0" if signature[0] != "0" else "1") + signature[1:]
    assert fetch(fresh.replace(signature, flipped))[0] == 403
    assert fetch(fresh.replace("X-Amz-Expires=300", "X-Amz-Expires=600"))[0] == 403
    assert fetch(fresh.replace("filename%3D%22k.bin", "filename%3D%22x.bin"))[0] == 403

    time.sleep(3)  # X-Amz-Date has one-second resolution
    assert fetch(short)[0] == 403


def test_watermarked_pdf_is_made_in_the_bucket_and_served_from_there(
    r2_app: Flask, r2_shop: WebhookSender, localstack_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    """The job stamps the copy into the bucket under a per-order key; the link serves it."""
    pdf = pikepdf.new()
    for _ in range(2):
        pdf.add_blank_page()
    source = tmp_path / "book.pdf"
    pdf.save(source)
    client = s3_client(localstack_endpoint)
    client.upload_file(str(source), bucket, "books/book.pdf")
    path = paid_link(
        r2_shop,
        8002,
        [{"object_key": "books/book.pdf", "filename": "book.pdf", "watermark": "pdf"}],
    )
    early = r2_shop.client.head(path)  # before the job: no copy, and HEAD stamps none
    assert (early.status_code, early.mimetype) == (200, "application/pdf")
    assert "Content-Length" not in early.headers
    with r2_app.app_context():
        assert db.session.scalars(select(WatermarkCopy)).all() == []
    run_pending(r2_app)
    with r2_app.app_context():
        copy = db.session.execute(select(WatermarkCopy)).scalar_one()
        assert copy.status == "ready", copy.error
        assert copy.object_key is not None
        key = copy.object_key
    assert key.startswith("watermarked/") and client.head_object(Bucket=bucket, Key=key)

    response = r2_shop.client.get(path)
    assert response.status_code == 302
    assert f"/{bucket}/watermarked/" in response.headers["Location"]
    # The buyer sees the key in the URL: it holds neither the order's nor the grant's id.
    with r2_app.app_context():
        grant = db.session.execute(select(DownloadGrant)).scalar_one()
        ids = {str(grant.id), str(grant.order_id)}
    location = urllib.parse.urlsplit(response.headers["Location"]).path
    _, _, copy_folders = location.partition(f"/{bucket}/watermarked/{r2_shop.store.store.id}/")
    assert copy_folders.endswith("/book.pdf")
    assert not set(copy_folders.split("/")) & ids, location
    status, body, _ = fetch(response.headers["Location"])
    assert status == 200
    assert r2_shop.client.head(path).headers["Content-Length"] == str(len(body))
    stamped = tmp_path / "stamped.pdf"
    stamped.write_bytes(body)
    check = subprocess.run(["qpdf", "--check", str(stamped)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    for page in PdfReader(io.BytesIO(body)).pages:
        assert "Jürgen Ørsted 山田" in page.extract_text()


def test_missing_object_in_the_bucket_is_a_warning_for_the_owner(
    r2_app: Flask, r2_shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """PUT product with a file not uploaded yet: 200 with a warning naming it."""
    s3_client(localstack_endpoint).put_object(Bucket=bucket, Key="there.pdf", Body=b"x")
    response = r2_shop.configure(
        501,
        files=[
            {"object_key": "there.pdf", "filename": "there.pdf"},
            {"object_key": "later.pdf", "filename": "later.pdf"},
        ],
    )
    assert response.get_json()["warnings"] == ["later.pdf: not found in storage yet"]


def test_redirect_from_a_short_lived_link_expires_at_the_server(
    tmp_path: Path, database_url: str, localstack_endpoint: str, bucket: str
) -> None:
    """With KEYGATE_DOWNLOAD_URL_TTL=1, the URL a click redirects to is refused 3 s later."""
    app = make_r2_app(tmp_path, database_url, localstack_endpoint, bucket, download_url_ttl=1)
    try:
        with app.app_context():
            created = create_store(db.session, "R2 Shop", "https://shop.example")
            db.session.commit()
        shop = WebhookSender(app.test_client(), created)
        s3_client(localstack_endpoint).put_object(Bucket=bucket, Key="a.bin", Body=b"abc")
        path = paid_link(shop, 8003, [{"object_key": "a.bin", "filename": "a.bin"}])
        location = shop.client.get(path).headers["Location"]
        assert "X-Amz-Expires=1&" in location or location.endswith("X-Amz-Expires=1")
        time.sleep(3)  # X-Amz-Date has one-second resolution
        assert fetch(location)[0] == 403
    finally:
        app.extensions["keygate.db"].engine.dispose()


def test_a_link_about_to_end_redirects_to_a_url_that_ends_with_it(
    r2_app: Flask, r2_shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """A link with seconds left hands out presigned URLs that live no longer than the link
    (not the 300 s of KEYGATE_DOWNLOAD_URL_TTL): on the common click and on one the full path
    answers (a resumed download). The bucket serves them meanwhile."""
    s3_client(localstack_endpoint).put_object(Bucket=bucket, Key="apps/late.zip", Body=b"PK late")
    path = paid_link(r2_shop, 8020, [{"object_key": "apps/late.zip", "filename": "late.zip"}])
    with r2_app.app_context():
        ends = utcnow() + dt.timedelta(seconds=5)
        db.session.execute(update(DownloadGrant).values(expires_at=ends))
        db.session.commit()
    first = r2_shop.client.get(path)
    resumed = r2_shop.client.get(path, headers={"Range": "bytes=3-"})
    for response in (first, resumed):
        assert response.status_code == 302
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(response.headers["Location"]).query)
        assert 1 <= int(query["X-Amz-Expires"][0]) <= 5, query["X-Amz-Expires"]
    with r2_app.app_context():
        outcomes = db.session.scalars(select(DownloadEvent.outcome).order_by(DownloadEvent.id))
        assert list(outcomes) == ["served", "resumed"]
    assert fetch(first.headers["Location"])[:2] == (200, b"PK late")


def own_bucket(endpoint: str, bucket: str) -> dict[str, str]:
    """A store's R2 credentials for ``bucket`` on LocalStack."""
    return {
        "account_id": "0123456789abcdef",
        "access_key_id": ACCESS_KEY_ID,
        "secret_access_key": SECRET_ACCESS_KEY,
        "bucket": bucket,
        "endpoint_url": endpoint,
    }


def test_a_stores_own_r2_credentials_from_the_vault_serve_its_files(
    app: Flask, shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """No KEYGATE_R2_* settings: the store's encrypted R2 credentials decide where files live."""
    s3_client(localstack_endpoint).put_object(Bucket=bucket, Key="vault/tool.zip", Body=b"PK vault")
    path = paid_link(shop, 8101, [{"object_key": "vault/tool.zip", "filename": "tool.zip"}])
    assert shop.client.get(path).status_code == 503  # embedded storage has no such file
    credentials = own_bucket(localstack_endpoint, bucket)
    assert shop.admin("PUT", "/credentials/r2", credentials).status_code == 200
    response = shop.client.get(path)
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(f"{localstack_endpoint}/{bucket}/vault/tool.zip?")
    assert fetch(location)[:2] == (200, b"PK vault")


def test_update_check_hands_out_a_presigned_r2_url_for_the_release(
    r2_app: Flask, r2_shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """A store on R2 gets release downloads straight from the bucket, short-lived."""
    s3_client(localstack_endpoint).put_object(
        Bucket=bucket, Key="releases/plugin-1.1.0.zip", Body=b"PK release 1.1.0"
    )
    key = issue_key(r2_shop)
    release = {
        "version": "1.1.0",
        "object_key": "releases/plugin-1.1.0.zip",
        "sha256": hashlib.sha256(b"PK release 1.1.0").hexdigest(),
        "size": 16,
        "published_at": shifted("2026-11-21T00:00:00Z"),
    }
    assert r2_shop.admin("POST", "/products/501/releases", release).status_code == 201
    body = call(
        r2_shop.client, "update-check", {"key": key, "product": "501", "version": "1.0.0"}
    ).get_json()
    url = body["update"]["download_url"]
    assert url.startswith(f"{localstack_endpoint}/{bucket}/releases/plugin-1.1.0.zip?")
    assert fetch(url)[:2] == (200, b"PK release 1.1.0")


def downloads_left(shop: WebhookSender, order_id: int) -> list[int | None]:
    return [d["downloads_left"] for d in shop.order(order_id)["downloads"]]


def test_an_object_missing_from_the_bucket_is_a_503_page_and_costs_no_download(
    r2_app: Flask, r2_shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """Presigning never asks the bucket, so a click does first: a missing object is the 503
    page (not a redirect to the bucket's XML 404), nothing is counted, and once the owner
    uploads the file the buyer's retry is served."""
    r2_shop.configure(
        501, files=[{"object_key": "apps/later.zip", "filename": "t.zip"}], download_limit=1
    )
    assert r2_shop.deliver(wc_order(8010, "processing", [line_item(501)])).status_code == 200
    path = r2_shop.order(8010)["downloads"][0]["link"].removeprefix("http://keygate.test")

    response = r2_shop.client.get(path)
    assert response.status_code == 503
    assert response.mimetype == "text/html"
    head = r2_shop.client.head(path)
    assert (head.status_code, head.headers["Retry-After"]) == (503, response.headers["Retry-After"])
    assert downloads_left(r2_shop, 8010) == [1]

    s3_client(localstack_endpoint).put_object(Bucket=bucket, Key="apps/later.zip", Body=b"PK")
    head = r2_shop.client.head(path)
    assert (head.status_code, head.headers["Content-Length"]) == (200, "2")
    again = r2_shop.client.get(path)
    assert again.status_code == 302
    assert fetch(again.headers["Location"])[:2] == (200, b"PK")
    assert downloads_left(r2_shop, 8010) == [0]


def test_a_bucket_that_is_down_is_a_503_page_and_costs_no_download(
    tmp_path: Path, database_url: str
) -> None:
    """A click while the bucket does not answer: the 503 page, for plain and watermarked
    files alike, and no download is counted."""
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    app = make_r2_app(tmp_path, database_url, dead, "gone")
    try:
        with app.app_context():
            created = create_store(db.session, "R2 Shop", "https://shop.example")
            db.session.commit()
        shop = WebhookSender(app.test_client(), created)
        files = [
            {"object_key": "a.zip", "filename": "a.zip"},
            {"object_key": "b.pdf", "filename": "b.pdf", "watermark": "pdf"},
        ]
        shop.configure(501, files=files, download_limit=3)
        assert shop.deliver(wc_order(8011, "processing", [line_item(501)])).status_code == 200
        for download in shop.order(8011)["downloads"]:
            response = shop.client.get(download["link"].removeprefix("http://keygate.test"))
            assert (response.status_code, response.mimetype) == (503, "text/html")
        assert downloads_left(shop, 8011) == [3, 3]
    finally:
        app.extensions["keygate.db"].engine.dispose()


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A bucket endpoint that accepts connections and never answers (an overloaded or
    stalled service): every connection is held open until the test ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    acceptor.join()
    for connection in held:
        connection.close()
    listener.close()


def test_a_bucket_that_does_not_answer_is_a_503_page_before_a_worker_is_killed(
    tmp_path: Path, database_url: str, silent_endpoint: str
) -> None:
    """A click's check that the object is there (HEAD) waits for a stalled bucket a few
    seconds, not boto3's 60 s a read three times over: the buyer gets the 503 page, nothing
    counted, well within gunicorn's 30 s worker timeout (past it the worker is killed and
    the buyer gets the proxy's 502, and every click meanwhile holds a worker)."""
    app = make_r2_app(tmp_path, database_url, silent_endpoint, "stalled")
    try:
        with app.app_context():
            created = create_store(db.session, "R2 Shop", "https://shop.example")
            db.session.commit()
        shop = WebhookSender(app.test_client(), created)
        shop.configure(501, files=[{"object_key": "a.zip", "filename": "a.zip"}], download_limit=2)
        assert shop.deliver(wc_order(8012, "processing", [line_item(501)])).status_code == 200
        path = shop.order(8012)["downloads"][0]["link"].removeprefix("http://keygate.test")
        answers: list[Any] = []
        click = threading.Thread(target=lambda: answers.append(shop.client.get(path)), daemon=True)
        started = time.monotonic()
        click.start()
        click.join(timeout=25)
        assert answers, f"no answer after {time.monotonic() - started:.0f} s"
        assert (answers[0].status_code, answers[0].mimetype) == (503, "text/html")
        assert "Retry-After" in answers[0].headers
        assert downloads_left(shop, 8012) == [2]
    finally:
        app.extensions["keygate.db"].engine.dispose()


def _stamped_copy(app: Flask, shop: WebhookSender, client: Any, bucket: str, key: str) -> str:
    """A paid order of a PDF at ``key`` in ``bucket``, stamped: the copy's key."""
    pdf = pikepdf.new()
    pdf.add_blank_page()
    body = io.BytesIO()
    pdf.save(body)
    client.put_object(Bucket=bucket, Key=key, Body=body.getvalue())
    paid_link(shop, 8500, [{"object_key": key, "filename": "book.pdf", "watermark": "pdf"}])
    run_pending(app)
    with app.app_context():
        copy = db.session.execute(select(WatermarkCopy)).scalar_one()
        assert copy.status == "ready" and copy.object_key is not None, copy.error
        return copy.object_key


def _keys(client: Any, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in client.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_deleting_a_store_deletes_its_buyers_copies_in_its_own_bucket(
    app: Flask, shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """The stamped copies (buyers' names inside) go; the owner's own files in their bucket
    stay, and so does the bucket: it is the owner's."""
    from connector.models import Credential
    from connector.privacy.store_deletion import delete_store

    client = s3_client(localstack_endpoint)
    credentials = own_bucket(localstack_endpoint, bucket)
    assert shop.admin("PUT", "/credentials/r2", credentials).status_code == 200
    copy = _stamped_copy(app, shop, client, bucket, "books/book.pdf")
    assert _keys(client, bucket) == sorted(["books/book.pdf", copy])
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        done = delete_store(db.session, store, actor="test")
        assert done.left_to_do() == []
        # Until the job has reached the bucket, only its credentials are left.
        assert db.session.scalars(select(Credential.kind)).all() == ["r2"]
    run_pending(app)
    assert _keys(client, bucket) == ["books/book.pdf"]
    with app.app_context():
        assert db.session.scalars(select(Credential)).all() == []


def test_a_bucket_that_stays_down_is_retried_then_given_up_on_and_named(
    app: Flask, shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """The job retries while the bucket does not answer; on its last attempt it forgets
    the credentials all the same and names the folder left in the audit log."""
    from connector.jobs import JOB_ID, RetryLater
    from connector.models import AuditEvent, Credential, Job
    from connector.privacy.store_deletion import delete_store, delete_store_files
    from connector.vault.service import put_credentials

    client = s3_client(localstack_endpoint)
    credentials = own_bucket(localstack_endpoint, bucket)
    assert shop.admin("PUT", "/credentials/r2", credentials).status_code == 200
    copy = _stamped_copy(app, shop, client, bucket, "books/book.pdf")
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        dead = {**credentials, "endpoint_url": f"http://127.0.0.1:{free_port()}"}
        put_credentials(db.session, store, "r2", dead, actor="t")
        db.session.commit()
        delete_store(db.session, store, actor="test")
        store_id = store.id
        job = db.session.scalars(select(Job).where(Job.kind == "store.delete_files")).one()
        job.attempts = 1
        db.session.commit()
        payload = {"store_id": store_id, JOB_ID: job.id}
        with pytest.raises(RetryLater):
            delete_store_files(payload)
        db.session.rollback()
        assert db.session.scalars(select(Credential.kind)).all() == ["r2"]
        job = db.session.get(Job, job.id)
        assert job is not None
        job.attempts = app.extensions["keygate.settings"].job_max_attempts  # the last one
        db.session.commit()
        delete_store_files(payload)
        db.session.commit()
        assert db.session.scalars(select(Credential)).all() == []
        entry = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "store.files_deleted")
        ).one()
        assert entry.detail["left"] == [f"{bucket}/watermarked/{store_id}/"]
    assert copy in _keys(client, bucket)


def test_deleting_a_store_empties_its_areas_of_the_instance_bucket(
    r2_app: Flask, r2_shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """In the instance-wide bucket (KEYGATE_R2_*), the store's own files and its buyers'
    copies go; another store's files and the common ones stay."""
    from connector.privacy.store_deletion import delete_store

    client = s3_client(localstack_endpoint)
    store_id = r2_shop.store.store.id
    original = f"stores/{store_id}/book.pdf"
    copy = _stamped_copy(r2_app, r2_shop, client, bucket, original)
    for kept in (f"stores/{store_id + 1}/other.pdf", "common/readme.txt"):
        client.put_object(Bucket=bucket, Key=kept, Body=b"x")
    assert copy.startswith(f"watermarked/{store_id}/")
    with r2_app.app_context():
        store = db.session.get(Store, store_id)
        assert store is not None
        delete_store(db.session, store, actor="test")
    run_pending(r2_app)
    assert _keys(client, bucket) == ["common/readme.txt", f"stores/{store_id + 1}/other.pdf"]


def test_a_copy_served_from_r2_has_the_media_type_of_its_name(
    r2_app: Flask, r2_shop: WebhookSender, localstack_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    """The buyer's stamped copy in the bucket (uploaded by Keygate with no media type) is
    sent as application/pdf, as embedded storage sends it, not binary/octet-stream; the
    owner's file with a name that says nothing keeps the type it was uploaded with."""
    pdf = pikepdf.new()
    pdf.add_blank_page()
    source = tmp_path / "book.pdf"
    pdf.save(source)
    client = s3_client(localstack_endpoint)
    client.upload_file(str(source), bucket, "books/book.pdf")
    client.put_object(Bucket=bucket, Key="books/notes", Body=b"n", ContentType="text/plain")
    r2_shop.configure(
        501,
        files=[
            {"object_key": "books/book.pdf", "filename": 'Büch "1".pdf', "watermark": "pdf"},
            {"object_key": "books/notes", "filename": "NOTES"},
        ],
    )
    order = wc_order(8701, "processing", [line_item(501)])
    assert r2_shop.deliver(order).status_code == 200
    book, notes = sorted(r2_shop.order(8701)["downloads"], key=lambda d: d["filename"])
    answer = r2_shop.client.get(book["link"].removeprefix("http://keygate.test"))
    assert answer.status_code == 302
    status, body, headers = fetch(answer.headers["Location"])
    assert status == 200 and body.startswith(b"%PDF")
    assert headers["Content-Type"] == "application/pdf"
    assert headers["Cache-Control"] == "private, no-store"
    assert "filename*=UTF-8''B%C3%BCch%20%221%22.pdf" in headers["Content-Disposition"]
    answer = r2_shop.client.get(notes["link"].removeprefix("http://keygate.test"))
    status, body, headers = fetch(answer.headers["Location"])
    assert (status, body, headers["Content-Type"]) == (200, b"n", "text/plain")


def test_head_answers_what_the_buckets_answer_will_say_and_counts_nothing(
    r2_app: Flask, r2_shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """A click on R2 is a redirect to a presigned URL; HEAD hands none out (it would be a
    download nobody counted) but answers 200 with what the bucket's answer to the click
    says of the file: type, name, size, Accept-Ranges. Nothing is counted; a withdrawn
    link answers HEAD as it answers a click."""
    client = s3_client(localstack_endpoint)
    client.put_object(Bucket=bucket, Key="apps/tool.zip", Body=b"PK" + b"z" * 3000)
    client.put_object(Bucket=bucket, Key="apps/notes", Body=b"n", ContentType="text/plain")
    files = [
        {"object_key": "apps/tool.zip", "filename": "Werkzeug ß 工具.zip"},
        {"object_key": "apps/notes", "filename": "NOTES"},
    ]
    r2_shop.configure(501, files=files, download_limit=1)
    assert r2_shop.deliver(wc_order(8802, "processing", [line_item(501)])).status_code == 200
    paths = [
        d["link"].removeprefix("http://keygate.test")
        for d in sorted(r2_shop.order(8802)["downloads"], key=lambda d: d["filename"])
    ]
    heads = [r2_shop.client.head(path) for path in paths]
    assert [r2_shop.client.head(path).status_code for path in paths] == [200, 200]  # again
    assert downloads_left(r2_shop, 8802) == [1, 1]
    with r2_app.app_context():
        assert db.session.scalars(select(DownloadEvent)).all() == []

    for path, head in zip(paths, heads, strict=True):
        assert (head.status_code, head.data) == (200, b"")
        assert "Location" not in head.headers
        assert head.headers["Cache-Control"] == "no-store"
        click = r2_shop.client.get(path)
        assert click.status_code == 302
        status, body, served = fetch(click.headers["Location"])
        assert status == 200
        assert head.headers["Content-Length"] == served["Content-Length"] == str(len(body))
        assert head.headers["Content-Disposition"] == served["Content-Disposition"]
        assert head.mimetype == served["Content-Type"].partition(";")[0]
        assert head.headers["Accept-Ranges"] == served.get("Accept-Ranges", "bytes") == "bytes"
    assert [h.mimetype for h in heads] == ["text/plain", "application/zip"]

    with r2_app.app_context():
        db.session.execute(update(DownloadGrant).values(revoked_at=utcnow()))
        db.session.commit()
    for path in paths:
        head = r2_shop.client.head(path)
        assert (head.status_code, head.mimetype) == (410, "text/html")
        assert r2_shop.client.get(path).status_code == 410


def _erase_and_check_the_bucket(app: Flask, shop: WebhookSender, client: Any, bucket: str) -> None:
    copy = _stamped_copy(app, shop, client, bucket, "books/book.pdf")
    assert _keys(client, bucket) == sorted(["books/book.pdf", copy])
    erased = shop.admin("DELETE", "/customers/jurgen@example.org")
    assert erased.status_code == 200, erased.get_json()
    run_pending(app)
    assert _keys(client, bucket) == ["books/book.pdf"]
    with app.app_context():
        assert db.session.scalars(select(WatermarkCopy)).all() == []


def test_an_erased_buyers_stamped_copy_is_deleted_from_keygates_bucket(
    r2_app: Flask, r2_shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """Guard: an erasure deletes the buyer's stamped copy (their name and address in it)
    from Keygate's R2 bucket, and leaves the original."""
    _erase_and_check_the_bucket(r2_app, r2_shop, s3_client(localstack_endpoint), bucket)


def test_an_erased_buyers_stamped_copy_is_deleted_from_the_stores_own_bucket(
    app: Flask, shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """Guard: the same in the store's own bucket (its R2 credentials in the vault)."""
    credentials = own_bucket(localstack_endpoint, bucket)
    assert shop.admin("PUT", "/credentials/r2", credentials).status_code == 200
    _erase_and_check_the_bucket(app, shop, s3_client(localstack_endpoint), bucket)


def test_a_copy_stamped_before_the_store_had_its_own_bucket_is_deleted_on_erasure(
    app: Flask, shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """A copy stamped in Keygate's own storage (the embedded folder) while the store had no
    bucket of its own stays there when the owner then saves R2 credentials (its file now
    comes from the bucket): the erasure deletes it from Keygate's storage too, not only
    from the bucket the store uses now."""
    from tests.functional.test_downloads_privacy import stamped_order

    _path, copy_file = stamped_order(app, shop, 8600)
    assert copy_file.is_file()
    credentials = own_bucket(localstack_endpoint, bucket)
    assert shop.admin("PUT", "/credentials/r2", credentials).status_code == 200
    assert shop.admin("DELETE", "/customers/jurgen@example.org").status_code == 200
    run_pending(app)
    assert not copy_file.exists()


def test_the_daily_sweep_deletes_unrecorded_copies_from_keygates_bucket(
    r2_app: Flask, r2_shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """In the instance-wide bucket, a stamped copy no row records (a restored backup's, an
    upload whose record was lost) is deleted by the sweep once older than its margin; the
    recorded copy, the owner's files and other stores' areas stay."""
    from connector.downloads.sweep import sweep_unrecorded_copies

    client = s3_client(localstack_endpoint)
    store_id = r2_shop.store.store.id
    copy = _stamped_copy(r2_app, r2_shop, client, bucket, f"stores/{store_id}/book.pdf")
    unrecorded = [f"watermarked/{store_id}/restored/book.pdf", f"watermarked/{store_id}/x.pdf"]
    beside = [f"watermarked/{store_id + 1}/theirs.pdf", "common/readme.txt"]
    for key in unrecorded + beside:
        client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": copy})
    everything = _keys(client, bucket)
    with r2_app.app_context():
        assert sweep_unrecorded_copies(db.session, utcnow()) == 0  # all just written
        assert sweep_unrecorded_copies(db.session, utcnow() + dt.timedelta(days=2)) == 2
    run_pending(r2_app)
    assert _keys(client, bucket) == sorted(set(everything) - set(unrecorded))


def test_the_sweep_warns_of_a_bucket_that_is_down_and_sweeps_it_the_next_time(
    app: Flask,
    shop: WebhookSender,
    localstack_endpoint: str,
    bucket: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A store with its own bucket: unrecorded copies there and in Keygate's storage (from
    before the bucket) are swept. While the bucket does not answer, the sweep says so in a
    warning, still sweeps Keygate's storage and ends; the next sweep reaches the bucket."""
    from connector.downloads.sweep import sweep_job, sweep_unrecorded_copies
    from connector.jobs import JOB_ID
    from connector.vault.service import put_credentials

    client = s3_client(localstack_endpoint)
    store_id = shop.store.store.id
    in_bucket = f"watermarked/{store_id}/restored/book.pdf"
    client.put_object(Bucket=bucket, Key=in_bucket, Body=b"%PDF stamped for a buyer")
    in_keygates = app.extensions["keygate.settings"].storage_dir / f"watermarked/{store_id}/a.pdf"
    in_keygates.parent.mkdir(parents=True)
    in_keygates.write_bytes(b"%PDF stamped for a buyer")
    credentials = own_bucket(localstack_endpoint, bucket)
    later = utcnow() + dt.timedelta(days=2)
    with app.app_context():
        store = db.session.get(Store, store_id)
        assert store is not None
        dead = {**credentials, "endpoint_url": f"http://127.0.0.1:{free_port()}"}
        put_credentials(db.session, store, "r2", dead, actor="t")
        db.session.commit()
        caplog.set_level(logging.INFO, logger="connector.downloads.sweep")
        sweep_job({JOB_ID: 0})  # the job's handler: no error, the next run tries again
        db.session.commit()
    assert f"store {store_id}, its own bucket not listed" in caplog.text
    assert "1 storages not listed" in caplog.text
    assert "secret" not in caplog.text.lower()
    with app.app_context():
        assert sweep_unrecorded_copies(db.session, later) == 1  # Keygate's storage
        store = db.session.get(Store, store_id)
        assert store is not None
        put_credentials(db.session, store, "r2", credentials, actor="t")
        db.session.commit()
    run_pending(app)
    assert not in_keygates.exists()
    assert in_bucket in _keys(client, bucket)
    with app.app_context():
        assert sweep_unrecorded_copies(db.session, later) == 1  # the bucket, answering now
    run_pending(app)
    assert in_bucket not in _keys(client, bucket)


def test_a_release_whose_size_is_not_the_objects_warns_the_owner(
    r2_shop: WebhookSender, localstack_endpoint: str, bucket: str
) -> None:
    """The bucket's object is the size the owner must publish: another size is a warning
    (products would refuse the download), a missing object another."""
    s3_client(localstack_endpoint).put_object(
        Bucket=bucket, Key="releases/plugin-2.0.zip", Body=b"PK release 2.0"
    )
    r2_shop.configure(501)
    release = {"object_key": "releases/plugin-2.0.zip", "sha256": "a" * 64}
    wrong = r2_shop.admin(
        "POST", "/products/501/releases", {**release, "version": "2.0", "size": 15}
    )
    assert wrong.status_code == 201
    assert wrong.get_json()["warnings"][0].startswith(
        "releases/plugin-2.0.zip: the file in storage has 14 bytes, the release says 15:"
    )
    right = r2_shop.admin(
        "POST", "/products/501/releases", {**release, "version": "2.1", "size": 14}
    )
    assert right.get_json()["warnings"] == []
    missing = r2_shop.admin(
        "POST",
        "/products/501/releases",
        {**release, "version": "2.2", "size": 14, "object_key": "releases/none.zip"},
    )
    assert missing.get_json()["warnings"] == ["releases/none.zip: not found in storage yet"]


def test_no_transaction_is_open_while_update_check_asks_the_bucket(
    tmp_path: Path, database_url: str, silent_endpoint: str
) -> None:
    """Update-check asks the bucket whether the release's file is there before presigning
    its URL; a stalled bucket takes seconds to give up. Meanwhile no transaction of the
    call is open (on SQLite it would hold the one write lock: every webhook, click and
    activation would wait, and fail past busy_timeout). The answer still offers the
    release, by Keygate's own link."""
    from connector.models import Product, Release
    from tests.functional.test_brevo_mail import transaction_open_elsewhere

    app = make_r2_app(tmp_path, database_url, silent_endpoint, "stalled")
    try:
        with app.app_context():
            created = create_store(db.session, "R2 Shop", "https://shop.example")
            db.session.commit()
        shop = WebhookSender(app.test_client(), created)
        key = issue_key(shop, files=[])
        with app.app_context():
            product = db.session.execute(
                select(Product).where(Product.store_id == created.store.id)
            ).scalar_one()
            db.session.add(
                Release(
                    product_id=product.id,
                    version="2.0",
                    object_key="releases/plugin-2.0.zip",
                    sha256="a" * 64,
                    size=1,
                    published_at=utcnow() - dt.timedelta(days=1),
                )
            )
            db.session.commit()
        body = {"key": key, "product": "501", "version": "1.0", "site": "shop-one.com"}
        activated = shop.client.post("/api/v1/licenses/activate", json=body).get_json()
        assert activated["code"] == "VALID"
        with app.app_context():  # seen over an hour ago: this call writes its stamp
            db.session.execute(
                update(Activation).values(last_seen_at=utcnow() - dt.timedelta(hours=2))
            )
            db.session.commit()
        answers: list[Any] = []
        check = threading.Thread(
            target=lambda: answers.append(
                shop.client.post("/api/v1/licenses/update-check", json=body)
            ),
            daemon=True,
        )
        check.start()
        time.sleep(1.5)  # the bucket is being asked now
        assert check.is_alive(), "the bucket was not waited for"
        assert not transaction_open_elsewhere(database_url)
        check.join(timeout=25)
        assert answers, "no answer"
        update_offered = answers[0].get_json()["update"]
        assert update_offered["version"] == "2.0"
        assert "/api/v1/releases/download/" in update_offered["download_url"]
    finally:
        app.extensions["keygate.db"].engine.dispose()


def test_no_transaction_is_open_while_a_release_link_asks_the_bucket(
    tmp_path: Path, database_url: str, silent_endpoint: str
) -> None:
    """Keygate's own release link (handed out while the bucket was down, or before the
    store moved to R2) asks the bucket too: a stalled one is a 503 in seconds, and no
    transaction is open meanwhile (SQLite's one write lock)."""
    from connector.models import Product, Release
    from connector.tokens import release_token
    from tests.functional.test_brevo_mail import transaction_open_elsewhere

    app = make_r2_app(tmp_path, database_url, silent_endpoint, "stalled")
    try:
        with app.app_context():
            created = create_store(db.session, "R2 Shop", "https://shop.example")
            db.session.commit()
        shop = WebhookSender(app.test_client(), created)
        shop.configure(501, files=[])
        with app.test_request_context():
            product = db.session.execute(
                select(Product).where(Product.store_id == created.store.id)
            ).scalar_one()
            release = Release(
                product_id=product.id,
                version="2.0",
                object_key="releases/plugin-2.0.zip",
                sha256="a" * 64,
                size=1,
                published_at=utcnow() - dt.timedelta(days=1),
            )
            db.session.add(release)
            db.session.commit()
            path = f"/api/v1/releases/download/{release_token(release.id)}"
        answers: list[Any] = []
        fetch_it = threading.Thread(
            target=lambda: answers.append(shop.client.get(path)), daemon=True
        )
        fetch_it.start()
        time.sleep(1.5)  # the bucket is being asked now
        assert fetch_it.is_alive(), "the bucket was not waited for"
        assert not transaction_open_elsewhere(database_url)
        fetch_it.join(timeout=25)
        assert answers, "no answer"
        assert answers[0].status_code == 503
    finally:
        app.extensions["keygate.db"].engine.dispose()
