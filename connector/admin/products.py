"""The owner's product pages (/admin/products): what Keygate licenses, with what policy,
files and releases, and the forms that configure them.

The forms are turned into the JSON API's bodies and saved by the API's own verbs
(:func:`connector.catalog.parse_product_spec` and :func:`~connector.catalog.configure_product`
for ``PUT /api/v1/admin/products/<id>``, :func:`connector.licensing.releases.parse_release_spec`
and :func:`~connector.licensing.releases.create_release` for ``POST .../releases``): the same
rules, the same 422 messages, the same audit entries (as ``admin:<username>``). Saving a
product configures it in Keygate, as a PUT does: from then on the shop's ``_keygate_*`` meta
no longer changes it, and a retired product is licensed again.

Admins of one store see and change that store's products only (anything else is 404).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from sqlalchemy import select
from sqlalchemy.orm import selectinload
from werkzeug.datastructures import MultiDict

from connector.catalog import (
    BOOL_POLICY_FIELDS,
    POLICY_FIELDS,
    configure_product,
    find_product,
    parse_product_spec,
    product_json,
    product_warnings,
    products_warnings,
    retire_product,
)
from connector.db import db, read_mostly
from connector.errors import Conflict, KeygateError, NotFound, ValidationFailed
from connector.licensing.releases import (
    RELEASE_FIELDS,
    VERSION,
    create_release,
    parse_release_spec,
    product_releases,
    release_file_warnings,
    withdraw_release,
)
from connector.models import WATERMARKS, Product, Store
from connector.models.catalog import WATERMARK_FALLBACKS
from connector.validation import is_shop_id, row_id

from .forms import ConfirmedForm, ConfirmForm
from .views import (
    PAGE,
    _admin_name,
    _newest_first,
    _scope,
    _scoped,
    _visible_store,
    _visible_stores,
    login_required,
    stale_form,
)

bp = Blueprint("admin_products", __name__, url_prefix="/admin")
bp.register_error_handler(CSRFError, stale_form)  # see connector.admin.views

# Labels and help of the policy fields, in the contract's order (POLICY_FIELDS).
POLICY_LABELS: dict[str, tuple[str, str]] = {
    "activation_limit": ("Activation limit", "seats per license; empty: unlimited"),
    "duration_days": ("Duration (days)", "empty: lifetime"),
    "update_days": ("Updates (days)", "empty: while the license lasts"),
    "staging_free": ("Staging sites free", "staging sites take no seat; default yes"),
    "download_limit": ("Download limit", "downloads per file link; empty: unlimited"),
    "download_days": ("Download days", "how long links work; empty: while the license lasts"),
    "perpetual_fallback": (
        "Perpetual fallback",
        "an expired license keeps validating for versions released before it expired; default no",
    ),
    "abuse_threshold": (
        "Abuse threshold",
        "activations + deactivations in 30 days past which the license is flagged; empty: off",
    ),
    "abuse_suspend": ("Suspend on abuse", "past the threshold, also suspend it; default no"),
    "offline_days": (
        "Offline file days",
        "longest an offline license file lasts (1-365); empty: as checkout asks, up to 365",
    ),
}
BOOL_DEFAULTS = {"staging_free": "yes", "perpetual_fallback": "no", "abuse_suspend": "no"}
# File rows read from a form (more non-blank ones than the API takes are its own 422).
FILE_ROWS_MAX = 200
BLANK_ROWS = 3
MORE_ROWS = 5
# A refusal's field naming a file row (the rows shown again are numbered as ``files`` is).
FILE_FIELD = re.compile(r"files\[(?P<index>[0-9]+)\](?:\.(?P<part>[a-z_]+))?")
SIGNED_NUMBER = re.compile(r"-?[0-9]{1,18}")
NOT_A_SHOP_ID = (
    "The product id is the shop's id of the product or variation: letters and digits, at most 64."
)


@dataclass
class FileRow:
    """One row of the form's file list, as text."""

    object_key: str = ""
    filename: str = ""
    watermark: str = "none"

    @property
    def blank(self) -> bool:
        """A row with neither object key nor file name is ignored (a spare row)."""
        return not self.object_key and not self.filename


