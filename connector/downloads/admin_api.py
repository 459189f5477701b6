"""Admin JSON API for downloads: the log per order and per buyer, and the leak lookup."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from connector import get_settings
from connector.admin.auth import current_store, require_store_token
from connector.db import db, iso
from connector.downloads.leaks import identify_leak
from connector.errors import InvalidInput, NotFound, PayloadTooLarge
from connector.models import DownloadEvent, DownloadGrant, Order, ProductFile, WatermarkCopy
from connector.orders.service import find_order
from connector.privacy.service import customer_orders
from connector.validation import customer_email

bp = Blueprint("downloads_admin_api", __name__, url_prefix="/api/v1/admin")

MAX_EVENTS = 1000


def _events_json(orders: list[Order]) -> list[dict[str, Any]]:
    if not orders:
        return []
    by_id = {order.id: order for order in orders}
    rows = db.session.execute(
        select(DownloadEvent, ProductFile.filename)
        .join(DownloadGrant, DownloadEvent.grant_id == DownloadGrant.id)
        .join(ProductFile, DownloadGrant.product_file_id == ProductFile.id)
        .where(DownloadEvent.order_id.in_(by_id))
        .order_by(DownloadEvent.created_at.desc(), DownloadEvent.id.desc())
        .limit(MAX_EVENTS)
    ).all()
    return [
        {
            "at": iso(event.created_at),
            "order_id": by_id[event.order_id].shop_order_id,
            "grant_id": event.grant_id,
            "filename": filename,
            "outcome": event.outcome,
            "served": event.served,
            "ip_hash": event.ip_hash,
            "user_agent": event.user_agent,
        }
        for event, filename in rows
    ]


def _grants_json(order: Order) -> list[dict[str, Any]]:
    rows = db.session.execute(
        select(DownloadGrant, ProductFile, WatermarkCopy)
        .join(ProductFile, DownloadGrant.product_file_id == ProductFile.id)
        .outerjoin(WatermarkCopy, WatermarkCopy.grant_id == DownloadGrant.id)
        .where(DownloadGrant.order_id == order.id)
        .order_by(DownloadGrant.id)
    ).all()
    return [
        {
            "grant_id": grant.id,
            "filename": product_file.filename,
            "download_count": grant.download_count,
            "download_limit": grant.download_limit,
            "expires_at": iso(grant.expires_at),
            "revoked": grant.revoked_at is not None,
            "watermark": product_file.watermark,
            # pending | ready | failed; the error is for the owner (never shown to buyers).
            "watermark_status": (
                None
                if product_file.watermark == "none"
                else (copy.status if copy is not None else "pending")
            ),
            "watermark_error": copy.error if copy is not None else None,
        }
        for grant, product_file, copy in rows
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


@bp.get("/customers/<email>/downloads")
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
    with tempfile.TemporaryDirectory(prefix="keygate-leak-") as folder:
        path = Path(folder) / "upload"
        if request.mimetype == "multipart/form-data":
            upload = request.files.get("file")
            if upload is None:
                raise InvalidInput("Send the file as the multipart field 'file'.")
            try:
                upload.save(path)
            finally:
                upload.close()  # large parts are spooled to a temporary file
        else:
            with path.open("wb") as target:
                while chunk := request.stream.read(1024 * 1024):
                    target.write(chunk)
        if path.stat().st_size == 0:
            raise InvalidInput("Send the file as the request body.")
        match = identify_leak(db.session, path, current_store())
    if match is None:
        raise NotFound("No fingerprint of this store was found in the file.")
    return jsonify(match.as_json())
