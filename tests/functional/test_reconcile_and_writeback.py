"""Reconciliation, partial refunds read over REST, and the order-note write-back."""

from __future__ import annotations

import datetime as dt
import json
import queue
import re
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from sqlalchemy import delete, select, text, update

from connector.db import db, transaction
from connector.jobs import enqueue, run_pending
from connector.models import (
    AuditEvent,
    Job,
    License,
    Order,
    ShopNote,
    Store,
    WebhookRegistration,
)
from connector.orders.reconcile import reconcile_store
from connector.vault.connection import TOPICS, connection_of, shop_client_for
from plugin.woocommerce import rest
from tests.factories import SHIFT, WebhookSender, line_item, shifted, wc_order, wc_time
from tests.licensing_helpers import call
from tests.wc_rest import FakeShop, auth_callback_body, connect_store, error, fake_shop

__all__ = ["fake_shop"]


@pytest.fixture
def connected(app: Flask, shop: WebhookSender, fake_shop: FakeShop) -> FakeShop:
    connect_store(app, shop, fake_shop)
    return fake_shop


def touched_now(order: dict[str, Any]) -> dict[str, Any]:
    """The order as changed in the shop just now (after the last reconciliation)."""
    moment = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    order["date_modified_gmt"] = order["date_modified"] = moment
    return order


def reconcile(app: Flask, shop: WebhookSender, **kwargs: Any) -> Any:
    with app.app_context(), transaction() as session:
        store = session.get(Store, shop.store.store.id)
        assert store is not None
        client = shop_client_for(session, store)
        assert client is not None
        return reconcile_store(session, store, client, **kwargs)


