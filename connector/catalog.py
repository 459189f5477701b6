"""The owner's catalog: which shop products Keygate licenses, with what policy and files."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.audit import record_audit
from connector.db import iso, read_mostly, utcnow
from connector.errors import ValidationFailed
from connector.licensing.files import OFFLINE_DAYS_MAX
from connector.models import WATERMARKS, Product, ProductFile, Store
from connector.models.catalog import WATERMARK_FALLBACKS
from connector.validation import (
    known_fields,
    optional_bool,
    optional_int,
    plain_text,
    required_str,
)

POLICY_FIELDS = (
    "activation_limit",
    "duration_days",
    "update_days",
    "staging_free",
    "download_limit",
    "download_days",
    "perpetual_fallback",
    "abuse_threshold",
    "abuse_suspend",
    "offline_days",
)
# The yes/no policy fields (the columns are booleans); the others are whole numbers.
BOOL_POLICY_FIELDS = ("staging_free", "perpetual_fallback", "abuse_suspend")
# The body of ``PUT /api/v1/admin/products/<id>`` (and of the admin page's form).
PRODUCT_FIELDS = ("name", "policy", "files", "watermark_fallback")
# What a product read answers besides: accepted back in a PUT (a product read, edited, sent
# back) and ignored (a PUT configures the product in Keygate, which ends a retirement).
READ_ONLY_PRODUCT_FIELDS = ("product_id", "retired_at", "warnings")
FILE_FIELDS = ("object_key", "filename", "watermark")
MAX_FILENAME_BYTES = 200
MAX_KEY_PART_BYTES = 255
DAYS_MAX = 100 * 366
MAX_FILES = 100


@dataclass(frozen=True)
class FileSpec:
    object_key: str
    filename: str
    watermark: str = "none"


@dataclass(frozen=True)
class ProductSpec:
    name: str
    policy: dict[str, Any]
    files: list[FileSpec] = field(default_factory=list)
    watermark_fallback: str = "refuse"


def _check_object_key(key: str, name: str = "object_key") -> str:
    parts = key.split("/")
    if key.startswith("/") or "\\" in key or any(part in {"..", "."} for part in parts):
        raise ValidationFailed(f"{name} must be a relative path without '..'", field=name)
    # A file system's limit for one name: embedded storage keeps each part as one.
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_KEY_PART_BYTES for part in parts):
        raise ValidationFailed(
            f"{name} has a part (between slashes) longer than {MAX_KEY_PART_BYTES} bytes",
            field=name,
        )
    return plain_text(key, name)


def _or_default(value: Any, default: str) -> Any:
    """``default`` for a field left out (null or ""); anything else as sent, for checking: a
    ``[]`` or ``{}`` is a mistake to report, not a request for the default."""
    return default if value is None or value == "" else value


def parse_file_spec(raw: Any, index: int) -> FileSpec:
    if not isinstance(raw, dict):
        raise ValidationFailed(f"files[{index}] must be an object", field=f"files[{index}]")
    key = raw.get("object_key")
    if not isinstance(key, str) or not key.strip() or len(key) > 1024:
        raise ValidationFailed(
            f"files[{index}].object_key is required text", field=f"files[{index}].object_key"
        )
    filename = _or_default(raw.get("filename"), key.rsplit("/", 1)[-1])
    # A leading dot ("." and ".." too) would make the name of the buyer's stamped copy, the
    # last part of its storage key, a folder of the key or a hidden file: a line's units
    # would share one copy (and its license key). That name, with the temporary name made
    # while it is written, must also fit a file system's 255 bytes.
    if (
        not isinstance(filename, str)
        or len(filename.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES
        or "/" in filename
        or filename.startswith(".")
    ):
        raise ValidationFailed(
            f"files[{index}].filename must be a plain file name of at most"
            f" {MAX_FILENAME_BYTES} bytes in UTF-8 (not starting with '.')",
            field=f"files[{index}].filename",
        )
    watermark = _or_default(raw.get("watermark"), "none")
    if not isinstance(watermark, str) or watermark not in WATERMARKS:
        raise ValidationFailed(
            f"files[{index}].watermark must be one of {', '.join(WATERMARKS)}",
            field=f"files[{index}].watermark",
        )
    return FileSpec(
        object_key=_check_object_key(key.strip(), f"files[{index}].object_key"),
        # It becomes a Content-Disposition header: a CR or LF there would split it.
        filename=plain_text(filename, f"files[{index}].filename"),
        watermark=watermark,
    )


def parse_watermark_fallback(data: dict[str, Any]) -> str:
    """What to serve when a buyer's watermarked copy cannot be made: refuse or the original."""
    value = _or_default(data.get("watermark_fallback"), "refuse")
    if not isinstance(value, str) or value not in WATERMARK_FALLBACKS:
        raise ValidationFailed(
            f"watermark_fallback must be one of {', '.join(WATERMARK_FALLBACKS)}",
            field="watermark_fallback",
        )
    return str(value)


