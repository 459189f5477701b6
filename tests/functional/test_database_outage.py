"""A database that restarts or is out of reach: a page or a read rides out a dropped
connection; what cannot be answered is 503 with Retry-After (never a 500), nothing of it is
stored, and it goes through when sent again."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from connector import jobs
from connector.db import db, transaction, utcnow
from connector.jobs import run_pending, work_forever
from connector.models import Job, Mail
from connector.signing import CACHE_SECONDS, digest_header, forget_cached_signer
from tests.factories import WebhookSender, line_item, wc_order
from tests.peers import drop_database_connections, unreachable_database


def _portal(shop: WebhookSender, order_id: int) -> tuple[str, str]:
    """A sold order's portal path and its license key."""
    shop.configure(501)
    shop.deliver(wc_order(order_id, "processing", [line_item(501)]))
    body = shop.order(order_id)
    return body["portal_url"].removeprefix("http://keygate.test"), body["licenses"][0]["key"]


def test_pages_and_reads_ride_out_a_database_restart(app: Flask, shop: WebhookSender) -> None:
    portal_path, key = _portal(shop, 9500)
    drop_database_connections(app)
    page = shop.client.get(portal_path)
    assert page.status_code == 200, page.get_data(as_text=True)
    assert key in page.get_data(as_text=True)
    drop_database_connections(app)
    listed = shop.admin("GET", f"/licenses/{key}")
    assert listed.status_code == 200
    assert listed.get_json()["license"]["key"] == key


def test_a_form_sent_over_a_dropped_connection_is_503_and_goes_through_again(
    app: Flask, shop: WebhookSender
) -> None:
    portal_path, _key = _portal(shop, 9501)
    html = shop.client.get(portal_path).get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert token
    run_pending(app)  # the order's own mail
    drop_database_connections(app)
    refused = shop.client.post(portal_path + "/resend", data={"csrf_token": token.group(1)})
    assert refused.status_code == 503
    assert "Try again in a moment" in refused.get_data(as_text=True)
    run_pending(app)
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Mail)).scalar_one() == 1
    again = shop.client.post(portal_path + "/resend", data={"csrf_token": token.group(1)})
    assert again.status_code == 302
    run_pending(app)
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Mail)).scalar_one() == 2


def test_an_unreachable_database_is_503_everywhere(
    app: Flask, shop: WebhookSender, database_url: str, tmp_path: Path
) -> None:
    portal_path, key = _portal(shop, 9502)
    assert shop.client.post("/api/v1/licenses/validate", json={"key": key}).status_code == 200
    # The signing key is due for its reload, which cannot happen now: the last one signs,
    # and the reload is tried again a cache period later, not on every answer.
    signer = app.extensions["keygate.signer"]
    aged = replace(signer, loaded_at=signer.loaded_at - CACHE_SECONDS - 1)
    app.extensions["keygate.signer"] = aged
    with unreachable_database(app, database_url, tmp_path):
        answer = shop.client.post("/api/v1/licenses/validate", json={"key": key, "nonce": "n1"})
        assert app.extensions["keygate.signer"].kid == signer.kid
        assert app.extensions["keygate.signer"].loaded_at > aged.loaded_at + CACHE_SECONDS
        assert answer.status_code == 503
        assert answer.mimetype == "application/problem+json"
        assert answer.headers["Retry-After"] == "5"
        assert answer.headers["Digest"] == digest_header(answer.get_data())
        assert "Keygate-Signature" in answer.headers
        body = answer.get_json()
        assert body["status"] == 503 and body["nonce"] == "n1" and body["ts"]

        delivery = shop.deliver(wc_order(9503, "processing", [line_item(501)]))
        assert delivery.status_code == 503
        assert delivery.get_json()["type"].endswith("/unavailable")
        assert delivery.headers["Retry-After"] == "5"

        page = shop.client.get(portal_path)
        assert page.status_code == 503
        assert "Try again in a moment" in page.get_data(as_text=True)

        # A process that never loaded its signing key cannot sign: its 503 goes unsigned.
        forget_cached_signer(app)
        cold = shop.client.post("/api/v1/licenses/validate", json={"key": key, "nonce": "n2"})
        assert cold.status_code == 503
        assert "Keygate-Signature" not in cold.headers
        assert cold.get_json()["nonce"] == "n2"
    # Back: the delivery that was refused goes through when WooCommerce sends it again.
    assert shop.deliver(wc_order(9503, "processing", [line_item(501)])).status_code == 200
    assert len(shop.order(9503)["licenses"]) == 1


