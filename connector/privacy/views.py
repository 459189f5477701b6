"""Privacy requests over the admin API: export and erase a customer's data."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from connector.admin.auth import current_store, require_store_token
from connector.db import db
from connector.errors import NotFound
from connector.privacy.service import customer_orders, erase_customer, export_customer
from connector.validation import customer_email

bp = Blueprint("privacy_views", __name__, url_prefix="/api/v1/admin/customers")


@bp.get("/<email>/export")
@require_store_token
def export(email: str) -> ResponseReturnValue:
    email = customer_email(email)
    if not customer_orders(db.session, current_store(), email):
        raise NotFound("Keygate keeps no data about this customer.")
    response = jsonify(export_customer(db.session, current_store(), email))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.delete("/<email>")
@require_store_token
def erase(email: str) -> ResponseReturnValue:
    email = customer_email(email)
    erased = erase_customer(db.session, current_store(), email, actor="api")
    if erased.orders == 0:
        raise NotFound("Keygate keeps no data about this customer.")
    # brevo_removal: "queued" when Brevo is asked to take them out of the store's list.
    return jsonify({"erased_orders": erased.orders, "brevo_removal": erased.brevo_removal})
