"""read_mostly units (connector/db.py): reads take no write lock / no BEGIN; a write reruns
the unit in an ordinary transaction, on both backends."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from psycopg.pq import TransactionStatus
from sqlalchemy import bindparam, func, select, text, update
from sqlalchemy.exc import OperationalError

from connector.audit import record_audit
from connector.db import db, read_mostly, read_one, utcnow
from connector.models import Activation, AuditEvent, Product, Store
from connector.stores import NewStore
from tests.factories import WebhookSender
from tests.licensing_helpers import issue_key
from tests.peers import drop_database_connections


def test_a_read_runs_once_and_leaves_no_transaction(app: Flask) -> None:
    with app.app_context():
        session = db.session
        calls: list[int] = []

        def unit() -> int:
            calls.append(1)
            value: int = session.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
            return value

        assert read_mostly(session, unit) == 0
        assert calls == [1]
        assert not session.in_transaction()


def test_a_write_reruns_the_unit_in_a_writing_transaction(app: Flask, new_store: NewStore) -> None:
    with app.app_context():
        session = db.session
        calls: list[int] = []

        def unit() -> str:
            calls.append(1)
            record_audit(session, store_id=new_store.store.id, actor="test", action="read.mostly")
            return "done"

        assert read_mostly(session, unit) == "done"
        assert calls == [1, 1]  # stopped before writing, then run again
        session.commit()
    with app.app_context():
        rows = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "read.mostly")
        ).all()
        assert len(rows) == 1


def test_validate_still_stamps_last_seen(
    client: FlaskClient, shop: WebhookSender, app: Flask
) -> None:
    """The hourly last-seen stamp is the write validate's read-only unit hands over."""
    key = issue_key(shop, activation_limit=2)
    answer = client.post("/api/v1/licenses/activate", json={"key": key, "site": "buyer-shop.com"})
    assert answer.get_json()["valid"] is True
    old = utcnow() - dt.timedelta(hours=3)
    with app.app_context():
        db.session.execute(update(Activation).values(last_seen_at=old))
        db.session.commit()
    answer = client.post("/api/v1/licenses/validate", json={"key": key, "site": "buyer-shop.com"})
    assert answer.status_code == 200
    assert answer.get_json()["code"] == "VALID"
    assert answer.get_json()["license"]["activations_used"] == 1
    with app.app_context():
        (seen,) = db.session.scalars(select(Activation.last_seen_at)).all()
        assert seen > old + dt.timedelta(hours=2)
    # And the common answer (nothing to write) is the same.
    again = client.post("/api/v1/licenses/validate", json={"key": key, "site": "buyer-shop.com"})
    assert again.get_json()["code"] == "VALID"
    assert again.get_json()["license"] == answer.get_json()["license"]


def test_read_one_gives_what_sqlalchemy_gives(
    client: FlaskClient, shop: WebhookSender, app: Flask
) -> None:
    """Same values and types as a Core execution (aware datetimes, booleans, NULLs), and the
    pooled connection goes back without a transaction or autocommit left on."""
    key = issue_key(shop, activation_limit=2)
    for site in ("buyer-shop.com", "staging.buyer-shop.com"):
        client.post("/api/v1/licenses/activate", json={"key": key, "site": site, "label": "a"})
    statement = (
        select(
            Activation.id,
            Activation.site,
            Activation.staging,
            Activation.created_at,
            Activation.last_seen_at,
            Activation.fingerprint,
            func.count().over(),
        )
        .where(Activation.site.like(bindparam("pattern")), Activation.id > bindparam("after"))
        .order_by(Activation.id.desc())
    )
    with app.app_context():
        engine = db.engine
        params = {"pattern": "%buyer-shop.com", "after": 0}
        with engine.connect() as conn:
            expected = tuple(conn.execute(statement, params).first() or ())
        got = read_one(engine, statement, params)
        assert got == expected and len(expected) == 7
        assert [type(v) for v in got] == [type(v) for v in expected]
        assert got[2] is True and got[3].tzinfo == dt.UTC
        assert read_one(engine, statement, {"pattern": "nothing", "after": 0}) is None
        for _ in range(engine.pool.size() + 2):  # every pooled connection came back clean
            with engine.connect() as conn:
                raw: Any = conn.connection.driver_connection
                if engine.dialect.name == "postgresql":
                    assert raw.autocommit is False
                    assert raw.info.transaction_status == TransactionStatus.IDLE
                else:
                    assert not raw.in_transaction