def test_the_database_lost_at_the_requests_commit_is_503_and_nothing_is_lost(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database restarts after a delivery was applied and an activation made, before
    the request's one commit: each is answered as an outage (503, Retry-After; the license
    API's signed, echoing the request), never a bare 500; sent again, each goes through."""
    from connector.licensing import service
    from connector.orders import views

    if app.extensions["keygate.db"].engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to end the request's own connection")
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production
    shop.configure(501)
    applied, activated = views.apply_shop_order, service.activate

    def then_lose_the_database(done: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = done(*args, **kwargs)
            drop_database_connections(app)
            return result

        return call

    monkeypatch.setattr(views, "apply_shop_order", then_lose_the_database(applied))
    payload = wc_order(9504, "processing", [line_item(501)])
    delivery = shop.deliver(payload)
    assert delivery.status_code == 503 and delivery.headers["Retry-After"] == "5"
    monkeypatch.setattr(views, "apply_shop_order", applied)
    assert shop.deliver(payload).status_code == 200
    key = shop.order(9504)["licenses"][0]["key"]
    assert len(shop.order(9504)["licenses"]) == 1

    monkeypatch.setattr(service, "activate", then_lose_the_database(activated))
    body = {"key": key, "site": "a.example.com", "nonce": "n3"}
    answer = shop.client.post("/api/v1/licenses/activate", json=body)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert "Keygate-Signature" in answer.headers and answer.get_json()["nonce"] == "n3"
    monkeypatch.setattr(service, "activate", activated)
    again = shop.client.post("/api/v1/licenses/activate", json=body).get_json()
    assert again["code"] == "VALID" and again["license"]["activations_used"] == 1


def test_a_worker_rides_out_a_database_restart_with_a_line_not_a_traceback(
    app: Flask, shop: WebhookSender, caplog: pytest.LogCaptureFixture
) -> None:
    """`keygate worker` whose pooled connections a database restart dropped says so in one
    warning line (no ERROR with a traceback for a monitor to page someone about) and goes
    on: the next paid order's mail goes out."""
    settings = app.extensions["keygate.settings"]
    app.extensions["keygate.settings"] = replace(settings, worker_poll_seconds=0.2)
    shop.configure(501)
    stop = threading.Event()
    worker = threading.Thread(target=work_forever, args=(app, stop))
    with caplog.at_level("WARNING", logger="connector"):
        worker.start()
        try:
            time.sleep(1)  # the periodic jobs are run; the worker polls
            drop_database_connections(app)
            time.sleep(1)  # a few polls over the dropped connections
            shop.deliver(wc_order(9505, "processing", [line_item(501)]))
            deadline = time.monotonic() + 20
            sent = None
            while sent is None and time.monotonic() < deadline:
                time.sleep(0.1)
                with app.app_context():
                    sent = db.session.execute(select(Mail.sent_at)).scalar_one_or_none()
        finally:
            stop.set()
            worker.join(30)
    assert sent is not None
    worker_records = [r for r in caplog.records if r.name == "connector.jobs"]
    assert not [r for r in worker_records if r.levelno >= logging.ERROR or r.exc_info]
    assert any("connection" in r.getMessage() for r in worker_records)


def test_a_job_whose_connection_the_database_dropped_is_retried_without_a_traceback(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    """The database restarts while a worker runs a job (a stamped copy takes seconds): the
    job is tried again after its backoff, as for a peer that is down, and the log says so
    in a line, not an ERROR with a traceback."""
    if app.extensions["keygate.db"].engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to end the job's own connection")
    runs: list[int] = []

    def restarted_meanwhile(payload: dict[str, Any]) -> None:
        db.session.execute(select(func.count()).select_from(Mail))
        if not runs:
            runs.append(1)
            drop_database_connections(app)
        db.session.execute(select(func.count()).select_from(Mail))
        runs.append(2)

    jobs.HANDLERS["test.restarted_meanwhile"] = restarted_meanwhile
    try:
        with app.app_context(), transaction() as session:
            jobs.enqueue(session, "test.restarted_meanwhile", {})
        with caplog.at_level("WARNING", logger="connector"):
            assert run_pending(app) == 1
        with app.app_context():
            job = db.session.execute(select(Job)).scalar_one()
            assert (job.status, job.attempts) == ("pending", 1)
            job.run_after = utcnow()
            db.session.commit()
        assert run_pending(app) == 1
        with app.app_context():
            assert db.session.execute(select(Job.status)).scalar_one() == "done"
    finally:
        jobs.HANDLERS.pop("test.restarted_meanwhile", None)
    records = [r for r in caplog.records if r.name == "connector.jobs"]
    assert records and not [r for r in records if r.levelno >= logging.ERROR or r.exc_info]
