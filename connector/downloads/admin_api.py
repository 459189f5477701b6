"""Admin JSON API for downloads: the log per order and per buyer, and the leak lookup."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from connector import get_settings
from connector.admin.auth import current_store, require_store_token
from connector.db import db, iso
from connector.downloads.leaks import identify_leaked_copy
from connector.downloads.log import clicks, link_states
from connector.errors import InvalidInput, NotFound, PayloadTooLarge
from connector.models import Order
from connector.orders.service import find_order
from connector.privacy.service import customer_orders
from connector.validation import customer_email

bp = Blueprint("downloads_admin_api", __name__, url_prefix="/api/v1/admin")


def _events_json(orders: list[Order]) -> list[dict[str, Any]]:
    return [
        {
            "at": iso(click.at),
            "order_id": click.shop_order_id,
            "grant_id": click.grant_id,
            "filename": click.filename,
            "outcome": click.outcome,
            "served": click.served,
            "ip_hash": click.ip_hash,
            "user_agent": click.user_agent,
        }
        for click in clicks(db.session, orders=orders)
    ]


def _grants_json(order: Order) -> list[dict[str, Any]]:
    return [
        {
            "grant_id": state.grant_id,
            "filename": state.filename,
            "download_count": state.download_count,
            "download_limit": state.download_limit,
            "expires_at": iso(state.expires_at),
            "revoked": state.revoked,
            "watermark": state.watermark,
            "watermark_status": state.watermark_status,
            "watermark_error": state.watermark_error,
        }
        for state in link_states(db.session, order_id=order.id)
    ]


@bp.get("/orders/<shop_order_id>/downloads")
@require_store_token
def order_downloads(shop_order_id: str) -> ResponseReturnValue:
    """Every click on this order's links, newest first, and the state of each grant."""
    order = find_order(db.session, current_store(), shop_order_id[:64])
    if order is None:
        raise NotFound("Keygate has not received this order.")
    return jsonify(
        {
            "order_id": order.shop_order_id,
            "grants": _grants_json(order),
            "events": _events_json([order]),
        }
    )


@bp.get("/customers/<path:email>/downloads")
@require_store_token
def customer_downloads(email: str) -> ResponseReturnValue:
    """Every click on the links of this buyer's orders (matched by order email), newest first."""
    email = customer_email(email)
    orders = customer_orders(db.session, current_store(), email)
    return jsonify(
        {
            "email": email,
            "orders": [order.shop_order_id for order in orders],
            "events": _events_json(orders),
        }
    )


@bp.post("/leak-lookup")
@require_store_token
def leak_lookup() -> ResponseReturnValue:
    """Send a PDF or ZIP found in the wild as the raw body (or as multipart field ``file``)."""
    limit = get_settings().leak_lookup_max_bytes
    request.max_content_length = limit
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"Files up to {limit} bytes are accepted.")
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise InvalidInput("Send the file as the multipart field 'file'.")
        try:
            match = identify_leaked_copy(db.session, upload.stream, current_store())
        finally:
            upload.close()  # large parts are spooled to a temporary file
    else:
        match = identify_leaked_copy(db.session, request.stream, current_store())
    if match is None:
        raise NotFound("No fingerprint of this store was found in the file.")
    return jsonify(match.as_json())
