"""Product settings from the shop admin: read ``_keygate_*`` product meta over REST.

Documented meta keys (on a product or a variation), each the policy field or ``files`` of
a product PUT (``PUT /api/v1/admin/products/<id>``):

- ``_keygate_activation_limit``, ``_keygate_duration_days``, ``_keygate_update_days``,
  ``_keygate_download_limit``, ``_keygate_download_days``, ``_keygate_abuse_threshold``,
  ``_keygate_offline_days``: whole numbers;
- ``_keygate_staging_free``, ``_keygate_perpetual_fallback``, ``_keygate_abuse_suspend``:
  yes/no;
- ``_keygate_files``: JSON list of ``{object_key, filename?, watermark?}`` (or of plain
  object keys), each object key once.

Another ``_keygate_*`` key with a value makes the meta invalid, as an unknown field makes
a PUT: a typo never quietly removes a limit. The body the keys make is checked by the PUT's
own rules (its ranges, at most ``MAX_FILES`` files, no unknown field in a file): what a sync
stores, a PUT of its read takes back.

A product with any of these keys set (not empty) is licensed; a key left empty ("", as
WooCommerce keeps a cleared field) is not set: on a product it takes the default, on a
variation it follows the parent. A variation with meta of its own is licensed with its
parent's meta overridden by the values it sets, one without follows its parent. Settings
made in Keygate (admin API/UI) win: products whose settings came from Keygate are left as
they are. A product configured from meta whose meta is gone from a complete listing
(cleared, removed, or the product deleted) is retired: new sales no longer match it, what
it licensed keeps working. Paid orders that named a product before a sync configured it
are read again and licensed. Job ``shop.sync_products`` runs it periodically per
connected store.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from connector.audit import record_audit
from connector.catalog import (
    BOOL_POLICY_FIELDS,
    POLICY_FIELDS,
    ProductSpec,
    configure_product,
    find_product,
    parse_product_spec,
    product_json,
)
from connector.db import db, utcnow
from connector.errors import ValidationFailed
from connector.jobs import RetryLater, handles
from connector.models import LineItem, Order, Product, Store
from connector.orders.reconcile import refresh_order, schedule_next
from connector.redact import keygate_logger
from connector.stores import hold_live_store
from connector.vault.connection import connection_of
from plugin.shop import PAID_STATUSES, PayloadError
from plugin.woocommerce.rest import ShopError, ShopRejected, ShopUnavailable, WooCommerceClient
from plugin.woocommerce.webhooks import clean_text, parse_id

log = keygate_logger(__name__)

META_PREFIX = "_keygate_"
SYNC_JOB = "shop.sync_products"
_BOOL_FIELDS = BOOL_POLICY_FIELDS
_INT_FIELDS = tuple(f for f in POLICY_FIELDS if f not in _BOOL_FIELDS)
# A product's meta keys: each is the product PUT's policy field, or ``files``, of its name.
# Keygate's other ``_keygate_*`` meta is a line's (``_keygate_renew_license``) or an
# order's (``_keygate_payment_note``, ``_keygate_transaction_hash``), never a product's.
META_KEYS = frozenset(META_PREFIX + f for f in (*POLICY_FIELDS, "files"))
# Products a sync asks the shop about, one by one, before retiring them (the rest next sync).
RECHECK_LIMIT = 50
NO_SUCH_PRODUCT = "woocommerce_rest_product_invalid_id"
# Order re-reads the shop could not answer in a row before it is taken to be down.
DOWN_IN_A_ROW = 3
# Sales read again when a sync configures their product: recorded this recently, this many
# per sync at most.
REREAD_WINDOW = dt.timedelta(days=30)
REREAD_LIMIT = 200
# Product types whose variations are sold (WooCommerce's, and WooCommerce Subscriptions').
VARIABLE_TYPES = frozenset({"variable", "variable-subscription"})


class MetaError(ValueError):
    """A ``_keygate_*`` meta value cannot be read."""


@dataclass
class SyncResult:
    configured: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept_keygate: list[str] = field(default_factory=list)
    invalid: dict[str, str] = field(default_factory=dict)
    # Products configured from meta whose meta is gone: new sales no longer match them.
    retired: list[str] = field(default_factory=list)
    # Paid orders read again because a line named a product configured since (shop ids).
    reapplied: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ListedProduct:
    """A product or variation as the shop lists it, with the meta that configures it."""

    shop_id: str
    name: str
    meta: dict[str, Any]


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


def _is_set(value: Any) -> bool:
    """A meta value that says something: WooCommerce keeps a field cleared in the shop
    admin as ""."""
    return value is not None and value != ""


def _sets_anything(meta: dict[str, Any]) -> bool:
    """Some ``_keygate_*`` key has a value: a product whose fields were all cleared in the
    shop admin is not configured by its meta."""
    return any(_is_set(value) for value in meta.values())


def _int(name: str, value: Any) -> int | None:
    """A whole number as meta holds it (text, or a number the shop decoded); its range is
    the API's, checked with the rest."""
    if not _is_set(value):
        return None
    try:
        return int(str(value).strip())
    except ValueError:  # not a number (or more digits than ``int`` reads)
        raise MetaError(f"{META_PREFIX}{name} must be a whole number") from None