def parse_product_spec(data: dict[str, Any]) -> ProductSpec:
    """A product's settings from the body of a product PUT (the JSON API's, or the admin
    page's form turned into the same shape).

    Only a field left out or ``null`` takes its default; an unknown field (in the body,
    ``policy`` or a file) or a wrong type is refused, so a typo never quietly removes a limit.

    Raises:
        ValidationFailed: (422) naming the first field that is wrong.
    """
    known_fields(data, PRODUCT_FIELDS + READ_ONLY_PRODUCT_FIELDS)
    raw_policy = {} if data.get("policy") is None else data["policy"]
    if not isinstance(raw_policy, dict):
        raise ValidationFailed("policy must be an object", field="policy")
    known_fields(raw_policy, POLICY_FIELDS, "policy")
    policy = {
        "activation_limit": optional_int(
            raw_policy, "activation_limit", minimum=0, maximum=100_000
        ),
        "duration_days": optional_int(raw_policy, "duration_days", minimum=1, maximum=DAYS_MAX),
        "update_days": optional_int(raw_policy, "update_days", minimum=0, maximum=DAYS_MAX),
        "staging_free": optional_bool(raw_policy, "staging_free"),
        "download_limit": optional_int(raw_policy, "download_limit", minimum=0, maximum=1_000_000),
        "download_days": optional_int(raw_policy, "download_days", minimum=1, maximum=DAYS_MAX),
        "perpetual_fallback": optional_bool(raw_policy, "perpetual_fallback"),
        "abuse_threshold": optional_int(raw_policy, "abuse_threshold", minimum=1, maximum=100_000),
        "abuse_suspend": optional_bool(raw_policy, "abuse_suspend"),
        "offline_days": optional_int(
            raw_policy, "offline_days", minimum=1, maximum=OFFLINE_DAYS_MAX
        ),
    }
    raw_files = [] if data.get("files") is None else data["files"]
    if not isinstance(raw_files, list) or len(raw_files) > MAX_FILES:
        raise ValidationFailed(f"files must be a list of at most {MAX_FILES} files", field="files")
    for i, raw in enumerate(raw_files):
        if isinstance(raw, dict):
            known_fields(raw, FILE_FIELDS, f"files[{i}]")
    files = [parse_file_spec(raw, i) for i, raw in enumerate(raw_files)]
    keys = [f.object_key for f in files]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            raise ValidationFailed(
                f"files[{i}].object_key is files[{keys.index(key)}]'s again: each file once",
                field=f"files[{i}].object_key",
            )
    return ProductSpec(
        name=required_str(data, "name"),
        policy=policy,
        files=files,
        watermark_fallback=parse_watermark_fallback(data),
    )


def find_product(session: Session, store: Store, shop_product_id: str) -> Product | None:
    """The store's product configured under the shop's id, if any."""
    return session.execute(
        select(Product).where(
            Product.store_id == store.id, Product.shop_product_id == shop_product_id
        )
    ).scalar_one_or_none()


