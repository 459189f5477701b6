"""Vault routes: credentials API, the shop connection API, the wc-auth callback.

``PUT|GET|DELETE /api/v1/admin/credentials/<kind>`` (Bearer token): secrets are write-only;
a PUT of R2 or Brevo credentials answers whether they work (``check``), and
``POST /api/v1/admin/credentials/<kind>/check`` asks again.
``GET|DELETE /api/v1/admin/connection`` (Bearer token): status, the wc-auth link, disconnect.
``POST /webhooks/woocommerce/<store_id>/auth-callback``: WooCommerce posts the REST key here.
"""

from __future__ import annotations

from flask import Blueprint, g, jsonify, render_template, request
from flask.typing import ResponseReturnValue

from connector.admin.auth import current_store, require_store_token
from connector.db import db
from connector.errors import Conflict, InvalidInput, NotFound
from connector.extensions import limiter
from connector.redact import keygate_logger
from connector.stores import find_store
from connector.validation import json_body
from connector.vault import connection as shop_connection
from connector.vault.checks import check_credentials, checkable
from connector.vault.service import (
    check_kind,
    credentials_for,
    delete_credentials,
    masked,
    parse_credentials,
)
from plugin.shop import PayloadError
from plugin.woocommerce.connect import parse_callback

log = keygate_logger(__name__)
bp = Blueprint("vault_views", __name__)

# Saving and checking credentials asks R2 or Brevo each time: a few a minute per store (and,
# on the admin pages, per admin) is plenty for an owner correcting a typo.
CHECK_LIMIT = "10/minute;60/hour"


def _checks_key() -> str:
    """Whose checks these are: the store of the API token, or the signed-in admin and the
    store of the page."""
    store = g.get("store")
    if store is not None:
        return f"credentials-check:store:{store.id}"
    user = g.get("admin_user")
    store_id = (request.view_args or {}).get("store_id")
    return f"credentials-check:admin:{getattr(user, 'id', None)}:{store_id}"


credential_checks = limiter.shared_limit(
    CHECK_LIMIT, scope="credentials-check", key_func=_checks_key, methods=["POST", "PUT"]
)


@bp.put("/api/v1/admin/credentials/<kind>")
@require_store_token
@credential_checks
def put_store_credentials(kind: str) -> ResponseReturnValue:
    """Save; then, for R2 and Brevo, try them (saved whatever the check finds: the owner
    may save before making the bucket)."""
    kind = check_kind(kind)
    values = parse_credentials(kind, json_body())
    store = current_store()
    stored = shop_connection.save_credentials(db.session, store, kind, values, actor="api")
    shown = masked(kind, stored)
    check = check_credentials(db.session, store, kind).as_json() if checkable(kind) else None
    return jsonify({"kind": kind, "credentials": shown, "check": check})


@bp.post("/api/v1/admin/credentials/<kind>/check")
@require_store_token
@credential_checks
def check_store_credentials(kind: str) -> ResponseReturnValue:
    """Try the saved credentials of ``kind`` against R2 or Brevo (404: none saved)."""
    result = check_credentials(db.session, current_store(), kind)
    return jsonify({"kind": result.kind, "check": result.as_json()})


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
    return jsonify(shop_connection.connection_report(db.session, current_store()))


@bp.delete("/api/v1/admin/connection")
@require_store_token
def delete_connection() -> ResponseReturnValue:
    """Disconnect; ``?shop_gone=true``: forget the key even if the shop cannot be reached."""
    shop_gone = request.args.get("shop_gone", "").lower() in ("1", "true")
    done = shop_connection.disconnect(db.session, current_store(), actor="api", shop_gone=shop_gone)
    return jsonify(
        {"status": "disconnected", "webhooks_deleted": done.deleted, "webhooks_left": done.left}
    )


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
