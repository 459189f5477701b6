"""Renewals extend the license they renew (and refunds take it back); manual payments."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, update

from connector.db import db, transaction, utcnow
from connector.jobs import run_pending
from connector.models import (
    AuditEvent,
    DownloadGrant,
    License,
    LicenseRenewal,
    Order,
    Product,
    Store,
)
from connector.orders import renewals
from connector.orders.renewals import SUBSCRIPTION_RENEWAL_META, subscription_of
from connector.orders.service import apply_shop_order
from plugin.woocommerce.webhooks import parse_order
from tests.factories import WebhookSender, line_item, shifted, wc_order, wc_time
from tests.wc_rest import FakeShop, connect_store, fake_shop

__all__ = ["fake_shop"]  # a fixture, used by name


def renewal_line(product_id: int, key: str, line_id: int) -> dict[str, Any]:
    item = line_item(product_id, line_id=line_id)
    item["meta_data"] = [{"id": 1, "key": "_keygate_renew_license", "value": key.lower()}]
    return item


def parse_iso(moment: str) -> dt.datetime:
    return dt.datetime.fromisoformat(moment.replace("Z", "+00:00"))


def paid_at(order: dict[str, Any], moment: dt.datetime) -> dict[str, Any]:
    order["date_paid"] = order["date_paid_gmt"] = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return order


def lapse(app: Flask, days: int) -> dt.datetime:
    """Every license (and its links) ran out ``days`` ago."""
    moment = (utcnow() - dt.timedelta(days=days)).replace(microsecond=0)
    with app.app_context():
        db.session.execute(update(License).values(expires_at=moment, updates_until=moment))
        db.session.execute(update(DownloadGrant).values(expires_at=moment))
        db.session.commit()
    return moment


def licenses(app: Flask) -> int:
    with app.app_context():
        return db.session.execute(select(func.count()).select_from(License)).scalar_one()


def test_renewal_by_key_extends_instead_of_issuing(app: Flask, shop: WebhookSender) -> None:
    """A paid line naming a license key adds the product's duration to it, once."""
    shop.configure(501, duration_days=365, update_days=365)
    shop.deliver(wc_order(9201, "completed", [line_item(501)]))
    original = shop.order(9201)["licenses"][0]
    assert original["expires_at"].startswith(shifted("2027-11-20"))

    renewal = wc_order(9202, "processing", [renewal_line(501, original["key"], 301)], modified=5)
    assert shop.deliver(renewal).status_code == 200
    shop.deliver(renewal)  # redelivered
    assert licenses(app) == 1
    assert shop.order(9201)["licenses"][0]["expires_at"].startswith("2028-11-19")
    assert shop.order(9202)["licenses"] == []
    with app.app_context():
        row = db.session.execute(select(LicenseRenewal)).scalar_one()
        assert row.previous_expires_at is not None
        assert row.previous_expires_at.isoformat().startswith(shifted("2027-11-20"))


def test_refunding_the_renewal_shortens_the_expiry_back(app: Flask, shop: WebhookSender) -> None:
    """A refunded renewal takes its extension back; paying it again re-applies it."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9203, "completed", [line_item(501)]))
    key = shop.order(9203)["licenses"][0]["key"]
    first_expiry = shop.order(9203)["licenses"][0]["expires_at"]
    items = [renewal_line(501, key, 302)]
    shop.deliver(wc_order(9204, "processing", items, modified=5))
    extended = shop.order(9203)["licenses"][0]["expires_at"]
    assert extended > first_expiry
    shop.deliver(wc_order(9204, "refunded", items, modified=10))
    assert shop.order(9203)["licenses"][0]["expires_at"] == first_expiry
    assert shop.order(9203)["licenses"][0]["status"] == "active"  # the license itself stays
    shop.deliver(wc_order(9204, "completed", items, modified=15))
    assert shop.order(9203)["licenses"][0]["expires_at"] == extended


def test_subscriptions_renewal_extends_the_customers_license(
    app: Flask, shop: WebhookSender
) -> None:
    """A WooCommerce Subscriptions renewal order extends the license of its first order."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9205, "completed", [line_item(501)], customer_id=42))
    shop.deliver(wc_order(9206, "completed", [line_item(501)], customer_id=43, email="x@y.z"))
    before = shop.order(9205)["licenses"][0]["expires_at"]
    renewal = wc_order(9207, "processing", [line_item(501)], customer_id=42, modified=5)
    renewal["meta_data"].append({"id": 9, "key": "_subscription_renewal", "value": "9199"})
    shop.deliver(renewal)
    assert shop.order(9207)["licenses"] == []
    assert shop.order(9205)["licenses"][0]["expires_at"] > before
    assert licenses(app) == 2