def _bool(name: str, value: Any) -> bool | None:
    if not _is_set(value):
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"yes", "1", "true", "on"}:
        return True
    if text in {"no", "0", "false", "off"}:
        return False
    raise MetaError(f"{META_PREFIX}{name} must be yes or no")


def _files(value: Any) -> list[Any]:
    """``_keygate_files`` as the API's ``files``: a JSON list (text, or a list the shop
    decoded), where a plain object key stands for ``{"object_key": key}``."""
    if not _is_set(value):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise MetaError(f"{META_PREFIX}files must be a JSON list") from None
    if not isinstance(value, list):
        raise MetaError(f"{META_PREFIX}files must be a JSON list")
    return [{"object_key": f} if isinstance(f, str) else f for f in value]


def _meta_problem(exc: ValidationFailed) -> str:
    """The API's message about the body made from meta, naming the meta key where it names
    the body's field (``files[2].watermark must be ...``: ``_keygate_files[2]...``). Like
    every 422 message of the API it names the field, never its value."""
    name = exc.extra.get("field")
    if isinstance(name, str) and name and name in exc.detail:
        return exc.detail.replace(name, META_PREFIX + name, 1)
    return f"{META_PREFIX}* meta: {exc.detail}"


def spec_from_meta(name: str, meta: dict[str, Any]) -> ProductSpec:
    """A product's Keygate settings from its ``_keygate_*`` meta, by the admin API's rules.

    The meta's text is read into the body of a product PUT (whole numbers, yes/no, the
    files) and that body is checked by :func:`~connector.catalog.parse_product_spec`, as
    a PUT's is: the same ranges, at most :data:`~connector.catalog.MAX_FILES` files, each
    object key once, no unknown field in a file. What a sync stores is then what a PUT
    would take: a synced product's read can be sent back, and its admin page saved.

    A ``_keygate_*`` key that is none of :data:`META_KEYS` and holds a value is refused,
    as the API refuses an unknown field: a misspelt ``_keygate_activation_limt`` would
    otherwise license the product with no seat limit. (One left empty sets nothing.)

    Raises:
        MetaError: an unknown key holds a value, or a value cannot be read or the API's
            rules refuse it (the product is then left unchanged); the message names the
            meta key, never its value.
    """
    unknown = sorted(key for key, value in meta.items() if key not in META_KEYS and _is_set(value))
    if unknown:
        raise MetaError(f"unknown meta key {unknown[0]}")
    body = {
        "name": (name.strip() or "Product")[:300],
        "policy": {
            **{f: _int(f, meta.get(META_PREFIX + f)) for f in _INT_FIELDS},
            **{f: _bool(f, meta.get(META_PREFIX + f)) for f in _BOOL_FIELDS},
        },
        "files": _files(meta.get(META_PREFIX + "files")),
    }
    try:
        return parse_product_spec(body)
    except ValidationFailed as exc:
        raise MetaError(_meta_problem(exc)) from None


