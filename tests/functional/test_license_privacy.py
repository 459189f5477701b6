"""Activations in a customer's export and erasure; security records purged on time."""

from __future__ import annotations

import datetime as dt

from flask import Flask
from sqlalchemy import select

from connector.db import db
from connector.models import (
    Activation,
    BindingChange,
    License,
    LicenseFlag,
    Order,
    SecurityEvent,
)
from connector.privacy.service import purge_expired_records
from tests.factories import WebhookSender, line_item, wc_order
from tests.licensing_helpers import call


def test_export_lists_activations_and_erasure_clears_their_labels(
    app: Flask, shop: WebhookSender
) -> None:
    """Where a buyer's keys are used is part of their data; labels go on erasure, seats stay."""
    shop.configure(501, activation_limit=2)
    shop.deliver(wc_order(5501, "processing", [line_item(501)], email="ada@example.org"))
    key = shop.order(5501)["licenses"][0]["key"]
    call(shop.client, "activate", {"key": key, "site": "ada-shop.com", "label": "Ada's shop"})

    exported = shop.admin("GET", "/customers/ada@example.org/export")
    assert exported.status_code == 200, exported.get_data(as_text=True)
    (activation,) = exported.get_json()["activations"]
    assert (activation["site"], activation["label"]) == ("ada-shop.com", "Ada's shop")

    assert shop.admin("DELETE", "/customers/ada@example.org").status_code in (200, 204)
    with app.app_context():
        stored = db.session.execute(select(Activation)).scalar_one()
        assert stored.label is None
        assert stored.site == "ada-shop.com"
    assert call(shop.client, "validate", {"key": key, "site": "ada-shop.com"}).get_json()["valid"]


def test_export_has_the_security_records_of_the_customers_licenses(
    app: Flask, shop: WebhookSender
) -> None:
    """Security events, binding changes and flags kept for a buyer's license are in their
    export; another buyer's records are not."""
    shop.configure(501, activation_limit=2)
    shop.deliver(wc_order(5503, "processing", [line_item(501)], email="ada@example.org"))
    shop.deliver(wc_order(5504, "processing", [line_item(501)], email="bob@example.org"))
    ada_key = shop.order(5503)["licenses"][0]["key"]
    call(shop.client, "activate", {"key": ada_key, "site": "ada-shop.com"})
    with app.app_context():
        ada, bob = (
            db.session.execute(
                select(License.id).join(Order).where(Order.shop_order_id == shop_order_id)
            ).scalar_one()
            for shop_order_id in ("5503", "5504")
        )
        for license_id, ip_hash in ((ada, "a" * 64), (bob, "b" * 64)):
            db.session.add(
                SecurityEvent(
                    kind="rate_limited",
                    scope="key",
                    ip_hash=ip_hash,
                    path="/api/v1/licenses/validate",
                    license_id=license_id,
                    user_agent="AdaPlugin/1.0",
                )
            )
        db.session.add(BindingChange(license_id=bob, kind="activate"))
        db.session.add(LicenseFlag(license_id=ada, reason="binding_changes", binding_changes=9))
        db.session.commit()

    exported = shop.admin("GET", "/customers/ada@example.org/export").get_json()
    [event] = exported["security_events"]
    assert (event["kind"], event["scope"], event["ip_hash"]) == ("rate_limited", "key", "a" * 64)
    assert (event["path"], event["user_agent"]) == ("/api/v1/licenses/validate", "AdaPlugin/1.0")
    assert [change["kind"] for change in exported["binding_changes"]] == ["activate"]
    [flag] = exported["license_flags"]
    assert (flag["reason"], flag["binding_changes"]) == ("binding_changes", 9)

    # Erasure takes the IP hash and user agent off Ada's records (as off her download log),
    # and keeps the records themselves (license enforcement); Bob's stay whole.
    assert shop.admin("DELETE", "/customers/ada@example.org").status_code in (200, 204)
    with app.app_context():
        kept = {
            e.license_id: (e.ip_hash, e.user_agent)
            for e in db.session.scalars(select(SecurityEvent))
        }
    assert kept == {ada: (None, None), bob: ("b" * 64, "AdaPlugin/1.0")}


def test_purge_removes_old_security_records_only(app: Flask, shop: WebhookSender) -> None:
    """Security events past retention_security_days go; recent ones and recent changes stay."""
    shop.configure(501)
    shop.deliver(wc_order(5502, "processing", [line_item(501)]))
    now = dt.datetime.now(dt.UTC)
    with app.app_context():
        license_id = db.session.execute(select(License.id)).scalar_one()
        for age in (1, 400):
            when = now - dt.timedelta(days=age)
            db.session.add(
                SecurityEvent(
                    kind="rate_limited", scope="ip", ip_hash="h" * 64, path="/x", created_at=when
                )
            )
            db.session.add(BindingChange(license_id=license_id, kind="activate", created_at=when))
        db.session.commit()
        removed = purge_expired_records(db.session, now)
        db.session.commit()
        assert removed["security_events"] == 1
        assert removed["binding_changes"] == 1
        assert len(db.session.scalars(select(SecurityEvent)).all()) == 1
        assert len(db.session.scalars(select(BindingChange)).all()) == 1