def test_validate_rides_out_a_database_restart(app: Flask, shop: WebhookSender) -> None:
    """Every pooled connection dies (PostgreSQL restarted, or a proxy dropped them): the
    next validate still answers (its read starts a new pool and runs again), and so do the
    ones after it."""
    key = issue_key(shop)
    assert shop.client.post("/api/v1/licenses/validate", json={"key": key}).status_code == 200
    drop_database_connections(app)
    statuses = [
        shop.client.post("/api/v1/licenses/validate", json={"key": key}).status_code
        for _ in range(5)
    ]
    assert statuses == [200] * 5


def test_license_calls_ride_out_a_database_restart(app: Flask, shop: WebhookSender) -> None:
    """Session paths too: the first statement finds its connection dead, nothing was
    written, and the call runs again on a fresh connection (survives_a_dropped_connection)."""
    key = issue_key(shop)
    body = {"key": key, "site": "buyer-shop.com"}
    assert shop.client.post("/api/v1/licenses/activate", json=body).status_code == 200
    drop_database_connections(app)
    again = shop.client.post("/api/v1/licenses/activate", json=body)
    assert again.status_code == 200, again.get_data(as_text=True)
    assert again.get_json()["code"] == "VALID"
    drop_database_connections(app)
    gone = shop.client.post("/api/v1/licenses/deactivate", json=body)
    assert gone.status_code == 200, gone.get_data(as_text=True)
    assert shop.admin("GET", f"/licenses/{key}").get_json()["activations"] == []


def test_a_saved_product_is_committed_before_its_files_are_looked_up(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PUT product: storage is asked whether the files are there (a warning for the owner)
    with the change committed and no lock held, so a slow bucket holds up no other writer:
    meanwhile another connection writes (SQLite: the one write lock) and locks the store's
    row (PostgreSQL: the save holds it against a deletion) without waiting."""
    from connector.downloads.storage import LocalStore

    written: list[str] = []
    exists = LocalStore.exists

    def exists_while_another_writes(self: LocalStore, key: str) -> bool:
        with db.engine.connect() as other:
            if other.dialect.name == "sqlite":
                other.exec_driver_sql("PRAGMA busy_timeout=300")
            else:
                other.exec_driver_sql("SET lock_timeout = '300ms'")
            try:
                other.execute(select(Store.id).with_for_update())
                other.execute(update(Product).values(updated_at=utcnow()))
                other.commit()
                written.append("written")
            except OperationalError as exc:
                written.append(type(exc.orig).__name__)
        return exists(self, key)

    monkeypatch.setattr(LocalStore, "exists", exists_while_another_writes)
    files = [{"object_key": "products/501/later.pdf", "filename": "later.pdf"}]
    answer = shop.configure(501, files=files)
    assert answer.status_code == 200
    assert answer.get_json()["warnings"] == ["products/501/later.pdf: not found in storage yet"]
    assert written == ["written"]


def test_a_commit_on_sqlite_is_on_disk_when_it_returns(app: Flask) -> None:
    """A paid order's webhook is answered 200 once its commit returns, and WooCommerce never
    sends it again: SQLite syncs every commit (synchronous FULL), not only at checkpoints."""
    with app.app_context():
        if db.engine.dialect.name != "sqlite":
            pytest.skip("SQLite's own durability setting")
        modes = {db.session.execute(text("PRAGMA synchronous")).scalar_one()}
        db.session.commit()
        with db.engine.connect() as other:
            modes.add(other.exec_driver_sql("PRAGMA synchronous").scalar_one())
    assert modes == {2}  # FULL