def _same(product: Product, spec: ProductSpec) -> bool:
    current = product_json(product)
    wanted_files = [
        {"object_key": f.object_key, "filename": f.filename, "watermark": f.watermark}
        for f in spec.files
    ]
    return (
        product.retired_at is None
        and current["name"] == spec.name
        and current["policy"] == {k: spec.policy.get(k) for k in POLICY_FIELDS}
        and current["files"] == wanted_files
    )


def _apply(session: Session, store: Store, listed: ListedProduct) -> tuple[str, str | None]:
    """Configure one product from its meta: (what happened, the problem when invalid)."""
    try:
        spec = spec_from_meta(listed.name, listed.meta)
    except MetaError as exc:
        return "invalid", str(exc)
    product = find_product(session, store, listed.shop_id)
    if product is not None and product.source == "keygate":
        return "kept_keygate", None
    if product is not None and _same(product, spec):
        return "unchanged", None
    try:
        configure_product(session, store, listed.shop_id, spec, actor="shop")
    except ValidationFailed as exc:  # a file in another store's area of shared storage
        return "invalid", exc.detail
    return "configured", None


def _shop_id(raw: dict[str, Any]) -> str | None:
    try:
        return parse_id(raw.get("id"))
    except PayloadError:
        return None


def _has_variations(raw: dict[str, Any]) -> bool:
    variations = raw.get("variations")
    return raw.get("type") in VARIABLE_TYPES or (isinstance(variations, list) and bool(variations))


def read_shop_products(client: WooCommerceClient) -> tuple[list[ListedProduct], int]:
    """Every product and variation that carries ``_keygate_*`` meta, read to the end, and
    how many products the shop listed (with meta or not).

    A variation is listed when it has meta of its own, with its parent's meta overridden by
    the values it sets: one it leaves empty ("", a field cleared in the shop admin) follows
    the parent's, as a variation without meta follows its parent (a line matches the parent
    product). On a product itself, "" is the default.

    Raises:
        ShopError: the shop could not be read (nothing is listed, nothing is applied).
    """
    listed: list[ListedProduct] = []
    products = client.list_products()
    for raw in products:
        shop_id = _shop_id(raw)
        if shop_id is None:
            continue  # not a product Keygate could ever be asked about
        name = clean_text(raw.get("name")) or ""
        meta = _meta(raw)
        if _sets_anything(meta):
            listed.append(ListedProduct(shop_id, name, meta))
        if not _has_variations(raw):
            continue
        for variation in client.list_variations(shop_id):
            variation_id = _shop_id(variation)
            # Only what the variation sets overrides its parent: an empty field is not set.
            own = {key: value for key, value in _meta(variation).items() if _is_set(value)}
            if variation_id is not None and own:
                listed.append(
                    ListedProduct(variation_id, f"{name} ({variation_id})", {**meta, **own})
                )
    return listed, len(products)


def retirement_candidates(session: Session, store: Store, listed: list[ListedProduct]) -> list[str]:
    """Products configured from meta, not retired, that the listing does not show with meta."""
    shown = {item.shop_id for item in listed}
    return [
        shop_id
        for shop_id in session.scalars(
            select(Product.shop_product_id)
            .where(
                Product.store_id == store.id,
                Product.source == "shop",
                Product.retired_at.is_(None),
            )
            .order_by(Product.id)
        )
        if shop_id not in shown
    ]


