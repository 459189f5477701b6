"""Over a full flow, no log line and no stored row holds a secret or a license key in clear."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import insert, select, text

from connector.db import Base, db, transaction
from connector.jobs import run_pending
from connector.models import Store
from connector.orders.reconcile import reconcile_store
from connector.vault.connection import shop_client_for
from tests.factories import WebhookSender, line_item, shifted, wc_order
from tests.functional.test_vault_credentials import BREVO, R2, app_settings
from tests.wc_rest import CONSUMER_KEY, CONSUMER_SECRET, FakeShop, connect_store, fake_shop

__all__ = ["app_settings", "fake_shop"]  # app_settings: R2's endpoint is on 127.0.0.1


def dump_database(app: Flask) -> str:
    """Every row of every table, as the database returns it (no type decoding)."""
    lines = []
    with app.app_context():
        for table in Base.metadata.sorted_tables:
            for row in db.session.execute(text(f'SELECT * FROM "{table.name}"')):  # noqa: S608
                lines.append(f"{table.name}: {tuple(row)!r}")
    return "\n".join(lines)


def test_full_flow_leaves_no_secret_in_logs_or_tables(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop, caplog: pytest.LogCaptureFixture
) -> None:
    """Credentials, connection, webhooks, issuing, mail, write-back, refund, reconcile."""
    caplog.set_level(logging.DEBUG)
    for name in ("connector", "plugin", "sqlalchemy.engine", "urllib3", "responses"):
        caplog.set_level(logging.DEBUG, logger=name)

    assert shop.admin("PUT", "/credentials/r2", R2).status_code == 200
    assert shop.admin("PUT", "/credentials/brevo", BREVO).status_code == 200
    connect_store(app, shop, fake_shop)
    shop.configure(501)
    order = wc_order(9990, "processing", [line_item(501, quantity=2, line_id=88)])
    fake_shop.orders[9990] = order
    assert fake_shop.deliver(shop.client, "order.created", order).status_code == 200
    run_pending(app)
    fake_shop.add_refund(9990, line_id=88, quantity=1, amount="49.00")
    order["date_modified_gmt"] = shifted("2026-11-20T12:10:00")
    assert fake_shop.deliver(shop.client, "order.updated", order).status_code == 200
    run_pending(app)
    with app.app_context(), transaction() as session:
        store = session.get(Store, shop.store.store.id)
        assert store is not None
        client = shop_client_for(session, store)
        assert client is not None
        reconcile_store(session, store, client)
        webhook_secret = store.webhook_secret
    # A failed signature and a bad callback are logged too.
    shop.deliver(wc_order(9991), "order.created")
    shop.client.post(
        f"/webhooks/woocommerce/{shop.store.store.public_id}/auth-callback",
        json={"consumer_key": CONSUMER_KEY, "consumer_secret": CONSUMER_SECRET},
    )

    body = shop.order(9990)
    keys = [lic["key"] for lic in body["licenses"]]
    assert len(keys) == 2
    assert [lic["status"] for lic in body["licenses"]] == ["active", "revoked"]
    assert fake_shop.notes[9990], "the write-back ran"
    assert caplog.records, "the flow logged something"

    secrets = {
        "consumer key": CONSUMER_KEY,
        "consumer secret": CONSUMER_SECRET,
        "webhook secret": webhook_secret,
        "first webhook secret": shop.store.webhook_secret,
        "api token": shop.store.api_token,
        "r2 secret": R2["secret_access_key"],
        "r2 access key": R2["access_key_id"],
        "brevo key": BREVO["api_key"],
    }
    for n, key in enumerate(keys):
        secrets[f"license key {n}"] = key
        secrets[f"license key {n} without dashes"] = key.replace("-", "")
    logs = caplog.text + "\n".join(
        str(r.args) + (r.exc_text or "") for r in caplog.records if r.args or r.exc_text
    )
    database = dump_database(app)
    assert "webhook_registrations" in database and "credentials" in database
    for label, secret in secrets.items():
        assert secret not in logs, f"{label} appears in the logs"
        assert secret not in database, f"{label} appears in the database"
        assert secret.lower() not in database.lower(), f"{label} appears in the database"


def test_client_repr_and_errors_hide_credentials(app: Flask, shop: WebhookSender) -> None:
    """The REST client's repr and its error messages never show the key or secret."""
    from plugin.woocommerce.rest import ShopUnavailable, WooCommerceClient

    client = WooCommerceClient("https://127.0.0.1:9", CONSUMER_KEY, CONSUMER_SECRET, timeout=1)
    assert CONSUMER_KEY not in repr(client)
    with pytest.raises(ShopUnavailable) as caught:
        client.get_order("1")
    assert CONSUMER_KEY not in str(caught.value)
    assert CONSUMER_SECRET not in str(caught.value)
    with app.app_context():
        assert db.session.execute(select(Store)).scalars().first() is not None


