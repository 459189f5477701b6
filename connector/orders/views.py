"""Shop webhooks: verify raw bytes, record, answer fast; slow work goes to the outbox."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from werkzeug.exceptions import RequestEntityTooLarge

from connector.db import db, survives_a_dropped_connection, utcnow
from connector.errors import InvalidInput, NotFound, PayloadTooLarge, SignatureInvalid
from connector.models import Store, WebhookDelivery
from connector.models.records import BAD_SIGNATURE, TOO_LARGE
from connector.orders.reconcile import enqueue_reconcile_soon, enqueue_refresh
from connector.orders.service import apply_shop_order
from connector.redact import keygate_logger
from connector.stores import find_store
from connector.vault.service import has_credentials
from plugin.shop import PayloadError
from plugin.woocommerce import webhooks as wc

log = keygate_logger(__name__)
bp = Blueprint("webhooks", __name__)


def _record(
    store: Store, body: bytes | None, outcome: str, detail: str | None = None
) -> WebhookDelivery:
    """Record a delivery: its headers' ids and the hash of its body, never the body (it holds
    buyers' addresses). ``body`` None: not read (over the limit), no hash."""
    delivery = WebhookDelivery(
        store_id=store.id,
        topic=(request.headers.get(wc.TOPIC_HEADER) or "")[:64] or None,
        shop_delivery_id=(request.headers.get(wc.DELIVERY_HEADER) or "")[:64] or None,
        shop_webhook_id=(request.headers.get(wc.WEBHOOK_ID_HEADER) or "")[:64] or None,
        body_sha256="" if body is None else hashlib.sha256(body).hexdigest(),
        outcome=outcome,
        detail=detail,
    )
    db.session.add(delivery)
    return delivery


# At most one record of a refused kind of delivery (a signature, a body over the limit) per
# store in this time: anyone who knows a webhook URL can post to it, and must not fill the
# table.
REFUSED_RECORD_EVERY = dt.timedelta(minutes=1)


def _record_throttled(store: Store, body: bytes | None, outcome: str, detail: str) -> None:
    """Record a refused delivery of ``outcome`` unless one was recorded for the store in the
    last :data:`REFUSED_RECORD_EVERY`; commits."""
    recent = db.session.scalars(
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.store_id == store.id,
            WebhookDelivery.outcome == outcome,
            WebhookDelivery.received_at > utcnow() - REFUSED_RECORD_EVERY,
        )
        .limit(1)
    ).first()
    if recent is None:
        _record(store, body, outcome, detail)
        db.session.commit()


def _record_bad_signature(store: Store, body: bytes) -> None:
    """Keep a trace the owner sees in the deliveries: a webhook secret pasted wrong into
    WooCommerce is the likeliest setup mistake, and WooCommerce disables a webhook after a
    few failures, so the owner would only see that no order ever arrives."""
    _record_throttled(
        store,
        body,
        BAD_SIGNATURE,
        "refused: the signature does not match this store's webhook secret"
        " (the secret in WooCommerce is another one?)",
    )


def _refuse_too_large(store: Store) -> PayloadTooLarge:
    """A body over ``KEYGATE_MAX_BODY_BYTES`` (an order of very many lines, a plugin's blobs
    in its meta_data): refused unread, so its signature is unknown and anyone may have sent
    it. WooCommerce does not send it again, so the owner is told (one record a minute, as
    for a bad signature) and, with a REST key, the shop's changed orders are read now (one
    reconciliation a minute at most, however many such bodies come)."""
    limit = request.max_content_length
    readable = has_credentials(db.session, store, "woocommerce")
    if readable:
        enqueue_reconcile_soon(db.session, store)
        then = "the store's REST key reads it from the shop within a minute"
    else:
        then = (
            "the store has no WooCommerce REST key, so the order is not applied:"
            " connect the shop (reconciliation then reads it), or raise the limit and"
            " change the order in WooCommerce (mark it completed), which sends it again"
        )
    log.warning("webhook for store %s with a body over %s bytes", store.public_id, limit)
    _record_throttled(
        store,
        None,
        TOO_LARGE,
        f"refused: the body is over KEYGATE_MAX_BODY_BYTES ({limit} bytes), so it was not"
        f" read; raise KEYGATE_MAX_BODY_BYTES. If it was an order, {then}",
    )
    db.session.commit()  # the reconciliation, when no record was due
    return PayloadTooLarge(f"The body must be at most {limit} bytes.")


@bp.post("/webhooks/woocommerce/<store_id>")
@survives_a_dropped_connection
def woocommerce_webhook(store_id: str) -> ResponseReturnValue:
    store = find_store(db.session, store_id)
    if store is None:
        raise NotFound("No store has this id.")
    try:
        body = request.get_data(cache=True)
    except RequestEntityTooLarge:  # with its length, or sent without one (KeygateRequest)
        raise _refuse_too_large(store) from None
    if wc.is_ping(body, request.headers):
        # WooCommerce's creation ping is unsigned: answer 200, change nothing.
        return jsonify({"ok": True, "ping": True})
    signature = request.headers.get(wc.SIGNATURE_HEADER)
    if not any(wc.signature_valid(body, signature, s) for s in store.webhook_secrets(utcnow())):
        log.warning("webhook for store %s with a missing or wrong signature", store.public_id)
        _record_bad_signature(store, body)
        raise SignatureInvalid("X-WC-Webhook-Signature is missing or does not match.")

    topic = request.headers.get(wc.TOPIC_HEADER, "")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, absurdly nested
        _record(store, body, "rejected", "body is not JSON")
        db.session.commit()
        raise InvalidInput("The body is not valid JSON.") from None
    if topic not in wc.ORDER_TOPICS:
        _record(store, body, "ignored", f"topic {topic[:40]!r} is not handled")
        return jsonify({"ok": True, "outcome": "ignored"})
    shop_error = wc.rest_error(payload)
    if shop_error is not None:
        # Nothing to apply, and WooCommerce sends nothing again: a refusal would only count
        # towards disabling the webhook. Kept for the owner, with what the shop said.
        _record(store, body, "rejected", shop_error)
        return jsonify({"ok": True, "outcome": "rejected"})
    try:
        shop_order = wc.parse_order(payload, deleted=topic == "order.deleted")
    except PayloadError as exc:
        _record(store, body, "rejected", str(exc))
        db.session.commit()
        raise InvalidInput(f"The order payload is not valid: {exc}") from None

    readable = has_credentials(db.session, store, "woocommerce")
    result = apply_shop_order(
        db.session, store, shop_order, restored=topic == "order.restored", readable=readable
    )
    if result.unread_refunds is not None:
        # Payloads list refunds without their lines: re-read /refunds in a job, answer now.
        enqueue_refresh(db.session, store, shop_order.id, result.unread_refunds)
    elif result.unconfirmed is not None and readable:
        # Restored, or an old update delivered late? Trashed, or a deletion sent before a
        # restore? Which of two payloads of one second is the order now? A read of the order
        # tells (a store without a REST key cannot ask: the delivery's word stands).
        enqueue_refresh(db.session, store, shop_order.id, result.unconfirmed, refunds=False)
    delivery = _record(store, body, result.outcome)
    delivery.resource_id = shop_order.id
    return jsonify({"ok": True, "outcome": result.outcome})
