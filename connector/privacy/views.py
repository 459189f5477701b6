"""Privacy requests over the admin API: export and erase a customer's data."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from connector.admin.auth import current_store, require_store_token
from connector.db import db
from connector.privacy.service import erase_customer, export_customer, known_customer_orders
from connector.validation import customer_email

bp = Blueprint("privacy_views", __name__, url_prefix="/api/v1/admin/customers")
# ``path:``: an address may hold a "/" (a mailbox Keygate stores and mails like any other).


@bp.get("/<path:email>/export")
@require_store_token
def export(email: str) -> ResponseReturnValue:
    email = customer_email(email)
    response = jsonify(export_customer(db.session, current_store(), email))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.delete("/<path:email>")
@require_store_token
def erase(email: str) -> ResponseReturnValue:
    email = customer_email(email)
    known_customer_orders(db.session, current_store(), email)
    erased = erase_customer(db.session, current_store(), email, actor="api")
    # brevo_removal: "queued" when Brevo is asked to take them out of the store's list.
    return jsonify({"erased_orders": erased.orders, "brevo_removal": erased.brevo_removal})
