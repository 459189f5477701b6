"""Registering webhooks never makes the store's other traffic wait on the shop.

The shop is asked outside any database transaction: a slow shop (WooCommerce answers each
webhook creation after delivering a test ping) must not hold a lock that webhook deliveries,
license calls or download clicks of the same store need.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from connector.db import db, transaction
from connector.models import Store, WebhookRegistration
from connector.vault.connection import (
    TOPICS,
    check_webhooks,
    register_webhooks,
    shop_client_for,
    webhook_url,
)
from tests.factories import WebhookSender, line_item, wc_order
from tests.wc_rest import FakeShop, connect_store, fake_shop

__all__ = ["fake_shop"]

WAIT = 10.0


class SlowShop:
    """WooCommerce's webhook endpoints, answering each creation only when released."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.release = threading.Event()
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self._ids = itertools.count(500)

    def create_webhook(
        self, *, name: str, topic: str, delivery_url: str, secret: str
    ) -> dict[str, Any]:
        self.asked.set()
        assert self.release.wait(WAIT), "the test never released the shop"
        webhook = {
            "id": next(self._ids),
            "name": name,
            "topic": topic,
            "delivery_url": delivery_url,
            "secret": secret,
            "status": "active",
        }
        self.webhooks[str(webhook["id"])] = webhook
        return webhook

    def list_webhooks(self) -> list[dict[str, Any]]:
        return list(self.webhooks.values())

    def delete_webhook(self, webhook_id: str) -> None:
        self.webhooks.pop(webhook_id, None)
        self.deleted.append(webhook_id)


def _register_in_thread(app: Flask, store_id: int, slow: SlowShop) -> threading.Thread:
    failures: list[BaseException] = []

    def run() -> None:
        with app.app_context():
            try:
                store = db.session.get(Store, store_id)
                assert store is not None
                register_webhooks(db.session, store, slow)  # type: ignore[arg-type]
                db.session.commit()
            except BaseException as exc:  # reported by the test
                failures.append(exc)
                db.session.rollback()
                raise

    thread = threading.Thread(target=run, daemon=True)
    thread.failures = failures  # type: ignore[attr-defined]
    thread.start()
    assert slow.asked.wait(WAIT), "the registration never asked the shop"
    return thread


def _current_secret(app: Flask, store_id: int) -> str:
    with app.app_context():
        store = db.session.get(Store, store_id)
        assert store is not None
        return store.webhook_secret


def test_a_webhook_delivery_does_not_wait_for_a_slow_registration(
    app: Flask, shop: WebhookSender
) -> None:
    """An order delivered while the shop takes its time creating webhooks is answered at
    once (PostgreSQL: no row lock on the store; SQLite: no write transaction held)."""
    store_id = shop.store.store.id
    slow = SlowShop()
    registration = _register_in_thread(app, store_id, slow)
    try:
        secret = _current_secret(app, store_id)
        answers: list[int] = []
        delivery = threading.Thread(
            target=lambda: answers.append(
                shop.deliver(
                    wc_order(4100, "processing", [line_item(77)]),
                    secret=secret,
                ).status_code
            ),
            daemon=True,
        )
        delivery.start()
        delivery.join(WAIT / 2)
        assert answers == [200], "the delivery waited on the registration's lock"
    finally:
        slow.release.set()
        registration.join(WAIT)
    assert registration.failures == []  # type: ignore[attr-defined]
    with app.app_context():
        topics = set(
            db.session.scalars(
                select(WebhookRegistration.topic).where(WebhookRegistration.store_id == store_id)
            )
        )
    assert topics == set(TOPICS)


