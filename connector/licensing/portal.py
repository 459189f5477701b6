"""The buyer's activations on the portal page ``/my/<token>``: see them, free a seat.

The portal template includes ``portal/activations.html`` in its ``activations`` block; this
blueprint gives that template ``activations_by_license(license_ids)``, ``seats_taken_by``
(each active key's "N of M activations used", counted as the API counts seats) and the deactivate
button's POST (CSRF-protected like every portal form; the signed portal token is the credential).
"""

from __future__ import annotations

from collections.abc import Iterable

from flask import Blueprint, abort, redirect, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import or_, select

from connector.admin.forms import ConfirmForm
from connector.audit import record_audit
from connector.db import db
from connector.errors import error_page
from connector.extensions import limiter
from connector.licensing.service import remove_activation, seats_taken_by
from connector.models import Activation, License
from connector.orders.renewals import own_renewed_query
from connector.portal.views import PRIVATE, expired_page, order_for
from connector.tokens import LinkExpired, activation_id_from_token, activation_token

bp = Blueprint("licensing_portal", __name__)


def activations_by_license(license_ids: Iterable[int]) -> dict[int, list[Activation]]:
    """The activations of the licenses ``license_ids``, by license, oldest first: in one
    query, so that an order of thousands of seats opens its page as fast as one of two."""
    found: dict[int, list[Activation]] = {}
    ids = sorted(set(license_ids))
    for chunk in (ids[i : i + 500] for i in range(0, len(ids), 500)):
        for activation in db.session.scalars(
            select(Activation).where(Activation.license_id.in_(chunk)).order_by(Activation.id)
        ):
            found.setdefault(activation.license_id, []).append(activation)
    return found


bp.register_error_handler(LinkExpired, expired_page)  # its buttons live on the portal page


@bp.app_context_processor
def _portal_helpers() -> dict[str, object]:
    return {
        "activations_by_license": activations_by_license,
        "activation_token": activation_token,
        "seats_taken_by": seats_taken_by,
    }


@bp.post("/my/<token>/activations/<activation>/deactivate")
@limiter.limit("30/hour")
def deactivate(token: str, activation: str) -> ResponseReturnValue:
    """The buyer frees a seat (counted as a binding change, like the API's deactivate).

    ``activation`` is the seat's id sealed (:func:`activation_token`): a page's buttons say
    nothing of how many activations the instance has. A plain id is still accepted from
    pages opened before; either way only a seat of this order's licenses is freed.
    """
    order = order_for(token)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    activation_id = activation_id_from_token(activation)  # the 404 page when tampered with
    # The order's own licenses, and those it renews for its own customer (a subscription's
    # renewal order is the buyer's latest mail and page), never a key a stranger's renewal
    # named (see own_renewed_query).
    lic = db.session.execute(
        select(License)
        .join(Activation, Activation.license_id == License.id)
        .where(
            Activation.id == activation_id,
            or_(License.order_id == order.id, License.id.in_(own_renewed_query(order))),
        )
    ).scalar_one_or_none()
    if lic is None or not remove_activation(db.session, lic, activation_id):
        # A page open from before: freed already (in another tab, by the site or the owner).
        page = error_page(
            404,
            "This activation was already removed",
            "This activation was already removed: its seat is free. Your order page shows"
            " where your licenses are activated now.",
            back=url_for("portal.portal", token=token),
            back_label="Back to your order page",
        )
        return (*page, PRIVATE)
    record_audit(
        db.session,
        store_id=order.store_id,
        actor="buyer",
        action="license.deactivated",
        subject=f"license:{lic.id}",
        detail={"activation_id": activation_id},
    )
    return redirect(url_for("portal.portal", token=token, deactivated=1))


@bp.get("/my/<token>/activations/<activation>/deactivate")
def deactivate_opened(token: str, activation: str) -> ResponseReturnValue:
    """The Deactivate button's address opened (a bookmark, the history): the order page."""
    return redirect(url_for("portal.portal", token=token))
