"""Saved R2 and Brevo credentials are tried against the real service, and the owner is told
why they do not work: LocalStack's S3 (it checks signatures of presigned requests) and the
fake Brevo the real SDK talks to."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from connector import create_app
from connector.db import db
from connector.jobs import stop_worker_thread
from connector.models import AdminUser, Store
from connector.stores import create_store
from connector.vault.checks import check_credentials
from tests.conftest import app_overrides
from tests.factories import WebhookSender
from tests.functional.test_admin_pages import PASSWORD, csrf_token, sign_in
from tests.functional.test_downloads_r2 import own_bucket, s3_client
from tests.licensing_helpers import free_port
from tests.peers import FakeBrevo

BREVO_KEY = "xkeysib-test-key"  # the key the fake Brevo takes
WRONG_BREVO_KEY = "xkeysib-wrong-Zq8mW3vN5bT7yU1pK9dF"
WRONG_SECRET = "r2-wrong-secret-Hq2Lx9Vb4Nc7Rt1Ws5Ke"
BREVO = {"api_key": BREVO_KEY, "sender_email": "shop@example.org", "sender_name": "Shop"}


@pytest.fixture
def checking_app(tmp_path: Path, database_url: str, brevo: FakeBrevo) -> Iterator[Flask]:
    (tmp_path / "instance" / "files").mkdir(parents=True)
    application = create_app(
        app_overrides(
            tmp_path,
            database_url,
            brevo_api_host=brevo.host,
            allow_private_endpoints=True,  # LocalStack's S3 is on 127.0.0.1
        )
    )
    application.config["TESTING"] = True
    yield application
    stop_worker_thread(application)
    application.extensions["keygate.db"].engine.dispose()


@pytest.fixture
def owner(checking_app: Flask) -> WebhookSender:
    with checking_app.app_context():
        created = create_store(db.session, "Checked Shop", "https://shop.example")
        db.session.add(AdminUser(username="owner", password_hash=generate_password_hash(PASSWORD)))
        db.session.commit()
    return WebhookSender(checking_app.test_client(), created)


def check(app: Flask, owner: WebhookSender, kind: str) -> dict[str, Any]:
    """The verb itself, as a job or a command would call it."""
    with app.app_context():
        store = db.session.get(Store, owner.store.store.id)
        assert store is not None
        return check_credentials(db.session, store, kind).as_json()


def put(owner: WebhookSender, kind: str, values: dict[str, Any]) -> dict[str, Any]:
    response = owner.admin("PUT", f"/credentials/{kind}", values)
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def closed_endpoint() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def r2_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.mark.slow
@pytest.mark.xdist_group("localstack")
def test_r2_credentials_are_tried_when_saved_and_on_demand(
    checking_app: Flask,
    owner: WebhookSender,
    localstack_endpoint: str,
    r2_logs: pytest.LogCaptureFixture,
) -> None:
    """Good credentials: ok, and the check leaves nothing in the bucket. A wrong secret, a
    missing bucket and an endpoint that does not answer (quickly) each say what to correct;
    the secret is in no answer and no log line."""
    bucket = f"keygate-{uuid.uuid4().hex[:12]}"
    s3 = s3_client(localstack_endpoint)
    s3.create_bucket(Bucket=bucket)
    good = own_bucket(localstack_endpoint, bucket)

    saved = put(owner, "r2", good)
    assert saved["check"] == {"ok": True, "problem": None, "reason": None}
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0  # its probe is deleted
    again = owner.admin("POST", "/credentials/r2/check")
    assert again.status_code == 200
    assert again.get_json() == {
        "kind": "r2",
        "check": {"ok": True, "problem": None, "reason": None},
    }

    wrong_secret = put(owner, "r2", {**good, "secret_access_key": WRONG_SECRET})
    assert wrong_secret["check"]["ok"] is False
    assert wrong_secret["check"]["problem"] == "refused"
    assert "secret_access_key" in wrong_secret["check"]["reason"]
    # Saved all the same (the owner may correct it later), and the check says so again.
    assert owner.admin("GET", "/credentials/r2").get_json()["credentials"]["secret_access_key"]
    assert check(checking_app, owner, "r2")["problem"] == "refused"

    missing = put(owner, "r2", {**good, "bucket": "no-such-bucket-here"})
    assert missing["check"]["problem"] == "no_bucket"
    assert "no-such-bucket-here" in missing["check"]["reason"]

    started = time.monotonic()
    closed = put(owner, "r2", {**good, "endpoint_url": closed_endpoint()})
    assert time.monotonic() - started < 5
    assert closed["check"]["problem"] == "unreachable"
    assert "endpoint_url" in closed["check"]["reason"]

    answers = [saved, again.get_json(), wrong_secret, missing, closed]
    assert not any(WRONG_SECRET in str(a) for a in answers)
    assert WRONG_SECRET not in r2_logs.text
    assert "store" in r2_logs.text and "r2 credentials check: refused" in r2_logs.text


@pytest.mark.slow
@pytest.mark.xdist_group("localstack")
def test_the_credentials_page_checks_r2_after_saving_and_with_its_button(
    checking_app: Flask, owner: WebhookSender, localstack_endpoint: str
) -> None:
    bucket = f"keygate-{uuid.uuid4().hex[:12]}"
    s3_client(localstack_endpoint).create_bucket(Bucket=bucket)
    admin: FlaskClient = checking_app.test_client()
    assert sign_in(admin) == 302
    page = f"/admin/stores/{owner.store.store.id}/credentials"
    assert "Check r2" not in admin.get(page).get_data(as_text=True)  # nothing saved yet
    form = {
        "csrf_token": csrf_token(admin, page),
        "kind": "r2",
        **own_bucket(localstack_endpoint, bucket),
        "secret_access_key": WRONG_SECRET,
    }
    saved = admin.post(page, data=form)
    assert saved.status_code == 200
    html = saved.get_data(as_text=True)
    assert "Saved the r2 settings." in html
    assert "Checked: these settings do not work. The storage refused the access key" in html
    assert "They are saved all the same" in html
    assert "****" + WRONG_SECRET[-4:] in html
    assert WRONG_SECRET not in html
    assert "Check r2" in html

    admin.post(page, data={**form, "secret_access_key": "test"})
    checked = admin.post(
        page, data={"csrf_token": form["csrf_token"], "kind": "r2", "action": "check"}
    )
    assert checked.status_code == 200
    assert "Checked: these settings work" in checked.get_data(as_text=True)
    # The button is a form like the others: without the CSRF token it is refused.
    assert admin.post(page, data={"kind": "r2", "action": "check"}).status_code == 400


def test_brevo_key_and_list_are_tried_when_saved_and_on_demand(
    checking_app: Flask,
    owner: WebhookSender,
    brevo: FakeBrevo,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    assert put(owner, "brevo", BREVO)["check"] == {"ok": True, "problem": None, "reason": None}
    assert [r.path for r in brevo.requests] == ["/v3/account"]
    assert put(owner, "brevo", {**BREVO, "list_id": 7})["check"]["ok"] is True
    assert [r.path for r in brevo.requests][-2:] == ["/v3/account", "/v3/contacts/lists/7"]

    no_list = put(owner, "brevo", {**BREVO, "list_id": 8})["check"]
    assert no_list["problem"] == "no_list"
    assert "list 8" in no_list["reason"] and "list_id" in no_list["reason"]

    refused = put(owner, "brevo", {**BREVO, "api_key": WRONG_BREVO_KEY})["check"]
    assert refused["problem"] == "refused"
    assert "api_key" in refused["reason"] and "401" in refused["reason"]
    on_demand = owner.admin("POST", "/credentials/brevo/check")
    assert on_demand.get_json()["check"]["problem"] == "refused"
    assert WRONG_BREVO_KEY not in on_demand.get_data(as_text=True)

    put(owner, "brevo", {**BREVO, "list_id": None})
    brevo.failures = [503]
    busy = check(checking_app, owner, "brevo")
    assert busy["problem"] == "unreachable" and "try again later" in busy["reason"]

    assert WRONG_BREVO_KEY not in caplog.text
    assert BREVO_KEY not in caplog.text
    assert "brevo credentials check: refused" in caplog.text


def test_a_brevo_key_saved_before_keys_were_checked_is_said_to_be_wrong(
    checking_app: Flask, owner: WebhookSender, brevo: FakeBrevo
) -> None:
    """A key with a line break (a wrapped paste saved before keys were checked) cannot go into
    a request header: the check says to type api_key again, not that Brevo is down."""
    from connector.vault.service import put_credentials

    secret = "xkeysib-TOPSECRET\nabc"
    with checking_app.app_context():
        store = db.session.get(Store, owner.store.store.id)
        assert store is not None
        put_credentials(db.session, store, "brevo", {**BREVO, "api_key": secret}, actor="test")
        db.session.commit()
    answer = owner.admin("POST", "/credentials/brevo/check")
    assert answer.status_code == 200
    result = answer.get_json()["check"]
    assert result["ok"] is False and result["problem"] == "refused"
    assert "api_key" in result["reason"] and "type it again" in result["reason"]
    assert "TOPSECRET" not in answer.get_data(as_text=True)
    assert brevo.requests == []


def test_brevo_that_cannot_be_reached_is_said_quickly(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "instance" / "files").mkdir(parents=True)
    app = create_app(
        app_overrides(tmp_path, database_url, brevo_api_host=f"{closed_endpoint()}/v3")
    )
    with app.app_context():
        created = create_store(db.session, "Shop", "https://shop.example")
        db.session.commit()
    owner = WebhookSender(app.test_client(), created)
    started = time.monotonic()
    answer = put(owner, "brevo", BREVO)["check"]
    assert time.monotonic() - started < 5
    assert answer["problem"] == "unreachable"
    app.extensions["keygate.db"].engine.dispose()


def test_a_check_with_nothing_saved_is_404_and_woocommerce_is_not_checked_here(
    checking_app: Flask, owner: WebhookSender, brevo: FakeBrevo
) -> None:
    for kind in ("r2", "brevo", "woocommerce"):
        answer = owner.admin("POST", f"/credentials/{kind}/check")
        assert answer.status_code == 404, kind
        assert answer.mimetype == "application/problem+json"
    assert owner.admin("POST", "/credentials/ftp/check").status_code == 404
    assert brevo.requests == []


def test_the_checks_are_rate_limited_per_store(
    checking_app: Flask, owner: WebhookSender, brevo: FakeBrevo
) -> None:
    put(owner, "brevo", BREVO)
    answers = [owner.admin("POST", "/credentials/brevo/check").status_code for _ in range(12)]
    assert answers[:9] == [200] * 9
    assert answers[-1] == 429
    asked = len(brevo.requests)
    assert asked == 10  # the save's check and nine more: none once the budget is spent
    # Saving counts too (each save asks Brevo): refused as well until the window ends.
    assert owner.admin("PUT", "/credentials/brevo", BREVO).status_code == 429
    assert len(brevo.requests) == asked