@dataclass
class ProductForm:
    """The product form's values as text, as shown and as sent back."""

    values: dict[str, str]
    files: list[FileRow] = field(default_factory=list)
    blank_rows: int = BLANK_ROWS

    @classmethod
    def of(cls, product: Product | None) -> ProductForm:
        """The form showing ``product`` as configured (what the API's GET answers), or an
        empty one for a new product."""
        if product is None:
            return cls(values={"name": "", "watermark_fallback": "refuse"})
        configured = product_json(product)
        values = {
            "name": configured["name"],
            "watermark_fallback": configured["watermark_fallback"],
        }
        for name, value in configured["policy"].items():
            values[name] = _text(value)
        files = [
            FileRow(f["object_key"], f["filename"], f["watermark"]) for f in configured["files"]
        ]
        return cls(values=values, files=files)

    @classmethod
    def sent(cls, form: MultiDict[str, str]) -> ProductForm:
        """The form as the browser sent it: text trimmed, blank and removed file rows left
        out (the rows shown again are numbered as the API numbers ``files``)."""
        names = ("name", "watermark_fallback", *POLICY_FIELDS)
        values = {name: (form.get(name) or "").strip() for name in names}
        files: list[FileRow] = []
        spare = 0
        for i in range(FILE_ROWS_MAX):
            prefix = f"files-{i}-"
            if prefix + "object_key" not in form and prefix + "filename" not in form:
                continue
            row = FileRow(
                object_key=(form.get(prefix + "object_key") or "").strip(),
                filename=(form.get(prefix + "filename") or "").strip(),
                watermark=(form.get(prefix + "watermark") or "").strip(),
            )
            if row.blank or form.get(prefix + "remove"):
                spare += 1
            else:
                files.append(row)
        return cls(values=values, files=files, blank_rows=max(spare, 1))

    def rows(self) -> list[FileRow]:
        """The rows to show: the files, then spare blank ones (as many as a form is read)."""
        spare = max(0, min(self.blank_rows, FILE_ROWS_MAX - len(self.files)))
        return [*self.files, *(FileRow() for _ in range(spare))]

    def body(self) -> dict[str, Any]:
        """The form as the JSON body of ``PUT /api/v1/admin/products/<id>``: empty fields are
        null (their defaults); text that is not a number or yes/no is passed on as it is,
        for the API's own 422 naming the field."""
        policy = {
            name: (_yes_no if name in BOOL_POLICY_FIELDS else _number)(self.values.get(name, ""))
            for name in POLICY_FIELDS
        }
        return {
            "name": self.values.get("name", ""),
            "policy": policy,
            "watermark_fallback": self.values.get("watermark_fallback") or None,
            "files": [
                {
                    "object_key": row.object_key,
                    "filename": row.filename or None,
                    "watermark": row.watermark or None,
                }
                for row in self.files
            ],
        }


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _number(text: str) -> Any:
    if not text:
        return None
    return int(text) if SIGNED_NUMBER.fullmatch(text) else text


def _yes_no(text: str) -> Any:
    return {"": None, "yes": True, "no": False}.get(text, text)


def _product_or_404(store_id: int, shop_product_id: str) -> tuple[Store, Product]:
    store = _visible_store(store_id)
    product = (
        find_product(db.session, store, shop_product_id) if is_shop_id(shop_product_id) else None
    )
    if product is None:
        abort(404)
    return store, product


@bp.get("/products")
@login_required
def products() -> ResponseReturnValue:
    """The configured products, newest first, paged; every visible store's, or one store's
    (``?store=<id>``), with their files' storage warnings."""
    stores = _visible_stores()
    query = _scoped(select(Product), Product.store_id).options(selectinload(Product.files))
    store_filter = request.args.get("store") or ""
    if store_filter:
        query = query.where(Product.store_id == _visible_store(row_id(store_filter)).id)
    rows, older = _newest_first(query, Product.id, PAGE)
    by_id = {store.id: store for store in stores}
    warnings: dict[int, list[str]] = {}
    for store_id in {p.store_id for p in rows}:
        warnings |= products_warnings(
            db.session, by_id[store_id], [p for p in rows if p.store_id == store_id]
        )
    return render_template(
        "admin/products.html",
        products=rows,
        stores=by_id,
        store_filter=store_filter,
        every_store=_scope() is None,
        warnings=warnings,
        older=older,
        form=ConfirmForm(),
    )


