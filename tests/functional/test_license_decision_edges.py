"""License API decisions at their edges: the instant a license expires, what the abuse signal
counts, and whose releases a variation key is offered when its parent's shop id is configured
only in another store."""

from __future__ import annotations

import datetime as dt

import pytest
from flask import Flask
from sqlalchemy import select

from connector.db import db, utcnow
from connector.licensing import service
from connector.licensing.keys import normalize_key
from connector.models import BindingChange, License
from connector.orders.service import hash_license_key
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_admin_licenses_pages import other_shop
from tests.functional.test_license_updates import PAID, publish
from tests.licensing_helpers import call, issue_key


def _license_id(app: Flask, key: str) -> int:
    canonical = normalize_key(key)
    assert canonical is not None
    with app.app_context():
        found: int = db.session.execute(
            select(License.id).where(License.key_hash == hash_license_key(canonical))
        ).scalar_one()
        return found


def test_a_license_is_expired_from_the_instant_of_its_expiry(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At ``expires_at`` itself the license is over: validate answers EXPIRED (not VALID
    beside a license block saying "expired"), and the one-query path leaves it to validate."""
    key = issue_key(shop, duration_days=30)
    license_id = _license_id(app, key)
    with app.app_context():
        lic = db.session.get(License, license_id)
        assert lic is not None and lic.expires_at is not None
        expiry = lic.expires_at
        monkeypatch.setattr(service, "utcnow", lambda: expiry)
        answer = service.validate(db.session, key)
        assert (answer.valid, answer.code) == (False, "EXPIRED")
        assert answer.license is not None and answer.product is not None
        assert service.license_json(db.session, answer.license, answer.product)["status"] == (
            "expired"
        )
        key_hash = service.lookup_hash(key)
        assert key_hash is not None
        assert service.validate_fast(db.engine, key_hash) is None


def test_binding_changes_older_than_30_days_do_not_count_for_the_abuse_signal(
    app: Flask, shop: WebhookSender
) -> None:
    """abuse_threshold=2 with abuse_suspend: three moves of the key 31 days ago are history,
    not abuse; today's activation is the only change in the window and is VALID, unflagged
    (a buyer who moved a site a few times last year is not paused for one move today)."""
    key = issue_key(shop, activation_limit=1, abuse_threshold=2, abuse_suspend=True)
    license_id = _license_id(app, key)
    long_ago = utcnow() - dt.timedelta(days=31)
    with app.app_context():
        for kind in ("activate", "deactivate", "activate"):
            db.session.add(BindingChange(license_id=license_id, kind=kind, created_at=long_ago))
        db.session.commit()
    body = call(shop.client, "activate", {"key": key, "site": "a.com"}).get_json()
    assert (body["valid"], body["code"]) == (True, "VALID"), body
    assert call(shop.client, "validate", {"key": key}).get_json()["code"] == "VALID"
    assert shop.admin("GET", "/licenses").get_json()["licenses"][0]["flagged"] is False


def test_a_variation_key_is_never_offered_another_stores_release_of_its_parent_id(
    app: Flask, shop: WebhookSender
) -> None:
    """This store configured variation 777 only, and sold it as a variation of 501; another
    store on the instance configured its own 501 and published 9.9.9 there. A product asking
    as 501 names the key's parent (no mismatch), but shop ids are only unique within a shop:
    update-check offers this store's releases (none), never the other store's file."""
    shop.configure(777)
    shop.deliver(wc_order(6301, "processing", [line_item(501, variation_id=777)]))
    key = shop.order(6301)["licenses"][0]["key"]
    theirs = other_shop(app)
    theirs.configure(501)
    publish(theirs, "9.9.9", PAID)
    response = call(shop.client, "update-check", {"key": key, "product": "501", "version": "1.0"})
    body = response.get_json()
    assert (body["valid"], body["code"], body["update"]) == (True, "VALID", None), body
    assert "9.9.9" not in response.get_data(as_text=True)


def test_activating_again_a_seat_seen_just_now_and_freed_meanwhile_activates_it_anew(
    app: Flask, shop: WebhookSender
) -> None:
    """A product activates its site again minutes after its last check (its hourly stamp not
    due) just as the seat is freed: activate still stamps the seat it found, sees it is gone
    and activates the site anew, rather than answer "Already activated here." about a seat
    that no longer exists (PostgreSQL; SQLite's write lock orders the two anyway)."""
    from tests.functional.test_license_seat_races import _seats, _while_a_seat_is_freed

    key = issue_key(shop, activation_limit=3)
    license_id = _license_id(app, key)
    first = call(shop.client, "activate", {"key": key, "site": "shop-one.com"}).get_json()
    activation_id = first["activation"]["id"]
    status, answer = _while_a_seat_is_freed(
        app, shop, activation_id, "activate", {"key": key, "site": "shop-one.com"}
    )
    assert status == 200, answer
    assert answer is not None
    assert (answer["valid"], answer["code"]) == (True, "VALID"), answer
    assert answer["activation"]["id"] != activation_id
    assert _seats(app, license_id) == 1


def test_a_nonce_of_200_characters_is_echoed_whole(shop: WebhookSender) -> None:
    """The client library sends a 22-character nonce and checks the answer echoes it as
    sent; any nonce up to 200 characters comes back unchanged."""
    key = issue_key(shop)
    nonce = "n" * 199 + "Z"
    body = call(shop.client, "validate", {"key": key, "nonce": nonce}).get_json()
    assert body["nonce"] == nonce