def subscription_renewal(
    order_id: int, subscription: int, modified: int, item: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A paid renewal order of customer 42's subscription (of product 501 unless ``item``)."""
    line = item if item is not None else line_item(501)
    order = wc_order(order_id, "processing", [line], customer_id=42, modified=modified)
    order["meta_data"].append({"id": 9, "key": "_subscription_renewal", "value": str(subscription)})
    return order


def retire(app: Flask, shop_product_id: str) -> None:
    """The product's shop meta is gone: retired by the product sync (sells no new keys; a
    variation's lines follow its parent again), as only products configured from shop meta
    are."""
    with app.app_context():
        db.session.execute(
            update(Product)
            .where(Product.shop_product_id == shop_product_id)
            .values(retired_at=utcnow(), source="shop")
        )
        db.session.commit()


def test_two_subscriptions_of_one_product_each_renew_their_own_license(
    app: Flask, shop: WebhookSender
) -> None:
    """A customer with two subscriptions: a renewal extends the license that runs out first
    and no other subscription renews; later renewals of a subscription follow its first."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9220, "completed", [line_item(501)], customer_id=42))
    with app.app_context():  # the first subscription was bought 10 days before the second
        bought = db.session.execute(select(License)).scalar_one()
        assert bought.expires_at is not None
        bought.expires_at -= dt.timedelta(days=10)
        db.session.commit()
    shop.deliver(wc_order(9221, "completed", [line_item(501)], customer_id=42, modified=2))
    first, second = (shop.order(i)["licenses"][0]["expires_at"] for i in (9220, 9221))
    assert first < second

    shop.deliver(subscription_renewal(9222, 7001, modified=5))  # subscription A, due first
    a_once = shop.order(9220)["licenses"][0]["expires_at"]
    assert a_once > second and shop.order(9221)["licenses"][0]["expires_at"] == second
    # Subscription B's renewal: A's license now runs out later, but B's is B's.
    shop.deliver(subscription_renewal(9223, 7002, modified=6))
    b_once = shop.order(9221)["licenses"][0]["expires_at"]
    assert b_once > second and shop.order(9220)["licenses"][0]["expires_at"] == a_once
    # A's next renewal extends A's license again, although B's now runs out first.
    shop.deliver(subscription_renewal(9224, 7001, modified=7))
    assert shop.order(9220)["licenses"][0]["expires_at"] > a_once
    assert shop.order(9221)["licenses"][0]["expires_at"] == b_once
    assert licenses(app) == 2


def test_renewals_move_the_download_links_with_the_license(app: Flask, shop: WebhookSender) -> None:
    """Links that last while the license lasts follow its new expiry; a refund of the
    renewal takes exactly that back, and the buyer's links work again once it is paid."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9210, "completed", [line_item(501)]))
    first = shop.order(9210)
    key, before = first["licenses"][0]["key"], first["downloads"][0]["expires_at"]
    assert before == first["licenses"][0]["expires_at"]
    items = [renewal_line(501, key, 304)]
    shop.deliver(wc_order(9211, "processing", items, modified=5))
    renewed = shop.order(9210)
    assert renewed["downloads"][0]["expires_at"] == renewed["licenses"][0]["expires_at"] > before
    shop.deliver(wc_order(9211, "processing", items, modified=6))  # redelivered: moved once
    assert shop.order(9210)["downloads"][0]["expires_at"] == renewed["downloads"][0]["expires_at"]
    shop.deliver(wc_order(9211, "refunded", items, modified=10))
    assert shop.order(9210)["downloads"][0]["expires_at"] == before
    shop.deliver(wc_order(9211, "completed", items, modified=15))
    assert shop.order(9210)["downloads"][0]["expires_at"] == renewed["downloads"][0]["expires_at"]


@pytest.mark.parametrize("download_days", [None, 10])
def test_a_file_added_after_renewals_gets_a_link_as_long_as_the_others(
    app: Flask, shop: WebhookSender, download_days: int | None
) -> None:
    """The owner adds a file after two renewals: the next delivery gives it a link lasting
    as long as the renewals made the license's other links, and a refund of the last
    renewal takes that back for it too."""
    first_file = {"object_key": "a.pdf", "filename": "a.pdf"}
    shop.configure(501, duration_days=30, download_days=download_days, files=[first_file])
    bought = [line_item(501)]
    shop.deliver(wc_order(9215, "completed", bought))
    key = shop.order(9215)["licenses"][0]["key"]
    second = [renewal_line(501, key, 305)]
    shop.deliver(wc_order(9216, "processing", [renewal_line(501, key, 304)], modified=5))
    shop.deliver(wc_order(9217, "processing", second, modified=6))
    added = {"object_key": "b.pdf", "filename": "b.pdf"}
    shop.configure(501, duration_days=30, download_days=download_days, files=[first_file, added])
    shop.deliver(wc_order(9215, "completed", bought, modified=7))
    links = {d["filename"]: d["expires_at"] for d in shop.order(9215)["downloads"]}
    assert links["b.pdf"] == links["a.pdf"]
    shop.deliver(wc_order(9217, "refunded", second, modified=10))
    after_refund = {d["filename"]: d["expires_at"] for d in shop.order(9215)["downloads"]}
    assert after_refund["b.pdf"] == after_refund["a.pdf"] < links["a.pdf"]


def test_a_renewal_reopens_a_lapsed_download_window(app: Flask, shop: WebhookSender) -> None:
    """A product with its own download window (download_days) gets a fresh one from the
    renewal's payment when the old one has passed; an expired link works again."""
    shop.configure(501, duration_days=365, download_days=7)
    shop.deliver(wc_order(9212, "completed", [line_item(501)]))
    body = shop.order(9212)
    lapsed = utcnow() - dt.timedelta(days=1)
    with app.app_context():
        db.session.execute(update(DownloadGrant).values(expires_at=lapsed))
        db.session.commit()
    link = body["downloads"][0]["link"].removeprefix("http://keygate.test")
    assert shop.client.get(link).status_code == 410
    renewal = wc_order(9213, "processing", [renewal_line(501, body["licenses"][0]["key"], 305)])
    shop.deliver(paid_at(renewal, utcnow()))
    with app.app_context():
        grant = db.session.execute(select(DownloadGrant)).scalar_one()
        assert grant.expires_at is not None
        window = grant.expires_at - utcnow()
        assert dt.timedelta(days=6, hours=23) < window <= dt.timedelta(days=7)
    assert shop.client.get(link).status_code != 410  # not "expired" (no file stored here)


def test_renewal_of_an_unknown_key_issues_a_new_license(app: Flask, shop: WebhookSender) -> None:
    """A key that matches nothing (typo, other product) does not cost the buyer a license."""
    shop.configure(501)
    shop.deliver(wc_order(9208, "processing", [renewal_line(501, "KG-NOPE-NOPE", 303)]))
    assert len(shop.order(9208)["licenses"]) == 1


def test_a_subscription_renews_the_live_license_not_a_cancelled_orders(
    app: Flask, shop: WebhookSender
) -> None:
    """A customer whose earlier order was cancelled (its license revoked) and who bought
    again: the subscription's renewal extends the live license, although the revoked one
    would run out first."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9230, "processing", [line_item(501)], customer_id=42))
    shop.deliver(wc_order(9230, "cancelled", [line_item(501)], customer_id=42, modified=5))
    shop.deliver(wc_order(9231, "completed", [line_item(501)], customer_id=42, modified=10))
    with app.app_context():  # the live one was bought a day later
        live = db.session.execute(select(License).where(License.status == "active")).scalar_one()
        assert live.expires_at is not None
        live.expires_at += dt.timedelta(days=1)
        db.session.commit()
    revoked_before = shop.order(9230)["licenses"][0]["expires_at"]
    live_before = shop.order(9231)["licenses"][0]["expires_at"]
    shop.deliver(subscription_renewal(9232, 7003, modified=20))
    assert shop.order(9231)["licenses"][0]["expires_at"] > live_before
    assert shop.order(9230)["licenses"][0]["expires_at"] == revoked_before
    assert shop.order(9232)["licenses"] == []


def test_renewal_naming_a_revoked_key_issues_a_new_license_and_tells_the_owner(
    app: Flask, shop: WebhookSender
) -> None:
    """A revoked key is not extended (the buyer would have paid for nothing that works): the
    line is issued a license of its own, and the owner's audit log names the revoked key."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9233, "completed", [line_item(501)]))
    revoked = shop.order(9233)["licenses"][0]
    assert shop.admin("POST", f"/licenses/{revoked['key']}/revoke").status_code == 200
    shop.deliver(wc_order(9234, "processing", [renewal_line(501, revoked["key"], 304)]))
    assert shop.order(9233)["licenses"][0]["expires_at"] == revoked["expires_at"]
    assert [lic["status"] for lic in shop.order(9234)["licenses"]] == ["active"]
    with app.app_context():
        entries = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "order.renewal_of_revoked_license")
        ).all()
    assert [e.subject for e in entries] == ["order:9234"]


def test_on_hold_manual_payment_waits_then_keeps_its_reference(
    app: Flask, shop: WebhookSender
) -> None:
    """Bank transfer / USDT: on-hold issues nothing; once paid, method, hash and note stay."""
    shop.configure(501)
    waiting = wc_order(9209, "on-hold", payment_method="bacs", transaction_id="")
    waiting["meta_data"].append({"id": 5, "key": "_keygate_payment_note", "value": "Ref 4711"})
    shop.deliver(waiting)
    assert shop.order(9209)["licenses"] == []
    paid = wc_order(9209, "processing", payment_method="usdt_trc20", transaction_id="", modified=5)
    tx_hash = "0x" + "ab" * 32
    paid["meta_data"] += [
        {"id": 5, "key": "_keygate_payment_note", "value": "Ref 4711, confirmed by Ana"},
        {"id": 6, "key": "_keygate_transaction_hash", "value": tx_hash},
    ]
    shop.deliver(paid)
    body = shop.order(9209)
    assert len(body["licenses"]) == 1
    assert body["order"]["payment_method"] == "usdt_trc20"
    assert body["order"]["transaction_id"] == tx_hash
    assert body["order"]["payment_note"] == "Ref 4711, confirmed by Ana"
    # A later update without them (status set to completed by hand) keeps them.
    shop.deliver(
        wc_order(9209, "completed", payment_method="usdt_trc20", transaction_id="", modified=10)
    )
    assert shop.order(9209)["order"]["transaction_id"] == tx_hash