def test_webhooks_made_with_a_secret_replaced_meanwhile_are_not_kept(
    app: Flask, shop: WebhookSender
) -> None:
    """Two registrations at once (a reconnection while the first one waits on the shop):
    the one whose secret was replaced by the other while it waited keeps none of the
    webhooks it made, so every registered webhook signs with the store's secret."""
    store_id = shop.store.store.id
    slow = SlowShop()
    registration = _register_in_thread(app, store_id, slow)
    with app.app_context():
        store = db.session.get(Store, store_id)
        assert store is not None
        store.webhook_secret = "replaced-by-another-registration-0123456789"
        db.session.commit()
    slow.release.set()
    registration.join(WAIT)
    assert registration.failures == []  # type: ignore[attr-defined]
    with app.app_context():
        kept = list(
            db.session.scalars(
                select(WebhookRegistration).where(WebhookRegistration.store_id == store_id)
            )
        )
        store = db.session.get(Store, store_id)
        assert store is not None
        url = webhook_url(store)
    assert kept == []
    assert slow.webhooks == {}, "webhooks signing with a stale secret were left in the shop"
    assert len(slow.deleted) == len(TOPICS)
    assert url.endswith(shop.store.store.public_id)


def pause_after_first(
    fake_shop: FakeShop, method: str, thread_name: str
) -> tuple[threading.Event, threading.Event]:
    """The shop answers the first ``method`` request on its webhooks from the thread named
    ``thread_name``, then that thread waits: (reached, go on)."""
    reached, go_on = threading.Event(), threading.Event()
    answer_webhooks = fake_shop._webhooks

    def pausing(verb: str, rest: list[str], query: dict[str, str], body: Any) -> Any:
        answer = answer_webhooks(verb, rest, query, body)
        first = verb == method and not reached.is_set()
        if first and threading.current_thread().name == thread_name:
            reached.set()
            assert go_on.wait(WAIT)
        return answer

    fake_shop._webhooks = pausing  # type: ignore[method-assign]
    return reached, go_on


def _check(app: Flask, store_id: int) -> list[str]:
    with app.app_context(), transaction() as session:
        store = session.get(Store, store_id)
        assert store is not None
        client = shop_client_for(session, store)
        assert client is not None
        return check_webhooks(session, store, client)


@pytest.mark.parametrize("missing", ["order.deleted", "order.restored"])
def test_two_webhook_checks_at_once_leave_no_webhook_keygate_forgot(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop, missing: str
) -> None:
    """A periodic check and `keygate reconcile` at once, with a webhook missing: the check
    that listed the shop's webhooks before the other re-created it does not take that new
    registration for a missing webhook (which would leave the new one delivering twice and
    unknown to a disconnection). The last topic too, whose registration SQLite re-creates
    with the id of the one deleted."""
    connect_store(app, shop, fake_shop)
    by_topic = {w["topic"]: w["id"] for w in fake_shop.webhooks.values()}
    del fake_shop.webhooks[by_topic[missing]]  # the owner deleted it in the shop
    listed, other_done = pause_after_first(fake_shop, "GET", "first")  # the listing
    store_id = shop.store.store.id
    first = threading.Thread(target=_check, args=(app, store_id), name="first", daemon=True)
    first.start()
    assert listed.wait(WAIT)
    assert _check(app, store_id)  # the other check re-creates the webhook
    other_done.set()
    first.join(WAIT)
    assert not first.is_alive()
    with app.app_context():
        registered = set(db.session.scalars(select(WebhookRegistration.shop_webhook_id)))
    in_shop = {str(w["id"]) for w in fake_shop.webhooks.values()}
    assert in_shop == registered
    assert len(in_shop) == len(TOPICS)


def test_a_webhook_check_during_a_disconnection_leaves_no_webhook_behind(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """While the disconnection deletes the webhooks in the shop (outside any transaction),
    the periodic check re-creates one it finds missing: the disconnection deletes that one
    too, and no webhook is left delivering to a store that forgot its shop."""
    from connector.vault.connection import disconnect

    connect_store(app, shop, fake_shop)
    first_delete, go_on = pause_after_first(fake_shop, "DELETE", "disconnect")
    store_id = shop.store.store.id
    done: list[Any] = []

    def run_disconnect() -> None:
        with app.app_context(), transaction() as session:
            store = session.get(Store, store_id)
            assert store is not None
            done.append(disconnect(session, store, actor="test"))

    thread = threading.Thread(target=run_disconnect, name="disconnect", daemon=True)
    thread.start()
    assert first_delete.wait(WAIT)
    assert _check(app, store_id)  # re-creates the webhook just deleted
    go_on.set()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert fake_shop.webhooks == {}
    (result,) = done
    assert len(result.deleted) == len(TOPICS) + 1
    assert result.left == []