def _render_product(
    store: Store | None,
    product: Product | None,
    product_form: ProductForm,
    *,
    error: str | None = None,
    release_error: str | None = None,
    release_values: dict[str, str] | None = None,
    refused: KeygateError | None = None,
    status: int = 200,
) -> ResponseReturnValue:
    """The product's page (or the new product's); ``refused``: the refusal of its form
    (``error``) or of the release form (``release_error``), whose field gets marked."""
    withdrawn = request.args.get("withdrawn")
    releases = product_releases(db.session, product) if product else []
    released = next((r for r in releases if r.version == request.args.get("released")), None)
    # Just published from this page: the owner hears of a file nobody could download, as
    # the API's answer says it.
    release_warnings = (
        _release_warnings(store, released.object_key, released.size)
        if store is not None and released is not None
        else []
    )
    # The API's field names ("policy.activation_limit") end with the form's ("activation_limit");
    # a file's ("files[2].filename", "files[2]" for the whole row) name its row too.
    named = str((refused.extra.get("field") if refused else None) or "")
    row = FILE_FIELD.fullmatch(named)
    field = (row["part"] or "object_key") if row else named.rsplit(".", 1)[-1]
    return render_template(
        "admin/product.html",
        store=store,
        stores=_visible_stores(),
        product=product,
        product_form=product_form,
        warnings=product_warnings(db.session, store, product) if store and product else [],
        releases=releases,
        release_warnings=release_warnings,
        # Said only of a version-like value: a link sent to the owner can't put words here.
        withdrawn=withdrawn if withdrawn and VERSION.fullmatch(withdrawn) else None,
        release_values=release_values or {},
        error=error,
        release_error=release_error,
        refused_field=field if error else None,
        refused_row=int(row["index"]) if row and error else None,
        release_field=field if release_error else None,
        may_add_stores=_scope() is None,
        policy_fields=POLICY_FIELDS,
        policy_labels=POLICY_LABELS,
        bool_fields=BOOL_POLICY_FIELDS,
        bool_defaults=BOOL_DEFAULTS,
        watermarks=WATERMARKS,
        watermark_fallbacks=WATERMARK_FALLBACKS,
        form=ConfirmForm(),
    ), status


def _release_warnings(store: Store, object_key: str, size: int) -> list[str]:
    """:func:`release_file_warnings`, asked with no transaction open (a slow bucket holds
    no lock)."""
    db.session.commit()
    return read_mostly(db.session, lambda: release_file_warnings(store, object_key, size))


@bp.route("/products/new", methods=["GET", "POST"])
@login_required
def new_product() -> ResponseReturnValue:
    """Configure a product Keygate does not license yet (its shop id and store given here);
    one already configured is edited on its own page instead (409)."""
    if request.method != "POST":  # GET, and HEAD as GET
        product_form = ProductForm.of(None)
        product_form.values["store"] = request.args.get("store") or ""
        return _render_product(None, None, product_form)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    product_form = ProductForm.sent(request.form)
    shop_product_id = (request.form.get("shop_product_id") or "").strip()
    product_form.values["shop_product_id"] = shop_product_id
    product_form.values["store"] = request.form.get("store") or ""
    store = _visible_store(row_id(product_form.values["store"]))
    if request.form.get("action") == "more":
        product_form.blank_rows += MORE_ROWS
        return _render_product(None, None, product_form)
    if not is_shop_id(shop_product_id):
        refused = ValidationFailed(NOT_A_SHOP_ID, field="shop_product_id")
        return _render_product(
            None, None, product_form, error=refused.detail, refused=refused, status=422
        )
    if find_product(db.session, store, shop_product_id) is not None:
        error = (
            f"Product {shop_product_id} is already configured in {store.name}: edit it on its page."
        )
        return _render_product(None, None, product_form, error=error, status=Conflict.status)
    return _save(store, shop_product_id, product_form, None)


