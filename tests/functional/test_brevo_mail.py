"""A store with Brevo credentials mails buyers through Brevo and pushes them as contacts.

The real sib-api-v3-sdk talks to a local server that speaks Brevo's API.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from flask import Flask
from sqlalchemy import select

from connector import create_app
from connector.db import db, iso, transaction, utcnow
from connector.integrations.brevo import KEY_KEPT, KEY_LIFETIME
from connector.jobs import retry_dead, run_pending, stop_worker_thread
from connector.mail.service import ORDER_MAIL_JOB, REFUSED_AT
from connector.models import AuditEvent, Job, Mail
from connector.stores import create_store
from tests.conftest import app_overrides
from tests.factories import WebhookSender, line_item, wc_order
from tests.peers import FakeBrevo

BREVO = {
    "api_key": "xkeysib-test-key",
    "sender_email": "shop@example.org",
    "sender_name": "Bücher Shop",
    "list_id": 7,
}


@pytest.fixture
def brevo_shop(brevo_app: Flask, brevo: FakeBrevo) -> WebhookSender:
    with brevo_app.app_context():
        created = create_store(db.session, "Bücher Shop", "https://shop.example")
        db.session.commit()
    sender = WebhookSender(brevo_app.test_client(), created)
    saved = sender.admin("PUT", "/credentials/brevo", BREVO)
    assert saved.status_code == 200
    assert saved.get_json()["check"]["ok"] is True
    brevo.requests.clear()  # the save's check (GET /account, /contacts/lists/7): not the tests'
    sender.configure(501)
    return sender


def make_due(app: Flask) -> None:
    with app.app_context(), transaction() as session:
        for job in session.execute(select(Job).where(Job.status == "pending")).scalars():
            job.run_after = utcnow() - dt.timedelta(seconds=1)


@contextmanager
def shop_without_brevo_yet(
    tmp_path: Path, database_url: str, brevo: FakeBrevo, attempts: int, **settings: Any
) -> Iterator[tuple[Flask, WebhookSender]]:
    """A store whose Brevo credentials come later (or wrong), mail jobs giving up after
    ``attempts``: the app, its job thread stopped at the end, and the shop's sender."""
    (tmp_path / "instance" / "files").mkdir(parents=True)
    overrides = app_overrides(tmp_path, database_url, brevo_api_host=brevo.host, **settings)
    application = create_app({**overrides, "job_max_attempts": attempts})
    try:
        with application.app_context():
            created = create_store(db.session, "Bücher Shop", "https://shop.example")
            db.session.commit()
        sender = WebhookSender(application.test_client(), created)
        sender.configure(501)
        yield application, sender
    finally:
        stop_worker_thread(application)
        application.extensions["keygate.db"].engine.dispose()


def mail_jobs(app: Flask) -> dict[int, str]:
    """Each order's mail job's status, by the order's id."""
    with app.app_context():
        return dict(
            db.session.execute(
                select(Job.payload["order_id"].as_integer(), Job.status).where(
                    Job.kind == "mail.order_issued"
                )
            ).all()
        )


