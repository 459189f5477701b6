"""The owner's license endpoints (``/api/v1/admin``): licenses and product releases."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from connector.admin.auth import current_store, require_store_token
from connector.admin.paging import asked_before, link_next, one_page
from connector.catalog import find_product
from connector.db import db, read_mostly, utcnow
from connector.errors import NotFound
from connector.licensing.admin import (
    DAYS_MAX,
    LIST_LIMIT,
    LicenseRow,
    change_license,
    find_store_license,
    license_record,
    license_row_json,
    remove_activation_as_owner,
    search_licenses,
)
from connector.licensing.export import license_csv_response
from connector.licensing.releases import (
    create_release,
    parse_release_spec,
    product_releases,
    release_file_warnings,
    release_json,
    withdraw_release,
)
from connector.licensing.service import activation_json, iso
from connector.models import Product
from connector.validation import (
    json_body,
    required_int,
)

bp = Blueprint("licensing_admin_api", __name__, url_prefix="/api/v1/admin")


def _license_summary(lic: Any) -> dict[str, Any]:
    return {
        "key": lic.key_encrypted,
        "status": lic.status,
        "status_reason": lic.status_reason,
        "expires_at": iso(lic.expires_at),
        "updates_until": iso(lic.updates_until),
        "activation_limit": lic.activation_limit,
    }


@bp.get("/licenses")
@require_store_token
def get_licenses() -> ResponseReturnValue:
    """The store's licenses, newest first, ``LIST_LIMIT`` a page (``?before=`` pages on, as
    the ``Link`` header's ``rel="next"`` gives it), filtered by email, status and product."""
    args = request.args
    rows = search_licenses(
        db.session,
        current_store().id,
        email=args.get("email") or None,
        status=args.get("status") or None,
        product=args.get("product") or None,
        before=asked_before(),
        limit=LIST_LIMIT + 1,
    )
    shown, older = one_page(rows, LIST_LIMIT, lambda row: row.license.id)
    return link_next(jsonify({"licenses": [license_row_json(row) for row in shown]}), older)


@bp.get("/licenses.csv")
@require_store_token
def get_licenses_csv() -> ResponseReturnValue:
    """Every license of the store (filtered as ``/licenses``, without its 500 limit) as CSV."""
    args = request.args
    return license_csv_response(
        db.session,
        current_store().id,
        "licenses.csv",
        email=args.get("email") or None,
        status=args.get("status") or None,
        product=args.get("product") or None,
    )


@bp.get("/licenses/<key>")
@require_store_token
def get_license(key: str) -> ResponseReturnValue:
    """One license as the list answers it (product, order, seats taken, ...), with its
    activations (the owner sees where a key is used)."""
    lic = find_store_license(db.session, current_store(), key)
    record = license_record(db.session, lic)
    row = LicenseRow(
        license=lic,
        product=record.product,
        order=record.order,
        activations_used=record.activations_used,
        flagged=record.flag is not None,
        expired=lic.expires_at is not None and lic.expires_at <= utcnow(),
    )
    return jsonify(
        {
            "license": license_row_json(row),
            "activations": [activation_json(a) for a in record.activations],
        }
    )


@bp.delete("/licenses/<key>/activations/<int:activation_id>")
@require_store_token
def delete_activation(key: str, activation_id: int) -> ResponseReturnValue:
    remove_activation_as_owner(db.session, current_store(), key, activation_id, actor="api")
    return "", 204


@bp.post("/licenses/<key>/<action>")
@require_store_token
def post_license_action(key: str, action: str) -> ResponseReturnValue:
    days = None
    if action == "extend":
        days = required_int(json_body(), "days", minimum=1, maximum=DAYS_MAX)
    lic = change_license(db.session, current_store(), key, action, days=days, actor="api")
    return jsonify({"license": _license_summary(lic)})


def _product(shop_product_id: str) -> Product:
    product = find_product(db.session, current_store(), shop_product_id)
    if product is None:
        raise NotFound("No product with this id is configured.")
    return product


@bp.post("/products/<shop_product_id>/releases")
@require_store_token
def post_release(shop_product_id: str) -> ResponseReturnValue:
    spec = parse_release_spec(json_body())
    store = current_store()
    release = create_release(db.session, store, _product(shop_product_id), spec, actor="api")
    published = release_json(release)
    # Published all the same (the file may be uploaded next), but the owner hears of a file
    # update-check would offer and nobody could download. Committed first: a slow bucket
    # holds no lock meanwhile (SQLite's one write lock).
    db.session.commit()
    warnings = read_mostly(
        db.session, lambda: release_file_warnings(store, published["object_key"], published["size"])
    )
    return jsonify({"release": published, "warnings": warnings}), 201


@bp.delete("/products/<shop_product_id>/releases/<version>")
@require_store_token
def delete_release(shop_product_id: str, version: str) -> ResponseReturnValue:
    """Withdraw a release published by mistake (404: the product has no such version)."""
    release = withdraw_release(
        db.session, current_store(), _product(shop_product_id), version, actor="api"
    )
    return jsonify({"withdrawn": release_json(release)})


@bp.get("/products/<shop_product_id>/releases")
@require_store_token
def get_releases(shop_product_id: str) -> ResponseReturnValue:
    releases = product_releases(db.session, _product(shop_product_id))
    return jsonify({"releases": [release_json(r) for r in releases]})
