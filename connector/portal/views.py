"""The buyer's private page ``/my/<token>``: licenses, downloads, a resend button.

The token is signed, names the order without showing its id (``connector.tokens``) and
expires after ``KEYGATE_PORTAL_LINK_DAYS``; it is the buyer's only credential, so the page
shows nothing another buyer could use and is not indexed. An expired link shows nothing of
the order but a button that mails a fresh link to the order's own address.
"""

from __future__ import annotations

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from connector.admin.forms import ConfirmForm
from connector.db import db
from connector.extensions import client_network_key, limiter
from connector.mail.service import mail_order_again
from connector.models import Order, Store
from connector.orders.renewals import own_renewed_query
from connector.orders.summary import order_entitlements
from connector.tokens import LinkExpired, LinkInvalid, order_id_from_portal_token

bp = Blueprint("portal", __name__)
PRIVATE = {"X-Robots-Tag": "noindex", "Cache-Control": "private, no-store"}
NO_ORDER = (
    "There is no order page at this address: the link is incomplete, or the order was removed."
)
# Mails an order's page may ask for, whichever addresses ask: besides each address's own
# limit, one budget per order for "mail me again" and "mail me a fresh link" together.
ORDER_MAILS_LIMIT = "6/day"


def _order_of_link() -> str:
    """The rate-limit key of the order a portal link names, expired links too (an expired
    link still asks for a fresh one). The link is the only credential, so a forwarded or
    leaked one, used from many addresses, must not fill the buyer's inbox or spend the
    shop's mail quota."""
    token = str((request.view_args or {}).get("token", ""))
    try:
        return f"portal-order:{order_id_from_portal_token(token, expired_too=True)}"
    except (LinkInvalid, LinkExpired):
        return client_network_key()  # no order: the view answers 404


order_mails = limiter.shared_limit(
    ORDER_MAILS_LIMIT, scope="portal-order-mails", key_func=_order_of_link
)


def order_for(token: str) -> Order:
    """The order a portal token names: 404 for none, :class:`LinkExpired` (the expired
    page, :func:`expired_page`) for a token past its days."""
    order = db.session.get(Order, order_id_from_portal_token(token))
    if order is None:
        abort(404, NO_ORDER)
    return order


@bp.errorhandler(LinkExpired)
def expired_page(_exc: LinkExpired) -> ResponseReturnValue:
    """What an expired portal link answers, to any of the page's buttons too (a page
    opened before the link expired): nothing of the order, a button for a fresh link."""
    token = str((request.view_args or {}).get("token", ""))
    return render_template("portal/expired.html", token=token, form=ConfirmForm()), 410, PRIVATE


@bp.get("/my/<token>")
def portal(token: str) -> ResponseReturnValue:
    order = order_for(token)
    store = db.session.get(Store, order.store_id)
    entitlements = order_entitlements(db.session, order)
    # Seats are managed here for the order's licenses and those it renews for its own
    # customer (see own_renewed_query), not for a key someone else's renewal named.
    own = set(db.session.scalars(own_renewed_query(order)))
    seated = entitlements["licenses"] + [lic for lic in entitlements["renewed"] if lic.id in own]
    response = render_template(
        "portal/order.html",
        order=order,
        store=store,
        token=token,
        form=ConfirmForm(),
        seated=seated,
        **entitlements,
    )
    return response, 200, PRIVATE


@bp.post("/my/<token>/resend")
@limiter.limit("3/hour")
@order_mails
def resend(token: str) -> ResponseReturnValue:
    order = order_for(token)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    if mail_order_again(db.session, order, actor="buyer", action="mail.resend_requested"):
        # No address to mail (none given, or erased at the buyer's request), or nothing to
        # put in it: nothing is queued, and the page says why instead of a mail on its way.
        return redirect(url_for("portal.portal", token=token))
    return redirect(url_for("portal.portal", token=token, sent=1))


@bp.post("/my/<token>/renew")
@limiter.limit("3/hour")
@order_mails
def renew(token: str) -> ResponseReturnValue:
    """Mail a fresh portal link (with the order's keys and links) to the order's address."""
    order = db.session.get(Order, order_id_from_portal_token(token, expired_too=True))
    if order is None:
        abort(404, NO_ORDER)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    mail_order_again(
        db.session, order, actor="buyer", action="mail.portal_link_renewed", portal_link_only=True
    )
    # Its page is a GET of its own: a reload of it, or a visit later, mails nothing again.
    return redirect(url_for("portal.renew_sent", token=token, sent=1), 303)


@bp.get("/my/<token>/renew")
def renew_sent(token: str) -> ResponseReturnValue:
    """ "Check your email" after a fresh link was asked for; opened otherwise, the page of
    the link (the order page, or the expired page and its button)."""
    if not request.args.get("sent"):
        return redirect(url_for("portal.portal", token=token))
    if db.session.get(Order, order_id_from_portal_token(token, expired_too=True)) is None:
        abort(404, NO_ORDER)
    page = render_template("portal/expired.html", token=token, form=ConfirmForm(), sent=True)
    return page, 200, PRIVATE


@bp.get("/my/<token>/resend")
def resend_opened(token: str) -> ResponseReturnValue:
    """The "mail me again" button's address opened (a bookmark, the history): its page."""
    return redirect(url_for("portal.portal", token=token))
