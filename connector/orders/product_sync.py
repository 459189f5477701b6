"""Product settings from the shop admin: read ``_keygate_*`` product meta over REST.

Documented meta keys (on a product or a variation):

- ``_keygate_activation_limit``, ``_keygate_duration_days``, ``_keygate_update_days``,
  ``_keygate_download_limit``, ``_keygate_download_days``: whole numbers ("" = default);
- ``_keygate_staging_free``: yes/no;
- ``_keygate_files``: JSON list of ``{object_key, filename?, watermark?}`` (or of plain
  object keys).

A product with any of these keys is licensed. Settings made in Keygate (admin API/UI) win:
products whose settings came from Keygate are left as they are. Job ``shop.sync_products``
runs it periodically per connected store.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from connector.catalog import (
    POLICY_FIELDS,
    ProductSpec,
    configure_product,
    find_product,
    parse_file_spec,
    product_json,
)
from connector.db import db, utcnow
from connector.errors import ValidationFailed
from connector.jobs import RetryLater, handles
from connector.models import Product, Store
from connector.orders.reconcile import schedule_next
from connector.vault.connection import connection_of
from plugin.shop import PayloadError
from plugin.woocommerce.rest import ShopUnavailable, WooCommerceClient
from plugin.woocommerce.webhooks import clean_text, parse_id

log = logging.getLogger(__name__)

META_PREFIX = "_keygate_"
SYNC_JOB = "shop.sync_products"
_INT_FIELDS = {f for f in POLICY_FIELDS if f != "staging_free"}
_MINIMUM = {"activation_limit": 0, "update_days": 0, "download_limit": 0}


class MetaError(ValueError):
    """A ``_keygate_*`` meta value cannot be read."""


@dataclass
class SyncResult:
    configured: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept_keygate: list[str] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)


def _meta(raw: dict[str, Any]) -> dict[str, Any]:
    items = raw.get("meta_data")
    if not isinstance(items, list):
        return {}
    return {
        item["key"]: item.get("value")
        for item in items
        if isinstance(item, dict)
        and isinstance(item.get("key"), str)
        and item["key"].startswith(META_PREFIX)
    }


def _int(name: str, value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise MetaError(f"{META_PREFIX}{name} must be a whole number") from None
    if number < _MINIMUM.get(name, 1) or number > 10**6:
        raise MetaError(f"{META_PREFIX}{name} is out of range")
    return number


def _bool(value: Any) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"yes", "1", "true", "on"}:
        return True
    if text in {"no", "0", "false", "off"}:
        return False
    raise MetaError(f"{META_PREFIX}staging_free must be yes or no")


def spec_from_meta(name: str, meta: dict[str, Any]) -> ProductSpec:
    """A product's Keygate settings from its ``_keygate_*`` meta.

    Raises:
        MetaError: a value cannot be read (the product is then left unchanged).
    """
    policy: dict[str, Any] = {f: _int(f, meta.get(META_PREFIX + f)) for f in _INT_FIELDS}
    policy["staging_free"] = _bool(meta.get(META_PREFIX + "staging_free"))
    raw_files = meta.get(META_PREFIX + "files") or []
    if isinstance(raw_files, str):
        try:
            raw_files = json.loads(raw_files)
        except (ValueError, RecursionError):
            raise MetaError(f"{META_PREFIX}files must be a JSON list") from None
    if not isinstance(raw_files, list):
        raise MetaError(f"{META_PREFIX}files must be a JSON list")
    try:
        files = [
            parse_file_spec({"object_key": f} if isinstance(f, str) else f, i)
            for i, f in enumerate(raw_files)
        ]
    except ValidationFailed as exc:
        raise MetaError(f"{META_PREFIX}files: {exc.detail}") from None
    return ProductSpec(name=(name or "Product")[:300], policy=policy, files=files)


def _same(product: Product, spec: ProductSpec) -> bool:
    current = product_json(product)
    wanted_files = [
        {"object_key": f.object_key, "filename": f.filename, "watermark": f.watermark}
        for f in spec.files
    ]
    return (
        current["name"] == spec.name
        and current["policy"] == {k: spec.policy.get(k) for k in POLICY_FIELDS}
        and current["files"] == wanted_files
    )


def _apply(
    session: Session,
    store: Store,
    shop_id: str,
    name: str,
    meta: dict[str, Any],
    result: SyncResult,
) -> None:
    try:
        spec = spec_from_meta(name, meta)
    except MetaError as exc:
        result.invalid[shop_id] = str(exc)
        return
    product = find_product(session, store, shop_id)
    if product is not None and product.source == "keygate":
        result.kept_keygate.append(shop_id)
        return
    if product is not None and _same(product, spec):
        result.unchanged.append(shop_id)
        return
    try:
        configure_product(session, store, shop_id, spec, actor="shop")
    except ValidationFailed as exc:  # a file in another store's area of shared storage
        result.invalid[shop_id] = exc.detail
        return
    result.configured.append(shop_id)


def _shop_id(raw: dict[str, Any]) -> str | None:
    try:
        return parse_id(raw.get("id"))
    except PayloadError:
        return None


def sync_products(session: Session, store: Store, client: WooCommerceClient) -> SyncResult:
    """Configure every shop product (and variation) that carries ``_keygate_*`` meta."""
    result = SyncResult()
    for raw in client.list_products():
        shop_id = _shop_id(raw)
        if shop_id is None:
            continue  # not a product Keygate could ever be asked about
        name = clean_text(raw.get("name")) or ""
        meta = _meta(raw)
        if meta:
            _apply(session, store, shop_id, name, meta, result)
        if raw.get("type") == "variable":
            for variation in client.list_variations(shop_id):
                variation_id = _shop_id(variation)
                variation_meta = _meta(variation)
                if variation_id is not None and variation_meta:
                    variation_name = f"{name} ({variation_id})"
                    _apply(
                        session,
                        store,
                        variation_id,
                        variation_name,
                        {**meta, **variation_meta},
                        result,
                    )
    connection_of(session, store).products_synced_at = utcnow()
    session.flush()
    for shop_id, problem in result.invalid.items():
        log.warning("store %s: product %s meta ignored: %s", store.public_id, shop_id, problem)
    return result


@handles(SYNC_JOB)
def sync_products_job(payload: dict[str, Any]) -> None:
    """Sync product meta for one store; a periodic run schedules the next."""
    from connector import get_settings
    from connector.orders.reconcile import store_and_client

    session = db.session
    found = store_and_client(session, payload)
    if found is None:
        return
    store, client = found
    if client is None:
        return
    try:
        sync_products(session, store, client)
    except ShopUnavailable as exc:
        if not payload.get("periodic"):
            raise RetryLater(str(exc)) from None
        log.warning("store %s: product sync failed: %s", store.public_id, exc)
    if payload.get("periodic"):
        schedule_next(session, store, SYNC_JOB, get_settings().product_sync_interval_seconds)
