"""The owner's customer pages: look a buyer up, export or erase their data; leak lookup.

A customer is looked up by posting their email address (CSRF): the answer is rendered to
the post, so the address never goes into a URL, where access logs, browser history and
Referer headers would keep it. Export and erasure are the privacy API's verbs for one store
(:mod:`connector.privacy.service`), erasure only after the owner typed the address again,
audited as ``admin:<username>``. The leak lookup reads an uploaded copy as
``POST /api/v1/admin/leak-lookup`` does. An admin of one store finds, exports, erases and
identifies in that store only; another store is 404.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError

from connector import get_settings
from connector.admin.forms import ConfirmForm
from connector.admin.views import (
    _admin_name,
    _order_page,
    _scope,
    _visible_store,
    login_required,
    signed_in_admin,
    stale_form,
)
from connector.db import db, utcnow
from connector.downloads.leaks import identify_leaked_copy
from connector.errors import Conflict, InvalidInput, ValidationFailed
from connector.models import Order, Store
from connector.privacy.lookup import REMOVAL_REASONS, look_up_customer
from connector.privacy.service import (
    erase_customer,
    erase_order_buyer,
    export_customer,
    export_order_buyer,
    known_customer_orders,
)
from connector.validation import customer_email, row_id

bp = Blueprint("admin_customers", __name__, url_prefix="/admin")
bp.register_error_handler(CSRFError, stale_form)  # see connector.admin.views

LEAK_LOOKUP = "admin_customers.leak_lookup"


def _signed_in() -> bool:
    """A signed-in admin's session (the check ``login_required`` makes), read before the
    request's form is."""
    return signed_in_admin() is not None


@bp.url_value_preprocessor
def _leaked_copies_may_be_large(endpoint: str | None, _values: dict[str, Any] | None) -> None:
    """A signed-in admin may upload a leaked copy as large as the API takes one.

    Runs before any ``before_request`` hook: the NUL check and the CSRF check read the form,
    and with it the whole body, under the page's limit. Only for a signed-in admin, so that
    nobody else can make the server spool large bodies to disk.
    """
    if endpoint == LEAK_LOOKUP and request.method == "POST" and _signed_in():
        request.max_content_length = get_settings().leak_lookup_max_bytes


def _customer_page(
    email: str | None,
    *,
    typed: str = "",
    error: str | None = None,
    erase_refused: int | None = None,
    status: int = 200,
) -> ResponseReturnValue:
    """The Customers page; ``erase_refused``: the store whose erase form was refused."""
    found = look_up_customer(db.session, email, _scope()) if email is not None else None
    return render_template(
        "admin/customers.html",
        email=email,
        typed=email or typed,
        found=found,
        error=error,
        erase_refused=erase_refused,
        form=ConfirmForm(),
        removal_reasons=REMOVAL_REASONS,
    ), status


@bp.route("/customers", methods=["GET", "POST"])
@login_required
def customers() -> ResponseReturnValue:
    """The lookup form; posted, the customer's orders, licenses and downloads per store."""
    if request.method != "POST":  # GET, and HEAD as GET
        return _customer_page(None)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    typed = request.form.get("email") or ""
    try:
        email = customer_email(typed)
    except ValidationFailed as exc:
        return _customer_page(None, typed=typed[:320], error=exc.detail, status=422)
    return _customer_page(email)


def _posted_customer() -> tuple[Store, str]:
    """The store and email address a privacy form names: 404 for a store the admin may
    not see, 422 for a malformed address."""
    if not ConfirmForm().validate_on_submit():
        abort(400)
    store = _visible_store(row_id(request.form.get("store_id") or ""))
    return store, customer_email(request.form.get("email") or "")


@bp.post("/customers/export")
@login_required
def export() -> ResponseReturnValue:
    """The privacy API's export of the customer in one store, as a file to download."""
    store, email = _posted_customer()
    return _export_file(export_customer(db.session, store, email), store)