def confirm_meta_gone(client: WooCommerceClient, store: Store, candidates: list[str]) -> set[str]:
    """The candidates the shop confirms, one by one, to be without meta: no such product
    (WooCommerce's own ``woocommerce_rest_product_invalid_id``), trashed, or read with no
    ``_keygate_*`` value. A listing can miss a product that still has its meta (pages
    shifted by a product trashed while it was read, an empty page from a caching or security
    plugin): only the product's own answer retires it. At most :data:`RECHECK_LIMIT` per
    sync (the others wait for the next one); a shop down stops the checks.
    """
    gone: set[str] = set()
    for shop_id in candidates[:RECHECK_LIMIT]:
        try:
            raw = client.get_product(shop_id)
        except ShopRejected as exc:
            if exc.code == NO_SUCH_PRODUCT:
                gone.add(shop_id)
            else:
                log.warning("store %s: product %s not checked: %s", store.public_id, shop_id, exc)
            continue
        except ShopUnavailable as exc:
            log.warning("store %s: product checks stopped: %s", store.public_id, exc)
            break
        if raw.get("status") == "trash" or not _sets_anything(_meta(raw)):
            gone.add(shop_id)
    return gone


def apply_listing(
    session: Session, store: Store, listed: list[ListedProduct], gone: set[str]
) -> SyncResult:
    """Apply a complete listing of the shop's products (flushes; the caller commits).

    Each product is applied in a savepoint: one the database refuses is reported as invalid
    and the others are applied. Products configured from meta that the listing no longer
    shows with meta and that the shop confirmed without meta (``gone``, see
    :func:`confirm_meta_gone`) are retired; meta problems are recorded for the owner (audit
    ``product.meta_invalid``, once per problem, and the connection's ``products_invalid``).

    Raises:
        StoreDeleted: the store was deleted while the shop was read.
    """
    hold_live_store(session, store)
    result = SyncResult()
    for item in listed:
        try:
            with session.begin_nested():
                outcome, problem = _apply(session, store, item)
        except (IntegrityError, DataError) as exc:
            outcome, problem = "invalid", f"the settings could not be stored ({type(exc).__name__})"
        if problem is not None:
            result.invalid[item.shop_id] = problem
        else:
            getattr(result, outcome).append(item.shop_id)
    _retire_unlisted(session, store, {item.shop_id for item in listed}, gone, result)
    connection = connection_of(session, store)
    _record_invalid(session, store, connection.products_invalid or {}, result.invalid)
    connection.products_invalid = dict(result.invalid) or None
    connection.products_synced_at = utcnow()
    session.flush()
    return result


def _retire_unlisted(
    session: Session, store: Store, listed: set[str], gone: set[str], result: SyncResult
) -> None:
    now = utcnow()
    for product in session.scalars(
        select(Product).where(
            Product.store_id == store.id,
            Product.source == "shop",
            Product.retired_at.is_(None),
        )
    ):
        if product.shop_product_id in listed or product.shop_product_id not in gone:
            continue
        product.retired_at = now
        result.retired.append(product.shop_product_id)
        record_audit(
            session,
            store_id=store.id,
            actor="shop",
            action="product.retired",
            subject=f"product:{product.shop_product_id}",
            detail={"reason": "no _keygate_* meta in the shop any more"},
        )


def _record_invalid(
    session: Session, store: Store, before: dict[str, str], invalid: dict[str, str]
) -> None:
    """An audit entry per product and problem, not again while the problem stays the same.
    The problem names the meta key, never its value."""
    for shop_id, problem in invalid.items():
        log.warning("store %s: product %s meta ignored: %s", store.public_id, shop_id, problem)
        if before.get(shop_id) == problem:
            continue
        record_audit(
            session,
            store_id=store.id,
            actor="shop",
            action="product.meta_invalid",
            subject=f"product:{shop_id}",
            detail={"problem": problem},
        )


