"""The admin JSON API (``/api/v1/admin``), scoped to the store of the Bearer token."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from connector.admin.auth import current_store, require_store_token
from connector.admin.paging import asked_before, link_next, newest_first
from connector.audit import shown_actor, store_admin_names
from connector.catalog import (
    configure_product,
    find_product,
    parse_product_spec,
    product_json,
    product_warnings,
    retire_product,
)
from connector.db import db, iso
from connector.errors import Conflict, NotFound, ValidationFailed
from connector.jobs import trouble_json
from connector.mail.service import mail_order_again, undelivered_mails
from connector.models import AuditEvent, Job, Mail, Order, Product
from connector.orders.service import find_order
from connector.orders.summary import order_entitlements
from connector.privacy import service as privacy
from connector.validation import is_shop_id, json_body, whole_number

bp = Blueprint("admin_api", __name__, url_prefix="/api/v1/admin")


def _shop_id(value: str) -> str:
    if not is_shop_id(value):
        raise NotFound("Shop ids are letters and digits.")
    return value


@bp.put("/products/<shop_product_id>")
@require_store_token
def put_product(shop_product_id: str) -> ResponseReturnValue:
    data = json_body()
    if "product_id" in data and str(data["product_id"]) != shop_product_id:
        raise ValidationFailed(
            "product_id does not match the product in the address", field="product_id"
        )
    spec = parse_product_spec(data)
    product = configure_product(
        db.session, current_store(), _shop_id(shop_product_id), spec, actor="api"
    )
    return _product_answer(product)


@bp.delete("/products/<shop_product_id>")
@require_store_token
def retire(shop_product_id: str) -> ResponseReturnValue:
    """Stop licensing new sales of the product; what was sold keeps working."""
    store = current_store()
    product = find_product(db.session, store, _shop_id(shop_product_id))
    if product is None:
        raise NotFound("No product with this id is configured.")
    return _product_answer(retire_product(db.session, store, product, actor="api"))


@bp.get("/products")
@require_store_token
def list_products() -> ResponseReturnValue:
    """Every product configured for the store (by the API or the shop's product sync)."""
    products = db.session.scalars(
        select(Product).where(Product.store_id == current_store().id).order_by(Product.id)
    )
    return jsonify({"products": [product_json(p) for p in products]})


@bp.get("/products/<shop_product_id>")
@require_store_token
def get_product(shop_product_id: str) -> ResponseReturnValue:
    """A product as configured, with warnings for files not (yet) in storage."""
    product = find_product(db.session, current_store(), _shop_id(shop_product_id))
    if product is None:
        raise NotFound("No product with this id is configured.")
    return _product_answer(product)


def _product_answer(product: Product) -> ResponseReturnValue:
    """A product as configured, with owner-facing warnings for files not (yet) in storage
    (asked once the owner's change is committed)."""
    answer = product_json(product)
    return jsonify({**answer, "warnings": product_warnings(db.session, current_store(), product)})


def order_json(order: Order) -> dict[str, Any]:
    entitlements = order_entitlements(db.session, order)
    return {
        "order": {
            "id": order.shop_order_id,
            "number": order.number,
            "status": order.status,
            "deleted": order.deleted,
            "email": order.email,
            "name": order.name,
            "company": order.company,
            "currency": order.currency,
            "total": str(order.total) if order.total is not None else None,
            "payment_method": order.payment_method,
            "transaction_id": order.transaction_id,
            "payment_note": order.payment_note,
            "date_paid": iso(order.date_paid),
            "line_items": [
                {
                    "id": line.shop_line_item_id,
                    "product_id": line.shop_product_id,
                    "variation_id": line.shop_variation_id,
                    "name": line.name,
                    "quantity": line.quantity,
                    "refunded_quantity": line.refunded_quantity,
                    "licensed": line.product_id is not None,
                }
                for line in order.line_items
            ],
        },
        "licenses": [
            {
                "key": lic.key,
                "product_id": lic.product_id,
                "status": lic.status,
                "expires_at": iso(lic.expires_at),
                "updates_until": iso(lic.updates_until),
                "activation_limit": lic.activation_limit,
            }
            for lic in entitlements["licenses"]
        ],
        "downloads": [
            {
                "filename": d.filename,
                "link": d.link,
                "downloads_left": d.downloads_left,
                "expires_at": iso(d.expires_at),
                "revoked": d.revoked,
            }
            for d in entitlements["downloads"]
        ],
        "portal_url": entitlements["portal_url"],
    }


@bp.get("/orders/<shop_order_id>")
@require_store_token
def get_order(shop_order_id: str) -> ResponseReturnValue:
    return jsonify(order_json(_found_order(shop_order_id)))


def _found_order(shop_order_id: str) -> Order:
    order = find_order(db.session, current_store(), _shop_id(shop_order_id))
    if order is None:
        raise NotFound("Keygate has not received this order.")
    return order


@bp.get("/orders/<shop_order_id>/buyer/export")
@require_store_token
def export_order_buyer(shop_order_id: str) -> ResponseReturnValue:
    """The export of an order's buyer who has no email address (409 for one who has:
    ``/customers/<email>/export`` is theirs)."""
    exported = privacy.export_order_buyer(db.session, current_store(), _found_order(shop_order_id))
    response = jsonify(exported)
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.delete("/orders/<shop_order_id>/buyer")
@require_store_token
def erase_order_buyer(shop_order_id: str) -> ResponseReturnValue:
    """Erase an order's buyer who has no email address (409 for one who has, or was erased)."""
    store = current_store()
    erased = privacy.erase_order_buyer(db.session, store, _found_order(shop_order_id), actor="api")
    return jsonify({"erased_orders": erased.orders, "brevo_removal": erased.brevo_removal})


@bp.post("/orders/<shop_order_id>/resend")
@require_store_token
def resend_order_mail(shop_order_id: str) -> ResponseReturnValue:
    """Mail the buyer their order's keys and links again (202: queued in the outbox)."""
    order = _found_order(shop_order_id)
    refused = mail_order_again(db.session, order, actor="api", action="mail.resent")
    if refused is not None:
        raise Conflict(refused)
    return jsonify({"queued": True}), 202


def _limit() -> int:
    limit = whole_number(request.args.get("limit", "100"))
    if limit is None or not 1 <= limit <= 1000:
        raise ValidationFailed("limit must be a whole number from 1 to 1000", field="limit")
    return limit


@bp.get("/audit")
@require_store_token
def audit_log() -> ResponseReturnValue:
    """The store's audit log, newest first (``?action=`` filters, ``?limit=`` caps,
    ``?before=`` pages on, as the ``Link`` header's ``rel="next"`` gives it); an admin who is
    not one of the store's own is named ``admin`` (:func:`connector.audit.shown_actor`)."""
    query = select(AuditEvent).where(AuditEvent.store_id == current_store().id)
    action = request.args.get("action")
    if action:
        query = query.where(AuditEvent.action == action)
    events, older = newest_first(query, AuditEvent.id, _limit(), asked_before())
    own_admins = store_admin_names(db.session, current_store().id)
    answer = jsonify(
        {
            "events": [
                {
                    "at": iso(e.created_at),
                    "actor": shown_actor(e.actor, own_admins),
                    "action": e.action,
                    "subject": e.subject,
                    "detail": e.detail,
                }
                for e in events
            ]
        }
    )
    return link_next(answer, older)


@bp.get("/outbox")
@require_store_token
def outbox() -> ResponseReturnValue:
    """The store's mails, sent or waiting (``sent_at`` null), newest first (``?before=``
    pages on, as the ``Link`` header's ``rel="next"`` gives it); and its order mails not
    delivered yet, on every page: retrying through an outage, or dead after their last
    attempt (``undelivered``, until the buyer has had a later one: ``POST
    .../orders/<id>/resend``)."""
    mails, older = newest_first(
        select(Mail).where(Mail.store_id == current_store().id),
        Mail.id,
        _limit(),
        asked_before(),
    )
    undelivered = db.session.execute(
        undelivered_mails(select(Job, Order.shop_order_id), current_store().id)
        .order_by(Job.id.desc())
        .limit(_limit())
    ).all()
    answer = jsonify(
        {
            "undelivered": [
                {"order_id": shop_order_id, **trouble_json(job)}
                for job, shop_order_id in undelivered
            ],
            "mails": [
                {
                    "id": m.id,
                    "kind": m.kind,
                    "to": mask_email(m.to_email),
                    "subject": m.subject,
                    "backend": m.backend,
                    "sent_at": iso(m.sent_at),
                    "created_at": iso(m.created_at),
                }
                for m in mails
            ],
        }
    )
    return link_next(answer, older)


def mask_email(email: str) -> str:
    """``j***@example.org``: enough for the owner to recognise, not to harvest."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"
