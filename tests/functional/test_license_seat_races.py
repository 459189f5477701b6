"""Activations racing the owner, the order and other binding changes, with real transactions.

The seat lock (``FOR UPDATE`` on the license row) is where an activation waits while anything
else changes the license; what it decides after the wait must be about the license as it is
then, not as it was read before.
"""

from __future__ import annotations

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
from tests.transactions import while_another_transaction


def _license_id(app: Flask, key: str) -> int:
    canonical = normalize_key(key)
    assert canonical is not None
    with app.app_context():
        found: int = db.session.execute(
            select(License.id).where(License.key_hash == hash_license_key(canonical))
        ).scalar_one()
        return found


def _while_the_license_is_locked(
    app: Flask,
    shop: WebhookSender,
    license_id: int,
    change: Callable[[Connection], None],
    body: dict[str, Any],
    endpoint: str = "activate",
) -> dict[str, Any]:
    """POST an activation (or ``endpoint``) while another transaction holds the license row
    locked and makes ``change`` (committed once the call waits on a lock: PostgreSQL; on
    SQLite the call's BEGIN IMMEDIATE waits on that transaction's write lock). Its answer."""
    postgres = app.extensions["keygate.db"].engine.dialect.name == "postgresql"

    def lock_and_change(connection: Connection) -> None:
        connection.execute(
            text("SELECT id FROM licenses WHERE id = :id FOR UPDATE" if postgres else "SELECT 1"),
            {"id": license_id},
        )
        change(connection)

    answer: dict[str, Any] = while_another_transaction(
        app,
        lock_and_change,
        lambda: shop.client.post(f"/api/v1/licenses/{endpoint}", json=body).get_json(),
    )
    return answer


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


def _while_a_seat_is_freed(
    app: Flask, shop: WebhookSender, activation_id: int, endpoint: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any] | None]:
    """POST ``endpoint`` while another transaction deletes the activation (a deactivation
    by the portal, the owner or another of the product's calls), committed once the call
    waits on that row (PostgreSQL) or on the write lock (SQLite). Its status and body."""

    def free(connection: Connection) -> None:
        connection.execute(text("DELETE FROM activations WHERE id = :id"), {"id": activation_id})

    def call() -> tuple[int, dict[str, Any] | None]:
        response = shop.client.post(f"/api/v1/licenses/{endpoint}", json=body)
        return response.status_code, response.get_json(silent=True)

    return while_another_transaction(app, free, call)


def _activated(app: Flask, shop: WebhookSender, key: str, site: str) -> int:
    answer = shop.client.post("/api/v1/licenses/activate", json={"key": key, "site": site})
    activation_id: int = answer.get_json()["activation"]["id"]
    # Last seen two hours ago: the next check stamps it again.
    with app.app_context():
        db.session.execute(
            text("UPDATE activations SET last_seen_at = last_seen_at - interval '2 hours'")
            if db.engine.dialect.name == "postgresql"
            else text("UPDATE activations SET last_seen_at = datetime(last_seen_at, '-2 hours')")
        )
        db.session.commit()
    return activation_id


def test_a_validate_stamping_a_seat_the_buyer_frees_meanwhile_answers(
    app: Flask, shop: WebhookSender
) -> None:
    """A product validates (and its hourly last-seen stamp is due) just as the buyer frees
    that seat on the portal: the product gets a signed answer, not a 500 from the stamp
    finding its row gone; the answer is that the site is no longer activated."""
    key = issue_key(shop, activation_limit=3)
    activation_id = _activated(app, shop, key, "shop-one.com")
    status, answer = _while_a_seat_is_freed(
        app, shop, activation_id, "validate", {"key": key, "site": "shop-one.com"}
    )
    assert status == 200, answer
    assert answer is not None
    assert (answer["valid"], answer["code"]) == (False, "NO_ACTIVATION")


def test_activating_again_a_seat_freed_meanwhile_activates_it_anew(
    app: Flask, shop: WebhookSender
) -> None:
    """A product activates its site again (as at every start) just as the buyer frees that
    seat: the site is activated anew, a seat it holds, rather than a 500 or "Already
    activated here." about a seat that no longer exists."""
    key = issue_key(shop, activation_limit=3)
    license_id = _license_id(app, key)
    activation_id = _activated(app, shop, key, "shop-one.com")
    status, answer = _while_a_seat_is_freed(
        app, shop, activation_id, "activate", {"key": key, "site": "shop-one.com"}
    )
    assert status == 200, answer
    assert answer is not None
    assert (answer["valid"], answer["code"]) == (True, "VALID"), answer
    assert answer["activation"]["id"] != activation_id
    assert _seats(app, license_id) == 1
    check = shop.client.post(
        "/api/v1/licenses/validate", json={"key": key, "site": "shop-one.com"}
    ).get_json()
    assert check["code"] == "VALID"


def test_a_deactivation_past_the_abuse_threshold_keeps_a_revocation_made_meanwhile(
    app: Flask, shop: WebhookSender
) -> None:
    """The key's order is refunded (its key revoked) just as the product deactivates a seat,
    the change past the abuse threshold: the key stays revoked by its refund, not turned
    into one paused by the abuse signal (which the owner could reinstate, and which would
    no longer come back with its order)."""
    key = issue_key(shop, activation_limit=3, abuse_threshold=1, abuse_suspend=True)
    license_id = _license_id(app, key)
    first = shop.client.post("/api/v1/licenses/activate", json={"key": key, "site": "a.com"})
    assert first.get_json()["code"] == "VALID"

    def refund(connection: Connection) -> None:
        connection.execute(
            text(
                "UPDATE licenses SET status = 'revoked', status_reason = 'order:refunded'"
                " WHERE id = :id"
            ),
            {"id": license_id},
        )

    answer = _while_the_license_is_locked(
        app, shop, license_id, refund, {"key": key, "site": "a.com"}, endpoint="deactivate"
    )
    assert answer["code"] == "DEACTIVATED", answer
    assert _seats(app, license_id) == 0
    with app.app_context():
        lic = db.session.get(License, license_id)
        assert lic is not None
        assert (lic.status, lic.status_reason) == ("revoked", "order:refunded")
