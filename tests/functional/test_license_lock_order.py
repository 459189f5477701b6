"""Licenses are locked in id order by every writer that locks more than one, with real
PostgreSQL transactions: an order's revocation that took its licenses line by line and unit
by unit (not id order: a unit added later to line 1 has a higher id than line 2's) held one
a renewal wanted while it waited for one the renewal held, and PostgreSQL aborted one of them
(a deadlock: the webhook answered 503, or the renewal failed).

PostgreSQL only: SQLite's writers take turns (BEGIN IMMEDIATE), so nothing waits on a row.
"""

from __future__ import annotations

import threading

import pytest
from flask import Flask
from sqlalchemy import text
from werkzeug.test import TestResponse

from tests.factories import WebhookSender, line_item, wc_order
from tests.transactions import wait_for_a_lock_wait

# As a renewal locks a license it extends (renewals.lock_license).
LOCK = text("SELECT id FROM licenses WHERE id = :id FOR NO KEY UPDATE")


def test_a_revocation_and_a_renewal_of_its_keys_both_finish(
    app: Flask, shop: WebhookSender
) -> None:
    """Order 9401 bought one key of each of two lines, then a second unit of line 1: its
    licenses are, by line and unit, L1, L3 (line 1) and L2 (line 2). It is cancelled while
    another transaction (a renewal order paying for L2 and L3, which locks them in id order)
    holds L2 and then asks for L3. The revocation waits for L2 holding L1 only, the renewal
    gets L3 and commits, and the revocation then revokes all three. Taken line by line, the
    revocation held L3 while waiting for L2: a deadlock."""
    engine = app.extensions["keygate.db"].engine
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serializes writers (BEGIN IMMEDIATE): no row lock is waited on")
    shop.configure(501)
    shop.configure(502)
    one = [line_item(501, line_id=401), line_item(502, line_id=402)]
    more = [line_item(501, quantity=2, line_id=401), line_item(502, line_id=402)]
    assert shop.deliver(wc_order(9401, "processing", one, modified=1)).status_code == 200
    assert shop.deliver(wc_order(9401, "processing", more, modified=2)).status_code == 200
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT l.id, li.shop_line_item_id, l.unit FROM licenses l"
                " JOIN line_items li ON li.id = l.line_item_id ORDER BY l.id"
            )
        ).all()
    assert [(line, unit) for _, line, unit in rows] == [("401", 1), ("402", 1), ("401", 2)]
    _, second, third = (license_id for license_id, _, _ in rows)
    answers: list[TestResponse] = []
    cancel = wc_order(9401, "cancelled", more, modified=3)
    revocation = threading.Thread(target=lambda: answers.append(shop.deliver(cancel)))
    with engine.connect() as renewal:
        # Detected by this transaction, not the revocation's (its default is a second).
        renewal.execute(text("SET LOCAL deadlock_timeout = '100ms'"))
        renewal.execute(LOCK, {"id": second})
        revocation.start()
        wait_for_a_lock_wait(renewal, revocation, 10)
        assert revocation.is_alive(), "the revocation did not wait for the renewal's license"
        renewal.execute(LOCK, {"id": third})
        renewal.commit()
    revocation.join(30)
    assert answers and answers[0].status_code == 200, answers and answers[0].get_data()
    statuses = {lic["status"] for lic in shop.order(9401)["licenses"]}
    assert statuses == {"revoked"}