def _export_file(exported: dict[str, Any], store: Store) -> ResponseReturnValue:
    response = jsonify(exported)
    filename = f"keygate-export-{store.public_id}-{utcnow():%Y%m%d-%H%M%S}.json"
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/customers/erase")
@login_required
def erase() -> ResponseReturnValue:
    """The privacy API's erasure in one store, once the owner typed the address again."""
    store, email = _posted_customer()
    known_customer_orders(db.session, store, email)
    confirmation = (request.form.get("confirm") or "").strip().lower()
    if confirmation != email:
        return _customer_page(
            email,
            error="Nothing was erased: type the customer's email address again to confirm.",
            erase_refused=store.id,
            status=422,
        )
    erased = erase_customer(db.session, store, email, actor=_admin_name())
    return render_template(
        "admin/customer_erased.html", store=store, erased=erased, form=ConfirmForm()
    )


def _posted_order(order_id: int) -> tuple[Order, Store]:
    """The order a privacy form on its page names, and its store: 404 for one the admin may
    not see."""
    if not ConfirmForm().validate_on_submit():
        abort(400)
    order = db.session.get(Order, order_id)
    if order is None:
        abort(404)
    return order, _visible_store(order.store_id)


@bp.post("/orders/<int:order_id>/buyer/export")
@login_required
def export_buyer(order_id: int) -> ResponseReturnValue:
    """The export of an order's buyer who has no email address (the Customers page finds
    buyers by address)."""
    order, store = _posted_order(order_id)
    try:
        exported = export_order_buyer(db.session, store, order)
    except Conflict as exc:
        return _order_page(order, privacy_error=exc.detail, status=exc.status)
    return _export_file(exported, store)


@bp.post("/orders/<int:order_id>/buyer/erase")
@login_required
def erase_buyer(order_id: int) -> ResponseReturnValue:
    """The erasure of an order's buyer who has no email address, once the owner typed the
    order's number again."""
    order, store = _posted_order(order_id)
    number = order.number or order.shop_order_id
    if (request.form.get("confirm") or "").strip().lstrip("#") != number:
        return _order_page(
            order,
            privacy_error="Nothing was erased: type the order's number again to confirm.",
            erase_refused=True,
            status=422,
        )
    try:
        erased = erase_order_buyer(db.session, store, order, actor=_admin_name())
    except Conflict as exc:
        db.session.rollback()
        return _order_page(order, privacy_error=exc.detail, status=exc.status)
    return render_template(
        "admin/customer_erased.html", store=store, erased=erased, order=order, form=ConfirmForm()
    )


def _leak_page(
    match: Any = None, *, error: str | None = None, status: int = 200
) -> ResponseReturnValue:
    return render_template(
        "admin/leaks.html",
        match=match,
        error=error,
        limit=get_settings().leak_lookup_max_bytes,
        form=ConfirmForm(),
        removal_reasons=REMOVAL_REASONS,
    ), status


@bp.route("/leaks", methods=["GET", "POST"])
@login_required
def leak_lookup() -> ResponseReturnValue:
    """Upload a PDF or ZIP found in the wild; its fingerprint names the order and buyer."""
    if request.method != "POST":  # GET, and HEAD as GET
        return _leak_page()
    if not ConfirmForm().validate_on_submit():
        abort(400)
    scope = _scope()
    store = db.session.get(Store, scope) if scope is not None else None
    if scope is not None and store is None:  # pragma: no cover - a foreign key
        abort(404)
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _leak_page(error="Choose the file that was found.", status=422)
    try:
        match = identify_leaked_copy(db.session, upload.stream, store)
    except InvalidInput as exc:
        return _leak_page(error=exc.detail, status=422)
    finally:
        upload.close()  # large parts are spooled to a temporary file
    if match is None:
        return _leak_page(error="No fingerprint of your stores was found in this file.", status=404)
    return _leak_page(match)
