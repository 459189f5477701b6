"""Activations racing the owner, the order and other binding changes, with real transactions.

The seat lock (``FOR UPDATE`` on the license row) is where an activation waits while anything
else changes the license; what it decides after the wait must be about the license as it is
then, not as it was read before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Flask
from sqlalchemy import Connection, func, select, text

from connector.db import db
from connector.licensing.keys import normalize_key
from connector.models import Activation, License, LicenseFlag
from connector.orders.service import hash_license_key
from tests.factories import WebhookSender
from tests.licensing_helpers import issue_key


def _license_id(app: Flask, key: str) -> int:
    canonical = normalize_key(key)
    assert canonical is not None
    with app.app_context():
        found: int = db.session.execute(
            select(License.id).where(License.key_hash == hash_license_key(canonical))
        ).scalar_one()
        return found


def _someone_waits_on_a_lock(app: Flask) -> bool:
    with app.extensions["keygate.db"].engine.connect() as connection:
        waiting = connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
        )
    return bool(waiting)


def _while_the_license_is_locked(
    app: Flask,
    shop: WebhookSender,
    license_id: int,
    change: Callable[[Connection], None],
    body: dict[str, Any],
) -> dict[str, Any]:
    """POST an activation while another transaction holds the license row locked and makes
    ``change`` (committed once the activation waits on the lock: PostgreSQL; on SQLite the
    activation's BEGIN IMMEDIATE waits on that transaction's write lock). Its answer."""
    engine = app.extensions["keygate.db"].engine
    postgres = engine.dialect.name == "postgresql"
    answers: list[dict[str, Any]] = []
    with engine.connect() as connection:
        connection.execute(
            text("SELECT id FROM licenses WHERE id = :id FOR UPDATE" if postgres else "SELECT 1"),
            {"id": license_id},
        )
        change(connection)

        def activate() -> None:
            answers.append(shop.client.post("/api/v1/licenses/activate", json=body).get_json())

        thread = threading.Thread(target=activate)
        thread.start()
        deadline = time.monotonic() + (10 if postgres else 0.5)
        while thread.is_alive() and time.monotonic() < deadline:
            if postgres and _someone_waits_on_a_lock(app):
                break
            time.sleep(0.01)
        connection.commit()
    thread.join(timeout=30)
    assert answers, "the activation did not answer"
    return answers[0]


def _seats(app: Flask, license_id: int) -> int:
    with app.app_context():
        count: int = db.session.execute(
            select(func.count()).select_from(Activation).where(Activation.license_id == license_id)
        ).scalar_one()
        return count


def test_an_activation_waiting_while_the_key_is_revoked_takes_no_seat(
    app: Flask, shop: WebhookSender
) -> None:
    """The owner revokes a key (or its order is refunded) while an activation of it waits
    on the seat lock: the activation is refused REVOKED, and no seat is made on a revoked
    key, instead of "Activated." read from before the revocation."""
    key = issue_key(shop, activation_limit=3)
    license_id = _license_id(app, key)

    def revoke(connection: Connection) -> None:
        connection.execute(
            text("UPDATE licenses SET status = 'revoked', status_reason = 'admin' WHERE id = :id"),
            {"id": license_id},
        )

    answer = _while_the_license_is_locked(
        app, shop, license_id, revoke, {"key": key, "site": "shop-one.com"}
    )
    assert (answer["valid"], answer["code"]) == (False, "REVOKED"), answer
    assert answer["license"]["status"] == "revoked"
    assert _seats(app, license_id) == 0


def test_an_activation_waiting_while_the_owner_pauses_the_key_keeps_the_owners_reason(
    app: Flask, shop: WebhookSender
) -> None:
    """The owner pauses a key while an activation of it waits on the seat lock, and that
    activation would be the change too many for the abuse signal: it is refused SUSPENDED
    without taking a seat, and the key stays paused by the owner (not re-paused as "abuse",
    which would tell the owner the buyer did it, and flag the key for a change never made)."""
    key = issue_key(shop, activation_limit=3, abuse_threshold=1, abuse_suspend=True)
    license_id = _license_id(app, key)
    first = shop.client.post("/api/v1/licenses/activate", json={"key": key, "site": "a.com"})
    assert first.get_json()["code"] == "VALID"

    def pause(connection: Connection) -> None:
        connection.execute(
            text(
                "UPDATE licenses SET status = 'suspended', status_reason = 'admin' WHERE id = :id"
            ),
            {"id": license_id},
        )

    answer = _while_the_license_is_locked(
        app, shop, license_id, pause, {"key": key, "site": "b.com"}
    )
    assert (answer["valid"], answer["code"], answer["activation"]) == (False, "SUSPENDED", None)
    assert _seats(app, license_id) == 1
    with app.app_context():
        lic = db.session.get(License, license_id)
        assert lic is not None
        assert (lic.status, lic.status_reason) == ("suspended", "admin")
        assert db.session.scalar(select(func.count()).select_from(LicenseFlag)) == 0
