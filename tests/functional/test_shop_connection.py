"""Connecting from the shop admin: wc-auth callback, auto-registered webhooks, disconnect."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from sqlalchemy import select

from connector.db import db, utcnow
from connector.jobs import run_pending
from connector.models import AuditEvent, Job, ShopConnection, Store, WebhookRegistration
from connector.vault.service import credentials_for
from tests.factories import WebhookSender, wc_order
from tests.wc_rest import (
    CONSUMER_KEY,
    CONSUMER_SECRET,
    FakeShop,
    auth_callback_body,
    connect_store,
    error,
    fake_shop,
)

__all__ = ["fake_shop"]
TOPICS = {"order.created", "order.updated", "order.deleted", "order.restored"}


def _store(app: Flask, shop: WebhookSender) -> Store:
    store = db.session.get(Store, shop.store.store.id)
    assert store is not None
    return store


def test_connect_url_is_a_wc_auth_link_with_a_signed_state(shop: WebhookSender) -> None:
    """The link asks the shop for a read_write key and names our callback and return pages."""
    body = shop.admin("GET", "/connection").get_json()
    assert body["status"] == "disconnected"
    assert "https" in body["connect_warning"]  # the test app runs on http://keygate.test
    parts = urlsplit(body["connect_url"])
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        "https://shop.example/wc-auth/v1/authorize"
    )
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    public_id = shop.store.store.public_id
    assert query["app_name"] == "Keygate"
    assert query["scope"] == "read_write"
    assert query["callback_url"] == (
        f"http://keygate.test/webhooks/woocommerce/{public_id}/auth-callback"
    )
    assert query["return_url"] == f"http://keygate.test/connect/woocommerce/{public_id}/done"
    assert len(query["user_id"]) > 20 and public_id not in query["user_id"][-20:]


def test_callback_stores_the_key_and_registers_three_webhooks(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """Approval stores the key in the vault and registers order webhooks with a fresh secret."""
    connection = connect_store(app, shop, fake_shop)
    assert connection["status"] == "connected"
    url = f"http://keygate.test/webhooks/woocommerce/{shop.store.store.public_id}"
    registered = fake_shop.active_webhooks(url)
    assert set(registered) == TOPICS
    assert {(w["topic"], w["id"]) for w in connection["webhooks"]} == {
        (t, str(i)) for t, i in registered.items()
    }
    with app.app_context():
        store = _store(app, shop)
        assert credentials_for(db.session, store, "woocommerce") == {
            "consumer_key": CONSUMER_KEY,
            "consumer_secret": CONSUMER_SECRET,
        }
        # A fresh secret, different from the one `store add` printed, known to the shop.
        assert store.webhook_secret != shop.store.webhook_secret
        assert set(fake_shop.webhook_secrets.values()) == {store.webhook_secret}


def test_registered_webhook_delivers_an_order(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A delivery signed with the registered secret is applied; the old secret is refused."""
    connect_store(app, shop, fake_shop)
    shop.configure(501)
    response = fake_shop.deliver(shop.client, "order.created", wc_order(9301))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert len(shop.order(9301)["licenses"]) == 1
    old_secret = shop.deliver(wc_order(9302), "order.created")
    assert old_secret.status_code == 401


