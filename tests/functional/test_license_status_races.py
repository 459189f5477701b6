"""The owner's suspend, reinstate and revoke racing the order's refund or payment, with real
transactions: the owner's change is made (by the admin API's own code) in a transaction not
yet committed when the shop's delivery comes; whichever waits for the other decides on what
the other committed, as if the two had come one after the other.

On SQLite the delivery's BEGIN IMMEDIATE waits for the owner's commit, so the two take turns
anyway: the same tests check that the outcome is the one of that order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from connector.licensing.admin import change_license
from connector.models import Store
from connector.orders.service import apply_shop_order
from plugin.woocommerce.webhooks import parse_order
from tests.factories import WebhookSender, line_item, wc_order
from tests.transactions import while_another_transaction

T = TypeVar("T")


def _while_the_owner(
    app: Flask, shop: WebhookSender, key: str, action: str, delivery: dict[str, Any]
) -> None:
    """Deliver ``delivery`` while the owner's ``action`` of ``key`` is made, not committed
    (committed once the delivery waits on a lock: PostgreSQL)."""

    def owner(connection: Connection) -> None:
        with app.app_context():
            session = Session(bind=connection)
            store = session.get(Store, shop.store.store.id)
            assert store is not None
            change_license(session, store, key, action)
            session.flush()

    answer = while_another_transaction(app, owner, lambda: shop.deliver(delivery))
    assert answer.status_code == 200, answer.get_data(as_text=True)


def _while_the_order(
    app: Flask, shop: WebhookSender, delivery: dict[str, Any], owner: Callable[[], T]
) -> T:
    """The owner's request ``owner`` made while ``delivery`` is applied, not committed
    (committed once the request waits on a lock: PostgreSQL). Its answer."""

    def apply(connection: Connection) -> None:
        with app.app_context():
            session = Session(bind=connection)
            store = session.get(Store, shop.store.store.id)
            assert store is not None
            apply_shop_order(session, store, parse_order(delivery))

    return while_another_transaction(app, apply, owner)


def test_a_refund_during_the_owners_reinstate_revokes_the_key(
    app: Flask, shop: WebhookSender
) -> None:
    """The owner reinstates a paused key (its order was paid when they asked) while the
    refund comes: the refund revokes the reinstated key and its links. It saw the key still
    paused and left it be, and the reinstate then handed the refunded buyer a working key."""
    shop.configure(501)
    item = line_item(501, line_id=301)
    shop.deliver(wc_order(9301, "processing", [item], modified=1))
    key = shop.order(9301)["licenses"][0]["key"]
    assert shop.admin("POST", f"/licenses/{key}/suspend").status_code == 200
    _while_the_owner(app, shop, key, "reinstate", wc_order(9301, "refunded", [item], modified=2))
    body = shop.order(9301)
    assert [lic["status"] for lic in body["licenses"]] == ["revoked"]
    assert body["downloads"] and all(d["revoked"] for d in body["downloads"])
    refused = shop.admin("POST", f"/licenses/{key}/reinstate")
    assert refused.status_code == 409
    assert "does not pay for it now (the order is refunded)" in refused.get_json()["detail"]


def test_the_owners_revoke_during_a_payment_stands(app: Flask, shop: WebhookSender) -> None:
    """The owner revokes the key of a cancelled order while the order is paid again: the key
    and its links stay revoked, the owner's. The payment brought back the key it had read as
    the cancellation's, over the owner's revocation (answered 200)."""
    shop.configure(501)
    item = line_item(501, line_id=302)
    shop.deliver(wc_order(9302, "processing", [item], modified=1))
    key = shop.order(9302)["licenses"][0]["key"]
    shop.deliver(wc_order(9302, "cancelled", [item], modified=2))
    _while_the_owner(app, shop, key, "revoke", wc_order(9302, "processing", [item], modified=3))
    body = shop.order(9302)
    assert [lic["status"] for lic in body["licenses"]] == ["revoked"]
    assert body["downloads"] and all(d["revoked"] for d in body["downloads"])
    assert shop.admin("GET", f"/licenses/{key}").get_json()["license"]["status_reason"] == "admin"


def test_the_owners_suspend_during_a_refund_is_kept_and_not_undone_by_a_payment(
    app: Flask, shop: WebhookSender
) -> None:
    """The owner pauses a key while its refund comes: as when the refund comes after the
    pause, the key stays paused, with its links shut, and cannot be reinstated while the
    order is refunded; paid again, it stays paused until the owner reinstates it. The refund
    wrote its revocation over the pause (the owner was answered "suspended"), and the
    payment then brought the key back with its links still shut by the pause."""
    shop.configure(501)
    item = line_item(501, line_id=303)
    shop.deliver(wc_order(9303, "processing", [item], modified=1))
    key = shop.order(9303)["licenses"][0]["key"]
    _while_the_owner(app, shop, key, "suspend", wc_order(9303, "refunded", [item], modified=2))
    assert [lic["status"] for lic in shop.order(9303)["licenses"]] == ["suspended"]
    assert shop.admin("POST", f"/licenses/{key}/reinstate").status_code == 409
    shop.deliver(wc_order(9303, "processing", [item], modified=3))
    body = shop.order(9303)
    assert [lic["status"] for lic in body["licenses"]] == ["suspended"]
    assert body["downloads"] and all(d["revoked"] for d in body["downloads"])
    assert shop.admin("POST", f"/licenses/{key}/reinstate").status_code == 200
    body = shop.order(9303)
    assert [lic["status"] for lic in body["licenses"]] == ["active"]
    assert not any(d["revoked"] for d in body["downloads"])


def test_the_owners_reinstate_during_a_refund_is_refused_and_says_why(
    app: Flask, shop: WebhookSender
) -> None:
    """The refund is being applied when the owner reinstates the paused key: the reinstate
    waits for it and is a 409 naming the refund, the key stays paused with its links shut.
    The refund left the paused key unlocked, the reinstate read the order as still paid and
    handed the refunded buyer a working key."""
    shop.configure(501)
    item = line_item(501, line_id=304)
    shop.deliver(wc_order(9304, "processing", [item], modified=1))
    key = shop.order(9304)["licenses"][0]["key"]
    assert shop.admin("POST", f"/licenses/{key}/suspend").status_code == 200
    refund = wc_order(9304, "refunded", [item], modified=2)
    answer = _while_the_order(
        app, shop, refund, lambda: shop.admin("POST", f"/licenses/{key}/reinstate")
    )
    assert answer.status_code == 409
    assert "does not pay for it now (the order is refunded)" in answer.get_json()["detail"]
    body = shop.order(9304)
    assert [lic["status"] for lic in body["licenses"]] == ["suspended"]
    assert body["downloads"] and all(d["revoked"] for d in body["downloads"])


def test_the_owners_suspend_during_a_refund_is_refused_and_says_why(
    app: Flask, shop: WebhookSender
) -> None:
    """The refund is revoking the key when the owner pauses it: the pause waits for it and
    is a 409 naming the refund (not a 500, nor a pause over the revocation)."""
    shop.configure(501)
    item = line_item(501, line_id=305)
    shop.deliver(wc_order(9305, "processing", [item], modified=1))
    key = shop.order(9305)["licenses"][0]["key"]
    refund = wc_order(9305, "refunded", [item], modified=2)
    answer = _while_the_order(
        app, shop, refund, lambda: shop.admin("POST", f"/licenses/{key}/suspend")
    )
    assert answer.status_code == 409
    assert "revoked (by its order, refunded)" in answer.get_json()["detail"]
    body = shop.order(9305)
    assert [lic["status"] for lic in body["licenses"]] == ["revoked"]
    assert body["downloads"] and all(d["revoked"] for d in body["downloads"])