def unlicensed_paid_orders(session: Session, store: Store) -> list[str]:
    """Paid orders with a line that matched no product when applied and names (variation or
    product) one configured from meta now: sold before a sync configured it.

    Bounded, newest first: only sales Keygate recorded in the last :data:`REREAD_WINDOW`
    (meta added to a product sold for years licenses no old sales in one job; an order the
    shop always refuses is asked about for that long at most), at most
    :data:`REREAD_LIMIT` per sync (the others next sync).
    """
    configured = select(Product.shop_product_id).where(
        Product.store_id == store.id, Product.source == "shop", Product.retired_at.is_(None)
    )
    unmatched_line = (
        select(LineItem.id)
        .where(
            LineItem.order_id == Order.id,
            LineItem.product_id.is_(None),
            LineItem.quantity > 0,
            or_(
                LineItem.shop_variation_id.in_(configured),
                LineItem.shop_product_id.in_(configured),
            ),
        )
        .exists()
    )
    return list(
        session.scalars(
            select(Order.shop_order_id)
            .where(
                Order.store_id == store.id,
                Order.status.in_(PAID_STATUSES),
                Order.deleted.is_(False),
                Order.erased_at.is_(None),
                Order.created_at >= utcnow() - REREAD_WINDOW,
                unmatched_line,
            )
            .order_by(Order.id.desc())
            .limit(REREAD_LIMIT)
        )
    )


def reapply_unlicensed_orders(
    session: Session, store: Store, client: WooCommerceClient
) -> list[str]:
    """Read each of :func:`unlicensed_paid_orders` from the shop and apply it, one short
    transaction per order (committed). A read, not the stored copy: it carries what a
    delivery carries (refunds with their lines, renewal meta) and the order as it is now.

    One order the shop cannot read or answers unreadably is logged and skipped (the next
    sync asks again); after :data:`DOWN_IN_A_ROW` orders in a row the shop could not answer,
    it is taken to be down and the others wait for the next sync.
    """
    shop_order_ids = unlicensed_paid_orders(session, store)
    session.commit()
    reapplied: list[str] = []
    down = 0
    for shop_order_id in shop_order_ids:
        try:
            outcome = refresh_order(session, store, client, shop_order_id)
        except (ShopUnavailable, ShopRejected, PayloadError) as exc:
            session.rollback()
            # The message names the request or the field, never a value of the order.
            log.warning("store %s: order %s not read: %s", store.public_id, shop_order_id, exc)
            down = down + 1 if isinstance(exc, ShopUnavailable) else 0
            if down >= DOWN_IN_A_ROW:
                log.warning("store %s: shop down, re-reads left to the next sync", store.public_id)
                break
            continue
        down = 0
        session.commit()
        if outcome == "applied":
            reapplied.append(shop_order_id)
    return reapplied


def sync_products(session: Session, store: Store, client: WooCommerceClient) -> SyncResult:
    """Configure every shop product (and variation) that carries ``_keygate_*`` meta.

    Commits (the caller's work first): the shop is read to the end outside any transaction
    (on SQLite a transaction holds the database's write lock, and every webhook would wait
    on the shop), then the listing is applied in one short transaction, so a shop that fails
    half-way changes nothing. A product the listing no longer shows with meta is asked for
    by id first and retired only when the shop confirms its meta gone
    (:func:`confirm_meta_gone`); an empty listing retires nothing. Then paid orders that
    named a product before it was configured are read again and licensed
    (:func:`reapply_unlicensed_orders`).

    Raises:
        ShopError: the shop could not be read.
    """
    session.commit()
    listed, shop_products = read_shop_products(client)
    gone: set[str] = set()
    if shop_products:  # an empty listing (a caching or security plugin's []) retires nothing
        candidates = retirement_candidates(session, store, listed)
        session.commit()
        gone = confirm_meta_gone(client, store, candidates)
    result = apply_listing(session, store, listed, gone)
    session.commit()
    result.reapplied = reapply_unlicensed_orders(session, store, client)
    return result


@handles(SYNC_JOB)
def sync_products_job(payload: dict[str, Any]) -> None:
    """Sync product meta for one store; a periodic run schedules the next, also when the
    shop is down or refuses (a key revoked in WooCommerce, a redirect): retrying a refusal
    only ends in a dead job, and reconciliation tells the owner why the shop refuses."""
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
    except ShopError as exc:
        session.rollback()
        if not payload.get("periodic"):
            raise RetryLater(str(exc)) from None
        log.warning("store %s: product sync failed: %s", store.public_id, exc)
    if payload.get("periodic"):
        schedule_next(session, store, SYNC_JOB, get_settings().product_sync_interval_seconds)