def test_buyer_is_mailed_through_brevo_and_pushed_to_the_list(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    brevo_shop.deliver(wc_order(9600, "processing", [line_item(501)], first_name="Zoë"))
    key = brevo_shop.order(9600)["licenses"][0]["key"]
    run_pending(brevo_app)
    (sent,) = brevo.sent()
    assert sent.body["to"][0]["email"] == "jurgen@example.org"
    assert sent.body["sender"] == {"email": "shop@example.org", "name": "Bücher Shop"}
    assert key in sent.body["textContent"]
    assert key in sent.body["htmlContent"]
    contact = brevo.contacts["jurgen@example.org"]
    assert contact["listIds"] == [7]
    assert contact["attributes"]["FIRSTNAME"] == "Zoë"
    with brevo_app.app_context():
        mail = db.session.execute(select(Mail)).scalar_one()
        assert mail.backend == "brevo"
        assert mail.provider_message_id == "<1@smtp-relay.brevo.test>"


def test_a_brevo_outage_delays_the_mail_but_never_loses_it(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    brevo.failures.extend([503, 503, 429, 503])
    brevo_shop.deliver(wc_order(9601, "processing", [line_item(501)]))
    run_pending(brevo_app)
    with brevo_app.app_context():
        mail_job = db.session.execute(
            select(Job).where(Job.kind == "mail.order_issued")
        ).scalar_one()
        assert mail_job.status == "pending" and mail_job.attempts >= 1
        assert "Brevo answered" in (mail_job.last_error or "")
    for _ in range(5):
        make_due(brevo_app)
        run_pending(brevo_app)
    assert len(brevo.sent()) == 1
    with brevo_app.app_context():
        assert db.session.execute(select(Mail.sent_at)).scalar_one() is not None
        statuses = set(db.session.execute(select(Job.status)).scalars())
    assert statuses == {"done"}


def test_a_failed_tls_handshake_with_brevo_is_an_outage_not_a_refusal(
    tmp_path: Path, database_url: str, brevo: FakeBrevo
) -> None:
    """Brevo's TLS not coming up (here: https to a server speaking plain HTTP) is "try
    later", as a refused connection is: the buyer's mail waits, it is not given up on."""
    (tmp_path / "instance" / "files").mkdir(parents=True)
    host = brevo.host.replace("http://", "https://")
    application = create_app(app_overrides(tmp_path, database_url, brevo_api_host=host))
    try:
        with application.app_context():
            created = create_store(db.session, "Bücher Shop", "https://shop.example")
            db.session.commit()
        sender = WebhookSender(application.test_client(), created)
        saved = sender.admin("PUT", "/credentials/brevo", BREVO)
        assert saved.get_json()["check"]["problem"] == "unreachable"
        sender.configure(501)
        sender.deliver(wc_order(9604, "processing", [line_item(501)]))
        run_pending(application)
        with application.app_context():
            job = db.session.execute(
                select(Job).where(Job.kind == "mail.order_issued")
            ).scalar_one()
            assert job.status == "pending", job.last_error
            assert "Brevo unreachable" in (job.last_error or "")
            assert db.session.execute(select(Mail.sent_at)).scalar_one() is None
    finally:
        stop_worker_thread(application)
        application.extensions["keygate.db"].engine.dispose()


def test_stores_without_brevo_use_the_console(app: Flask, shop: WebhookSender) -> None:
    shop.configure(501)
    shop.deliver(wc_order(9602, "processing", [line_item(501)]))
    run_pending(app)
    with app.app_context():
        assert db.session.execute(select(Mail.backend)).scalar_one() == "console"


def test_a_mail_brevo_took_whose_answer_was_lost_is_not_sent_twice(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Every attempt of one mail carries the same idempotency key: when Brevo accepted the
    mail but its answer never arrived, the retry is refused as a duplicate (Brevo's 400
    ``duplicate_parameter``), and that means the mail went: it is sent, the job done. Taken
    for a refusal, the job retried until the key's 30 minutes were over, and then mailed
    the buyer a second time (meanwhile the outbox blamed the sender address)."""
    brevo.lost_answers = 1
    brevo_shop.deliver(wc_order(9602, "processing", [line_item(501)]))
    run_pending(brevo_app)
    with brevo_app.app_context():
        assert db.session.execute(select(Mail.sent_at)).scalar_one_or_none() is None
    make_due(brevo_app)
    run_pending(brevo_app)
    mail_requests = [r for r in brevo.requests if r.path == "/v3/smtp/email"]
    keys = {r.body["headers"]["idempotencyKey"] for r in mail_requests}
    assert len(mail_requests) == 2 and len(keys) == 1
    uuid.UUID(keys.pop())  # Brevo asks for a UUID
    assert len(brevo.sent()) == 1
    with brevo_app.app_context():
        mail = db.session.execute(select(Mail)).scalar_one()
        assert mail.sent_at is not None and mail.backend == "brevo"
        assert mail.provider_message_id is None  # it came with the answer that was lost
        job = db.session.execute(select(Job).where(Job.kind == ORDER_MAIL_JOB)).scalar_one()
        assert (job.status, job.last_error) == ("done", None)
    # Half an hour later Brevo has forgotten the key: nothing is left to send it again.
    brevo.keys_expire()
    make_due(brevo_app)
    run_pending(brevo_app)
    assert len(brevo.sent()) == 1


def test_a_mail_brevo_refused_is_not_taken_for_sent_when_brevo_kept_its_key(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Brevo does not say whether a mail it refused (an unverified sender, fixed since) keeps
    its idempotency key. If it does, the retry's "key used" answer means nothing went: the
    mail waits for the key's 30 minutes to end, then goes; it is never recorded as sent
    unsent."""
    brevo.keeps_refused_keys = True
    brevo.failures.append(400)
    brevo_shop.deliver(wc_order(9603, "processing", [line_item(501)]))
    run_pending(brevo_app)
    for _ in range(2):  # "key used", and again, within the key's 30 minutes
        make_due(brevo_app)
        run_pending(brevo_app)
    assert brevo.sent() == []
    with brevo_app.app_context():
        assert db.session.execute(select(Mail.sent_at)).scalar_one() is None
    brevo.keys_expire()
    make_due(brevo_app)
    run_pending(brevo_app)
    assert len(brevo.sent()) == 1
    with brevo_app.app_context():
        assert db.session.execute(select(Mail.sent_at)).scalar_one() is not None


def mail_job(app: Flask) -> Job:
    with app.app_context():
        job = db.session.execute(select(Job).where(Job.kind == ORDER_MAIL_JOB)).scalar_one()
        db.session.expunge(job)
        return job


def mail_sent_at(app: Flask) -> dt.datetime | None:
    with app.app_context():
        sent_at: dt.datetime | None = db.session.execute(select(Mail.sent_at)).scalar_one()
        return sent_at


@pytest.mark.parametrize("between", [503, 429])
def test_a_refused_mail_is_not_taken_for_sent_after_an_attempt_brevo_did_not_take(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo, between: int
) -> None:
    """Brevo refused the first attempt and kept its key; the second got no say on the mail
    (Brevo down, busy); the third is answered "key used". Nothing went: the mail waits for
    the key's 30 minutes to end, then goes. Only the last attempt was looked at, so the
    answer was taken for the mail sent: the outbox said delivered, the buyer had no keys."""
    brevo.keeps_refused_keys = True
    brevo_shop.deliver(wc_order(9610, "processing", [line_item(501)]))
    brevo.failures.append(400)
    run_pending(brevo_app)
    brevo.failures.append(between)
    for _ in range(3):  # the failure between, then "key used" twice
        make_due(brevo_app)
        run_pending(brevo_app)
    assert brevo.sent() == [] and mail_sent_at(brevo_app) is None
    assert [r.path for r in brevo.requests].count("/v3/smtp/email") == 4
    job = mail_job(brevo_app)
    assert job.status == "pending" and KEY_KEPT in (job.last_error or ""), job.last_error
    brevo.keys_expire()
    make_due(brevo_app)
    run_pending(brevo_app)
    assert len(brevo.sent()) == 1 and mail_sent_at(brevo_app) is not None
    assert mail_job(brevo_app).status == "done"


def test_a_refused_mail_the_owner_retries_is_not_taken_for_sent(
    tmp_path: Path, database_url: str, brevo: FakeBrevo
) -> None:
    """A mail dead after Brevo refused it (the sender not verified, fixed since): the
    owner's Retry starts its attempts again, and must not forget the refusal. Brevo kept
    the refused attempt's key; the retried attempt gets no say (a 503), the next "key
    used": the mail is not recorded as sent, and goes once the key's 30 minutes are over."""
    with shop_without_brevo_yet(tmp_path, database_url, brevo, 1) as (application, sender):
        assert sender.admin("PUT", "/credentials/brevo", BREVO).status_code == 200
        brevo.keeps_refused_keys = True
        sender.deliver(wc_order(9611, "processing", [line_item(501)]))
        brevo.failures.append(400)
        run_pending(application)

        def owner_retries() -> None:
            with application.app_context(), transaction() as session:
                job = session.execute(select(Job).where(Job.kind == ORDER_MAIL_JOB)).scalar_one()
                assert job.status == "dead", job.last_error
                assert retry_dead(session, job, store_id=sender.store.store.id, actor="owner")
            run_pending(application)

        brevo.failures.append(503)
        owner_retries()
        owner_retries()  # "key used"
        assert brevo.sent() == [] and mail_sent_at(application) is None
        assert KEY_KEPT in (mail_job(application).last_error or "")
        brevo.keys_expire()
        owner_retries()
        assert len(brevo.sent()) == 1 and mail_sent_at(application) is not None


def test_a_refusal_older_than_the_key_does_not_hold_a_mail_brevo_took(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Brevo refused the first attempt; more than the key's 30 minutes later it took one
    whose answer was lost. Its "key used" answer to the next attempt means the mail went
    (the refusal's key is gone): recorded as sent, not waited out and mailed twice."""
    brevo.keeps_refused_keys = True
    brevo_shop.deliver(wc_order(9612, "processing", [line_item(501)]))
    brevo.failures.append(400)
    run_pending(brevo_app)
    with brevo_app.app_context(), transaction() as session:
        job = session.execute(select(Job).where(Job.kind == ORDER_MAIL_JOB)).scalar_one()
        refused_at = job.payload[REFUSED_AT]
        long_ago = utcnow() - KEY_LIFETIME - dt.timedelta(minutes=1)
        job.payload = {**job.payload, REFUSED_AT: iso(long_ago)}
    assert dt.datetime.fromisoformat(refused_at) <= utcnow()
    brevo.keys_expire()
    brevo.lost_answers = 1
    for _ in range(2):  # taken, its answer lost; then "key used"
        make_due(brevo_app)
        run_pending(brevo_app)
    assert len(brevo.sent()) == 1 and mail_sent_at(brevo_app) is not None
    assert mail_job(brevo_app).status == "done"
    brevo.keys_expire()
    make_due(brevo_app)
    run_pending(brevo_app)
    assert len(brevo.sent()) == 1


def test_a_stalled_brevo_is_an_outage_not_a_hung_worker(
    brevo_app: Flask,
    brevo_shop: WebhookSender,
    brevo: FakeBrevo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Brevo that does not answer within the timeout is "try later": the job is retried,
    the worker goes on."""
    monkeypatch.setattr("connector.integrations.brevo.TIMEOUT", (1.0, 1.0))
    brevo.stall_seconds = 3.0
    brevo_shop.deliver(wc_order(9603, "processing", [line_item(501)]))
    started = time.monotonic()
    run_pending(brevo_app)
    assert time.monotonic() - started < 10
    with brevo_app.app_context():
        job = db.session.execute(select(Job).where(Job.kind == "mail.order_issued")).scalar_one()
        assert job.status == "pending" and "Brevo unreachable" in (job.last_error or "")
    brevo.stall_seconds = 0.0
    make_due(brevo_app)
    run_pending(brevo_app)
    with brevo_app.app_context():
        assert db.session.execute(select(Mail.sent_at)).scalar_one() is not None


def test_the_owner_sees_order_mails_not_delivered_yet(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """The owner's outbox lists an order mail held up by an outage (retrying, with the
    next attempt) and one past its last attempt (dead); another store sees neither."""
    brevo.failures.extend([503])
    brevo_shop.deliver(wc_order(9604, "processing", [line_item(501)]))
    run_pending(brevo_app)
    outbox = brevo_shop.admin("GET", "/outbox").get_json()
    [waiting] = outbox["undelivered"]
    assert (waiting["order_id"], waiting["status"], waiting["attempts"]) == ("9604", "retrying", 1)
    [stored] = outbox["mails"]  # the mail itself is kept, not sent yet
    assert stored["sent_at"] is None
    assert "Brevo answered 503" in waiting["last_error"] and waiting["next_attempt_at"]
    with brevo_app.app_context(), transaction() as session:
        for job in session.execute(select(Job).where(Job.kind == "mail.order_issued")).scalars():
            job.status = "dead"
        other = create_store(session, "Other", "https://other.example")
    [dead] = brevo_shop.admin("GET", "/outbox").get_json()["undelivered"]
    assert (dead["status"], dead["next_attempt_at"]) == ("dead", None)
    assert (
        WebhookSender(brevo_shop.client, other).admin("GET", "/outbox").get_json()["undelivered"]
        == []
    )
    with brevo_app.app_context(), transaction() as session:
        for job in session.execute(select(Job).where(Job.kind == "mail.order_issued")).scalars():
            job.status = "pending"
    make_due(brevo_app)
    run_pending(brevo_app)
    outbox = brevo_shop.admin("GET", "/outbox").get_json()
    assert outbox["undelivered"] == []
    [sent] = outbox["mails"]
    assert (sent["id"], sent["sent_at"] is not None) == (stored["id"], True)


def test_the_owner_resends_a_dead_order_mail(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """A mail dead after a long outage: the owner mails the buyer again (current keys and
    links), audited; once it is delivered the dead one is no longer listed as undelivered."""
    brevo.failures.extend([503])
    brevo_shop.deliver(wc_order(9605, "processing", [line_item(501)]))
    run_pending(brevo_app)
    with brevo_app.app_context(), transaction() as session:
        for job in session.execute(select(Job).where(Job.kind == "mail.order_issued")).scalars():
            job.status = "dead"
    assert brevo_shop.admin("GET", "/outbox").get_json()["undelivered"][0]["status"] == "dead"

    answer = brevo_shop.admin("POST", "/orders/9605/resend")
    assert (answer.status_code, answer.get_json()) == (202, {"queued": True})
    run_pending(brevo_app)
    outbox = brevo_shop.admin("GET", "/outbox").get_json()
    assert outbox["undelivered"] == []
    resent, dead = outbox["mails"]  # newest first
    assert (resent["sent_at"] is not None, dead["sent_at"]) == (True, None)
    [sent] = brevo.sent()
    key = brevo_shop.admin("GET", "/orders/9605").get_json()["licenses"][0]["key"]
    assert key in sent.body["textContent"]
    [event] = brevo_shop.admin("GET", "/audit?action=mail.resent").get_json()["events"]
    assert (event["actor"], event["subject"]) == ("api", "order:9605")


def test_a_resend_the_owner_cannot_make_is_a_clear_error(
    brevo_app: Flask, brevo_shop: WebhookSender
) -> None:
    brevo_shop.deliver(wc_order(9606, "processing", [line_item(501)]))
    with brevo_app.app_context(), transaction() as session:
        other = create_store(session, "Other", "https://other.example")
    unknown = brevo_shop.admin("POST", "/orders/1234/resend")
    assert unknown.status_code == 404
    assert unknown.content_type == "application/problem+json"
    elsewhere = WebhookSender(brevo_shop.client, other).admin("POST", "/orders/9606/resend")
    assert elsewhere.status_code == 404
    assert brevo_shop.admin("DELETE", "/customers/jurgen@example.org").status_code == 200
    erased = brevo_shop.admin("POST", "/orders/9606/resend")
    assert erased.status_code == 409
    assert "no address to mail" in erased.get_json()["detail"]
    with brevo_app.app_context():
        assert db.session.execute(select(Job).where(Job.payload["resend"].as_boolean())).all() == []


def test_a_mail_that_dies_is_in_the_owners_audit_log(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Nobody watches the outbox: a mail given up on after its last attempt leaves an
    entry in the store's audit log (type of error only), which the owner can poll."""
    brevo.failures.extend([503] * 3)
    brevo_shop.deliver(wc_order(9607, "processing", [line_item(501)]))
    run_pending(brevo_app)
    max_attempts = brevo_app.extensions["keygate.settings"].job_max_attempts
    with brevo_app.app_context(), transaction() as session:
        job = session.execute(select(Job).where(Job.kind == "mail.order_issued")).scalar_one()
        job.attempts = max_attempts - 1
        job_id = job.id
    make_due(brevo_app)
    run_pending(brevo_app)
    [event] = brevo_shop.admin("GET", "/audit?action=job.dead").get_json()["events"]
    assert event["subject"] == f"job:{job_id}"
    assert event["detail"] == {
        "kind": "mail.order_issued",
        "attempts": max_attempts,
        "error": "RetryLater",
    }


def test_the_order_page_says_why_its_mail_is_not_sent(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """A store's own admin (who cannot see the instance's jobs) reads on the order page why
    the buyer's mail waits, and when it is tried again; once dead, what to do."""
    from werkzeug.security import generate_password_hash

    from connector.models import AdminUser, Order
    from tests.functional.test_admin_pages import PASSWORD, csrf_token

    brevo.failures.extend([503])
    brevo_shop.deliver(wc_order(9605, "processing", [line_item(501)]))
    run_pending(brevo_app)
    with brevo_app.app_context():
        db.session.add(
            AdminUser(
                username="ana",
                password_hash=generate_password_hash(PASSWORD),
                store_id=brevo_shop.store.store.id,
            )
        )
        db.session.commit()
        order_id = db.session.execute(select(Order.id)).scalar_one()
    ana = brevo_app.test_client()
    ana.post(
        "/admin/login",
        data={
            "username": "ana",
            "password": PASSWORD,
            "csrf_token": csrf_token(ana, "/admin/login"),
        },
    )
    page = f"/admin/orders/{order_id}"
    html = ana.get(page).get_data(as_text=True)
    assert "not sent yet: attempt 1 failed (Brevo answered 503)" in html and "next try" in html
    with brevo_app.app_context(), transaction() as session:
        for job in session.execute(select(Job).where(Job.kind == "mail.order_issued")).scalars():
            job.status = "dead"
    html = ana.get(page).get_data(as_text=True)
    assert "not sent: gave up after 1 attempts (Brevo answered 503)" in html


def transaction_open_elsewhere(database_url: str) -> bool:
    """Whether another connection holds a transaction open now: SQLite's one write lock (every
    Keygate transaction takes it), a PostgreSQL session idle in a transaction."""
    if database_url.startswith("sqlite"):
        check = sqlite3.connect(
            database_url.removeprefix("sqlite:///"), timeout=0.2, isolation_level=None
        )
        try:
            check.execute("BEGIN IMMEDIATE")
            check.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            check.close()
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as check:
        row = check.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
        ).fetchone()
    return row is not None and row[0] > 0


def test_no_transaction_is_open_while_brevo_answers(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo, database_url: str
) -> None:
    """Brevo may take up to its timeout to answer: the mail, the push and the removal each
    end their transaction first. On SQLite one held open would stall every webhook, click
    and activation (and fail them past busy_timeout)."""
    seen: dict[str, bool] = {}
    brevo.on_request = lambda path: seen.setdefault(
        path.rsplit("/", 1)[-1], transaction_open_elsewhere(database_url)
    )
    brevo_shop.deliver(wc_order(9605, "processing", [line_item(501)]))
    run_pending(brevo_app)
    assert brevo_shop.admin("DELETE", "/customers/jurgen@example.org").status_code == 200
    run_pending(brevo_app)
    assert seen == {"email": False, "contacts": False, "remove": False}
    assert len(brevo.sent()) == 1 and not brevo.in_list("jurgen@example.org", 7)


def test_a_mail_held_up_by_an_outage_sends_what_the_buyer_has_when_it_goes(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """The first attempt fails; one of the two keys is revoked before the retry: the mail
    that goes out is written again, without the key taken back."""
    brevo.failures.extend([503])
    brevo_shop.deliver(wc_order(9606, "processing", [line_item(501, quantity=2)]))
    kept, revoked = (lic["key"] for lic in brevo_shop.order(9606)["licenses"])
    run_pending(brevo_app)
    assert brevo.sent() == []
    assert brevo_shop.admin("POST", f"/licenses/{revoked}/revoke").status_code == 200
    make_due(brevo_app)
    run_pending(brevo_app)
    (sent,) = brevo.sent()
    assert kept in sent.body["textContent"] and kept in sent.body["htmlContent"]
    assert revoked not in sent.body["textContent"] + sent.body["htmlContent"]
    with brevo_app.app_context():
        stored = db.session.execute(select(Mail)).scalar_one()
        assert stored.sent_at is not None and revoked not in stored.body_text


@pytest.mark.parametrize("failed_first", [True, False])
def test_an_order_refunded_before_its_mail_went_gets_none(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo, failed_first: bool
) -> None:
    """Refunded while its mail waited (an outage, a busy worker): no mail goes, the copy
    written by a failed attempt is dropped, the owner reads why in the audit log, and the
    buyer is not added to the store's list."""
    brevo_shop.deliver(wc_order(9607, "processing", [line_item(501)]))
    if failed_first:
        brevo.failures.extend([503])
        run_pending(brevo_app, kinds={"order.issued", "mail.order_issued"})
        with brevo_app.app_context():
            assert db.session.execute(select(Mail.sent_at)).scalar_one() is None
    brevo_shop.deliver(wc_order(9607, "refunded", [line_item(501)], modified=60))
    make_due(brevo_app)
    run_pending(brevo_app)
    assert [r.path for r in brevo.requests if r.path != "/v3/smtp/email"] == []
    assert brevo.sent() == [] and brevo.contacts == {}
    with brevo_app.app_context():
        assert db.session.execute(select(Mail)).scalars().all() == []
        assert set(db.session.execute(select(Job.status)).scalars()) == {"done"}
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "mail.not_sent")
        ).scalar_one()
        assert event.subject == "order:9607"
        assert event.detail == {"order_status": "refunded"}


def test_an_order_whose_address_is_not_one_mailbox_is_issued_and_mailed_nothing(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """A CR/LF in the address would hand Brevo a second recipient: the buyer gets their keys
    (the order page shows them), nothing goes to Brevo."""
    bad = "jurgen@example.org\r\nBcc: attacker@evil.example"
    brevo_shop.deliver(wc_order(9608, "processing", [line_item(501)], email=bad))
    body = brevo_shop.order(9608)
    assert body["order"]["email"] is None and len(body["licenses"]) == 1
    run_pending(brevo_app)
    assert brevo.requests == []


def test_a_key_with_a_line_break_is_refused_and_one_stored_before_never_shows(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo, caplog: pytest.LogCaptureFixture
) -> None:
    """The key goes into a request header: a line break inside (a wrapped paste) made the
    HTTP library refuse the request with an error quoting the key, kept in the job's error,
    the log and the outbox. It is refused when saved (422, naming the field, not the value);
    one saved before is a refusal naming only the error's type."""
    from connector.models import Store
    from connector.vault.service import put_credentials

    secret = "xkeysib-TOPSECRET\nabc"
    refused = brevo_shop.admin("PUT", "/credentials/brevo", {**BREVO, "api_key": secret})
    assert refused.status_code == 422 and refused.get_json()["field"] == "api_key"
    assert "TOPSECRET" not in refused.get_data(as_text=True)
    with brevo_app.app_context():
        store = db.session.get(Store, brevo_shop.store.store.id)
        assert store is not None
        put_credentials(db.session, store, "brevo", {**BREVO, "api_key": secret}, actor="test")
        db.session.commit()
    brevo_shop.deliver(wc_order(9609, "processing", [line_item(501)]))
    run_pending(brevo_app)
    with brevo_app.app_context():
        job = db.session.execute(select(Job).where(Job.kind == "mail.order_issued")).scalar_one()
        assert job.last_error is not None and "could not be made (ValueError)" in job.last_error
    shown = (
        (job.last_error or "")
        + caplog.text
        + brevo_shop.admin("GET", "/outbox").get_data(as_text=True)
    )
    assert "TOPSECRET" not in shown


@pytest.mark.parametrize(
    ("status", "said"),
    [
        (400, "is sender_email a sender or domain verified in Brevo"),
        (401, "check the store's Brevo api_key"),
    ],
)
def test_a_mail_brevo_refuses_says_in_the_outbox_what_to_check(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo, status: int, said: str
) -> None:
    """A mail Brevo refuses for good (an unverified sender, a key deleted in Brevo) tells
    the owner, in the outbox's last error, what to check, not only "400 Bad Request"; never
    the addresses Brevo's message may echo."""
    brevo_shop.deliver(wc_order(9620, "processing", [line_item(501)]))
    brevo.failures.append(status)
    run_pending(brevo_app)
    assert brevo.sent() == []
    with brevo_app.app_context():
        errors = [
            job.last_error
            for job in db.session.scalars(select(Job).where(Job.last_error.is_not(None)))
        ]
    (error,) = errors
    assert error.startswith(f"BrevoRejected: Brevo refused the mail ({status} error): "), error
    assert said in error and error.endswith("then retry the job")
    assert "@" not in error


def test_mail_held_for_brevo_credentials_goes_once_they_are_saved(
    tmp_path: Path, database_url: str, brevo: FakeBrevo
) -> None:
    """``KEYGATE_MAIL_BACKEND=brevo``: the store page says a buyer's mail is held in the
    outbox until the store has Brevo credentials. Mails held past their last attempt (the
    owner gave the credentials a day later) and mails waiting out their backoff both go as
    soon as the credentials are saved, once each, without the owner retrying each job."""
    with shop_without_brevo_yet(tmp_path, database_url, brevo, 2, mail_backend="brevo") as (
        application,
        sender,
    ):
        sender.deliver(wc_order(9700, "processing", [line_item(501)]))
        for _ in range(3):  # held past its last attempt: dead
            run_pending(application)
            make_due(application)
        sender.deliver(wc_order(9701, "processing", [line_item(501)]))
        run_pending(application)  # held, waiting out its backoff
        assert sorted(mail_jobs(application).values()) == ["dead", "pending"]
        assert brevo.sent() == []
        saved = sender.admin("PUT", "/credentials/brevo", BREVO)
        assert saved.status_code == 200
        run_pending(application)
        assert len(brevo.sent()) == 2
        assert {s.body["to"][0]["email"] for s in brevo.sent()} == {"jurgen@example.org"}
        make_due(application)
        run_pending(application)
        assert len(brevo.sent()) == 2
        assert set(mail_jobs(application).values()) == {"done"}
        with application.app_context():
            assert all(m.sent_at is not None for m in db.session.scalars(select(Mail)))
            retried = db.session.scalars(
                select(AuditEvent).where(AuditEvent.action == "job.retried")
            ).all()
            assert [(e.actor, e.detail) for e in retried] == [
                ("keygate", {"kind": "mail.order_issued", "reason": "brevo credentials saved"})
            ]


def test_mail_held_for_brevo_credentials_past_the_jobs_retention_goes_once_they_are_saved(
    tmp_path: Path, database_url: str, brevo: FakeBrevo
) -> None:
    """A mail held past its last attempt keeps its error's type only once the jobs'
    retention has passed (the daily purge): the credentials saved after that still send it,
    as the store page promised, rather than leave the buyer without their keys."""
    from connector.privacy.service import purge_expired_records

    with shop_without_brevo_yet(tmp_path, database_url, brevo, 1, mail_backend="brevo") as (
        application,
        sender,
    ):
        sender.deliver(wc_order(9702, "processing", [line_item(501)]))
        run_pending(application)
        with application.app_context(), transaction() as session:
            purge_expired_records(session, utcnow() + dt.timedelta(days=31))
            job = session.execute(select(Job).where(Job.kind == "mail.order_issued")).scalar_one()
            assert (job.status, job.last_error) == ("dead", "RetryLater")
        assert sender.admin("PUT", "/credentials/brevo", BREVO).status_code == 200
        run_pending(application)
        (sent,) = brevo.sent()
        assert sent.body["to"][0]["email"] == "jurgen@example.org"
        # A mail that died in a Brevo outage, whose buyer the owner's resend reached since,
        # is not sent again when the credentials are saved again.
        brevo.failures.append(503)
        sender.deliver(wc_order(9703, "processing", [line_item(501)]))
        run_pending(application)
        assert sender.admin("POST", "/orders/9703/resend").status_code == 202
        run_pending(application)
        assert len(brevo.sent()) == 2
        with application.app_context(), transaction() as session:
            purge_expired_records(session, utcnow() + dt.timedelta(days=31))
        assert sender.admin("PUT", "/credentials/brevo", BREVO).status_code == 200
        run_pending(application)
        assert len(brevo.sent()) == 2


def test_mails_brevo_refused_for_the_key_go_once_a_new_key_is_saved(
    tmp_path: Path, database_url: str, brevo: FakeBrevo
) -> None:
    """A key revoked in Brevo: every mail is refused (401) until the owner saves a new one.
    Saving it sends those mails at once, the ones past their last attempt too, as it does
    mails held for want of any key; a mail refused for something a key does not cure (a
    400: the sender not verified) stays dead for the owner's Retry."""
    with shop_without_brevo_yet(tmp_path, database_url, brevo, 2) as (application, sender):
        revoked = sender.admin("PUT", "/credentials/brevo", {**BREVO, "api_key": "xkeysib-old"})
        assert revoked.status_code == 200
        sender.deliver(wc_order(9720, "processing", [line_item(501)]))
        for _ in range(3):  # refused past its last attempt: dead
            run_pending(application)
            make_due(application)
        sender.deliver(wc_order(9721, "processing", [line_item(501)]))
        run_pending(application)  # refused, waiting out its backoff
        assert sorted(mail_jobs(application).values()) == ["dead", "pending"]
        assert brevo.sent() == []
        assert sender.admin("PUT", "/credentials/brevo", BREVO).status_code == 200
        run_pending(application)
        assert len(brevo.sent()) == 2
        assert set(mail_jobs(application).values()) == {"done"}

        brevo.failures = [400] * 10  # the sender no longer verified in Brevo
        sender.deliver(wc_order(9722, "processing", [line_item(501)]))
        for _ in range(3):
            run_pending(application)
            make_due(application)
        brevo.failures = []
        assert sorted(mail_jobs(application).values()) == ["dead", "done", "done"]
        assert sender.admin("PUT", "/credentials/brevo", BREVO).status_code == 200
        run_pending(application)
        assert len(brevo.sent()) == 2
        assert sorted(mail_jobs(application).values()) == ["dead", "done", "done"]


def test_a_customer_erased_before_their_mail_went_is_mailed_nothing(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Erased while the mail waited (an outage, a busy worker): the order's address is a
    pseudonym now, never an address to mail, so the job ends with nothing sent and no copy
    of the mail naming them kept."""
    brevo_shop.deliver(wc_order(9620, "processing", [line_item(501)]))
    brevo.failures.extend([503])
    run_pending(brevo_app, kinds={"order.issued", "mail.order_issued"})
    assert brevo_shop.admin("DELETE", "/customers/jurgen@example.org").status_code == 200
    make_due(brevo_app)
    run_pending(brevo_app)
    assert brevo.sent() == []
    with brevo_app.app_context():
        assert db.session.execute(select(Mail)).scalars().all() == []
        # Done, not failing and retried: the outbox shows no mail still owed to them.
        assert set(db.session.execute(select(Job.status)).scalars()) == {"done"}
