"""A bucket that fails buyers' clicks is told to the store's owner: one audit entry per
outage (not one per click), a WARNING line, and a dashboard notice until a click is served."""

from __future__ import annotations

import datetime as dt
import http.server
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, update

from connector.db import db, utcnow
from connector.downloads.outage import STORAGE_FAILED
from connector.models import AuditEvent, DownloadGrant
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_admin_attention import dashboard
from tests.functional.test_admin_pages import signed_in_owner
from tests.functional.test_downloads_r2 import own_bucket, s3_client
from tests.licensing_helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("localstack")]

REFUSED_TEXT = "the bucket refused Keygate&#39;s credentials (HTTP 403; check the store&#39;s R2"
UNANSWERED_TEXT = "the bucket did not answer (check the store&#39;s R2 credentials)."


@pytest.fixture
def app_settings() -> dict[str, Any]:
    """The buckets here are at 127.0.0.1: a private endpoint."""
    return {"allow_private_endpoints": True}


class _Refusing(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint whose owner revoked the token: 403 to everything."""

    body = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
        b"<Message>The AWS Access Key Id you provided does not exist.</Message></Error>"
    )

    def _refuse(self, with_body: bool) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if with_body:
            self.wfile.write(self.body)

    def do_HEAD(self) -> None:
        self._refuse(False)

    def do_GET(self) -> None:
        self._refuse(True)

    def do_PUT(self) -> None:
        self._refuse(True)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def refusing_endpoint() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _link(shop: WebhookSender, order_id: int, watermark: str, **limits: Any) -> str:
    name = "a.pdf" if watermark == "pdf" else "a.zip"
    files = [{"object_key": name, "filename": name, "watermark": watermark}]
    shop.configure(501, files=files, **limits)
    assert shop.deliver(wc_order(order_id, "processing", [line_item(501)])).status_code == 200
    link: str = shop.order(order_id)["downloads"][0]["link"]
    return link.removeprefix("http://keygate.test")


def _own_bucket_at(shop: WebhookSender, endpoint: str, bucket: str = "shop-files") -> None:
    answer = shop.admin("PUT", "/credentials/r2", own_bucket(endpoint, bucket))
    assert answer.status_code == 200, answer.get_data(as_text=True)


def _failures(app: Flask) -> list[AuditEvent]:
    with app.app_context():
        return list(
            db.session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action == STORAGE_FAILED)
                .order_by(AuditEvent.id)
            )
        )


def _left(shop: WebhookSender, order_id: int) -> int | None:
    left: int | None = shop.order(order_id)["downloads"][0]["downloads_left"]
    return left


# "none": the fast path (start_download_fast); "pdf": a copy to stamp, the full path.
@pytest.mark.parametrize("watermark", ["none", "pdf"])
def test_clicks_a_bucket_refuses_are_one_entry_and_a_notice_for_the_owner(
    app: Flask,
    shop: WebhookSender,
    refusing_endpoint: str,
    watermark: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The owner revoked the R2 token: the buyer gets the 503 page (nothing counted), and
    the owner one entry for 50 clicks, one WARNING, and the dashboard's notice, linked to
    the store's credentials page. The entry names no buyer, link, key or endpoint."""
    _own_bucket_at(shop, refusing_endpoint)
    path = _link(shop, 9301, watermark, download_limit=3)
    caplog.set_level(logging.WARNING, logger="connector.downloads.outage")
    for _ in range(50):
        answer = shop.client.get(path)
        assert (answer.status_code, answer.mimetype) == (503, "text/html")
    assert _left(shop, 9301) == 3

    [failure] = _failures(app)
    assert failure.store_id == shop.store.store.id
    assert (failure.actor, failure.subject) == ("keygate", None)
    assert failure.detail == {"kind": "refused", "status": 403}
    warnings = [r.getMessage() for r in caplog.records if r.name == "connector.downloads.outage"]
    assert warnings == [
        f"store {shop.store.store.id}: buyers' downloads failed: the storage refused"
        " Keygate's request (HTTP 403)"
    ]
    owner = signed_in_owner(app)
    page = dashboard(owner)
    assert "Buyers&#39; downloads failed at " in page and REFUSED_TEXT in page
    credentials = f'href="/admin/stores/{shop.store.store.id}/credentials"'
    assert credentials in page
    store_page = owner.get(f"/admin/stores/{shop.store.store.id}").get_data(as_text=True)
    assert REFUSED_TEXT in store_page and credentials in store_page


def test_a_bucket_that_does_not_answer_is_news_until_a_click_is_served(
    app: Flask, shop: WebhookSender, localstack_endpoint: str
) -> None:
    """Nothing listens at the bucket's address: one entry (``unreachable``, no status), the
    notice says so. The owner fixes the credentials: the notice stays until a buyer's click
    is served, then goes; the next outage is recorded at once (not 15 minutes later)."""
    dead = f"http://127.0.0.1:{free_port()}"
    _own_bucket_at(shop, dead)
    path = _link(shop, 9302, "none")
    assert shop.client.get(path).status_code == 503
    assert shop.client.get(path).status_code == 503
    [failure] = _failures(app)
    assert failure.detail == {"kind": "unreachable"}
    owner = signed_in_owner(app)
    assert UNANSWERED_TEXT in dashboard(owner)

    bucket = f"keygate-{uuid.uuid4().hex[:12]}"
    s3_client(localstack_endpoint).create_bucket(Bucket=bucket)
    s3_client(localstack_endpoint).put_object(Bucket=bucket, Key="a.zip", Body=b"PK")
    _own_bucket_at(shop, localstack_endpoint, bucket)
    assert UNANSWERED_TEXT in dashboard(owner)  # no buyer has been served yet
    assert shop.client.get(path).status_code == 302
    page = dashboard(owner)
    assert "downloads failed" not in page and "Nothing needs your attention." in page
    store_page = owner.get(f"/admin/stores/{shop.store.store.id}").get_data(as_text=True)
    assert "downloads failed" not in store_page

    _own_bucket_at(shop, dead)
    assert shop.client.get(path).status_code == 503
    assert len(_failures(app)) == 2
    assert UNANSWERED_TEXT in dashboard(owner)


def test_an_outage_is_recorded_again_after_15_minutes_and_is_news_for_a_day(
    app: Flask, shop: WebhookSender
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    _own_bucket_at(shop, dead)
    path = _link(shop, 9303, "none")
    assert shop.client.get(path).status_code == 503
    with app.app_context():
        db.session.execute(
            update(AuditEvent)
            .where(AuditEvent.action == STORAGE_FAILED)
            .values(created_at=utcnow() - dt.timedelta(minutes=16))
        )
        db.session.commit()
    assert shop.client.get(path).status_code == 503
    assert len(_failures(app)) == 2
    with app.app_context():
        db.session.execute(
            update(AuditEvent)
            .where(AuditEvent.action == STORAGE_FAILED)
            .values(created_at=utcnow() - dt.timedelta(hours=25))
        )
        db.session.commit()
    assert "downloads failed" not in dashboard(signed_in_owner(app))


def test_an_expired_or_used_up_link_is_no_storage_failure(
    app: Flask, shop: WebhookSender, refusing_endpoint: str
) -> None:
    """A refusal decided before the storage is asked says nothing of the bucket."""
    _own_bucket_at(shop, refusing_endpoint)
    path = _link(shop, 9304, "none", download_limit=0)
    assert shop.client.get(path).status_code == 429
    with app.app_context():
        db.session.execute(
            update(DownloadGrant).values(
                download_limit=None, expires_at=dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
            )
        )
        db.session.commit()
    assert shop.client.get(path).status_code == 410
    assert _failures(app) == []
    assert "downloads failed" not in dashboard(signed_in_owner(app))