def test_a_missed_webhook_is_fulfilled_by_reconcile(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """An order whose webhook never arrived gets its license when reconciliation runs."""
    shop.configure(501)
    connected.orders[9401] = touched_now(wc_order(9401, "processing", [line_item(501)]))
    assert shop.admin("GET", "/orders/9401").status_code == 404
    result = reconcile(app, shop)
    assert result.applied == 1
    assert result.issued_licenses == 1
    assert len(shop.order(9401)["licenses"]) == 1
    again = reconcile(app, shop)
    assert again.issued_licenses == 0
    assert len(shop.order(9401)["licenses"]) == 1


def test_a_checkout_in_progress_is_not_taken_for_an_order_by_reconcile(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """The block checkout saves the cart as an order of status checkout-draft while the buyer
    fills in the form; WooCommerce sends no webhook for it, deletes it for good a day later
    if it is abandoned, yet lists it among "any" orders. Reconciliation keeps nothing of it
    (not the buyer's name and address, for an order never placed); once placed, the same id
    is an order like any other."""
    shop.configure(501)
    draft = touched_now(wc_order(9409, "checkout-draft", [line_item(501)]))
    connected.orders[9409] = draft
    result = reconcile(app, shop)
    assert result.applied == 0
    assert shop.admin("GET", "/orders/9409").status_code == 404
    connected.orders[9409] = touched_now(wc_order(9409, "processing", [line_item(501)]))
    assert reconcile(app, shop).issued_licenses == 1


def test_an_order_trashed_while_its_webhook_was_missed_is_revoked_by_reconcile(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """WooCommerce lists trashed orders only when asked; reconcile asks, and revokes."""
    shop.configure(501)
    paid = touched_now(wc_order(9402, "processing", [line_item(501)]))
    connected.orders[9402] = paid
    reconcile(app, shop)
    assert [lic["status"] for lic in shop.order(9402)["licenses"]] == ["active"]
    connected.orders[9402] = touched_now({**paid, "status": "trash"})
    result = reconcile(app, shop)
    assert result.revoked_licenses == 1
    body = shop.order(9402)
    assert body["order"]["deleted"] is True
    assert [lic["status"] for lic in body["licenses"]] == ["revoked"]


def test_a_store_connected_before_order_restored_was_registered_gets_it(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """A topic Keygate registers since a store connected is added by reconciliation."""
    (restored_id,) = [i for i, w in connected.webhooks.items() if w["topic"] == "order.restored"]
    del connected.webhooks[restored_id]
    with app.app_context():
        db.session.execute(
            delete(WebhookRegistration).where(WebhookRegistration.topic == "order.restored")
        )
        db.session.commit()
    assert len(reconcile(app, shop).webhooks_repaired) == 1
    assert "order.restored" in {w["topic"] for w in connected.webhooks.values()}


def test_a_restore_is_applied_after_a_deletion_delivered_late(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """Trashed, restored: the deletion's delivery came last, yet the restore stands, by the
    next delivery dated after the trash or by reconciliation, whatever Keygate's clock says."""
    shop.configure(501)
    order = touched_now(wc_order(9404, "processing", [line_item(501, line_id=84)]))
    connected.orders[9404] = order
    connected.deliver(shop.client, "order.created", order)
    connected.deliver(shop.client, "order.deleted", {"id": 9404})
    assert [lic["status"] for lic in shop.order(9404)["licenses"]] == ["revoked"]
    # A redelivery of the order as it was before the trash changes nothing ...
    assert connected.deliver(shop.client, "order.updated", order).get_json()["outcome"] == "stale"
    # ... a reconciliation reads it live: restored.
    assert reconcile(app, shop).applied == 1
    assert [lic["status"] for lic in shop.order(9404)["licenses"]] == ["active"]

    connected.deliver(shop.client, "order.deleted", {"id": 9404})
    restored = dict(order, date_modified_gmt="2099-01-01T00:00:00")  # dated after the trash
    connected.deliver(shop.client, "order.restored", restored)
    assert [lic["status"] for lic in shop.order(9404)["licenses"]] == ["active"]


def test_a_restore_is_the_shops_word_not_a_date(shop: WebhookSender) -> None:
    """An update sent before the trash and delivered after the deletion (dated later than
    what was applied) does not bring the order back; order.restored does, whatever its date
    (a shop whose clock runs behind Keygate's, a deletion delivered late)."""
    shop.configure(501)
    item = line_item(501, line_id=85)
    shop.deliver(wc_order(9405, "processing", [item], modified=1))
    shop.deliver({"id": 9405}, "order.deleted")
    late = shop.deliver(wc_order(9405, "completed", [item], modified=2))
    assert late.get_json()["outcome"] == "stale"
    assert [lic["status"] for lic in shop.order(9405)["licenses"]] == ["revoked"]
    restored = shop.deliver(wc_order(9405, "processing", [item], modified=-30), "order.restored")
    assert restored.get_json()["outcome"] == "applied"
    assert [lic["status"] for lic in shop.order(9405)["licenses"]] == ["active"]


def test_a_late_update_of_a_deleted_order_asks_the_shop(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """With a REST key, a live payload of an order Keygate has as deleted is settled by
    reading the order: restored in the shop (no order.restored webhook configured) is
    applied, still in the trash stays deleted."""
    shop.configure(501)
    order = touched_now(wc_order(9406, "processing", [line_item(501, line_id=86)]))
    connected.orders[9406] = order
    connected.deliver(shop.client, "order.created", order)
    connected.deliver(shop.client, "order.deleted", {"id": 9406})
    connected.orders[9406] = dict(order, status="trash")
    late = dict(order, date_modified_gmt="2099-01-01T00:00:00")
    assert connected.deliver(shop.client, "order.updated", late).get_json()["outcome"] == "stale"
    run_pending(app)
    assert [lic["status"] for lic in shop.order(9406)["licenses"]] == ["revoked"]
    connected.orders[9406] = dict(order, status="completed")
    later = dict(order, date_modified_gmt="2099-01-01T00:00:05")
    connected.deliver(shop.client, "order.updated", later)
    run_pending(app)
    assert [lic["status"] for lic in shop.order(9406)["licenses"]] == ["active"]


def test_reconcile_pages_through_orders_modified_after(
    app: Flask, shop: WebhookSender, connected: FakeShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every change is read, page after page (each from the newest date read, less a
    second), and only orders modified after --since."""
    monkeypatch.setattr(rest, "PER_PAGE", 2)
    shop.configure(501)
    for n in range(5):
        connected.orders[9500 + n] = wc_order(9500 + n, "completed", modified=100 + n)
    connected.orders[9499] = wc_order(9499, "completed", modified=-3600)
    since = dt.datetime(2026, 11, 20, 11, 30, tzinfo=dt.UTC) + SHIFT
    connected.requests.clear()
    result = reconcile(app, shop, since=since)
    assert result.seen == 5
    pages = [p for m, p in connected.requests if m == "GET" and p == "orders"]
    # Pages of two, each starting at the newest order read so far (read again, dropped);
    # then one page of trashed orders.
    assert len(pages) == 4 + 1
    assert shop.admin("GET", "/orders/9499").status_code == 404
    assert all(len(shop.order(9500 + n)["licenses"]) == 1 for n in range(5))


def test_reconcile_reactivates_a_disabled_webhook_with_an_audit_entry(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """WooCommerce disabled a webhook after failures: reconciliation sets it active again."""
    (updated_id,) = [i for i, w in connected.webhooks.items() if w["topic"] == "order.updated"]
    connected.webhooks[updated_id]["status"] = "disabled"
    result = reconcile(app, shop)
    assert result.webhooks_repaired == [str(updated_id)]
    assert connected.webhooks[updated_id]["status"] == "active"
    with app.app_context():
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "shop.webhook_reactivated")
        ).scalar_one()
        assert event.subject == f"webhook:{updated_id}"
        assert event.detail == {"topic": "order.updated"}


def test_a_paused_webhook_is_left_to_the_owner(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """Paused is the owner's choice: reconciliation does not override it."""
    some_id = next(iter(connected.webhooks))
    connected.webhooks[some_id]["status"] = "paused"
    assert reconcile(app, shop).webhooks_repaired == []
    assert connected.webhooks[some_id]["status"] == "paused"


def test_a_deleted_webhook_is_registered_again(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """A webhook removed in the shop admin is re-created by reconciliation."""
    (deleted_id,) = [i for i, w in connected.webhooks.items() if w["topic"] == "order.deleted"]
    del connected.webhooks[deleted_id]
    result = reconcile(app, shop)
    assert len(result.webhooks_repaired) == 1
    topics = sorted(w["topic"] for w in connected.webhooks.values())
    assert topics == ["order.created", "order.deleted", "order.restored", "order.updated"]


def test_partial_refund_revokes_only_the_refunded_unit(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """A webhook listing a refund starts a REST re-read; only the newest unit is revoked."""
    shop.configure(501)
    order = wc_order(9601, "processing", [line_item(501, quantity=3, line_id=77)])
    connected.orders[9601] = order
    assert connected.deliver(shop.client, "order.created", order).status_code == 200
    connected.add_refund(9601, line_id=77, quantity=1, amount="49.00")
    order["date_modified_gmt"] = order["date_modified"] = shifted("2026-11-20T12:05:00")
    response = connected.deliver(shop.client, "order.updated", order)
    assert response.status_code == 200
    # The webhook answered without reading the shop; the job reads the refunds.
    assert ("GET", "orders/9601/refunds") not in connected.requests
    run_pending(app)
    assert ("GET", "orders/9601/refunds") in connected.requests
    with app.app_context():
        units = dict(db.session.execute(select(License.unit, License.status)).all())
    assert units == {1: "active", 2: "active", 3: "revoked"}
    line = shop.order(9601)["order"]["line_items"][0]
    assert line["refunded_quantity"] == 1
    # The same delivery again starts no second re-read.
    connected.deliver(shop.client, "order.updated", order)
    with app.app_context():
        refresh_jobs = db.session.scalars(select(Job).where(Job.kind == "shop.refresh_order")).all()
    assert len(refresh_jobs) == 1


def test_a_partial_refund_takes_back_a_key_nobody_uses(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """Three keys, the first and the newest activated: refunding one takes back the idle
    second key (and its links), not the newest one a site runs on; a redelivery keeps it so."""
    shop.configure(501)
    order = wc_order(9604, "processing", [line_item(501, quantity=3, line_id=80)])
    connected.orders[9604] = order
    connected.deliver(shop.client, "order.created", order)
    first, second, newest = (lic["key"] for lic in shop.order(9604)["licenses"])
    links = [d["link"] for d in shop.order(9604)["downloads"]]  # one file: units 1, 2, 3
    call(shop.client, "activate", {"key": first, "site": "first-site.com"})
    call(shop.client, "activate", {"key": newest, "site": "newest-site.com"})
    connected.add_refund(9604, line_id=80, quantity=1, amount="49.00")
    order["date_modified_gmt"] = order["date_modified"] = shifted("2026-11-20T12:05:00")
    connected.deliver(shop.client, "order.updated", order)
    run_pending(app)
    connected.deliver(shop.client, "order.updated", order)
    statuses = {lic["key"]: lic["status"] for lic in shop.order(9604)["licenses"]}
    assert statuses == {first: "active", second: "revoked", newest: "active"}
    for key in (first, newest):
        assert call(shop.client, "validate", {"key": key}).get_json()["valid"]
    # The idle key's link went with it: the newest key's link (copy 3 before) still works.
    downloads = {d["link"]: d for d in shop.order(9604)["downloads"]}
    assert len(links) == 3
    assert downloads[links[1]]["revoked"] and not downloads[links[2]]["revoked"]
    assert shop.client.get(links[1].removeprefix("http://keygate.test")).status_code == 410
    kept = shop.client.get(links[2].removeprefix("http://keygate.test"))
    assert kept.status_code == 503  # not withdrawn; this test's storage has no file


def unit_statuses(app: Flask) -> dict[int, str]:
    with app.app_context():
        return dict(db.session.execute(select(License.unit, License.status)).all())


def test_a_later_delivery_keeps_a_partial_refund(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """A delivery after the refunds were read (its refunds without lines) takes nothing back,
    and asks the shop nothing again."""
    shop.configure(501)
    order = wc_order(9602, "processing", [line_item(501, quantity=3, line_id=78)])
    connected.orders[9602] = order
    connected.deliver(shop.client, "order.created", order)
    connected.add_refund(9602, line_id=78, quantity=1, amount="49.00")
    order["date_modified_gmt"] = order["date_modified"] = shifted("2026-11-20T12:05:00")
    connected.deliver(shop.client, "order.updated", order)
    run_pending(app)
    order["status"] = "completed"
    order["date_modified_gmt"] = order["date_modified"] = shifted("2026-11-20T12:10:00")
    connected.deliver(shop.client, "order.updated", order)
    assert unit_statuses(app) == {1: "active", 2: "active", 3: "revoked"}
    run_pending(app)
    assert unit_statuses(app) == {1: "active", 2: "active", 3: "revoked"}
    assert connected.requests.count(("GET", "orders/9602/refunds")) == 1


def test_a_deleted_refund_gives_back_its_unit_and_only_its_unit(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """Refunds A, then A and B, then B deleted: the refund set came back to one read before,
    and is read again; A's unit stays revoked, B's is active again."""
    shop.configure(501)
    order = wc_order(9603, "processing", [line_item(501, quantity=3, line_id=79)])
    connected.orders[9603] = order
    connected.deliver(shop.client, "order.created", order)
    connected.add_refund(9603, line_id=79, quantity=1, amount="49.00")
    order["date_modified_gmt"] = order["date_modified"] = shifted("2026-11-20T12:05:00")
    connected.deliver(shop.client, "order.updated", order)
    run_pending(app)
    refund_b = connected.add_refund(9603, line_id=79, quantity=1, amount="49.00")
    order["date_modified_gmt"] = order["date_modified"] = shifted("2026-11-20T12:06:00")
    connected.deliver(shop.client, "order.updated", order)
    run_pending(app)
    assert unit_statuses(app) == {1: "active", 2: "revoked", 3: "revoked"}
    connected.refunds[9603] = [r for r in connected.refunds[9603] if r["id"] != refund_b["id"]]
    order["refunds"] = [r for r in order["refunds"] if r["id"] != refund_b["id"]]
    connected.deliver(shop.client, "order.updated", order)
    run_pending(app)
    assert unit_statuses(app) == {1: "active", 2: "active", 3: "revoked"}


def test_an_order_the_shop_deleted_for_good_is_revoked_by_its_re_read(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """The re-read finds no order (404: deleted permanently, its order.deleted lost): it is
    applied as a deletion."""
    shop.configure(501)
    order = wc_order(9604, "processing", [line_item(501, quantity=2, line_id=80)])
    connected.orders[9604] = order
    connected.deliver(shop.client, "order.created", order)
    connected.add_refund(9604, line_id=80, quantity=1, amount="49.00")
    order["date_modified_gmt"] = order["date_modified"] = shifted("2026-11-20T12:05:00")
    connected.deliver(shop.client, "order.updated", order)
    del connected.orders[9604]
    run_pending(app)
    assert unit_statuses(app) == {1: "revoked", 2: "revoked"}
    assert shop.order(9604)["order"]["deleted"] is True


def test_a_shop_whose_rest_api_is_blocked_is_not_taken_for_a_deleted_order(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """WordPress's own 404 (rest_no_route: a security plugin, broken permalinks) says
    nothing about the order: the partial refund is left for the owner, nothing revoked."""
    shop.configure(501)
    order = wc_order(9605, "processing", [line_item(501, quantity=2, line_id=87)])
    connected.orders[9605] = order
    connected.deliver(shop.client, "order.created", order)
    connected.add_refund(9605, line_id=87, quantity=1, amount="49.00")
    order["date_modified_gmt"] = order["date_modified"] = shifted("2026-11-20T12:05:00")
    connected.deliver(shop.client, "order.updated", order)
    connected.rest_blocked = True
    run_pending(app)
    assert unit_statuses(app) == {1: "active", 2: "active"}
    assert shop.order(9605)["order"]["deleted"] is False
    [entry] = shop.admin("GET", "/audit?action=order.refund_not_applied").get_json()["events"]
    assert "rest_no_route" in entry["detail"]["reason"]
    assert entry["detail"]["refunds"] == str(connected.orders[9605]["refunds"][0]["id"])

    # Later deliveries ask again while the shop still refuses: the owner was told of this
    # refund once (the dashboard counts the order once); a second refund is news.
    for minute in (10, 15):
        order["date_modified_gmt"] = order["date_modified"] = shifted(f"2026-11-20T12:{minute}:00")
        order["customer_note"] = f"note {minute}"
        connected.deliver(shop.client, "order.updated", order)
        run_pending(app)
    assert (
        len(shop.admin("GET", "/audit?action=order.refund_not_applied").get_json()["events"]) == 1
    )
    connected.add_refund(9605, line_id=87, quantity=1, amount="49.00")
    order["date_modified_gmt"] = order["date_modified"] = shifted("2026-11-20T12:20:00")
    connected.deliver(shop.client, "order.updated", order)
    run_pending(app)
    events = shop.admin("GET", "/audit?action=order.refund_not_applied").get_json()["events"]
    assert len(events) == 2 and events[0]["detail"]["refunds"].count(",") == 1


def test_a_partial_refund_a_store_without_rest_key_cannot_read_is_shown_to_the_owner(
    app: Flask, shop: WebhookSender
) -> None:
    """Without a WooCommerce key, which items a refund covers is unknown: nothing is revoked
    by guesswork, and the owner's audit log says what to do; a refunded order needs no
    such entry (it is revoked whole)."""
    shop.configure(501)
    order = wc_order(9611, "processing", [line_item(501, quantity=3, line_id=77)])
    assert shop.deliver(order, "order.created").status_code == 200
    order["refunds"] = [{"id": 5001, "reason": "", "total": "-49.00"}]
    order["date_modified_gmt"] = order["date_modified"] = shifted("2026-11-20T12:05:00")
    assert shop.deliver(order).status_code == 200
    refunded = wc_order(9612, "refunded", [line_item(501)], modified=30)
    refunded["refunds"] = [{"id": 5002, "reason": "", "total": "-49.00"}]
    assert shop.deliver(refunded).status_code == 200
    run_pending(app)
    with app.app_context():
        statuses = db.session.scalars(select(License.status)).all()
        entries = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "order.refund_not_applied")
        ).all()
    assert sorted(statuses) == ["active", "active", "active"]
    assert [e.subject for e in entries] == ["order:9611"]
    assert "REST key" in entries[0].detail["reason"]


@pytest.mark.parametrize("status", ["on-hold", "delivered"])
def test_a_partial_refund_of_an_order_held_after_payment_is_shown_to_the_owner_too(
    app: Flask, shop: WebhookSender, status: str
) -> None:
    """An order put on hold after payment (a payment dispute) or moved on to a plugin's
    status keeps its keys, and a refund of one of its seats takes that seat back as from a
    processing order: a store without a WooCommerce key, which cannot read the refund, tells
    the owner as it does for a processing order, on the order's page too. Said only of a
    paid status, both keys stayed and nobody was told."""
    from tests.functional.test_admin_pages import signed_in_owner

    shop.configure(501)
    order = wc_order(9613, "completed", [line_item(501, quantity=2, line_id=76)])
    assert shop.deliver(order, "order.created").status_code == 200
    order["status"] = status
    order["refunds"] = [{"id": 5003, "reason": "", "total": "-49.00"}]
    order["date_modified_gmt"] = order["date_modified"] = shifted("2026-11-20T12:05:00")
    assert shop.deliver(order).status_code == 200
    run_pending(app)
    with app.app_context():
        statuses = db.session.scalars(select(License.status)).all()
        entries = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "order.refund_not_applied")
        ).all()
        order_pk = db.session.scalars(select(Order.id)).one()
    assert sorted(statuses) == ["active", "active"]
    assert [e.subject for e in entries] == ["order:9613"]
    page = signed_in_owner(app).get(f"/admin/orders/{order_pk}").get_data(as_text=True)
    assert "Refunds of this order could not be applied" in page


def test_write_back_posts_one_customer_note_with_keys_and_links(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """After issuing, the buyer gets a customer note (WooCommerce mails it), once."""
    shop.configure(501)
    order = wc_order(9701, "processing", [line_item(501)])
    connected.orders[9701] = order
    connected.deliver(shop.client, "order.created", order)
    run_pending(app)
    (note,) = connected.notes[9701]
    assert note["customer_note"] is True
    body = shop.order(9701)
    key = body["licenses"][0]["key"]
    assert key in note["note"]
    assert body["downloads"][0]["link"] in note["note"]
    # The portal link is made anew for each answer (a timed token): the note's one opens
    # this order's portal page.
    portal = re.search(r"http://keygate\.test(/my/\S+)", note["note"])
    assert portal is not None, note["note"]
    page = shop.client.get(portal.group(1))
    assert page.status_code == 200
    assert key in page.get_data(as_text=True)
    # Redelivery, a re-run of the job: still one note.
    connected.deliver(shop.client, "order.updated", order)
    with app.app_context():
        job = db.session.execute(select(Job).where(Job.kind == "shop.order_note")).scalar_one()
        enqueue(db.session, "shop.order_note", dict(job.payload))
        db.session.commit()
    run_pending(app)
    assert len(connected.notes[9701]) == 1


def test_write_back_finds_a_note_posted_before_a_crash(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """A note posted by a run that crashed before committing is found, not posted again."""
    shop.configure(501)
    order = wc_order(9702, "processing", [line_item(501)])
    connected.orders[9702] = order
    connected.deliver(shop.client, "order.created", order)
    run_pending(app)
    with app.app_context():
        db.session.execute(ShopNote.__table__.delete())
        job = db.session.execute(select(Job).where(Job.kind == "shop.order_note")).scalar_one()
        enqueue(db.session, "shop.order_note", dict(job.payload))
        db.session.commit()
    run_pending(app)
    assert len(connected.notes[9702]) == 1
    with app.app_context():
        assert db.session.scalars(select(ShopNote)).one().shop_note_id == str(
            connected.notes[9702][0]["id"]
        )


def test_a_note_written_before_needs_no_shop_to_be_done_again(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """A re-run of a note job whose note Keygate recorded as written asks the shop nothing:
    while the shop is down it is done at once, not retried until it dies in the outbox,
    and the note the owner may have deleted in the shop since is not posted again."""
    shop.configure(501)
    order = wc_order(9703, "processing", [line_item(501)])
    connected.orders[9703] = order
    connected.deliver(shop.client, "order.created", order)
    run_pending(app)
    assert len(connected.notes[9703]) == 1
    connected.notes[9703] = []  # deleted by the owner in the shop
    connected.down = True
    with app.app_context():
        job = db.session.execute(select(Job).where(Job.kind == "shop.order_note")).scalar_one()
        enqueue(db.session, "shop.order_note", dict(job.payload))
        db.session.commit()
    run_pending(app)
    connected.down = False
    run_pending(app)
    with app.app_context():
        jobs = db.session.execute(
            select(Job.status, Job.attempts).where(Job.kind == "shop.order_note").order_by(Job.id)
        ).all()
        assert [tuple(j) for j in jobs] == [("done", 1), ("done", 1)]
    assert connected.notes[9703] == []


def test_each_issuance_of_an_order_has_a_note_reference_of_its_own() -> None:
    """The note's reference names the issuance's licenses and download grants alike: a
    download added to an order later (no license either time) gets a note of its own, not
    taken for the first one's."""
    from connector.orders.writeback import note_marker

    first = {"order_id": 7, "license_ids": [], "grant_ids": [1]}
    assert note_marker(first) != note_marker({**first, "grant_ids": [2]})
    assert note_marker(first) != note_marker({**first, "license_ids": [3]})
    assert note_marker(first) == note_marker({"order_id": 7, "grant_ids": [1]})


def test_periodic_reconcile_schedules_its_next_run_even_when_the_shop_is_down(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """A failed periodic run records the error and keeps the chain of runs alive."""
    connected.down = True
    with app.app_context():
        enqueue(db.session, "shop.reconcile", {"store_id": shop.store.store.id, "periodic": True})
        db.session.commit()
    run_pending(app)
    with app.app_context():
        jobs = db.session.scalars(
            select(Job).where(Job.kind == "shop.reconcile").order_by(Job.id)
        ).all()
        assert [j.status for j in jobs if j.status != "done"] == ["pending"]
        future = next(j for j in jobs if j.status == "pending")
        assert future.dedupe_key is not None
        assert future.run_after > dt.datetime.now(dt.UTC)
        from connector.models import ShopConnection

        connection = db.session.execute(select(ShopConnection)).scalar_one()
        assert "503" in (connection.last_error or "")


def test_a_one_off_reconcile_the_shop_was_down_for_is_retried(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """A reconciliation queued once (for a delivery refused unread: its body over the
    limit) has no next periodic run to stand in for it: a shop down then retries it, and
    the order that delivery carried is fulfilled once the shop answers."""
    shop.configure(501)
    connected.orders[9704] = touched_now(wc_order(9704, "processing", [line_item(501)]))
    connected.down = True
    with app.app_context():
        enqueue(db.session, "shop.reconcile", {"store_id": shop.store.store.id})
        db.session.commit()
    run_pending(app)
    with app.app_context():
        job = db.session.scalars(
            select(Job).where(Job.kind == "shop.reconcile").order_by(Job.id.desc())
        ).first()
        assert job is not None
        assert (job.status, job.attempts) == ("pending", 1)
        assert "503" in (job.last_error or "")
        job.run_after = dt.datetime.now(dt.UTC)
        db.session.commit()
    connected.down = False
    run_pending(app)
    assert len(shop.order(9704)["licenses"]) == 1


def test_the_only_periodic_run_queues_the_next_though_the_shop_is_down(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """The chain of periodic runs is carried by each run: the one run queued, failing on a
    shop that is down, still queues the next (none other is queued to stand in for it)."""
    with app.app_context(), transaction() as session:
        session.execute(delete(Job).where(Job.kind == "shop.reconcile"))
        enqueue(session, "shop.reconcile", {"store_id": shop.store.store.id, "periodic": True})
    connected.down = True
    run_pending(app)
    with app.app_context():
        jobs = db.session.execute(
            select(Job.status, Job.run_after).where(Job.kind == "shop.reconcile")
        ).all()
    assert sorted(status for status, _ in jobs) == ["done", "pending"]
    assert max(run_after for _, run_after in jobs) > dt.datetime.now(dt.UTC)


def test_two_orders_asked_about_for_the_same_reason_are_each_read(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """A re-read is asked once per order and question: two orders changed in the same
    second (each a delivery Keygate cannot be sure is the order as it is now) are both
    read, not one taken for the other's."""
    from connector.orders.reconcile import REFRESH_JOB, enqueue_refresh

    reason = f"same-second@{wc_time(100)}"
    with app.app_context(), transaction() as session:
        store = session.get(Store, shop.store.store.id)
        assert store is not None
        for shop_order_id in ("9705", "9706", "9705"):
            enqueue_refresh(session, store, shop_order_id, reason, refunds=False)
    with app.app_context():
        queued = db.session.scalars(select(Job.payload).where(Job.kind == REFRESH_JOB)).all()
    assert sorted(p["shop_order_id"] for p in queued) == ["9705", "9706"]


def test_an_ended_chain_of_periodic_runs_is_restarted_once(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """The hourly keep-schedules job queues the next runs of a connected store, never twice."""
    from connector.jobs import schedule_periodic

    with app.app_context(), transaction() as session:
        # The chain ended: no periodic reconcile or product sync is queued any more.
        for job in session.scalars(select(Job).where(Job.status == "pending")):
            session.delete(job)
    schedule_periodic(app)
    run_pending(app, kinds={"shop.keep_schedules"})
    with app.app_context():
        queued = db.session.scalars(
            select(Job.kind).where(Job.status == "pending", Job.kind.like("shop.%"))
        ).all()
    assert sorted(queued) == ["shop.reconcile", "shop.sync_products"]
    with app.app_context(), transaction() as session:
        for job in session.scalars(select(Job).where(Job.kind == "shop.keep_schedules")):
            job.status, job.dedupe_key = "pending", None  # run it again in the same hour
    run_pending(app, kinds={"shop.keep_schedules"})
    with app.app_context():
        queued = db.session.scalars(
            select(Job.kind).where(Job.status == "pending", Job.kind.like("shop.%"))
        ).all()
    assert sorted(queued) == ["shop.reconcile", "shop.sync_products"]


def test_no_note_for_an_order_refunded_before_the_job_ran(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """Keys revoked by the time the write-back runs are not written to the buyer."""
    shop.configure(501)
    order = wc_order(9703, "processing", [line_item(501)])
    connected.orders[9703] = order
    connected.deliver(shop.client, "order.created", order)
    connected.deliver(shop.client, "order.updated", wc_order(9703, "refunded", modified=30))
    run_pending(app)
    assert 9703 not in connected.notes
    assert shop.order(9703)["licenses"][0]["status"] == "revoked"


def test_no_note_for_an_order_whose_buyer_was_erased_before_the_job_ran(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """WooCommerce mails a customer note to the buyer: an erased order is never mailed
    again, even by a note job still waiting through a shop outage."""
    shop.configure(501)
    order = wc_order(9704, "processing", [line_item(501)])
    connected.orders[9704] = order
    connected.deliver(shop.client, "order.created", order)
    assert shop.admin("DELETE", "/customers/jurgen@example.org").status_code == 200
    run_pending(app)
    assert 9704 not in connected.notes
    assert shop.order(9704)["licenses"][0]["status"] == "active"


def test_reconcile_registers_webhooks_when_registration_gave_up(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """Connected while the shop was down for good: the next reconciliation registers them."""
    fake_shop.down = True
    connect_store(app, shop, fake_shop)
    assert fake_shop.webhooks == {}
    fake_shop.down = False
    result = reconcile(app, shop)
    assert len(result.webhooks_repaired) == 4
    assert sorted(w["topic"] for w in fake_shop.webhooks.values()) == [
        "order.created",
        "order.deleted",
        "order.restored",
        "order.updated",
    ]


def _set_reconciled_until(app: Flask, shop: WebhookSender, moment: dt.datetime) -> None:
    with app.app_context(), transaction() as session:
        store = session.get(Store, shop.store.store.id)
        assert store is not None
        connection_of(session, store).reconciled_until = moment


def _reconciled_until(app: Flask, shop: WebhookSender) -> dt.datetime | None:
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        return connection_of(db.session, store).reconciled_until


def test_a_first_run_reads_the_last_week(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """The first reconciliation of a store (nothing read before) fulfils the orders changed
    in the week before it connected: an order paid days before the key was given is not
    lost for want of a webhook Keygate had not registered yet."""
    shop.configure(501)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    days_ago = (now - dt.timedelta(days=6)).replace(tzinfo=None).isoformat()
    connected.orders[9660] = dict(
        wc_order(9660, "processing", [line_item(501)]),
        date_modified_gmt=days_ago,
        date_modified=days_ago,
    )
    with app.app_context(), transaction() as session:
        store = session.get(Store, shop.store.store.id)
        assert store is not None
        connection_of(session, store).reconciled_until = None
    result = reconcile(app, shop)
    assert abs(result.since - (now - dt.timedelta(days=7))) < dt.timedelta(minutes=1)
    assert len(shop.order(9660)["licenses"]) == 1


def test_a_reconcile_waiting_on_the_shop_holds_no_database_lock(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """While a run waits on a slow shop, a webhook is answered at once and no transaction
    is open. On SQLite an open transaction holds the one write lock (the webhook waited
    30 s and got a 503); on PostgreSQL it shows as a connection idle in transaction."""
    shop.configure(501)
    listing, release = threading.Event(), threading.Event()
    orders = connected._orders
    open_while_waiting: list[int] = []

    def slow_listing(method: str, rest_: list[str], query: dict[str, str], body: Any) -> Any:
        if not rest_:
            open_while_waiting.append(transactions_left_open(app))
            listing.set()
            release.wait(30)
        return orders(method, rest_, query, body)

    connected._orders = slow_listing  # type: ignore[method-assign]
    run = threading.Thread(target=reconcile, args=(app, shop))
    run.start()
    try:
        assert listing.wait(10)
        began = time.monotonic()
        response = connected.deliver(shop.client, "order.created", wc_order(9701))
        took = time.monotonic() - began
    finally:
        release.set()
        run.join(30)
    assert response.status_code == 200
    assert took < 5
    assert open_while_waiting and set(open_while_waiting) == {0}


def test_an_order_changed_during_a_run_hides_no_other_order(
    app: Flask, shop: WebhookSender, connected: FakeShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An order changed while the first page is read moves to the end of the list: every
    other order is still read (page numbers shifted one past the reader)."""
    monkeypatch.setattr(rest, "PER_PAGE", 2)
    shop.configure(501)
    for n in range(4):
        connected.orders[9600 + n] = wc_order(9600 + n, modified=100 + n)
    orders = connected._orders
    touched: list[int] = []

    def owner_edits_during_page_one(
        method: str, rest_: list[str], query: dict[str, str], body: Any
    ) -> Any:
        answer = orders(method, rest_, query, body)
        if not rest_ and not touched and query.get("status") != "trash":
            touched.append(9600)
            connected.orders[9600]["date_modified_gmt"] = wc_time(200)
        return answer

    connected._orders = owner_edits_during_page_one  # type: ignore[method-assign]
    reconcile(app, shop, since=(dt.datetime(2026, 11, 20, 11, 30, tzinfo=dt.UTC) + SHIFT))
    assert all(len(shop.order(9600 + n)["licenses"]) == 1 for n in range(4))


def test_the_window_follows_the_shops_clock(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """reconciled_until is the newest change the shop listed (its clock, which
    modified_after uses): with the shop's clock 15 minutes slow, an order paid after a run
    is still in the next one's window."""
    shop.configure(501)
    slow = dt.timedelta(minutes=15)
    shop_now = dt.datetime.now(dt.UTC) - slow
    stamp = lambda moment: moment.replace(tzinfo=None).isoformat(timespec="seconds")  # noqa: E731
    connected.orders[9610] = dict(wc_order(9610), date_modified_gmt=stamp(shop_now))
    reconcile(app, shop)
    assert _reconciled_until(app, shop) == shop_now.replace(microsecond=0)
    paid_after = shop_now + dt.timedelta(minutes=1)  # the shop's clock, a minute later
    connected.orders[9611] = dict(wc_order(9611), date_modified_gmt=stamp(paid_after))
    reconcile(app, shop)
    assert len(shop.order(9611)["licenses"]) == 1


def test_a_run_from_a_later_date_leaves_the_unread_gap_to_the_next_run(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """`keygate reconcile --since <later than reconciled_until>` does not move
    reconciled_until over the orders before it, which the next periodic run reads."""
    shop.configure(501)
    behind = dt.datetime(2026, 11, 19, 12, 0, tzinfo=dt.UTC) + SHIFT
    _set_reconciled_until(app, shop, behind)
    connected.orders[9620] = wc_order(9620, modified=-5 * 3600)
    connected.orders[9621] = wc_order(9621, modified=60)
    reconcile(app, shop, since=(dt.datetime(2026, 11, 20, 11, 0, tzinfo=dt.UTC) + SHIFT))
    assert _reconciled_until(app, shop) == behind
    assert len(shop.order(9621)["licenses"]) == 1
    reconcile(app, shop)
    assert len(shop.order(9620)["licenses"]) == 1


def test_a_first_run_the_shop_cuts_off_leaves_nothing_read(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """A store's first run (`keygate reconcile --since` a day ago) that the shop cuts off
    before listing anything has read nothing: reconciled_until stays unset, and the next
    run looks back the whole week, not only from that day."""
    with app.app_context(), transaction() as session:
        store = session.get(Store, shop.store.store.id)
        assert store is not None
        connection_of(session, store).reconciled_until = None
    connected.down = True
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    with pytest.raises(rest.ShopUnavailable):
        reconcile(app, shop, since=since, check_hooks=False)
    assert _reconciled_until(app, shop) is None


def test_a_run_from_an_earlier_date_never_moves_reconciled_until_back(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """`keygate reconcile --since <earlier than reconciled_until>` reads the old orders
    again; what the periodic runs had read stays read (the next one does not start over
    from the old orders' dates)."""
    shop.configure(501)
    ahead = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    _set_reconciled_until(app, shop, ahead)
    connected.orders[9622] = wc_order(9622, modified=60)
    reconcile(app, shop, since=(dt.datetime(2026, 11, 20, 11, 0, tzinfo=dt.UTC) + SHIFT))
    assert len(shop.order(9622)["licenses"]) == 1
    assert _reconciled_until(app, shop) == ahead


def test_one_order_dated_in_the_future_hides_no_later_order(
    app: Flask, shop: WebhookSender, connected: FakeShop, caplog: pytest.LogCaptureFixture
) -> None:
    """An order whose date_modified_gmt is ahead of Keygate's clock (a shop clock that
    jumped once, an import) moves reconciled_until no further than the run's start, and is
    logged: an order paid after that run, its webhook lost, is in the next run's window. A
    watermark already in the future reads on from now."""
    shop.configure(501)
    now = dt.datetime.now(dt.UTC)
    stamp = lambda moment: moment.replace(tzinfo=None).isoformat(timespec="seconds")  # noqa: E731
    future = now + dt.timedelta(days=365)
    connected.orders[9630] = dict(wc_order(9630), date_modified_gmt=stamp(future))
    with caplog.at_level("WARNING", logger="connector.orders.reconcile"):
        reconcile(app, shop)
    until = _reconciled_until(app, shop)
    assert until is not None and until <= dt.datetime.now(dt.UTC)
    assert "ahead of Keygate's clock" in caplog.text
    connected.orders[9631] = dict(wc_order(9631), date_modified_gmt=stamp(now))
    reconcile(app, shop)
    assert len(shop.order(9631)["licenses"]) == 1
    _set_reconciled_until(app, shop, future)
    connected.orders[9632] = touched_now(wc_order(9632))
    reconcile(app, shop)
    assert len(shop.order(9632)["licenses"]) == 1
    until = _reconciled_until(app, shop)
    assert until is not None and until <= dt.datetime.now(dt.UTC)


def transactions_left_open(app: Flask) -> int:
    """PostgreSQL: connections to the test database idle inside a transaction (a run that
    waits on the shop in one). SQLite has no such view: what shows its one write lock held
    is a webhook delivery waiting on it."""
    engine = app.extensions["keygate.db"].engine
    if engine.dialect.name != "postgresql":
        return 0
    with engine.connect() as connection:
        return connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
            )
        ).scalar_one()


def test_repairing_webhooks_waits_on_the_shop_outside_any_transaction(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """While the shop re-activates a webhook it disabled, or creates one deleted, a webhook
    delivery is answered at once (on SQLite a transaction holds the one write lock), and
    no transaction waits on the shop (PostgreSQL)."""
    topics = {w["topic"]: w["id"] for w in connected.webhooks.values()}
    connected.webhooks[topics["order.updated"]]["status"] = "disabled"
    del connected.webhooks[topics["order.deleted"]]
    webhooks = connected._webhooks
    waiting: queue.Queue[tuple[str, int, threading.Event]] = queue.Queue()

    def slow(method: str, rest_: list[str], query: dict[str, str], body: Any) -> Any:
        if method in {"PUT", "POST"}:
            release = threading.Event()
            waiting.put((method, transactions_left_open(app), release))
            release.wait(30)
        return webhooks(method, rest_, query, body)

    connected._webhooks = slow  # type: ignore[method-assign]
    run = threading.Thread(target=reconcile, args=(app, shop))
    run.start()
    seen: list[tuple[str, int, int, float]] = []
    try:
        for n in range(2):
            method, open_transactions, release = waiting.get(timeout=10)
            began = time.monotonic()
            response = connected.deliver(shop.client, "order.created", wc_order(9720 + n))
            seen.append((method, open_transactions, response.status_code, time.monotonic() - began))
            release.set()
    finally:
        while not waiting.empty():
            waiting.get()[2].set()
        run.join(30)
    assert [(method, status) for method, _, status, _ in seen] == [("PUT", 200), ("POST", 200)]
    assert all(took < 5 for *_, took in seen), seen
    assert [open_transactions for _, open_transactions, *_ in seen] == [0, 0]
    assert sorted(w["topic"] for w in connected.webhooks.values()) == sorted(TOPICS)
    assert all(w["status"] == "active" for w in connected.webhooks.values())


def test_no_note_and_no_dead_job_for_an_order_the_shop_deleted_for_good(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """An order deleted for good in the shop before its note was written (a test order
    removed at once) has nowhere to take a note: the job ends, rather than asking again for
    hours and then telling the owner of a dead job."""
    shop.configure(501)
    order = wc_order(9703, "processing", [line_item(501)])
    connected.deliver(shop.client, "order.created", order)  # the shop no longer has it
    run_pending(app)
    assert connected.notes.get(9703) is None
    with app.app_context():
        job = db.session.execute(select(Job).where(Job.kind == "shop.order_note")).scalar_one()
        assert (job.status, job.last_error) == ("done", None)
        assert not db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "job.dead")
        ).all()


@pytest.mark.parametrize("answer", [{}, None, "<html>cached</html>"])
def test_a_notes_listing_that_is_no_list_posts_no_second_note(
    app: Flask, shop: WebhookSender, connected: FakeShop, answer: Any
) -> None:
    """A run that crashed after posting its note is re-run while a caching or security
    plugin answers the notes listing with no list (``{}``, ``null``, a page): that is the
    shop not answering, so the job tries again later, not "no notes" (a second note mailed
    to the buyer)."""
    shop.configure(501)
    order = wc_order(9705, "processing", [line_item(501)])
    connected.orders[9705] = order
    connected.deliver(shop.client, "order.created", order)
    run_pending(app)
    assert len(connected.notes[9705]) == 1
    orders = connected._orders

    def notes_not_listed(method: str, rest_: list[str], query: dict[str, str], body: Any) -> Any:
        if method == "GET" and rest_[1:] == ["notes"]:
            return 200, {"Content-Type": "application/json"}, json.dumps(answer)
        return orders(method, rest_, query, body)

    connected._orders = notes_not_listed  # type: ignore[method-assign]
    with app.app_context():
        db.session.execute(ShopNote.__table__.delete())
        job = db.session.execute(select(Job).where(Job.kind == "shop.order_note")).scalar_one()
        enqueue(db.session, "shop.order_note", dict(job.payload))
        db.session.commit()
    run_pending(app)
    assert len(connected.notes[9705]) == 1
    with app.app_context():
        retried = db.session.scalars(
            select(Job).where(Job.kind == "shop.order_note", Job.id != job.id)
        ).one()
        assert retried.attempts >= 1 and retried.status == "pending"


class _Monotonic:
    """Keygate's monotonic clock, moved on by hand (a run that takes its time)."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now


def test_an_order_trashed_between_the_two_listings_is_read_by_the_next_run(
    app: Flask,
    shop: WebhookSender,
    connected: FakeShop,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run lists trashed orders, then the rest. An order trashed after the first listing
    ended is in neither; while the second took 20 minutes it listed changes up to then. The
    next run starts 10 minutes before reconciled_until: were that the newest change of
    both listings, the trashing would never be read (its licenses left active)."""
    from connector.orders import reconcile as reconcile_module

    clock = _Monotonic()
    monkeypatch.setattr(reconcile_module, "time", clock, raising=False)
    shop.configure(501)
    stamp = lambda moment: moment.replace(tzinfo=None).isoformat(timespec="seconds")  # noqa: E731
    shop_now = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    _set_reconciled_until(app, shop, shop_now - dt.timedelta(minutes=5))
    paid = dict(wc_order(9640, "processing", [line_item(501)]), date_modified_gmt=stamp(shop_now))
    connected.orders[9640] = paid
    connected.deliver(shop.client, "order.created", paid)
    assert [lic["status"] for lic in shop.order(9640)["licenses"]] == ["active"]
    orders = connected._orders
    gap: list[int] = []

    def trashed_between_the_listings(
        method: str, rest_: list[str], query: dict[str, str], body: Any
    ) -> Any:
        if not rest_ and query.get("status") != "trash" and not gap:
            gap.append(1)
            trashed_at = shop_now + dt.timedelta(minutes=1)
            connected.orders[9640] = dict(paid, status="trash", date_modified_gmt=stamp(trashed_at))
            clock.now += 20 * 60
            later = shop_now + dt.timedelta(minutes=20)
            connected.orders[9641] = dict(wc_order(9641), date_modified_gmt=stamp(later))
        return orders(method, rest_, query, body)

    connected._orders = trashed_between_the_listings  # type: ignore[method-assign]
    reconcile(app, shop)
    assert gap and [lic["status"] for lic in shop.order(9640)["licenses"]] == ["active"]
    reconcile(app, shop)
    assert [lic["status"] for lic in shop.order(9640)["licenses"]] == ["revoked"]


def test_a_run_the_shop_cuts_off_keeps_what_it_read(
    app: Flask, shop: WebhookSender, connected: FakeShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large or slow shop times out on a later page of a run: the orders read before (in
    order of change) are not read again by each following run, which would time out at the
    same place for ever as its window grows; reconciled_until moves up to the last one."""
    monkeypatch.setattr(rest, "PER_PAGE", 2)
    shop.configure(501)
    for n in range(6):
        connected.orders[9650 + n] = wc_order(9650 + n, "completed", modified=100 + n)
    _set_reconciled_until(app, shop, (dt.datetime(2026, 11, 20, 11, 50, tzinfo=dt.UTC) + SHIFT))
    orders = connected._orders
    cut_at = wc_time(103 - 1)  # the page after the fourth order

    def times_out_late(method: str, rest_: list[str], query: dict[str, str], body: Any) -> Any:
        late = query.get("modified_after", "") >= cut_at
        if not rest_ and query.get("status") != "trash" and late:
            return 504, {"Content-Type": "text/html"}, "<h1>Gateway Timeout</h1>"
        return orders(method, rest_, query, body)

    connected._orders = times_out_late  # type: ignore[method-assign]
    with pytest.raises(rest.ShopUnavailable):
        reconcile(app, shop)
    assert [len(shop.order(9650 + n)["licenses"]) for n in range(4)] == [1, 1, 1, 1]
    assert _reconciled_until(app, shop) == (
        dt.datetime(2026, 11, 20, 12, 1, 43, tzinfo=dt.UTC) + SHIFT
    )
    connected._orders = orders  # type: ignore[method-assign]
    reconcile(app, shop)
    assert all(len(shop.order(9650 + n)["licenses"]) == 1 for n in range(6))


def test_a_run_cut_off_before_it_lists_the_paid_orders_moves_nothing(
    app: Flask, shop: WebhookSender, connected: FakeShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trashed orders are listed first: a shop that cuts the run off during that
    listing has not been asked for the other orders at all, so how far the trashed ones
    were read says nothing of them. reconciled_until stays, and an order paid before the
    trashed ones were changed is fulfilled by the next run."""
    monkeypatch.setattr(rest, "PER_PAGE", 2)
    shop.configure(501)
    connected.orders[9680] = wc_order(9680, "processing", [line_item(501)], modified=100)
    for n in range(3):
        connected.orders[9681 + n] = wc_order(9681 + n, "trash", modified=2000 + n)
    watermark = dt.datetime(2026, 11, 20, 11, 50, tzinfo=dt.UTC) + SHIFT
    _set_reconciled_until(app, shop, watermark)
    orders = connected._orders

    def times_out_in_the_trash(
        method: str, rest_: list[str], query: dict[str, str], body: Any
    ) -> Any:
        late = query.get("modified_after", "") >= wc_time(2000)
        if not rest_ and query.get("status") == "trash" and late:
            return 504, {"Content-Type": "text/html"}, "<h1>Gateway Timeout</h1>"
        return orders(method, rest_, query, body)

    connected._orders = times_out_in_the_trash  # type: ignore[method-assign]
    with pytest.raises(rest.ShopUnavailable):
        reconcile(app, shop)
    assert _reconciled_until(app, shop) == watermark
    connected._orders = orders  # type: ignore[method-assign]
    reconcile(app, shop)
    assert len(shop.order(9680)["licenses"]) == 1


def test_an_order_whose_refunds_the_shop_cut_off_is_not_counted_as_read(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """A run cut off while it reads an order's refunds has not applied that order:
    reconciled_until moves up to the order before it, not past it."""
    shop.configure(501)
    connected.orders[9690] = wc_order(9690, "completed", [line_item(501)], modified=100)
    refunded = wc_order(9691, "completed", [line_item(501, quantity=2, line_id=78)])
    connected.orders[9691] = refunded
    connected.add_refund(9691, line_id=78, quantity=1, amount="49.00")
    refunded["date_modified_gmt"] = refunded["date_modified"] = wc_time(101)
    _set_reconciled_until(app, shop, (dt.datetime(2026, 11, 20, 11, 50, tzinfo=dt.UTC) + SHIFT))
    orders = connected._orders

    def refunds_time_out(method: str, rest_: list[str], query: dict[str, str], body: Any) -> Any:
        if rest_ == ["9691", "refunds"]:
            return 504, {"Content-Type": "text/html"}, "<h1>Gateway Timeout</h1>"
        return orders(method, rest_, query, body)

    connected._orders = refunds_time_out  # type: ignore[method-assign]
    with pytest.raises(rest.ShopUnavailable):
        reconcile(app, shop)
    assert _reconciled_until(app, shop) == (
        dt.datetime(2026, 11, 20, 12, 1, 40, tzinfo=dt.UTC) + SHIFT
    )


def test_webhooks_delivering_to_an_old_address_are_shown_not_moved(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """Webhooks registered while KEYGATE_BASE_URL named another address keep delivering
    there. The check sees it and tells the owner (store page, dashboard, API), naming both
    addresses, but leaves them be (a database copy restored elsewhere would take the shop's
    webhooks); connecting again registers them at the current address."""
    from tests.functional.test_admin_pages import signed_in_owner

    public_id = shop.store.store.public_id
    here = f"http://keygate.test/webhooks/woocommerce/{public_id}"
    old = f"https://old-keygate.example/webhooks/woocommerce/{public_id}"
    reconcile(app, shop)
    assert shop.admin("GET", "/connection").get_json()["webhooks_elsewhere"] is None
    owner = signed_in_owner(app)
    assert "deliver to" not in owner.get("/admin/").get_data(as_text=True)
    for webhook in connected.webhooks.values():
        webhook["delivery_url"] = old
    reconcile(app, shop)
    assert shop.admin("GET", "/connection").get_json()["webhooks_elsewhere"] == old
    dashboard = owner.get("/admin/").get_data(as_text=True)
    assert f"The shop&#39;s webhooks deliver to {old}, while Keygate is at {here}" in dashboard
    page = owner.get(f"/admin/stores/{shop.store.store.id}").get_data(as_text=True)
    assert f"deliver to <code>{old}</code>, while Keygate is at <code>{here}</code>" in page
    assert "Connect WooCommerce again" in page
    assert {w["delivery_url"] for w in connected.webhooks.values()} == {old}
    # Connecting again: WooCommerce makes Keygate a new key, and the webhooks are registered
    # at Keygate's address.
    connected.consumer_key, connected.consumer_secret = "ck_" + "1" * 40, "cs_" + "2" * 40
    connect_url = shop.admin("GET", "/connection").get_json()["connect_url"]
    query = {k: v[-1] for k, v in parse_qs(urlsplit(connect_url).query).items()}
    body = auth_callback_body(
        query["user_id"],
        key_id=18,
        consumer_key=connected.consumer_key,
        consumer_secret=connected.consumer_secret,
    )
    assert shop.client.post(urlsplit(query["callback_url"]).path, json=body).status_code == 200
    run_pending(app)
    assert shop.admin("GET", "/connection").get_json()["webhooks_elsewhere"] is None
    reconcile(app, shop)
    assert "deliver to" not in owner.get("/admin/").get_data(as_text=True)
    assert set(connected.active_webhooks(here)) == set(TOPICS)


NEW_KEY = "ck_" + "0123456789" * 4
NEW_SECRET = "cs_" + "9876543210" * 4


def _note_job_dies(app: Flask, shop: WebhookSender, fake: FakeShop, shop_order_id: int) -> None:
    """Deliver a paid order whose note the shop refuses, and run its note job to its end."""
    order = wc_order(shop_order_id, "processing", [line_item(501)])
    fake.orders[shop_order_id] = order
    fake.deliver(shop.client, "order.created", order)
    run_pending(app)
    with app.app_context(), transaction() as session:
        job = session.scalars(
            select(Job).where(Job.kind == "shop.order_note", Job.status == "pending")
        ).one()
        job.attempts = app.extensions["keygate.settings"].job_max_attempts - 1
        job.run_after = job.run_after - dt.timedelta(days=1)
    run_pending(app)


def _note_jobs(app: Flask) -> list[tuple[str, str | None]]:
    with app.app_context():
        return [
            (job.status, job.last_error)
            for job in db.session.scalars(
                select(Job).where(Job.kind == "shop.order_note").order_by(Job.id)
            )
        ]


@pytest.mark.parametrize("how", ["by hand", "wc-auth"])
def test_a_note_the_shop_refused_for_its_key_is_written_once_the_owner_gives_a_new_one(
    app: Flask, shop: WebhookSender, connected: FakeShop, how: str
) -> None:
    """A buyer's note the shop refused for the store's REST key (revoked in WooCommerce: 401)
    and given up on is written as soon as the owner saves a new key or reconnects, as Brevo
    credentials revive the mails refused for theirs; a note that died of something else
    (the shop's REST API blocked) waits for the owner's Retry."""
    shop.configure(501)
    connected.rest_blocked = True
    _note_job_dies(app, shop, connected, 9801)
    connected.rest_blocked = False
    connected.consumer_key, connected.consumer_secret = NEW_KEY, NEW_SECRET  # old key revoked
    _note_job_dies(app, shop, connected, 9802)
    (blocked, refused) = _note_jobs(app)
    assert blocked[0] == "dead" and "HTTP 404 rest_no_route" in str(blocked[1])
    assert refused[0] == "dead" and "HTTP 401 woocommerce_rest_cannot_view" in str(refused[1])
    if how == "by hand":
        saved = shop.admin(
            "PUT",
            "/credentials/woocommerce",
            {"consumer_key": NEW_KEY, "consumer_secret": NEW_SECRET},
        )
        assert saved.status_code == 200
    else:
        connect_url = shop.admin("GET", "/connection").get_json()["connect_url"]
        query = {k: v[-1] for k, v in parse_qs(urlsplit(connect_url).query).items()}
        body = auth_callback_body(
            query["user_id"], key_id=18, consumer_key=NEW_KEY, consumer_secret=NEW_SECRET
        )
        approved = shop.client.post(urlsplit(query["callback_url"]).path, json=body)
        assert approved.status_code == 200, approved.get_data(as_text=True)
    run_pending(app)
    assert 9801 not in connected.notes
    (note,) = connected.notes[9802]
    assert note["customer_note"] is True
    assert [status for status, _ in _note_jobs(app)] == ["dead", "done"]
    with app.app_context():
        retried = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "job.retried")
        ).all()
        assert [(e.actor, e.detail) for e in retried] == [
            ("keygate", {"kind": "shop.order_note", "reason": "shop key saved"})
        ]


@pytest.mark.parametrize("refusal", [401, 403])
def test_a_note_waiting_out_its_backoff_for_a_refused_key_is_written_at_once_with_a_new_one(
    app: Flask, shop: WebhookSender, connected: FakeShop, refusal: int
) -> None:
    """A note the shop refused for the store's key (revoked: 401; read-only: 403), not
    given up on yet but waiting for its next attempt (up to an hour later), is written as
    soon as the owner saves a key that may write: the buyer does not wait on the backoff of
    a key that is fixed."""
    shop.configure(501)
    orders = connected._orders
    read_only = [refusal == 403]

    def refuses_writes(method: str, rest_: list[str], query: dict[str, str], body: Any) -> Any:
        if read_only[0] and method == "POST":
            return error(403, "woocommerce_rest_cannot_create", "Sorry, you cannot create.")
        return orders(method, rest_, query, body)

    connected._orders = refuses_writes  # type: ignore[method-assign]
    if refusal == 401:
        connected.consumer_key, connected.consumer_secret = NEW_KEY, NEW_SECRET  # revoked
    order = wc_order(9803, "processing", [line_item(501)])
    connected.orders[9803] = order
    connected.deliver(shop.client, "order.created", order)
    run_pending(app)
    ((status, last_error),) = _note_jobs(app)
    assert status == "pending" and f"HTTP {refusal}" in str(last_error)
    with app.app_context(), transaction() as session:
        session.execute(
            update(Job)
            .where(Job.kind == "shop.order_note")
            .values(run_after=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        )
    read_only[0] = False  # the owner gave the key the right to write, or a new key
    key = {"consumer_key": connected.consumer_key, "consumer_secret": connected.consumer_secret}
    assert shop.admin("PUT", "/credentials/woocommerce", key).status_code == 200
    run_pending(app)
    assert [status for status, _ in _note_jobs(app)] == ["done"]
    assert len(connected.notes[9803]) == 1


def test_a_refund_left_unapplied_without_a_key_is_applied_once_the_shop_is_connected(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A partial refund delivered while the store had no REST key is told to the owner; the
    owner then connects the shop: that order is read again (reconciliation would not: it
    reads the last week's changes, and the order changed 13 days ago), the refunded unit is
    revoked, and the dashboard and the order page stop warning of it."""
    from tests.functional.test_admin_attention import dashboard
    from tests.functional.test_admin_pages import signed_in_owner

    shop.configure(501)
    order = wc_order(9614, "processing", [line_item(501, quantity=3, line_id=75)])
    fake_shop.orders[9614] = order
    assert shop.deliver(order, "order.created").status_code == 200
    fake_shop.add_refund(9614, line_id=75, quantity=1, amount="49.00")
    order["date_modified_gmt"] = order["date_modified"] = shifted("2026-11-20T12:05:00")
    assert shop.deliver(order).status_code == 200
    run_pending(app)
    assert unit_statuses(app) == {1: "active", 2: "active", 3: "active"}
    with app.app_context():
        order_pk = db.session.scalars(select(Order.id)).one()
    owner = signed_in_owner(app)
    assert "Refunds of 1 order Keygate could not apply" in dashboard(owner)
    page = owner.get(f"/admin/orders/{order_pk}").get_data(as_text=True)
    assert "Refunds of this order could not be applied" in page

    connect_store(app, shop, fake_shop)
    assert unit_statuses(app) == {1: "active", 2: "active", 3: "revoked"}
    assert "Refunds of 1 order Keygate could not apply" not in dashboard(owner)
    page = owner.get(f"/admin/orders/{order_pk}").get_data(as_text=True)
    assert "Refunds of this order could not be applied" not in page
    with app.app_context():
        read = db.session.scalars(
            select(AuditEvent.subject).where(AuditEvent.action == "order.refunds_read")
        ).all()
    assert read == ["order:9614"]


def test_a_refund_the_shop_refused_to_read_is_applied_once_a_new_key_is_saved(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """The store's key was revoked in WooCommerce (401): the partial refund is left for the
    owner; the owner saves the new key by hand, and the order is read again with it."""
    shop.configure(501)
    order = wc_order(9615, "processing", [line_item(501, quantity=2, line_id=74)])
    connected.orders[9615] = order
    connected.deliver(shop.client, "order.created", order)
    connected.add_refund(9615, line_id=74, quantity=1, amount="49.00")
    order["date_modified_gmt"] = order["date_modified"] = shifted("2026-11-20T12:05:00")
    connected.consumer_key = "ck_" + "b" * 40
    connected.deliver(shop.client, "order.updated", order)
    run_pending(app)
    assert unit_statuses(app) == {1: "active", 2: "active"}
    [entry] = shop.admin("GET", "/audit?action=order.refund_not_applied").get_json()["events"]
    assert "HTTP 401" in entry["detail"]["reason"]

    saved = shop.admin(
        "PUT",
        "/credentials/woocommerce",
        {"consumer_key": connected.consumer_key, "consumer_secret": connected.consumer_secret},
    )
    assert saved.status_code == 200
    run_pending(app)
    assert unit_statuses(app) == {1: "active", 2: "revoked"}
    [read] = shop.admin("GET", "/audit?action=order.refunds_read").get_json()["events"]
    assert read["subject"] == "order:9615"