def test_only_a_subscription_id_names_a_subscription() -> None:
    """The renewal meta is followed only when it is an id (it is stored and looked up)."""
    assert subscription_of({SUBSCRIPTION_RENEWAL_META: 812}) == "812"
    assert subscription_of({SUBSCRIPTION_RENEWAL_META: "812"}) == "812"
    for value in ("81\x002", "1" * 65, True, "", 0, None, [812]):
        assert subscription_of({SUBSCRIPTION_RENEWAL_META: value}) is None


def test_two_renewals_of_one_license_at_once_both_count(
    app: Flask, shop: WebhookSender, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workers apply two renewal orders of one key at the same moment: the license is
    extended twice, not once. On PostgreSQL, where writers run side by side, both are held
    until both have read the license; SQLite runs one writer at a time (no barrier: the
    second would wait for the first's lock while the first waits at the barrier)."""
    side_by_side = database_url.startswith("postgresql")
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9240, "completed", [line_item(501)]))
    key, before = (shop.order(9240)["licenses"][0][k] for k in ("key", "expires_at"))
    barrier = threading.Barrier(2, timeout=10)
    real_lock = renewals.lock_licenses

    def lock_together(*args: Any, **kwargs: Any) -> None:
        if side_by_side:
            barrier.wait()  # both workers have read the license they renew, unlocked
        real_lock(*args, **kwargs)

    monkeypatch.setattr(renewals, "lock_licenses", lock_together)
    errors: list[BaseException] = []

    def worker(order_id: int, line_id: int) -> None:
        payload = wc_order(order_id, "processing", [renewal_line(501, key, line_id)], modified=5)
        try:
            with app.app_context(), transaction() as session:
                store = session.get(Store, shop.store.store.id)
                assert store is not None
                apply_shop_order(session, store, parse_order(payload))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(9241 + i, 321 + i)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    after = shop.order(9240)["licenses"][0]["expires_at"]
    assert parse_iso(after) - parse_iso(before) == dt.timedelta(days=60)