def test_callback_delivered_twice_changes_nothing(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """The same key posted again is a no-op: no new webhooks, no new secret."""
    connection = connect_store(app, shop, fake_shop)
    before = dict(fake_shop.webhooks)
    query = parse_qs(urlsplit(connection["connect_url"]).query)
    again = shop.client.post(
        urlsplit(query["callback_url"][0]).path, json=auth_callback_body(query["user_id"][0])
    )
    assert again.status_code == 200
    assert again.get_json()["changed"] is False
    run_pending(app)
    assert fake_shop.webhooks == before


def test_callback_with_a_forged_or_foreign_state_is_refused(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A state Keygate did not sign for this store is 403 and stores nothing."""
    path = f"/webhooks/woocommerce/{shop.store.store.public_id}/auth-callback"
    forged = shop.client.post(path, json=auth_callback_body("1"))
    assert forged.status_code == 403
    with app.app_context():
        from connector.tokens import CONNECT_STATE, dumps_timed

        other_state = dumps_timed(CONNECT_STATE, {"s": "someotherstore"})
    foreign = shop.client.post(path, json=auth_callback_body(other_state))
    assert foreign.status_code == 403
    assert foreign.mimetype == "application/problem+json"
    with app.app_context():
        assert credentials_for(db.session, _store(app, shop), "woocommerce") is None
    assert fake_shop.requests == []


def test_malformed_callback_is_400_without_echoing_secrets(shop: WebhookSender) -> None:
    """A callback missing a field or not JSON is 400; the answer never repeats a secret."""
    path = f"/webhooks/woocommerce/{shop.store.store.public_id}/auth-callback"
    not_json = shop.client.post(path, data=b"key_id=1", content_type="text/plain")
    assert not_json.status_code == 400
    bad = shop.client.post(path, json=auth_callback_body("s", consumer_key="nope-" + "x" * 30))
    assert bad.status_code == 400
    assert "consumer_key" in bad.get_json()["detail"]
    assert "nope-" not in bad.get_data(as_text=True)
    assert CONSUMER_SECRET not in bad.get_data(as_text=True)
    for field, value in [("key_permissions", []), ("key_permissions", {}), ("user_id", "\ud800")]:
        odd = shop.client.post(path, json=auth_callback_body("s", **{field: value}))
        assert (odd.status_code, odd.mimetype) == (400, "application/problem+json"), value
        assert field in odd.get_json()["detail"]


def test_reconnect_replaces_the_webhooks(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A new key from a second approval: old webhooks deleted, new ones made, new secret."""
    first = connect_store(app, shop, fake_shop)
    old_ids = {w["id"] for w in first["webhooks"]}
    with app.app_context():
        old_secret = _store(app, shop).webhook_secret
    fake_shop.consumer_key = "ck_" + "9" * 40
    fake_shop.consumer_secret = "cs_" + "8" * 40
    # The owner approves again from a fresh link (a state is good for one change).
    again = shop.admin("GET", "/connection").get_json()["connect_url"]
    query = parse_qs(urlsplit(again).query)
    response = shop.client.post(
        urlsplit(query["callback_url"][0]).path,
        json=auth_callback_body(
            query["user_id"][0],
            key_id=18,
            consumer_key=fake_shop.consumer_key,
            consumer_secret=fake_shop.consumer_secret,
        ),
    )
    assert response.get_json()["changed"] is True
    run_pending(app)
    second = shop.admin("GET", "/connection").get_json()
    new_ids = {w["id"] for w in second["webhooks"]}
    assert len(new_ids) == 4 and not new_ids & old_ids
    assert {str(i) for i in fake_shop.webhooks} == new_ids
    with app.app_context():
        assert _store(app, shop).webhook_secret != old_secret
        actions = list(db.session.scalars(select(AuditEvent.action)))
    assert "shop.reconnected" in actions


def test_stray_webhooks_to_our_url_are_replaced(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A webhook the owner pasted by hand earlier is deleted; others' webhooks are left."""
    url = f"http://keygate.test/webhooks/woocommerce/{shop.store.store.public_id}"
    fake_shop.webhooks[5] = {"id": 5, "topic": "order.updated", "delivery_url": url}
    fake_shop.webhook_secrets[5] = shop.store.webhook_secret
    fake_shop.webhooks[6] = {"id": 6, "topic": "order.updated", "delivery_url": "https://x.test/"}
    fake_shop.webhook_secrets[6] = "other"
    connect_store(app, shop, fake_shop)
    assert 5 not in fake_shop.webhooks
    assert 6 in fake_shop.webhooks
    assert len(fake_shop.active_webhooks(url)) == 4


def test_registration_retries_while_the_shop_is_down(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A 503 from the shop leaves the job pending for a retry; nothing half-registered."""
    fake_shop.down = True
    connect_store(app, shop, fake_shop)
    with app.app_context():
        assert db.session.scalars(select(WebhookRegistration)).all() == []
        from connector.models import Job

        job = db.session.execute(
            select(Job).where(Job.kind == "vault.register_webhooks")
        ).scalar_one()
        assert job.status == "pending"
        assert job.attempts == 1
        assert "503" in (job.last_error or "")
    # The owner sees it: connected, but the webhooks are not registered yet, and why.
    connection = shop.admin("GET", "/connection").get_json()
    assert (connection["status"], connection["webhooks"]) == ("connected", [])
    trouble = connection["webhook_registration"]
    assert (trouble["status"], trouble["attempts"]) == ("retrying", 1)
    assert "503" in trouble["last_error"] and trouble["next_attempt_at"]
    fake_shop.down = False
    with app.app_context():
        from connector.models import Job

        for job in db.session.scalars(select(Job)):
            job.run_after = job.created_at
        db.session.commit()
    run_pending(app)
    assert shop.admin("GET", "/connection").get_json()["webhook_registration"] is None


def test_disconnect_deletes_the_webhooks_and_forgets_the_key(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """DELETE /connection removes Keygate's webhooks in the shop and the stored key."""
    connect_store(app, shop, fake_shop)
    response = shop.admin("DELETE", "/connection")
    assert response.status_code == 200
    assert len(response.get_json()["webhooks_deleted"]) == 4
    assert fake_shop.webhooks == {}
    body = shop.admin("GET", "/connection").get_json()
    assert body["status"] == "disconnected"
    assert body["webhooks"] == []
    with app.app_context():
        assert credentials_for(db.session, _store(app, shop), "woocommerce") is None
        connection = db.session.execute(select(ShopConnection)).scalar_one()
        assert connection.disconnected_at is not None


def test_a_disconnect_ends_the_grace_of_a_replaced_secret(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A secret replaced minutes before is still taken for its grace, while the shop's old
    webhooks may sign with it; a disconnect deletes those webhooks, and the old secret is
    refused from then on. The current secret is kept (a reconnection registers with it)."""
    connect_store(app, shop, fake_shop)
    with app.app_context():
        store = _store(app, shop)
        store.previous_webhook_secret = "p" * 40
        store.previous_secret_until = utcnow() + dt.timedelta(minutes=10)
        db.session.commit()
    assert shop.deliver(wc_order(9903, "processing"), secret="p" * 40).status_code == 200
    assert shop.admin("DELETE", "/connection").status_code == 200
    assert shop.deliver(wc_order(9904, "processing"), secret="p" * 40).status_code == 401
    with app.app_context():
        current = _store(app, shop).webhook_secret
    assert shop.deliver(wc_order(9904, "processing"), secret=current).status_code == 200


def test_disconnect_while_the_shop_is_down_changes_nothing(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """If the webhooks cannot be deleted, the key is kept so a later disconnect can."""
    connect_store(app, shop, fake_shop)
    fake_shop.down = True
    response = shop.admin("DELETE", "/connection")
    assert response.status_code == 503
    assert "shop_gone=true" in response.get_json()["detail"]  # what to do if it never answers
    assert shop.admin("GET", "/connection").get_json()["status"] == "connected"


def test_a_shop_gone_for_good_is_disconnected_when_the_owner_says_so(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A shop that will never answer again (a closed site, a lapsed domain) would keep its
    store connected for good, every disconnect a 503: with ?shop_gone=true the key is
    forgotten all the same and the webhooks Keygate knew of are named as left there."""
    connect_store(app, shop, fake_shop)
    in_shop = sorted(str(w) for w in fake_shop.webhooks)
    fake_shop.down = True
    response = shop.admin("DELETE", "/connection?shop_gone=true")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["webhooks_deleted"] == []
    assert sorted(response.get_json()["webhooks_left"]) == in_shop
    body = shop.admin("GET", "/connection").get_json()
    assert (body["status"], body["webhooks"]) == ("disconnected", [])
    with app.app_context():
        assert credentials_for(db.session, _store(app, shop), "woocommerce") is None
        entry = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "shop.disconnected")
        ).one()
        assert entry.detail["shop_gone"] is True


def test_a_shop_gone_for_good_that_refuses_deletions_is_disconnected_all_the_same(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A shop that lists its webhooks but refuses to delete them (a security plugin's 405):
    a plain disconnect changes nothing and says so; with ?shop_gone=true the key is
    forgotten and the webhooks are named as left there."""
    connect_store(app, shop, fake_shop)
    in_shop = sorted(str(w) for w in fake_shop.webhooks)
    webhooks = fake_shop._webhooks

    def no_deletions(method: str, rest_: list[str], query: dict[str, str], body: Any) -> Any:
        if method == "DELETE":
            return error(405, "rest_no_route", "No route was found matching the URL.")
        return webhooks(method, rest_, query, body)

    fake_shop._webhooks = no_deletions  # type: ignore[method-assign]
    refused = shop.admin("DELETE", "/connection")
    assert refused.status_code == 503
    assert shop.admin("GET", "/connection").get_json()["status"] == "connected"
    response = shop.admin("DELETE", "/connection?shop_gone=true")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["webhooks_deleted"] == []
    assert sorted(response.get_json()["webhooks_left"]) == in_shop
    assert shop.admin("GET", "/connection").get_json()["status"] == "disconnected"


def test_disconnect_after_the_owner_revoked_the_key_in_the_shop_forgets_it(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """The shop refuses Keygate's key (401: revoked in WooCommerce): nothing can be deleted
    there, so the key is forgotten all the same and the webhooks left in the shop are named
    for the owner to delete (a disconnect that could never succeed otherwise)."""
    connect_store(app, shop, fake_shop)
    in_shop = sorted(str(w) for w in fake_shop.webhooks)
    fake_shop.consumer_secret = "cs_" + "0" * 40  # the key Keygate holds is refused now
    response = shop.admin("DELETE", "/connection")
    assert response.status_code == 200
    assert response.get_json()["webhooks_deleted"] == []
    assert sorted(response.get_json()["webhooks_left"]) == in_shop
    assert shop.admin("GET", "/connection").get_json()["status"] == "disconnected"
    with app.app_context():
        assert credentials_for(db.session, _store(app, shop), "woocommerce") is None
        entry = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "shop.disconnected")
        ).one()
        assert sorted(entry.detail["webhooks_left"]) == in_shop


def test_keys_given_by_hand_also_register_webhooks(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """PUT /credentials/woocommerce counts as connecting: the webhooks get registered."""
    response = shop.admin(
        "PUT",
        "/credentials/woocommerce",
        {"consumer_key": CONSUMER_KEY, "consumer_secret": CONSUMER_SECRET},
    )
    assert response.status_code == 200
    # Both halves of the key are secrets (README: read back masked): the consumer key alone
    # is half of what signs into the shop's REST API.
    shown = response.get_json()["credentials"]
    assert shown["consumer_secret"] == "****" + CONSUMER_SECRET[-4:]
    assert shown["consumer_key"] == "****" + CONSUMER_KEY[-4:]
    read_back = shop.admin("GET", "/credentials/woocommerce").get_data(as_text=True)
    assert CONSUMER_KEY not in read_back and CONSUMER_SECRET not in read_back
    run_pending(app)
    assert {w["topic"] for w in fake_shop.webhooks.values()} == TOPICS
    before = dict(fake_shop.webhooks)
    again = shop.admin(
        "PUT",
        "/credentials/woocommerce",
        {"consumer_key": CONSUMER_KEY, "consumer_secret": CONSUMER_SECRET},
    )
    assert again.status_code == 200
    run_pending(app)
    assert fake_shop.webhooks == before, "the same key again re-registers nothing"


def test_return_page_tells_the_owner(shop: WebhookSender) -> None:
    """The page the owner's browser lands on says whether the connection was approved."""
    path = f"/connect/woocommerce/{shop.store.store.public_id}/done"
    done = shop.client.get(path + "?success=1&user_id=x").data
    assert b"is connected" in done and b"/wp-admin/" in done
    assert b"not approved" in shop.client.get(path + "?success=0").data
    assert shop.client.get("/connect/woocommerce/nope/done").status_code == 404


@pytest.mark.parametrize(
    "credentials",
    [
        {"consumer_key": "short", "consumer_secret": CONSUMER_SECRET},
        {"consumer_key": CONSUMER_KEY, "consumer_secret": "x"},
        {"consumer_key": CONSUMER_SECRET, "consumer_secret": CONSUMER_KEY},
    ],
)
def test_keys_given_by_hand_must_look_like_woocommerces(
    shop: WebhookSender, credentials: dict[str, str]
) -> None:
    """A key that cannot be WooCommerce's would be stored as "connected" while every
    registration fails for hours: 422, naming the field, never echoing the value."""
    response = shop.admin("PUT", "/credentials/woocommerce", credentials)
    assert response.status_code == 422
    detail = response.get_json()["detail"]
    assert response.get_json()["field"] in detail
    assert not any(value in detail for value in credentials.values())
    assert shop.admin("GET", "/connection").get_json()["status"] != "connected"


def test_the_shop_key_is_removed_by_disconnecting_not_deleting(shop: WebhookSender) -> None:
    response = shop.admin("DELETE", "/credentials/woocommerce")
    assert (response.status_code, response.mimetype) == (409, "application/problem+json")
    assert "DELETE /api/v1/admin/connection" in response.get_json()["detail"]


def test_a_registration_that_succeeded_after_one_died_reports_nothing_wrong(
    app: Flask, shop: WebhookSender
) -> None:
    from connector.db import transaction, utcnow
    from connector.models import Job

    store_id = shop.store.store.id
    with app.app_context(), transaction() as session:
        for status, attempts in (("dead", 20), ("done", 1)):
            session.add(
                Job(
                    kind="vault.register_webhooks",
                    payload={"store_id": store_id},
                    status=status,
                    attempts=attempts,
                    last_error="ShopUnavailable: down" if status == "dead" else None,
                    run_after=utcnow(),
                    created_at=utcnow(),
                )
            )
    assert shop.admin("GET", "/connection").get_json()["webhook_registration"] is None


def test_two_first_looks_at_a_connection_at_once_make_one_row(
    app: Flask, shop: WebhookSender
) -> None:
    """The connection row is made on first use (a store page, the connection API): two at
    once make one, and the second use is not a unique-key error (a 500)."""
    import threading

    from connector.db import transaction
    from connector.vault.connection import connection_of

    first_made = threading.Event()
    release = threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        with app.app_context(), transaction() as session:
            connection_of(session, _store(app, shop))
            first_made.set()
            assert release.wait(10)

    def second() -> None:
        try:
            with app.app_context(), transaction() as session:
                assert connection_of(session, _store(app, shop)).status == "disconnected"
        except BaseException as exc:
            errors.append(exc)

    one = threading.Thread(target=first, daemon=True)
    one.start()
    assert first_made.wait(10)
    two = threading.Thread(target=second, daemon=True)
    two.start()
    two.join(0.5)  # waiting on the first one's row (PostgreSQL) or write lock (SQLite)
    release.set()
    one.join(10)
    two.join(10)
    assert not two.is_alive()
    assert errors == []
    with app.app_context():
        assert len(db.session.scalars(select(ShopConnection)).all()) == 1


def test_deliveries_signed_with_the_replaced_secret_are_taken_until_its_webhooks_are_gone(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-registering makes a new secret before the shop has new webhooks: the old ones
    keep delivering (signed with the old secret) until Keygate deletes them. Meanwhile,
    at most for the grace period, they are taken; once deleted, the old secret is not."""
    import datetime as dt

    import connector.vault.connection as connection
    from plugin.woocommerce.rest import ShopUnavailable

    connect_store(app, shop, fake_shop)
    with app.app_context():
        old_secret = _store(app, shop).webhook_secret
    stray_deletion = connection._delete_stray_webhooks

    def shop_down(*args: object, **kwargs: object) -> list[str]:
        raise ShopUnavailable("the shop went down after creating the new webhooks")

    monkeypatch.setattr(connection, "_delete_stray_webhooks", shop_down)
    with app.app_context():
        connection.start_connection_jobs(db.session, _store(app, shop))  # as a reconnection
        db.session.commit()
    run_pending(app)
    with app.app_context():
        store = _store(app, shop)
        assert store.webhook_secret != old_secret
        assert store.previous_webhook_secret == old_secret
    assert len(fake_shop.webhooks) == 8  # the old four are still in the shop
    order = wc_order(9900, "processing")
    assert shop.deliver(order, secret=old_secret).status_code == 200
    with app.app_context():
        store = _store(app, shop)
        store.previous_secret_until = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        db.session.commit()
    assert shop.deliver(order, secret=old_secret).status_code == 401  # the grace is over

    monkeypatch.setattr(connection, "_delete_stray_webhooks", stray_deletion)
    with app.app_context():
        store = _store(app, shop)
        store.previous_secret_until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        for job in db.session.scalars(select(Job).where(Job.kind == connection.REGISTER_JOB)):
            job.run_after = dt.datetime.now(dt.UTC)  # its backoff, passed
        db.session.commit()
    run_pending(app)  # the registration is retried: the old webhooks are deleted now
    assert len(fake_shop.webhooks) == 4
    with app.app_context():
        assert _store(app, shop).previous_webhook_secret is None
    assert shop.deliver(order, secret=old_secret).status_code == 401


def test_the_replaced_secret_is_taken_a_quarter_of_an_hour_at_most(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-registration the shop cuts off before the old webhooks are deleted leaves the
    old secret taken for a quarter of an hour at most, not until the shop answers again."""
    import connector.vault.connection as connection
    from plugin.woocommerce.rest import ShopUnavailable

    connect_store(app, shop, fake_shop)

    def shop_down(*args: object, **kwargs: object) -> list[str]:
        raise ShopUnavailable("the shop went down after creating the new webhooks")

    monkeypatch.setattr(connection, "_delete_stray_webhooks", shop_down)
    with app.app_context():
        connection.start_connection_jobs(db.session, _store(app, shop))  # as a reconnection
        db.session.commit()
    run_pending(app)
    with app.app_context():
        until = _store(app, shop).previous_secret_until
        assert until is not None
        assert until <= utcnow() + dt.timedelta(minutes=15)


def test_a_secret_replaced_as_leaked_refuses_the_one_still_in_its_grace_too(
    app: Flask, shop: WebhookSender
) -> None:
    """Replacing a leaked secret by hand also ends the grace of the secret it had replaced:
    only the new secret is taken from then on."""
    import connector.vault.connection as connection

    with app.app_context():
        store = _store(app, shop)
        store.previous_webhook_secret = "p" * 40
        store.previous_secret_until = utcnow() + dt.timedelta(minutes=5)
        db.session.commit()
        new_secret = connection.replace_webhook_secret(db.session, store, actor="t")
        db.session.commit()
    assert new_secret is not None
    order = wc_order(9902, "processing")
    assert shop.deliver(order, secret="p" * 40).status_code == 401
    assert shop.deliver(order, secret=new_secret).status_code == 200


def test_a_registration_retried_within_the_grace_keeps_the_secret_the_shop_signs_with(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-registration the shop cuts off before any new webhook is recorded is retried
    while the old secret's grace lasts: it makes no newer secret (which would push out the
    one the shop's webhooks still sign with), so the shop's deliveries are still taken."""
    import connector.vault.connection as connection
    from plugin.woocommerce.rest import ShopUnavailable, WooCommerceClient

    connect_store(app, shop, fake_shop)
    with app.app_context():
        old_secret = _store(app, shop).webhook_secret

    def shop_down(*args: object, **kwargs: object) -> dict[str, Any]:
        raise ShopUnavailable("the shop went down before creating the new webhooks")

    monkeypatch.setattr(WooCommerceClient, "create_webhook", shop_down)
    with app.app_context():
        connection.start_connection_jobs(db.session, _store(app, shop))  # as a reconnection
        db.session.commit()
    run_pending(app)
    with app.app_context():
        made = _store(app, shop).webhook_secret
        assert made != old_secret
        for job in db.session.scalars(select(Job).where(Job.kind == connection.REGISTER_JOB)):
            job.run_after = dt.datetime.now(dt.UTC)  # its backoff, passed
        db.session.commit()
    run_pending(app)  # retried, the shop still down
    with app.app_context():
        store = _store(app, shop)
        assert (store.webhook_secret, store.previous_webhook_secret) == (made, old_secret)
    assert shop.deliver(wc_order(9901, "processing"), secret=old_secret).status_code == 200


def test_a_secret_replaced_as_leaked_is_refused_at_once_while_webhooks_are_made_anew(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner replaces a leaked secret: no grace for it, even while the old webhooks are
    still in the shop."""
    import connector.vault.connection as connection
    from plugin.woocommerce.rest import ShopUnavailable

    connect_store(app, shop, fake_shop)
    with app.app_context():
        old_secret = _store(app, shop).webhook_secret

    def shop_down(*args: object, **kwargs: object) -> list[str]:
        raise ShopUnavailable("the shop went down after creating the new webhooks")

    monkeypatch.setattr(connection, "_delete_stray_webhooks", shop_down)
    with app.app_context():
        assert connection.replace_webhook_secret(db.session, _store(app, shop), actor="t") is None
        db.session.commit()
    run_pending(app)
    assert len(fake_shop.webhooks) == 8  # the old ones are still there
    with app.app_context():
        assert _store(app, shop).previous_webhook_secret != old_secret
    assert shop.deliver(wc_order(9901, "processing"), secret=old_secret).status_code == 401


def test_a_leaked_secret_replaced_before_an_upgrade_gets_no_grace_from_its_queued_job(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older Keygate replaced a leaked secret by forgetting the registrations and queuing
    their job with ``"grace": False`` (the secret left as it was until then); the shop was
    down, and the job is still queued after the upgrade. When it runs, the leaked secret is
    refused, though the shop fails half-way, and its retry finishes the webhooks."""
    import connector.vault.connection as connection
    from connector.db import utcnow
    from plugin.woocommerce.rest import ShopUnavailable

    connect_store(app, shop, fake_shop)
    leaked = _an_older_keygates_secret_replacement(app, shop)
    stray_deletion = connection._delete_stray_webhooks

    def shop_down(*args: object, **kwargs: object) -> list[str]:
        raise ShopUnavailable("the shop went down after creating the new webhooks")

    monkeypatch.setattr(connection, "_delete_stray_webhooks", shop_down)
    run_pending(app)
    assert len(fake_shop.webhooks) == 8  # the old ones are still there, signing with it
    assert shop.deliver(wc_order(9902, "processing"), secret=leaked).status_code == 401

    monkeypatch.setattr(connection, "_delete_stray_webhooks", stray_deletion)
    with app.app_context():
        for job in db.session.scalars(select(Job).where(Job.kind == connection.REGISTER_JOB)):
            job.run_after = utcnow()  # its backoff, passed
        db.session.commit()
    run_pending(app)
    assert len(fake_shop.webhooks) == 4
    with app.app_context():
        store = _store(app, shop)
        # The retry made no other secret: the webhooks made by the first run sign with it.
        assert set(fake_shop.webhook_secrets.values()) == {store.webhook_secret}
        assert store.previous_webhook_secret is None
        current = store.webhook_secret
    assert shop.deliver(wc_order(9903, "processing"), secret=leaked).status_code == 401
    assert shop.deliver(wc_order(9903, "processing"), secret=current).status_code == 200


def _an_older_keygates_secret_replacement(app: Flask, shop: WebhookSender) -> str:
    """What an older Keygate did when the owner replaced a leaked secret: the store's
    registrations forgotten, their job queued with ``"grace": False``, the secret left as it
    was until then. Returns that (leaked) secret."""
    import connector.vault.connection as connection
    from connector.db import utcnow

    with app.app_context():
        store = _store(app, shop)
        db.session.execute(
            WebhookRegistration.__table__.delete().where(WebhookRegistration.store_id == store.id)
        )
        db.session.add(
            Job(
                kind=connection.REGISTER_JOB,
                payload={"store_id": store.id, "grace": False},
                run_after=utcnow(),
                created_at=utcnow(),
            )
        )
        db.session.commit()
        return store.webhook_secret


def test_a_leaked_secret_replaced_before_an_upgrade_is_not_kept_when_a_grace_lasts(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """The same queued job while an earlier registration's grace still lasts (it failed
    half-way minutes before): today's registration makes no new secret then, and the
    webhooks it makes anew would sign with the leaked one, taken for good."""
    import datetime as dt

    from connector.db import utcnow

    connect_store(app, shop, fake_shop)
    with app.app_context():
        store = _store(app, shop)
        store.previous_webhook_secret = "p" * 40
        store.previous_secret_until = utcnow() + dt.timedelta(minutes=5)
        db.session.commit()
    leaked = _an_older_keygates_secret_replacement(app, shop)
    run_pending(app)
    assert len(fake_shop.webhooks) == 4
    with app.app_context():
        assert set(fake_shop.webhook_secrets.values()) == {_store(app, shop).webhook_secret}
    assert shop.deliver(wc_order(9904, "processing"), secret=leaked).status_code == 401


def test_a_token_with_half_a_surrogate_pair_is_an_invalid_link(app: Flask) -> None:
    """Not text itsdangerous can encode: refused as any forged token, never a 500."""
    from connector.tokens import CONNECT_STATE, DOWNLOAD, LinkInvalid, loads, loads_timed

    with app.app_context():
        with pytest.raises(LinkInvalid):
            loads(DOWNLOAD, "\ud800.abc")
        with pytest.raises(LinkInvalid):
            loads_timed(CONNECT_STATE, "\ud800.abc", None)


def test_a_link_made_while_connected_does_not_reconnect_after_a_disconnect(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A wc-auth link opened while the store was connected (never used) is no good after
    the owner disconnects: replayed from a browser's history, it would connect the store
    again with whatever key it carries."""
    connect_store(app, shop, fake_shop)
    path, state = _state(shop)
    assert shop.admin("DELETE", "/connection").status_code == 200
    replay = shop.client.post(path, json=auth_callback_body(state))
    assert replay.status_code == 403
    assert shop.admin("GET", "/connection").get_json()["status"] == "disconnected"


def test_a_new_stores_repr_shows_neither_token_nor_secret(app: Flask) -> None:
    """What `keygate store add` prints once must not reach a traceback's locals."""
    from connector.stores import create_store

    with app.app_context():
        created = create_store(db.session, "Shop", "https://shop.example")
        shown = repr(created)
    assert created.api_token not in shown and created.webhook_secret not in shown


def _state(shop: WebhookSender) -> tuple[str, str]:
    """The callback path and the state of the store's wc-auth link, as the owner opens it."""
    url = shop.admin("GET", "/connection").get_json()["connect_url"]
    query = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    return urlsplit(query["callback_url"]).path, query["user_id"]


def test_a_used_state_takes_no_other_key_and_reconnects_nothing(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A state stands in the return URL, the shop's logs and the browser's history: once it
    connected the store, it takes no other key (which would replace the store's), and after
    a disconnect it does not connect the store again. The same key again changes nothing."""
    path, state = _state(shop)
    assert shop.client.post(path, json=auth_callback_body(state)).status_code == 200
    run_pending(app)
    again = shop.client.post(path, json=auth_callback_body(state))
    assert (again.status_code, again.get_json()["changed"]) == (200, False)
    other = {"consumer_key": "ck_" + "Z" * 40, "consumer_secret": "cs_" + "Y" * 40}
    foreign = shop.client.post(path, json=auth_callback_body(state, key_id=99, **other))
    assert foreign.status_code == 403 and "used already" in foreign.get_json()["detail"]
    with app.app_context():
        stored = credentials_for(db.session, _store(app, shop), "woocommerce")
    assert stored is not None and stored["consumer_key"] == CONSUMER_KEY
    assert shop.admin("DELETE", "/connection").status_code == 200
    replay = shop.client.post(path, json=auth_callback_body(state))
    assert replay.status_code == 403
    assert shop.admin("GET", "/connection").get_json()["status"] == "disconnected"
    fresh_path, fresh = _state(shop)  # the owner connects again from a fresh link
    assert shop.client.post(fresh_path, json=auth_callback_body(fresh)).status_code == 200
    assert shop.admin("GET", "/connection").get_json()["status"] == "connected"


def test_a_key_the_shop_refuses_leaves_its_working_webhooks_taken(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A key given by hand that the shop refuses (mistyped, revoked): registering fails and
    is retried, and meanwhile the shop's webhooks, signed with the secret they have, are
    still taken, however often it retries."""
    import datetime as dt

    from connector.db import utcnow

    path, state = _state(shop)
    shop.client.post(path, json=auth_callback_body(state))
    run_pending(app)
    shop.configure(501)
    assert fake_shop.deliver(shop.client, "order.created", wc_order(9301)).status_code == 200
    wrong = {"consumer_key": "ck_" + "Z" * 40, "consumer_secret": "cs_" + "Y" * 40}
    assert shop.admin("PUT", "/credentials/woocommerce", wrong).status_code == 200
    for _ in range(3):
        run_pending(app)
        with app.app_context():
            for job in db.session.scalars(select(Job).where(Job.status == "pending")):
                job.run_after = utcnow() - dt.timedelta(seconds=1)
            db.session.commit()
    answer = fake_shop.deliver(shop.client, "order.created", wc_order(9302))
    assert answer.status_code == 200
    registration = shop.admin("GET", "/connection").get_json()["webhook_registration"]
    assert registration is not None and registration["status"] == "retrying"


def test_a_disconnect_while_webhooks_are_registered_leaves_none_in_the_shop(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """The owner disconnects while a registration (a new webhook secret) waits on the shop:
    what it makes after the disconnect is deleted again, never recorded."""
    from connector.vault.connection import disconnect, replace_webhook_secret

    path, state = _state(shop)
    shop.client.post(path, json=auth_callback_body(state))
    run_pending(app)
    store_id = shop.store.store.id
    with app.app_context():
        replace_webhook_secret(db.session, _store(app, shop), actor="api")
        db.session.commit()
    original = fake_shop._webhooks
    disconnected: list[object] = []

    def disconnect_meanwhile(method: str, rest: list[str], query: dict[str, str], body: Any) -> Any:
        if method == "POST" and not disconnected:
            with app.app_context():  # another request: the owner disconnects
                store = db.session.get(Store, store_id)
                assert store is not None
                disconnected.append(disconnect(db.session, store, actor="api"))
                db.session.commit()
        return original(method, rest, query, body)

    fake_shop._webhooks = disconnect_meanwhile  # type: ignore[method-assign]
    run_pending(app)
    assert disconnected
    url = f"http://keygate.test/webhooks/woocommerce/{shop.store.store.public_id}"
    assert fake_shop.active_webhooks(url) == {}
    with app.app_context():
        assert db.session.scalars(select(WebhookRegistration)).all() == []
    assert shop.admin("GET", "/connection").get_json()["status"] == "disconnected"


def test_a_disconnect_before_a_reregistration_ran_deletes_the_old_webhooks(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """A new webhook secret forgets the registrations until the registration job runs; the
    owner disconnects before it did: the shop's webhooks to this store are deleted all the
    same, and the answer names them."""
    from connector.vault.connection import replace_webhook_secret

    connect_store(app, shop, fake_shop)
    url = f"http://keygate.test/webhooks/woocommerce/{shop.store.store.public_id}"
    in_shop = sorted(str(w) for w in fake_shop.active_webhooks(url).values())
    assert len(in_shop) == 4
    with app.app_context():
        replace_webhook_secret(db.session, _store(app, shop), actor="api")
        db.session.commit()
    response = shop.admin("DELETE", "/connection")
    assert response.status_code == 200
    assert sorted(response.get_json()["webhooks_deleted"]) == in_shop
    assert fake_shop.active_webhooks(url) == {}
    run_pending(app)  # the registration, run after the disconnect, makes none
    assert fake_shop.active_webhooks(url) == {}


@pytest.mark.parametrize("app_settings", [{"base_url": "HTTPS://Keygate.example/"}])
def test_an_https_address_typed_in_capitals_is_https(app: Flask) -> None:
    """KEYGATE_BASE_URL=HTTPS://… (typed so, or a phone's keyboard capitalised it) is an
    https address: the connect link is offered without the "needs https" warning, and the
    sign-in cookie is sent over https only."""
    from connector.vault.connection import connect_warning

    with app.app_context():
        assert connect_warning() is None
    assert app.config["SESSION_COOKIE_SECURE"] is True


def test_another_stores_failed_registration_is_not_this_stores_trouble(
    app: Flask, shop: WebhookSender
) -> None:
    """How registering a store's webhooks stands is read from that store's own jobs: a
    newer failing registration of another store is not shown as this one's."""
    import connector.vault.connection as connection
    from connector.jobs import enqueue
    from connector.stores import create_store

    with app.app_context():
        store = _store(app, shop)
        enqueue(db.session, connection.REGISTER_JOB, {"store_id": store.id})
        db.session.commit()
    run_pending(app, kinds={connection.REGISTER_JOB})  # no key: done, nothing to register
    with app.app_context():
        other = create_store(db.session, "Other shop", "https://other.example").store
        enqueue(db.session, connection.REGISTER_JOB, {"store_id": other.id})
        db.session.flush()
        failing = db.session.scalars(select(Job).order_by(Job.id.desc())).first()
        assert failing is not None
        failing.attempts, failing.last_error = 1, "ShopUnavailable: down"
        db.session.commit()
        assert connection.registration_trouble(db.session, other) is not None
        assert connection.registration_trouble(db.session, _store(app, shop)) is None
