"""The owner's license endpoints (``/api/v1/admin``): licenses and product releases."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from connector.admin.auth import current_store, require_store_token
from connector.catalog import find_product
from connector.db import db
from connector.errors import NotFound, ValidationFailed
from connector.licensing.admin import (
    DAYS_MAX,
    change_license,
    find_store_license,
    license_activations,
    list_licenses,
    remove_activation_as_owner,
)
from connector.licensing.releases import (
    SHA256,
    VERSION,
    ReleaseSpec,
    create_release,
    release_json,
)
from connector.licensing.service import activation_json, iso
from connector.models import Product, Release
from connector.validation import (
    json_body,
    known_fields,
    optional_int,
    optional_str,
    required_str,
)
from plugin.shop import parse_utc_datetime

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
    args = request.args
    licenses = list_licenses(
        db.session,
        current_store(),
        email=args.get("email") or None,
        status=args.get("status") or None,
        product=args.get("product") or None,
    )
    return jsonify({"licenses": licenses})


@bp.get("/licenses/<key>")
@require_store_token
def get_license(key: str) -> ResponseReturnValue:
    """One license with its activations (the owner sees where a key is used)."""
    lic = find_store_license(db.session, current_store(), key)
    return jsonify(
        {
            "license": _license_summary(lic),
            "activations": [activation_json(a) for a in license_activations(db.session, lic)],
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
        days = optional_int(json_body(), "days", minimum=1, maximum=DAYS_MAX)
        if days is None:
            raise ValidationFailed("days is required", field="days")
    lic = change_license(db.session, current_store(), key, action, days=days, actor="api")
    return jsonify({"license": _license_summary(lic)})


def _product(shop_product_id: str) -> Product:
    product = find_product(db.session, current_store(), shop_product_id)
    if product is None:
        raise NotFound("No product with this id is configured.")
    return product


RELEASE_FIELDS = ("version", "object_key", "sha256", "size", "published_at", "changelog")


def _release_spec(data: dict[str, Any]) -> ReleaseSpec:
    known_fields(data, RELEASE_FIELDS)
    version = required_str(data, "version", max_length=64)
    if not VERSION.match(version):
        raise ValidationFailed("version has characters other than 0-9 A-Z . + - _", field="version")
    sha256 = required_str(data, "sha256", max_length=64).lower()
    if not SHA256.match(sha256):
        raise ValidationFailed("sha256 must be 64 hex characters", field="sha256")
    size = optional_int(data, "size", minimum=0, maximum=2**62)
    if size is None:
        raise ValidationFailed("size is required (bytes)", field="size")
    raw_published = optional_str(data, "published_at", max_length=40)
    published = dt.datetime.now(dt.UTC)
    if raw_published:
        try:
            published = parse_utc_datetime(raw_published)
        except ValueError as exc:
            raise ValidationFailed(f"published_at {exc}", field="published_at") from None
    return ReleaseSpec(
        version=version,
        object_key=required_str(data, "object_key", max_length=1024),
        sha256=sha256,
        size=size,
        published_at=published,
        changelog=optional_str(data, "changelog", max_length=100_000),
    )


@bp.post("/products/<shop_product_id>/releases")
@require_store_token
def post_release(shop_product_id: str) -> ResponseReturnValue:
    spec = _release_spec(json_body())
    release = create_release(
        db.session, current_store(), _product(shop_product_id), spec, actor="api"
    )
    return jsonify({"release": release_json(release)}), 201


@bp.get("/products/<shop_product_id>/releases")
@require_store_token
def get_releases(shop_product_id: str) -> ResponseReturnValue:
    product = _product(shop_product_id)
    releases = db.session.scalars(
        select(Release).where(Release.product_id == product.id).order_by(Release.published_at)
    )
    return jsonify({"releases": [release_json(r) for r in releases]})