BUYER_EMAIL = "ada.leaked@example.com"
BUYER_NAME = "Ada Leakedname"


def test_a_database_error_in_a_job_names_no_buyer(
    app: Flask, shop: WebhookSender, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL's error detail quotes the row it refused ("Failing row contains (…)"),
    which ``hide_parameters`` does not hide: neither the job's last error (the outbox) nor
    the failure's traceback in the log may show the buyer's address or name."""
    from connector import jobs
    from connector.models import Job, Order

    store_id = shop.store.store.id

    def broken_insert(payload: dict[str, Any]) -> None:
        # A bug: an order written without its status (NOT NULL), the buyer's details in it.
        db.session.execute(
            insert(Order).values(
                store_id=store_id,
                shop_order_id="7001",
                number="7001",
                status=None,
                email=BUYER_EMAIL,
                name=BUYER_NAME,
            )
        )

    jobs.HANDLERS["test.broken_insert"] = broken_insert
    try:
        with app.app_context(), transaction() as session:
            jobs.enqueue(session, "test.broken_insert", {})
        with caplog.at_level(logging.INFO, logger="connector"):
            assert run_pending(app) == 1
    finally:
        jobs.HANDLERS.pop("test.broken_insert", None)
    with app.app_context():
        job = db.session.execute(select(Job).where(Job.kind == "test.broken_insert")).scalar_one()
        last_error = job.last_error or ""
    assert last_error.startswith("IntegrityError: "), last_error
    failures = [r for r in caplog.records if r.name == "connector.jobs" and r.exc_info]
    assert failures, "the failure is logged with its traceback"
    logs = caplog.text + "\n".join(r.exc_text or "" for r in failures)
    assert "Traceback" in logs and "IntegrityError" in logs
    for shown in (last_error, logs):
        assert BUYER_EMAIL not in shown
        assert BUYER_NAME not in shown


def test_a_database_error_in_a_request_names_no_buyer(
    app: Flask, shop: WebhookSender, caplog: pytest.LogCaptureFixture
) -> None:
    """The same for the traceback of a request's unexpected database error (the catch-all
    answers "internal error" and logs it)."""
    from connector.models import Order

    store_id = shop.store.store.id

    def broken_insert() -> str:
        db.session.execute(
            insert(Order).values(
                store_id=store_id, shop_order_id="7002", status=None, email=BUYER_EMAIL
            )
        )
        return "written"

    app.add_url_rule("/api/v1/test-broken-insert", "test_broken_insert", broken_insert)
    with caplog.at_level(logging.INFO, logger="connector"):
        answer = shop.client.get("/api/v1/test-broken-insert")
    assert answer.status_code == 500
    assert BUYER_EMAIL not in answer.get_data(as_text=True)
    failures = [r for r in caplog.records if r.name.startswith("connector") and r.exc_info]
    assert failures, "the failure is logged with its traceback"
    logs = caplog.text + "\n".join(r.exc_text or "" for r in failures)
    assert "Traceback" in logs and "IntegrityError" in logs
    assert BUYER_EMAIL not in logs
