"""The owner's license pages: ``/admin/licenses`` (search) and ``/admin/licenses/<id>``.

A license is named by its numeric id in every address, never by its key: paths and queries
reach access logs and browser history, and a key is a secret. A key typed into the search
is posted (CSRF) and found by its keyed hash, as the admin API finds it. The actions call
the API's verbs (:mod:`connector.licensing.admin`), audited as ``admin:<username>``. An
admin of one store sees and changes that store's licenses only; any other id is 404.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError

from connector.admin.forms import ConfirmForm
from connector.admin.paging import one_page
from connector.admin.views import (
    PAGE,
    _admin_name,
    _scope,
    _visible_license,
    login_required,
    stale_form,
)
from connector.db import db
from connector.downloads.log import clicks, link_states
from connector.errors import KeygateError, ValidationFailed
from connector.licensing.admin import (
    ACTIONS,
    DAYS_MAX,
    STATUS_FILTERS,
    change_license,
    check_status_filter,
    find_license_by_key,
    license_record,
    not_paid_for,
    remove_activation_as_owner,
    search_licenses,
)
from connector.models import License
from connector.validation import row_id, whole_number

bp = Blueprint("admin_licenses", __name__, url_prefix="/admin")
bp.register_error_handler(CSRFError, stale_form)  # see connector.admin.views

MAX_KEY_LENGTH = 200  # far longer than any key format; a longer text is no key
DONE = {
    "revoke": "The license is revoked; its download links are blocked.",
    "suspend": "The license is suspended; its download links are blocked.",
    "reinstate": "The license is active again; the links its suspension blocked are open.",
    "extend": "The license is extended.",
    "deactivate": "The activation is removed; its seat is free.",
}


def _sent() -> Any:
    """What the filter form (and its Older button) posted, else the query string."""
    return request.form if request.method == "POST" else request.args


def _filters() -> tuple[dict[str, str], str | None]:
    """The list's filters, as the admin API reads them: posted by the filter form (a buyer's
    address never goes into a URL), or status and product from the query string; and a
    notice when a status that is none (a stale or mistyped address) was left out."""
    args = _sent()
    raw = {
        "email": (args.get("email") or "").strip().lower() if request.method == "POST" else "",
        "status": (args.get("status") or "").strip(),
        "product": (args.get("product") or "").strip(),
    }
    notice = None
    try:
        check_status_filter(raw["status"] or None)
    except ValidationFailed:
        shown = raw["status"] if len(raw["status"]) <= 40 else raw["status"][:40] + "…"
        notice = f"“{shown}” is not a status: the list shows every status."
        raw["status"] = ""
    return {name: value for name, value in raw.items() if value}, notice


def _license_list(find_error: str | None = None, status: int = 200) -> ResponseReturnValue:
    filters, notice = _filters()
    rows = search_licenses(
        db.session,
        _scope(),
        **filters,
        before=row_id(_sent().get("before") or ""),
        limit=PAGE + 1,
    )
    shown, older = one_page(rows, PAGE, lambda row: row.license.id)
    return render_template(
        "admin/licenses.html",
        rows=shown,
        filters=filters,
        statuses=STATUS_FILTERS,
        older=older,
        find_error=find_error,
        notice=notice,
        form=ConfirmForm(),
    ), status


@bp.route("/licenses", methods=["GET", "POST"])
@login_required
def licenses() -> ResponseReturnValue:
    """Licenses newest first, by buyer email, status (``expired`` too) and shop product id."""
    if request.method == "POST" and not ConfirmForm().validate_on_submit():
        abort(400)
    return _license_list()


@bp.post("/licenses/find")
@login_required
def find_license() -> ResponseReturnValue:
    """Open the license with the key typed in (posted: a key never goes into an address)."""
    if not ConfirmForm().validate_on_submit():
        abort(400)
    key = (request.form.get("key") or "").strip()
    if not key:
        return _license_list("Type a license key to find it.", 422)
    lic = None
    if len(key) <= MAX_KEY_LENGTH:
        lic = find_license_by_key(db.session, key, _scope())
    if lic is None:
        return _license_list("No license of your stores has this key.", 404)
    return redirect(url_for("admin_licenses.license_detail", license_id=lic.id))


def _license_page(
    lic: License,
    error: str | None = None,
    status: int = 200,
    refused_field: str | None = None,
    typed_days: str = "",
) -> ResponseReturnValue:
    """The license's page; ``refused_field``: the field a refused form's ``error`` is about;
    ``typed_days``: the days a refused extension was sent with, shown again to correct."""
    done = request.args.get("done", "")
    return render_template(
        "admin/license.html",
        record=license_record(db.session, lic),
        unpaid=not_paid_for(db.session, lic) if lic.status != "active" else None,
        links=link_states(db.session, license_id=lic.id),
        clicks=clicks(db.session, license_id=lic.id),
        days_max=DAYS_MAX,
        done=DONE.get(done),
        error=error,
        refused_field=refused_field,
        typed_days=typed_days,
        form=ConfirmForm(),
    ), status


@bp.get("/licenses/<int:license_id>")
@login_required
def license_detail(license_id: int) -> ResponseReturnValue:
    """One license: key, status, dates, seats, activations, renewals and download links."""
    lic, _store = _visible_license(license_id)
    return _license_page(lic)


def _days(raw: str) -> int:
    """The days an extension adds, as typed; the range is the service's to check."""
    text = raw.strip()
    if not text:
        raise ValidationFailed("days is required", field="days")
    days = whole_number(text, max_digits=9)
    if days is None:
        raise ValidationFailed("days must be a whole number of days", field="days")
    return days


@bp.post("/licenses/<int:license_id>/change")
@login_required
def change(license_id: int) -> ResponseReturnValue:
    """Revoke, suspend, reinstate or extend (by ``days``), as the admin API does."""
    action = request.form.get("action", "")
    if action not in ACTIONS or not ConfirmForm().validate_on_submit():
        abort(400)
    lic, store = _visible_license(license_id)
    options: dict[str, Any] = {}
    try:
        if action == "extend":
            options["days"] = _days(request.form.get("days") or "")
        change_license(db.session, store, lic.key_encrypted, action, actor=_admin_name(), **options)
    except KeygateError as exc:  # 422 days out of range, 409 a key its order revoked
        db.session.rollback()
        return _license_page(
            _visible_license(license_id)[0],
            error=exc.detail,
            status=exc.status,
            refused_field=exc.extra.get("field"),
            typed_days=(request.form.get("days") or "")[:40] if action == "extend" else "",
        )
    return redirect(url_for("admin_licenses.license_detail", license_id=lic.id, done=action))


@bp.post("/licenses/<int:license_id>/activations/<int:activation_id>/deactivate")
@login_required
def deactivate(license_id: int, activation_id: int) -> ResponseReturnValue:
    """Free the seat an activation takes (the admin API's DELETE of an activation)."""
    if not ConfirmForm().validate_on_submit():
        abort(400)
    lic, store = _visible_license(license_id)
    # Not an activation of this license (removed meanwhile): the service's 404 page.
    remove_activation_as_owner(
        db.session, store, lic.key_encrypted, activation_id, actor=_admin_name()
    )
    return redirect(url_for("admin_licenses.license_detail", license_id=lic.id, done="deactivate"))
