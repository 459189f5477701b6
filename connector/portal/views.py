"""The buyer's private page ``/my/<token>``: licenses, downloads, a resend button.

The token is signed (salt ``keygate.portal``) and names the order; it is the buyer's only
credential, so the page shows nothing another buyer could use and is not indexed.
"""

from __future__ import annotations

from flask import Blueprint, abort, redirect, render_template, url_for
from flask.typing import ResponseReturnValue

from connector.admin.forms import ConfirmForm
from connector.audit import record_audit
from connector.db import db
from connector.extensions import limiter
from connector.jobs import enqueue
from connector.models import Order, Store
from connector.orders.summary import order_entitlements
from connector.tokens import order_id_from_portal_token

bp = Blueprint("portal", __name__)


def _order_for(token: str) -> Order:
    order = db.session.get(Order, order_id_from_portal_token(token))
    if order is None:
        abort(404)
    return order


@bp.get("/my/<token>")
def portal(token: str) -> ResponseReturnValue:
    order = _order_for(token)
    store = db.session.get(Store, order.store_id)
    response = render_template(
        "portal/order.html",
        order=order,
        store=store,
        token=token,
        form=ConfirmForm(),
        **order_entitlements(db.session, order),
    )
    return response, 200, {"X-Robots-Tag": "noindex", "Cache-Control": "private, no-store"}


@bp.post("/my/<token>/resend")
@limiter.limit("3/hour")
def resend(token: str) -> ResponseReturnValue:
    order = _order_for(token)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    if order.mail_address is None:
        # No address to mail (none given, or erased at the buyer's request): nothing is
        # queued, and the page says why instead of claiming a mail is on its way.
        return redirect(url_for("portal.portal", token=token))
    enqueue(db.session, "mail.order_issued", {"order_id": order.id, "resend": True})
    record_audit(
        db.session,
        store_id=order.store_id,
        actor="buyer",
        action="mail.resend_requested",
        subject=f"order:{order.shop_order_id}",
    )
    return redirect(url_for("portal.portal", token=token, sent=1))