def test_a_renewal_applied_late_counts_from_its_payment(app: Flask, shop: WebhookSender) -> None:
    """A lapsed license renewed by an order paid hours before Keygate saw it (its webhook
    lost, the reconciliation read it later) runs from the payment, not from when Keygate got
    to it: the buyer paid for those 30 days, not 30 days and some hours."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9250, "completed", [line_item(501)]))
    key = shop.order(9250)["licenses"][0]["key"]
    lapse(app, 100)
    paid = utcnow().replace(microsecond=0) - dt.timedelta(hours=5)
    shop.deliver(paid_at(wc_order(9251, "processing", [renewal_line(501, key, 322)]), paid))
    renewed = shop.order(9250)
    assert parse_iso(renewed["licenses"][0]["expires_at"]) == paid + dt.timedelta(days=30)
    assert renewed["downloads"][0]["expires_at"] == renewed["licenses"][0]["expires_at"]


def test_a_purchase_dated_ahead_of_keygates_clock_counts_from_its_issue(
    app: Flask, shop: WebhookSender
) -> None:
    """A shop whose clock runs ten days ahead (a server clock set wrong) dates the payment
    ten days from now: the key and its links are not ten days longer for it. A purchase
    counts from the payment, never later than Keygate issued it, as a renewal does."""
    shop.configure(501, duration_days=30, download_days=7)
    before = utcnow()
    ahead = before.replace(microsecond=0) + dt.timedelta(days=10)
    shop.deliver(paid_at(wc_order(9252, "processing", [line_item(501)]), ahead))
    after = utcnow()
    body = shop.order(9252)
    expires = parse_iso(body["licenses"][0]["expires_at"])
    assert before + dt.timedelta(days=30) <= expires <= after + dt.timedelta(days=30)
    link_ends = parse_iso(body["downloads"][0]["expires_at"])
    assert before + dt.timedelta(days=7) <= link_ends <= after + dt.timedelta(days=7)


def test_refunding_one_of_two_renewals_of_a_lapsed_license_keeps_the_other(
    app: Flask, shop: WebhookSender
) -> None:
    """A license that ran out 100 days ago is renewed twice (a manual renewal and a
    subscription's, 30 days each) and the first is refunded: the second, still paid, keeps
    its 30 days from its payment, links with it; refunding both leaves the lapsed expiry."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9260, "completed", [line_item(501)]))
    key = shop.order(9260)["licenses"][0]["key"]
    lapsed = lapse(app, 100)
    paid = utcnow().replace(microsecond=0) - dt.timedelta(hours=2)
    first = [renewal_line(501, key, 323)]
    second = [renewal_line(501, key, 324)]
    shop.deliver(paid_at(wc_order(9261, "processing", first, modified=5), paid))
    shop.deliver(
        paid_at(wc_order(9262, "processing", second, modified=6), paid + dt.timedelta(hours=1))
    )
    shop.deliver(wc_order(9261, "refunded", first, modified=10))
    body = shop.order(9260)
    expected = paid + dt.timedelta(hours=1, days=30)
    assert parse_iso(body["licenses"][0]["expires_at"]) == expected
    assert parse_iso(body["downloads"][0]["expires_at"]) == expected
    shop.deliver(wc_order(9262, "refunded", second, modified=10))
    body = shop.order(9260)
    assert parse_iso(body["licenses"][0]["expires_at"]) == lapsed
    assert parse_iso(body["downloads"][0]["expires_at"]) == lapsed


def test_refunding_one_of_two_renewals_keeps_the_others_download_window(
    app: Flask, shop: WebhookSender
) -> None:
    """Links with a window of their own (download_days) that had passed: the renewal still
    paid keeps its fresh window, from its payment, when the other one is refunded."""
    shop.configure(501, duration_days=365, download_days=7)
    shop.deliver(wc_order(9263, "completed", [line_item(501)]))
    key = shop.order(9263)["licenses"][0]["key"]
    lapse(app, 100)
    paid = utcnow().replace(microsecond=0) - dt.timedelta(hours=2)
    first = [renewal_line(501, key, 325)]
    shop.deliver(paid_at(wc_order(9264, "processing", first, modified=5), paid))
    shop.deliver(
        paid_at(
            wc_order(9265, "processing", [renewal_line(501, key, 326)], modified=6),
            paid + dt.timedelta(hours=1),
        )
    )
    shop.deliver(wc_order(9264, "refunded", first, modified=10))
    window = shop.order(9263)["downloads"][0]["expires_at"]
    assert parse_iso(window) == paid + dt.timedelta(hours=1, days=7)


def test_refunding_a_renewal_keeps_the_owners_extension(app: Flask, shop: WebhookSender) -> None:
    """Days the owner added by hand after a renewal stay when the renewal is refunded."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9266, "completed", [line_item(501)]))
    key, before = (shop.order(9266)["licenses"][0][k] for k in ("key", "expires_at"))
    items = [renewal_line(501, key, 327)]
    shop.deliver(wc_order(9267, "processing", items, modified=5))
    assert shop.admin("POST", f"/licenses/{key}/extend", {"days": 10}).status_code == 200
    shop.deliver(wc_order(9267, "refunded", items, modified=10))
    after = shop.order(9266)["licenses"][0]["expires_at"]
    assert parse_iso(after) - parse_iso(before) == dt.timedelta(days=10)


def bought_subscription_later(app: Flask, old_days: int, subscribed_days: int) -> None:
    """The customer's first license (an outright purchase) ends in ``old_days``, the second
    (the subscription's) in ``subscribed_days`` (negative: ago)."""
    with app.app_context():
        old, subscribed = db.session.scalars(select(License).order_by(License.id)).all()
        old.expires_at = utcnow() + dt.timedelta(days=old_days)
        subscribed.expires_at = utcnow() + dt.timedelta(days=subscribed_days)
        db.session.commit()


def test_a_subscriptions_first_renewal_passes_over_a_long_lapsed_license(
    app: Flask, shop: WebhookSender
) -> None:
    """A customer who bought the product outright long ago (lapsed 20 days ago) and then as a
    subscription (ends in 5 days): the subscription's first renewal extends the live license,
    not the lapsed one that ran out first."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9270, "completed", [line_item(501)], customer_id=42))
    shop.deliver(wc_order(9271, "completed", [line_item(501)], customer_id=42, modified=1))
    bought_subscription_later(app, old_days=-20, subscribed_days=5)
    old, subscribed = (shop.order(i)["licenses"][0]["expires_at"] for i in (9270, 9271))
    shop.deliver(paid_at(subscription_renewal(9272, 7004, modified=5), utcnow()))
    assert shop.order(9271)["licenses"][0]["expires_at"] > subscribed
    assert shop.order(9270)["licenses"][0]["expires_at"] == old


def test_a_late_first_renewal_renews_the_license_that_lapsed_last(
    app: Flask, shop: WebhookSender
) -> None:
    """All of the customer's licenses have lapsed (the renewal's payment failed for days):
    the first renewal extends the one that ran out most recently, the subscription's, not
    one that lapsed long ago."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9273, "completed", [line_item(501)], customer_id=42))
    shop.deliver(wc_order(9274, "completed", [line_item(501)], customer_id=42, modified=1))
    bought_subscription_later(app, old_days=-60, subscribed_days=-3)
    old = shop.order(9273)["licenses"][0]["expires_at"]
    paid = utcnow().replace(microsecond=0)
    shop.deliver(paid_at(subscription_renewal(9275, 7005, modified=5), paid))
    renewed = shop.order(9274)["licenses"][0]["expires_at"]
    assert parse_iso(renewed) == paid + dt.timedelta(days=30)
    assert shop.order(9273)["licenses"][0]["expires_at"] == old


class LapsedLicenseRenewals:
    """A license (downloads while it lasts) that lapsed 100 days ago and two 30-day renewal
    orders of it: A paid 20 days ago, B two hours ago. Each ``deliver`` is the shop's next
    change of one of them."""

    def __init__(self, app: Flask, shop: WebhookSender, order_id: int) -> None:
        shop.configure(501, duration_days=30)
        shop.deliver(wc_order(order_id, "completed", [line_item(501)]))
        self.shop, self.order_id = shop, order_id
        key = shop.order(order_id)["licenses"][0]["key"]
        self.lapsed = lapse(app, 100)
        now = utcnow().replace(microsecond=0)
        self.paid = {"A": now - dt.timedelta(days=20), "B": now - dt.timedelta(hours=2)}
        self.orders = {"A": order_id + 1, "B": order_id + 2}
        self.lines = {name: [renewal_line(501, key, order_id + i)] for i, name in enumerate("AB")}
        self.changes = 0

    def deliver(self, renewal: str, status: str) -> None:
        self.changes += 1
        order = wc_order(self.orders[renewal], status, self.lines[renewal], modified=self.changes)
        assert self.shop.deliver(paid_at(order, self.paid[renewal])).status_code == 200

    def only(self, renewal: str) -> dt.datetime:
        """The expiry with only ``renewal`` paid: its 30 days from its payment."""
        return self.paid[renewal] + dt.timedelta(days=30)

    def expiry(self) -> dt.datetime:
        """The license's expiry; its update window and download link follow it."""
        body = self.shop.order(self.order_id)
        license_ = body["licenses"][0]
        assert license_["updates_until"] == license_["expires_at"]
        assert body["downloads"][0]["expires_at"] == license_["expires_at"]
        return parse_iso(license_["expires_at"])


def test_refunding_a_renewal_after_another_was_paid_again_keeps_only_what_is_paid(
    app: Flask, shop: WebhookSender
) -> None:
    """Renewal A is cancelled, B paid, A paid again (it extends from B's expiry), then B
    refunded: the license keeps A's 30 days from A's payment, not a day more; A refunded
    too, it is back at its lapsed expiry."""
    renewal = LapsedLicenseRenewals(app, shop, 9280)
    renewal.deliver("A", "processing")
    renewal.deliver("A", "cancelled")
    renewal.deliver("B", "processing")
    renewal.deliver("A", "processing")
    renewal.deliver("B", "refunded")
    assert renewal.expiry() == renewal.only("A")
    renewal.deliver("A", "refunded")
    assert renewal.expiry() == renewal.lapsed


def test_refunding_a_renewal_paid_before_another_was_paid_again_keeps_only_what_is_paid(
    app: Flask, shop: WebhookSender
) -> None:
    """A and B paid, A cancelled and paid again, B refunded: A's 30 days from its payment
    remain (not B's expiry, which had counted A's first payment); A refunded too, the
    lapsed expiry."""
    renewal = LapsedLicenseRenewals(app, shop, 9284)
    renewal.deliver("A", "processing")
    renewal.deliver("B", "processing")
    renewal.deliver("A", "cancelled")
    renewal.deliver("A", "processing")
    renewal.deliver("B", "refunded")
    assert renewal.expiry() == renewal.only("A")
    renewal.deliver("A", "refunded")
    assert renewal.expiry() == renewal.lapsed


def test_refunding_the_renewal_paid_again_keeps_the_other(app: Flask, shop: WebhookSender) -> None:
    """A cancelled, B paid, A paid again and then refunded: B's 30 days from its payment
    remain; B refunded too, the lapsed expiry."""
    renewal = LapsedLicenseRenewals(app, shop, 9288)
    renewal.deliver("A", "processing")
    renewal.deliver("A", "cancelled")
    renewal.deliver("B", "processing")
    renewal.deliver("A", "processing")
    renewal.deliver("A", "refunded")
    assert renewal.expiry() == renewal.only("B")
    renewal.deliver("B", "refunded")
    assert renewal.expiry() == renewal.lapsed


def test_two_orders_renewing_two_licenses_in_opposite_order_both_apply(
    app: Flask, shop: WebhookSender, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two renewal orders of the same two keys, one listing them in the opposite order of
    the other, paid at once and then refunded at once: both apply each time, neither is
    aborted by a deadlock (a failed webhook is never sent again). On PostgreSQL each worker,
    once it holds its first license, waits up to two seconds for the other to hold one too:
    locked line by line, each would then wait for the other's; SQLite runs one writer at a
    time, so it runs without the wait."""
    side_by_side = database_url.startswith("postgresql")
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9295, "completed", [line_item(501, quantity=2)]))
    bought = shop.order(9295)["licenses"]
    keys = [license_["key"] for license_ in bought]
    before = {license_["key"]: parse_iso(license_["expires_at"]) for license_ in bought}
    real_lock = renewals.lock_license
    holding = threading.local()
    rendezvous = threading.Barrier(2, timeout=2)

    def lock_and_wait_for_the_other(session: Any, license_id: int) -> License:
        license_ = real_lock(session, license_id)
        if side_by_side and not getattr(holding, "waited", False):
            holding.waited = True
            # Timed out: the other waits for a license this worker holds; go on.
            with contextlib.suppress(threading.BrokenBarrierError):
                rendezvous.wait()
        return license_

    monkeypatch.setattr(renewals, "lock_license", lock_and_wait_for_the_other)
    orders = {
        9296: [renewal_line(501, keys[0], 335), renewal_line(501, keys[1], 336)],
        9297: [renewal_line(501, keys[1], 337), renewal_line(501, keys[0], 338)],
    }

    def both_at_once(status: str, modified: int) -> list[BaseException]:
        errors: list[BaseException] = []
        rendezvous.reset()

        def worker(order_id: int) -> None:
            holding.waited = False
            payload = wc_order(order_id, status, orders[order_id], modified=modified)
            try:
                with app.app_context(), transaction() as session:
                    store = session.get(Store, shop.store.store.id)
                    assert store is not None
                    apply_shop_order(session, store, parse_order(payload))
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(order_id,)) for order_id in orders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        return errors

    def extended() -> dict[str, dt.timedelta]:
        return {
            license_["key"]: parse_iso(license_["expires_at"]) - before[license_["key"]]
            for license_ in shop.order(9295)["licenses"]
        }

    assert both_at_once("processing", modified=5) == []
    assert extended() == dict.fromkeys(keys, dt.timedelta(days=60))
    assert both_at_once("refunded", modified=10) == []
    assert extended() == dict.fromkeys(keys, dt.timedelta(0))


def test_a_retired_products_paid_renewal_extends_its_key(app: Flask, shop: WebhookSender) -> None:
    """A product retired (its shop meta removed) sells no new keys, but a paid renewal of a
    key sold before (a subscription renewal, a line naming the key) still extends it."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9290, "completed", [line_item(501)], customer_id=42))
    first = shop.order(9290)["licenses"][0]
    with app.app_context():
        db.session.execute(update(Product).values(retired_at=utcnow()))
        db.session.commit()
    shop.deliver(subscription_renewal(9291, 9199, modified=5))
    assert shop.order(9291)["licenses"] == []
    extended = shop.order(9290)["licenses"][0]["expires_at"]
    assert extended > first["expires_at"]
    shop.deliver(wc_order(9292, "processing", [renewal_line(501, first["key"], 302)], modified=9))
    assert shop.order(9290)["licenses"][0]["expires_at"] > extended
    shop.deliver(wc_order(9293, "processing", [line_item(501)], customer_id=43, modified=9))
    assert shop.order(9293)["licenses"] == []
    assert licenses(app) == 1


def test_a_variations_own_key_is_renewed_after_the_variation_retires(
    app: Flask, shop: WebhookSender
) -> None:
    """A key sold while the variation had its own settings, then the variation retired (its
    lines follow the live parent again): its subscription renewal, or a renewal line naming
    the key, extends that key and issues no key of the parent."""
    shop.configure(600, duration_days=30)
    shop.configure(601, duration_days=30)
    shop.deliver(wc_order(9510, "completed", [line_item(600, variation_id=601)], customer_id=42))
    (first,) = shop.order(9510)["licenses"]
    assert first["product_id"] == "601"
    retire(app, "601")
    shop.deliver(subscription_renewal(9511, 9198, 5, line_item(600, variation_id=601)))
    assert shop.order(9511)["licenses"] == []
    extended = shop.order(9510)["licenses"][0]["expires_at"]
    assert extended > first["expires_at"]
    named = renewal_line(600, first["key"], 303)
    named["variation_id"] = 601
    shop.deliver(wc_order(9512, "processing", [named], modified=9))
    assert shop.order(9512)["licenses"] == []
    assert shop.order(9510)["licenses"][0]["expires_at"] > extended
    assert licenses(app) == 1


def test_a_renewal_through_a_retired_variation_extends_the_parents_key(
    app: Flask, shop: WebhookSender
) -> None:
    """A variation configured on its own, then its meta removed (retired: its lines follow
    the parent again), sold with the parent's key: the subscription's renewal extends that
    key and issues no key of the retired variation."""
    shop.configure(600, duration_days=30)
    shop.configure(601, duration_days=30)
    retire(app, "601")
    shop.deliver(wc_order(9500, "completed", [line_item(600, variation_id=601)], customer_id=42))
    (first,) = shop.order(9500)["licenses"]
    assert first["product_id"] == "600"
    shop.deliver(subscription_renewal(9501, 9199, 5, line_item(600, variation_id=601)))
    assert shop.order(9501)["licenses"] == []
    assert shop.order(9500)["licenses"][0]["expires_at"] > first["expires_at"]
    assert licenses(app) == 1


@pytest.mark.parametrize("now_names", [777, 502])
def test_a_renewal_line_changed_to_another_product_takes_its_extension_back(
    app: Flask, shop: WebhookSender, now_names: int
) -> None:
    """The owner edits a paid renewal line to a product nobody configured (777: nothing is
    owed for it) or to another configured one (502: a purchase of that, with its own key):
    the renewed key goes back to its expiry before the renewal."""
    shop.configure(501, duration_days=30)
    shop.configure(502, duration_days=30)
    shop.deliver(wc_order(9960, "completed", [line_item(501)]))
    before = shop.order(9960)["licenses"][0]
    renewal = renewal_line(501, before["key"], 310)
    shop.deliver(wc_order(9961, "processing", [renewal], modified=5))
    assert shop.order(9960)["licenses"][0]["expires_at"] > before["expires_at"]
    changed = {**renewal, "product_id": now_names}
    shop.deliver(wc_order(9961, "processing", [changed], modified=6))
    assert shop.order(9960)["licenses"][0]["expires_at"] == before["expires_at"]
    bought = shop.order(9961)["licenses"]
    assert len(bought) == (1 if now_names == 502 else 0)
    shop.deliver(wc_order(9961, "processing", [changed], modified=7))  # again: settled
    assert shop.order(9960)["licenses"][0]["expires_at"] == before["expires_at"]
    assert shop.order(9961)["licenses"] == bought


def test_a_renewal_whose_product_was_deleted_in_the_shop_keeps_its_extension(
    app: Flask, shop: WebhookSender
) -> None:
    """A key sold while the variation followed its parent (a key of the parent), renewed
    after the variation got settings of its own; the product is then deleted in the shop,
    so the renewal order's line names no product any more (ids 0): the renewal stands, and
    no other key is issued."""
    shop.configure(600, duration_days=30)
    shop.deliver(wc_order(9970, "completed", [line_item(600, variation_id=601)]))
    before = shop.order(9970)["licenses"][0]
    shop.configure(601, duration_days=30)
    renewal = {**renewal_line(600, before["key"], 311), "variation_id": 601}
    shop.deliver(wc_order(9971, "processing", [renewal], modified=5))
    extended = shop.order(9970)["licenses"][0]["expires_at"]
    assert extended > before["expires_at"]
    gone = {**renewal, "product_id": 0, "variation_id": 0}
    shop.deliver(wc_order(9971, "completed", [gone], modified=6))
    assert shop.order(9970)["licenses"][0]["expires_at"] == extended
    assert shop.order(9971)["licenses"] == []


def expiries(shop: WebhookSender, order_id: int) -> dict[str, dt.datetime]:
    """key -> expiry of the licenses ``order_id`` issued."""
    return {
        license_["key"]: parse_iso(license_["expires_at"])
        for license_ in shop.order(order_id)["licenses"]
    }


def added(before: dict[str, dt.datetime], after: dict[str, dt.datetime]) -> dict[str, int]:
    """key -> days added since ``before``."""
    return {key: (after[key] - moment).days for key, moment in before.items()}


def test_a_multi_seat_subscription_renewal_extends_every_seat_once(
    app: Flask, shop: WebhookSender
) -> None:
    """A subscription for 2 seats: its parent order issued two keys, and its renewal order
    (quantity 2) extends each of them by one period, issues none, and stays so when
    delivered again."""
    shop.configure(501, duration_days=30)
    parent = wc_order(9300, "completed", [line_item(501, quantity=2, line_id=340)], customer_id=42)
    shop.deliver(parent)
    before = expiries(shop, 9300)
    assert len(before) == 2

    renewal = subscription_renewal(9301, 7101, 5, line_item(501, quantity=2, line_id=341))
    assert shop.deliver(renewal).status_code == 200
    shop.deliver(renewal)  # redelivered
    assert added(before, expiries(shop, 9300)) == dict.fromkeys(before, 30)
    assert shop.order(9301)["licenses"] == []
    assert licenses(app) == 2


def test_a_multi_seat_renewal_lowered_and_raised_again_renews_the_same_seat(
    app: Flask, shop: WebhookSender
) -> None:
    """The owner lowers a 2-seat renewal to 1 seat: one key gives its period back; raised
    to 2 again, that key gets it again (not the other a second one), and no key is issued."""
    shop.configure(501, duration_days=30)
    parent = wc_order(9313, "completed", [line_item(501, quantity=2, line_id=351)], customer_id=42)
    shop.deliver(parent)
    before = expiries(shop, 9313)
    for modified, quantity in ((5, 2), (6, 1), (7, 2)):
        item = line_item(501, quantity=quantity, line_id=352)
        shop.deliver(subscription_renewal(9314, 7105, modified, item))
        if quantity == 1:
            assert sorted(added(before, expiries(shop, 9313)).values()) == [0, 30]
    assert added(before, expiries(shop, 9313)) == dict.fromkeys(before, 30)
    assert licenses(app) == 2


def test_a_renewal_order_listing_the_product_twice_renews_two_seats(
    app: Flask, shop: WebhookSender
) -> None:
    """A 2-seat subscription whose renewal order lists the product on two lines of one unit
    each: each line renews a seat of its own, each key once."""
    shop.configure(501, duration_days=30)
    parent = wc_order(9315, "completed", [line_item(501, quantity=2, line_id=353)], customer_id=42)
    shop.deliver(parent)
    before = expiries(shop, 9315)
    renewal = subscription_renewal(9316, 7106, 5, line_item(501, line_id=354))
    renewal["line_items"].append(line_item(501, line_id=355))
    shop.deliver(renewal)
    shop.deliver(renewal)  # redelivered
    assert added(before, expiries(shop, 9315)) == dict.fromkeys(before, 30)
    assert licenses(app) == 2


def test_each_renewal_of_a_multi_seat_subscription_extends_every_seat_once(
    app: Flask, shop: WebhookSender
) -> None:
    """Every renewal of a 2-seat subscription renews both of its keys, not only the one
    its last renewal renewed, nor another of the customer's keys; the seat that runs out
    later (bought a day later) is renewed each time too."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9302, "completed", [line_item(501)], customer_id=42))  # other key
    parent = wc_order(9303, "completed", [line_item(501, quantity=2, line_id=342)], customer_id=42)
    shop.deliver(parent)
    with app.app_context():  # the other key runs out much later, the second seat a day later
        seats = db.session.scalars(select(License).order_by(License.id)).all()
        for license_, days in zip(seats, (300, 0, 1), strict=True):
            assert license_.expires_at is not None
            license_.expires_at += dt.timedelta(days=days)
        db.session.commit()
    other, before = expiries(shop, 9302), expiries(shop, 9303)

    item = line_item(501, quantity=2, line_id=343)
    shop.deliver(subscription_renewal(9304, 7102, 5, item))
    assert added(before, expiries(shop, 9303)) == dict.fromkeys(before, 30)
    shop.deliver(subscription_renewal(9305, 7102, 6, line_item(501, quantity=2, line_id=344)))
    assert added(before, expiries(shop, 9303)) == dict.fromkeys(before, 60)
    assert expiries(shop, 9302) == other
    assert licenses(app) == 3


def test_a_renewal_for_more_seats_than_the_subscription_has_keys_issues_the_new_seats(
    app: Flask, shop: WebhookSender
) -> None:
    """A 2-seat subscription renewed for 3 seats: each key is extended once and the third
    seat is issued a key of its own (a key extended twice would leave a paid seat without
    one); the next renewal extends all three keys once and issues none."""
    shop.configure(501, duration_days=30)
    parent = wc_order(9306, "completed", [line_item(501, quantity=2, line_id=345)], customer_id=42)
    shop.deliver(parent)
    before = expiries(shop, 9306)

    shop.deliver(subscription_renewal(9307, 7103, 5, line_item(501, quantity=3, line_id=346)))
    assert added(before, expiries(shop, 9306)) == dict.fromkeys(before, 30)
    new_seat = expiries(shop, 9307)
    assert len(new_seat) == 1
    shop.deliver(subscription_renewal(9307, 7103, 6, line_item(501, quantity=3, line_id=346)))
    assert expiries(shop, 9307) == new_seat  # redelivered: no second new key

    shop.deliver(subscription_renewal(9308, 7103, 7, line_item(501, quantity=3, line_id=347)))
    assert added(before, expiries(shop, 9306)) == dict.fromkeys(before, 60)
    assert added(new_seat, expiries(shop, 9307)) == dict.fromkeys(new_seat, 30)
    assert shop.order(9308)["licenses"] == []
    assert licenses(app) == 3


def test_a_renewal_naming_a_key_for_two_units_extends_it_by_two_periods(
    app: Flask, shop: WebhookSender
) -> None:
    """A line naming a key buys that key several periods at once: quantity 2, two periods;
    the customer's other keys are left alone."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9309, "completed", [line_item(501, quantity=2)], customer_id=42))
    before = expiries(shop, 9309)
    key, other = before
    line = {**renewal_line(501, key, 348), "quantity": 2}
    shop.deliver(wc_order(9310, "processing", [line], customer_id=42, modified=5))
    assert added(before, expiries(shop, 9309)) == {key: 60, other: 0}


@pytest.fixture
def connected(app: Flask, shop: WebhookSender, fake_shop: FakeShop) -> FakeShop:
    connect_store(app, shop, fake_shop)
    return fake_shop


def test_refunding_one_seat_of_a_multi_seat_renewal_takes_back_one_keys_period(
    app: Flask, shop: WebhookSender, connected: FakeShop
) -> None:
    """A 2-seat subscription's renewal extended both keys; 1 of its 2 units refunded (read
    from the shop's refunds), exactly one key goes back to its expiry before the renewal and
    the other keeps its period; a redelivery changes nothing."""
    shop.configure(501, duration_days=30)
    parent = wc_order(9311, "completed", [line_item(501, quantity=2, line_id=349)], customer_id=42)
    connected.orders[9311] = parent
    connected.deliver(shop.client, "order.updated", parent)
    before = expiries(shop, 9311)
    renewal = subscription_renewal(9312, 7104, 5, line_item(501, quantity=2, line_id=350))
    connected.orders[9312] = renewal
    connected.deliver(shop.client, "order.updated", renewal)
    assert added(before, expiries(shop, 9311)) == dict.fromkeys(before, 30)

    connected.add_refund(9312, line_id=350, quantity=1, amount="49.00")
    renewal["date_modified_gmt"] = renewal["date_modified"] = wc_time(10)
    assert connected.deliver(shop.client, "order.updated", renewal).status_code == 200
    run_pending(app)  # the refunds are read from the shop
    assert sorted(added(before, expiries(shop, 9311)).values()) == [0, 30]
    kept = expiries(shop, 9311)
    connected.deliver(shop.client, "order.updated", renewal)
    run_pending(app)
    assert expiries(shop, 9311) == kept


def test_two_subscriptions_first_renewals_at_once_each_renew_their_own_license(
    app: Flask, shop: WebhookSender, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A customer bought two subscriptions of one product; both renew for the first time at
    the same moment (WooCommerce Subscriptions renews the subscriptions due in one batch,
    and their webhooks arrive side by side). Each renewal extends one of the two keys: not
    the one due first twice, leaving the other key, paid for, to lapse. On PostgreSQL each
    worker, once it has chosen the license it renews, waits up to three seconds for the
    other to have chosen too (chosen side by side, both would take the one due first);
    SQLite runs one writer at a time, so it runs without the wait."""
    side_by_side = database_url.startswith("postgresql")
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9320, "completed", [line_item(501)], customer_id=42))
    shop.deliver(wc_order(9321, "completed", [line_item(501)], customer_id=42, modified=2))
    before = {**expiries(shop, 9320), **expiries(shop, 9321)}
    chosen = threading.Barrier(2, timeout=3)
    real_lock = renewals.lock_licenses

    def lock_once_both_chose(*args: Any, **kwargs: Any) -> None:
        if side_by_side:
            with contextlib.suppress(threading.BrokenBarrierError):
                chosen.wait()  # timed out: the other waits for this one to finish
        real_lock(*args, **kwargs)

    monkeypatch.setattr(renewals, "lock_licenses", lock_once_both_chose)
    errors: list[BaseException] = []

    def worker(order_id: int, subscription: int) -> None:
        payload = subscription_renewal(order_id, subscription, 5, line_item(501, line_id=order_id))
        try:
            with app.app_context(), transaction() as session:
                store = session.get(Store, shop.store.store.id)
                assert store is not None
                apply_shop_order(session, store, parse_order(payload))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(9322 + i, 7201 + i)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    after = {**expiries(shop, 9320), **expiries(shop, 9321)}
    assert {key: after[key] - before[key] for key in before} == dict.fromkeys(
        before, dt.timedelta(days=30)
    )
    assert licenses(app) == 2


def test_a_renewal_of_a_key_revoked_as_it_is_applied_issues_a_new_key(
    app: Flask, shop: WebhookSender, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal order naming a key is applied while the key's own order is refunded: the
    renewal had chosen the key while it was active, and the refund revokes it before the
    renewal locks it. The renewal is applied as it is after the refund (a revoked key is
    never extended: the buyer who paid for it gets a new key), not as an extension of a key
    that no longer works. On PostgreSQL the refund lands between the two; SQLite runs one
    writer at a time, so there the refund is applied first."""
    side_by_side = database_url.startswith("postgresql")
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9330, "completed", [line_item(501, line_id=350)]))
    [bought] = shop.order(9330)["licenses"]
    chose, refunded = threading.Event(), threading.Event()
    real_lock = renewals.lock_licenses

    def lock_after_the_refund(*args: Any, **kwargs: Any) -> None:
        chose.set()
        refunded.wait(10)
        real_lock(*args, **kwargs)

    errors: list[BaseException] = []

    def renew() -> None:
        payload = wc_order(9331, "processing", [renewal_line(501, bought["key"], 351)], modified=5)
        try:
            with app.app_context(), transaction() as session:
                store = session.get(Store, shop.store.store.id)
                assert store is not None
                apply_shop_order(session, store, parse_order(payload))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    refund = wc_order(9330, "refunded", [line_item(501, line_id=350)], modified=3)
    if side_by_side:
        monkeypatch.setattr(renewals, "lock_licenses", lock_after_the_refund)
        worker = threading.Thread(target=renew)
        worker.start()
        assert chose.wait(10)
        monkeypatch.setattr(renewals, "lock_licenses", real_lock)
        shop.deliver(refund)
        refunded.set()
        worker.join(30)
    else:
        shop.deliver(refund)
        renew()
    assert errors == []
    [revoked] = shop.order(9330)["licenses"]
    assert revoked["status"] == "revoked"
    assert revoked["expires_at"] == bought["expires_at"]  # not extended
    [new_key] = shop.order(9331)["licenses"]
    assert new_key["status"] == "active" and new_key["key"] != bought["key"]


def run_later(app: Flask, order_id: int, days: int) -> None:
    """The licenses ``order_id`` issued run out ``days`` later than issued."""
    with app.app_context():
        for license_ in db.session.scalars(
            select(License)
            .join(Order, License.order_id == Order.id)
            .where(Order.shop_order_id == str(order_id))
        ):
            assert license_.expires_at is not None
            license_.expires_at += dt.timedelta(days=days)
        db.session.commit()


def test_a_subscriptions_first_renewal_renews_its_own_customers_key(
    app: Flask, shop: WebhookSender
) -> None:
    """A subscription's first renewal extends its customer's key, although another
    customer's key of the product runs out first; the other buyer's key stays as it was."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9400, "completed", [line_item(501)], customer_id=42))
    shop.deliver(wc_order(9401, "completed", [line_item(501)], customer_id=43, email="x@y.z"))
    run_later(app, 9400, 1)
    own, other = expiries(shop, 9400), expiries(shop, 9401)
    shop.deliver(subscription_renewal(9402, 7300, 5))
    assert added(own, expiries(shop, 9400)) == dict.fromkeys(own, 30)
    assert expiries(shop, 9401) == other
    assert shop.order(9402)["licenses"] == []


def test_a_subscriptions_first_renewal_renews_a_key_of_its_product(
    app: Flask, shop: WebhookSender
) -> None:
    """A customer with keys of two products: a subscription renewal of one extends that
    product's key, although the other product's key runs out first, and issues none."""
    shop.configure(501, duration_days=30)
    shop.configure(502, duration_days=30)
    shop.deliver(wc_order(9403, "completed", [line_item(502)], customer_id=42))
    shop.deliver(wc_order(9404, "completed", [line_item(501)], customer_id=42, modified=2))
    run_later(app, 9404, 1)
    other_product, own = expiries(shop, 9403), expiries(shop, 9404)
    shop.deliver(subscription_renewal(9405, 7301, 5))
    assert added(own, expiries(shop, 9404)) == dict.fromkeys(own, 30)
    assert expiries(shop, 9403) == other_product
    assert shop.order(9405)["licenses"] == []


def test_a_first_renewal_passes_over_a_key_another_subscription_renews(
    app: Flask, shop: WebhookSender
) -> None:
    """Subscription A renewed the customer's key that runs out first, and it still runs out
    first; subscription B's first renewal extends the customer's other key, not A's."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9406, "completed", [line_item(501)], customer_id=42))
    shop.deliver(wc_order(9407, "completed", [line_item(501)], customer_id=42, modified=2))
    run_later(app, 9407, 40)
    shop.deliver(subscription_renewal(9408, 7302, 5))  # A: renews 9406's key, due first
    a_key, b_key = expiries(shop, 9406), expiries(shop, 9407)
    assert min(a_key.values()) < min(b_key.values())
    shop.deliver(subscription_renewal(9409, 7303, 6))  # B's first renewal
    assert added(b_key, expiries(shop, 9407)) == dict.fromkeys(b_key, 30)
    assert expiries(shop, 9406) == a_key


def test_a_subscription_renewal_naming_a_key_renews_that_key(
    app: Flask, shop: WebhookSender
) -> None:
    """A subscription's renewal order whose line names a key (``_keygate_renew_license``)
    extends that key, not the customer's key that runs out first."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9410, "completed", [line_item(501)], customer_id=42))
    shop.deliver(wc_order(9411, "completed", [line_item(501)], customer_id=42, modified=2))
    run_later(app, 9411, 1)
    due_first, named = expiries(shop, 9410), expiries(shop, 9411)
    [key] = named
    shop.deliver(subscription_renewal(9412, 7304, 5, renewal_line(501, key, 400)))
    assert added(named, expiries(shop, 9411)) == {key: 30}
    assert expiries(shop, 9410) == due_first
    assert shop.order(9412)["licenses"] == []


def test_a_renewal_lines_quantity_raised_renews_a_seat_no_line_renewed(
    app: Flask, shop: WebhookSender
) -> None:
    """A 3-seat subscription whose renewal order lists the product on two lines of one unit
    each; the first line's quantity raised to 2 later renews the third key: not the key the
    other line renewed (extended twice while the third lapses), although that one now runs
    out first, nor a new key."""
    shop.configure(501, duration_days=30)
    parent = wc_order(9413, "completed", [line_item(501, quantity=3, line_id=401)], customer_id=42)
    shop.deliver(parent)
    with app.app_context():  # the third key runs out last, even after the others' renewal
        third = db.session.scalars(select(License).order_by(License.id.desc())).first()
        assert third is not None and third.expires_at is not None
        third.expires_at += dt.timedelta(days=40)
        db.session.commit()
    before = expiries(shop, 9413)
    for modified, quantity in ((5, 1), (6, 2)):
        item = line_item(501, quantity=quantity, line_id=402)
        renewal = subscription_renewal(9414, 7305, modified, item)
        renewal["line_items"].append(line_item(501, line_id=403))
        shop.deliver(renewal)
    assert added(before, expiries(shop, 9413)) == dict.fromkeys(before, 30)
    assert shop.order(9414)["licenses"] == []


def test_a_redelivered_renewal_leaves_a_key_bought_since_alone(
    app: Flask, shop: WebhookSender
) -> None:
    """A 1-seat subscription renewed for 2 seats extends its key and issues the new seat a
    key; the customer buys another key, and the renewal delivered again changes nothing:
    the new seat keeps its key, the key bought since is not extended by it."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9415, "completed", [line_item(501)], customer_id=42))
    before = expiries(shop, 9415)
    item = line_item(501, quantity=2, line_id=404)
    shop.deliver(subscription_renewal(9416, 7306, 5, item))
    assert added(before, expiries(shop, 9415)) == dict.fromkeys(before, 30)
    new_seat = expiries(shop, 9416)
    assert len(new_seat) == 1
    shop.deliver(wc_order(9417, "completed", [line_item(501)], customer_id=42, modified=6))
    bought = expiries(shop, 9417)
    shop.deliver(subscription_renewal(9416, 7306, 7, item))
    assert expiries(shop, 9417) == bought
    assert expiries(shop, 9416) == new_seat
    assert added(before, expiries(shop, 9415)) == dict.fromkeys(before, 30)


def test_a_renewal_of_a_lapsed_update_window_counts_it_from_the_payment(
    app: Flask, shop: WebhookSender
) -> None:
    """A product with an update window of its own: a renewal paid after the window (and the
    license) ran out gives a fresh window from the payment, not from the day it ran out."""
    shop.configure(501, duration_days=30, update_days=365)
    shop.deliver(wc_order(9420, "completed", [line_item(501)]))
    key = shop.order(9420)["licenses"][0]["key"]
    lapse(app, 100)
    paid = utcnow().replace(microsecond=0) - dt.timedelta(hours=5)
    shop.deliver(paid_at(wc_order(9421, "processing", [renewal_line(501, key, 410)]), paid))
    renewed = shop.order(9420)["licenses"][0]
    assert parse_iso(renewed["updates_until"]) == paid + dt.timedelta(days=365)
    assert parse_iso(renewed["expires_at"]) == paid + dt.timedelta(days=30)


def test_a_subscriptions_first_renewal_passes_over_a_lifetime_key(
    app: Flask, shop: WebhookSender
) -> None:
    """A customer with a lifetime key of the product and one that runs out: the renewal
    extends the one that runs out (a lifetime key needs none)."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9422, "completed", [line_item(501)], customer_id=42))
    shop.deliver(wc_order(9423, "completed", [line_item(501)], customer_id=42, modified=2))
    with app.app_context():  # the first key was made a lifetime key
        lifetime = db.session.scalars(select(License).order_by(License.id)).first()
        assert lifetime is not None
        lifetime.expires_at = None
        db.session.commit()
    before = expiries(shop, 9423)
    shop.deliver(subscription_renewal(9424, 7307, 5))
    assert added(before, expiries(shop, 9423)) == dict.fromkeys(before, 30)
    assert shop.order(9422)["licenses"][0]["expires_at"] is None
    assert shop.order(9424)["licenses"] == []


def test_a_file_added_after_a_refunded_renewal_gets_no_refunded_time(
    app: Flask, shop: WebhookSender
) -> None:
    """The owner adds a file after a renewal of the key was refunded: its new link lasts as
    long as the key's other link, not as long as the refunded renewal would have made it."""
    first_file = {"object_key": "a.pdf", "filename": "a.pdf"}
    shop.configure(501, duration_days=30, files=[first_file])
    bought = [line_item(501)]
    shop.deliver(wc_order(9425, "completed", bought))
    key = shop.order(9425)["licenses"][0]["key"]
    renewal = [renewal_line(501, key, 411)]
    shop.deliver(wc_order(9426, "processing", renewal, modified=5))
    shop.deliver(wc_order(9426, "refunded", renewal, modified=6))
    added_file = {"object_key": "b.pdf", "filename": "b.pdf"}
    shop.configure(501, duration_days=30, files=[first_file, added_file])
    shop.deliver(wc_order(9425, "completed", bought, modified=7))
    body = shop.order(9425)
    links = {d["filename"]: d["expires_at"] for d in body["downloads"]}
    assert links["b.pdf"] == links["a.pdf"] == body["licenses"][0]["expires_at"]
