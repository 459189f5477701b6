"""read_mostly units (connector/db.py): reads take no write lock / no BEGIN; a write reruns
the unit in an ordinary transaction, on both backends."""

from __future__ import annotations

import datetime as dt

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from connector.audit import record_audit
from connector.db import db, read_mostly, utcnow
from connector.models import Activation, AuditEvent
from connector.stores import NewStore
from tests.factories import WebhookSender
from tests.licensing_helpers import issue_key


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