@bp.route("/products/<int:store_id>/<shop_product_id>", methods=["GET", "POST"])
@login_required
def product(store_id: int, shop_product_id: str) -> ResponseReturnValue:
    """A product's settings (the form saves them as a PUT of the API would), its storage
    warnings and its releases."""
    store, found = _product_or_404(store_id, shop_product_id)
    if request.method != "POST":  # GET, and HEAD as GET
        return _render_product(store, found, ProductForm.of(found))
    if not ConfirmForm().validate_on_submit():
        abort(400)
    product_form = ProductForm.sent(request.form)
    if request.form.get("action") == "more":
        product_form.blank_rows += MORE_ROWS
        return _render_product(store, found, product_form)
    return _save(store, found.shop_product_id, product_form, found)


def _save(
    store: Store, shop_product_id: str, product_form: ProductForm, existing: Product | None
) -> ResponseReturnValue:
    """Configure the product through the API's parsing and verb; its answer (a 422 naming
    the field) shows the form again as sent."""
    try:
        spec = parse_product_spec(product_form.body())
        configure_product(db.session, store, shop_product_id, spec, actor=_admin_name())
    except KeygateError as exc:
        db.session.rollback()
        return _render_product(
            store if existing else None,
            existing,
            product_form,
            error=exc.detail,
            refused=exc,
            status=exc.status,
        )
    return redirect(
        url_for(
            "admin_products.product",
            store_id=store.id,
            shop_product_id=shop_product_id,
            saved=1,
        )
    )


@bp.post("/products/<int:store_id>/<shop_product_id>/retire")
@login_required
def retire(store_id: int, shop_product_id: str) -> ResponseReturnValue:
    """Stop licensing new sales of the product (``DELETE /api/v1/admin/products/<id>``)."""
    if not ConfirmedForm().validate_on_submit():
        abort(400)
    store, found = _product_or_404(store_id, shop_product_id)
    retire_product(db.session, store, found, actor=_admin_name())
    return redirect(
        url_for("admin_products.product", store_id=store.id, shop_product_id=shop_product_id)
    )


@bp.post("/products/<int:store_id>/<shop_product_id>/releases")
@login_required
def add_release(store_id: int, shop_product_id: str) -> ResponseReturnValue:
    """Publish a release for update-check, as ``POST .../releases`` of the API does."""
    store, found = _product_or_404(store_id, shop_product_id)
    if not ConfirmForm().validate_on_submit():
        abort(400)
    values = {name: (request.form.get(name) or "").strip() for name in RELEASE_FIELDS}
    body: dict[str, Any] = {
        "version": values["version"],
        "object_key": values["object_key"],
        "sha256": values["sha256"],
        "size": _number(values["size"]),
        "published_at": values["published_at"] or None,
        "changelog": values["changelog"] or None,
    }
    try:
        release = create_release(
            db.session, store, found, parse_release_spec(body), actor=_admin_name()
        )
    except KeygateError as exc:
        db.session.rollback()
        return _render_product(
            store,
            found,
            ProductForm.of(found),
            release_error=exc.detail,
            release_values=values,
            refused=exc,
            status=exc.status,
        )
    return redirect(
        url_for(
            "admin_products.product",
            store_id=store.id,
            shop_product_id=found.shop_product_id,
            released=release.version,
        )
    )


@bp.post("/products/<int:store_id>/<shop_product_id>/releases/<version>/withdraw")
@login_required
def withdraw(store_id: int, shop_product_id: str, version: str) -> ResponseReturnValue:
    """Take back a release published by mistake (``DELETE .../releases/<version>``)."""
    store, found = _product_or_404(store_id, shop_product_id)
    if not ConfirmedForm().validate_on_submit():
        abort(400)
    try:
        withdraw_release(db.session, store, found, version, actor=_admin_name())
    except NotFound:  # withdrawn meanwhile (a second click, another tab)
        db.session.rollback()
    return redirect(
        url_for(
            "admin_products.product",
            store_id=store.id,
            shop_product_id=found.shop_product_id,
            withdrawn=version,
        )
    )
