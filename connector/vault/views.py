"""Vault routes: credentials API, the shop connection API, the wc-auth callback.

``PUT|GET|DELETE /api/v1/admin/credentials/<kind>`` (Bearer token): secrets are write-only.
``GET|DELETE /api/v1/admin/connection`` (Bearer token): status, the wc-auth link, disconnect.
``POST /webhooks/woocommerce/<store_id>/auth-callback``: WooCommerce posts the REST key here.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from connector.admin.auth import current_store, require_store_token
from connector.db import db, iso
from connector.errors import Conflict, InvalidInput, NotFound
from connector.jobs import trouble_json
from connector.models import Job, Store, WebhookRegistration
from connector.stores import find_store
from connector.validation import json_body
from connector.vault import connection as shop_connection
from connector.vault.connection import REGISTER_JOB
from connector.vault.service import (
    check_kind,
    credentials_for,
    delete_credentials,
    masked,
    parse_credentials,
    put_credentials,
)
from plugin.shop import PayloadError
from plugin.woocommerce.connect import parse_callback

log = logging.getLogger(__name__)
bp = Blueprint("vault_views", __name__)


@bp.put("/api/v1/admin/credentials/<kind>")
@require_store_token
def put_store_credentials(kind: str) -> ResponseReturnValue:
    kind = check_kind(kind)
    values = parse_credentials(kind, json_body())
    store = current_store()
    previous = credentials_for(db.session, store, kind)
    stored = put_credentials(db.session, store, kind, values, actor="api")
    if kind == "woocommerce":
        # Keys given by hand count as a connection: register the webhooks with them.
        shop_connection.accept_manual_key(db.session, store, changed=stored != previous)
    return jsonify({"kind": kind, "credentials": masked(kind, stored)})


@bp.get("/api/v1/admin/credentials/<kind>")
@require_store_token
def get_store_credentials(kind: str) -> ResponseReturnValue:
    kind = check_kind(kind)
    stored = credentials_for(db.session, current_store(), kind)
    if stored is None:
        raise NotFound(f"No {kind} credentials are stored for this store.")
    return jsonify({"kind": kind, "credentials": masked(kind, stored)})


@bp.delete("/api/v1/admin/credentials/<kind>")
@require_store_token
def delete_store_credentials(kind: str) -> ResponseReturnValue:
    kind = check_kind(kind)
    if kind == "woocommerce":
        raise Conflict("Disconnect the shop instead: DELETE /api/v1/admin/connection.")
    if not delete_credentials(db.session, current_store(), kind, actor="api"):
        raise NotFound(f"No {kind} credentials are stored for this store.")
    return jsonify({"kind": kind, "deleted": True})


@bp.get("/api/v1/admin/connection")
@require_store_token
def get_connection() -> ResponseReturnValue:
    store = current_store()
    connection = shop_connection.connection_of(db.session, store)
    registrations = db.session.scalars(
        select(WebhookRegistration)
        .where(WebhookRegistration.store_id == store.id)
        .order_by(WebhookRegistration.topic)
    )
    return jsonify(
        {
            "status": connection.status,
            "connect_url": shop_connection.connect_url(store),
            "connect_warning": shop_connection.connect_warning(),
            "webhook_url": shop_connection.webhook_url(store),
            "connected_at": iso(connection.connected_at),
            "reconciled_until": iso(connection.reconciled_until),
            "products_synced_at": iso(connection.products_synced_at),
            # Products whose _keygate_* meta the last sync could not apply, and why.
            "products_invalid": [
                {"product_id": shop_id, "problem": problem}
                for shop_id, problem in sorted((connection.products_invalid or {}).items())
            ],
            "webhooks": [
                {"topic": r.topic, "id": r.shop_webhook_id, "status": r.status}
                for r in registrations
            ],
            "webhook_registration": _registration_trouble(store),
        }
    )


def _registration_trouble(store: Store) -> dict[str, Any] | None:
    """Registering the shop's webhooks, when it has failed at least once and not succeeded
    since: the shop may be down, or the key wrong. None when nothing is wrong."""
    job = db.session.scalars(
        select(Job)
        .where(Job.kind == REGISTER_JOB, Job.payload["store_id"].as_integer() == store.id)
        .order_by(Job.id.desc())
        .limit(1)
    ).first()
    # The newest registration says how things stand: one that succeeded after an older one
    # died means nothing is wrong.
    if job is None or job.status == "done" or job.attempts == 0:
        return None
    return trouble_json(job)


@bp.delete("/api/v1/admin/connection")
@require_store_token
def delete_connection() -> ResponseReturnValue:
    deleted = shop_connection.disconnect(db.session, current_store(), actor="api")
    return jsonify({"status": "disconnected", "webhooks_deleted": deleted})


@bp.post("/webhooks/woocommerce/<store_id>/auth-callback")
def wc_auth_callback(store_id: str) -> ResponseReturnValue:
    """WooCommerce posts the key it made for Keygate; answer 200 so it finishes."""
    store = find_store(db.session, store_id)
    if store is None:
        raise NotFound("No store has this id.")
    try:
        callback = parse_callback(request.get_data(cache=False))
    except PayloadError as exc:
        raise InvalidInput(f"The authorization callback is not valid: {exc}") from None
    changed = shop_connection.accept_callback(db.session, store, callback)
    log.info("store %s: shop authorization accepted (changed=%s)", store.public_id, changed)
    return jsonify({"ok": True, "changed": changed})


@bp.get("/connect/woocommerce/<store_id>/done")
def wc_auth_return(store_id: str) -> ResponseReturnValue:
    """Where the owner's browser lands after approving (or denying) in the shop."""
    store = find_store(db.session, store_id)
    if store is None:
        raise NotFound("No store has this id.")
    approved = request.args.get("success") == "1"
    message = (
        "Keygate is connected to your shop. Webhooks are being registered."
        if approved
        else "The connection was not approved. You can start it again from Keygate."
    )
    return render_template("connect_done.html", store=store, message=message)