def configure_product(
    session: Session, store: Store, shop_product_id: str, spec: ProductSpec, *, actor: str
) -> Product:
    """Create or replace a product's settings. Omitted policy fields become None (defaults).

    Files no longer listed stop getting new grants; grants already issued keep working.
    """
    from connector.downloads.storage import check_in_reach
    from connector.stores import hold_live_store

    hold_live_store(session, store)
    check_in_reach(store, [f.object_key for f in spec.files])
    product = find_product(session, store, shop_product_id)
    if product is None:
        product = Product(store_id=store.id, shop_product_id=shop_product_id, name=spec.name)
        session.add(product)
    product.name = spec.name
    product.source = "keygate" if actor != "shop" else "shop"
    product.retired_at = None
    product.watermark_fallback = spec.watermark_fallback
    for name in POLICY_FIELDS:
        setattr(product, name, spec.policy.get(name))
    by_key = {f.object_key: f for f in product.files}
    wanted = {f.object_key for f in spec.files}
    for position, file_spec in enumerate(spec.files):
        product_file = by_key.get(file_spec.object_key)
        if product_file is None:
            product_file = ProductFile(object_key=file_spec.object_key)
            product.files.append(product_file)
        product_file.filename = file_spec.filename
        product_file.watermark = file_spec.watermark
        product_file.position = position
        product_file.active = True
    for key, product_file in by_key.items():
        if key not in wanted:
            product_file.active = False
    session.flush()
    record_audit(
        session,
        store_id=store.id,
        actor=actor,
        action="product.configured",
        subject=f"product:{shop_product_id}",
        detail={"policy": {k: spec.policy.get(k) for k in POLICY_FIELDS}, "files": sorted(wanted)},
    )
    return product


def product_warnings(session: Session, store: Store, product: Product) -> list[str]:
    """Owner-facing warnings for the product's files not (yet) in storage; never an error.
    Commits, as :func:`products_warnings` does."""
    return products_warnings(session, store, [product])[product.id]


def products_warnings(
    session: Session, store: Store, products: list[Product]
) -> dict[int, list[str]]:
    """:func:`product_warnings` of several products of ``store``, by product id: each file
    is looked up once, and a storage that does not answer is waited for once.

    Commits (the caller's work first) and asks storage in a read-only unit: a slow bucket
    must hold no lock meanwhile (SQLite's one write lock, PostgreSQL's row locks).
    """
    from connector.downloads.storage import storage_warnings

    keys = {p.id: [f.object_key for f in p.files if f.active] for p in products}
    session.commit()
    return read_mostly(session, lambda: storage_warnings(store, keys))


def retire_product(session: Session, store: Store, product: Product, *, actor: str) -> Product:
    """Stop licensing new sales of the product (audited): its keys and links sold before
    keep working and paid renewals still extend them, as for a product whose shop meta is
    gone. Configured in Keygate from now on, so the shop's meta does not bring it back;
    saving its settings again (a PUT) licenses new sales again."""
    if product.retired_at is not None and product.source == "keygate":
        return product  # already stopped: nothing more to record
    product.retired_at = product.retired_at or utcnow()
    product.source = "keygate"
    session.flush()
    record_audit(
        session,
        store_id=store.id,
        actor=actor,
        action="product.retired",
        subject=f"product:{product.shop_product_id}",
    )
    return product


def product_json(product: Product) -> dict[str, Any]:
    return {
        "product_id": product.shop_product_id,
        "name": product.name,
        "policy": {name: getattr(product, name) for name in POLICY_FIELDS},
        "watermark_fallback": product.watermark_fallback,
        # Set when the shop's meta that configured it is gone: new sales no longer match.
        "retired_at": iso(product.retired_at),
        "files": [
            {"object_key": f.object_key, "filename": f.filename, "watermark": f.watermark}
            for f in product.files
            if f.active
        ],
    }
