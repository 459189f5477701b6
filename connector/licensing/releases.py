"""Releases of a product, and short-lived download URLs for them."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.audit import record_audit
from connector.catalog import _check_object_key
from connector.db import insert_ignoring_conflicts, iso, utcnow
from connector.errors import Conflict, NotFound, ValidationFailed
from connector.licensing.versions import comparable_version
from connector.models import Product, Release, Store
from connector.tokens import release_token
from connector.validation import known_fields, optional_int, optional_str, required_str
from plugin.shop import parse_utc_datetime

SHA256 = re.compile(r"[0-9a-f]{64}")
VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+\-_]{0,63}")


@dataclass(frozen=True)
class ReleaseSpec:
    version: str
    object_key: str
    sha256: str
    size: int
    published_at: dt.datetime
    changelog: str | None


RELEASE_FIELDS = ("version", "object_key", "sha256", "size", "published_at", "changelog")


def parse_release_spec(data: dict[str, Any]) -> ReleaseSpec:
    """A release from the body of a release POST (the JSON API's, or the admin page's form
    turned into the same shape); ``published_at`` left out is now.

    Raises:
        ValidationFailed: (422) naming the first field that is wrong or unknown.
    """
    known_fields(data, RELEASE_FIELDS)
    version = required_str(data, "version", max_length=64)
    if not VERSION.fullmatch(version):
        raise ValidationFailed("version has characters other than 0-9 A-Z . + - _", field="version")
    comparable_version(version)
    sha256 = required_str(data, "sha256", max_length=64).lower()
    if not SHA256.fullmatch(sha256):
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


def product_releases(session: Session, product: Product) -> list[Release]:
    """The product's releases, oldest first (by ``published_at``)."""
    return list(
        session.scalars(
            select(Release).where(Release.product_id == product.id).order_by(Release.published_at)
        )
    )


def create_release(
    session: Session, store: Store, product: Product, spec: ReleaseSpec, *, actor: str
) -> Release:
    """Publish a release. A version is published once; a second POST of it is 409."""
    from connector.downloads.storage import check_in_reach
    from connector.stores import hold_live_store

    hold_live_store(session, store)
    check_in_reach(store, [spec.object_key])
    object_key = _check_object_key(spec.object_key)
    # Inserted unless the version is there, committed or still being written by another
    # publish of it (a pipeline's retry): that one is waited for, and this one is the 409.
    inserted = insert_ignoring_conflicts(
        session,
        Release.__table__,
        {
            "product_id": product.id,
            "version": spec.version,
            "object_key": object_key,
            "sha256": spec.sha256,
            "size": spec.size,
            "published_at": spec.published_at,
            "changelog": spec.changelog,
            "created_at": utcnow(),
        },
        ["product_id", "version"],
    )
    if inserted is None:
        raise Conflict(
            f"version {spec.version} is already published for this product: to publish it"
            " again (another file, hash or date), withdraw the published one first"
        )
    release = session.get(Release, inserted)
    assert release is not None  # noqa: S101 - inserted just now
    record_audit(
        session,
        store_id=store.id,
        actor=actor,
        action="release.published",
        subject=f"product:{product.shop_product_id}",
        detail={"version": spec.version, "object_key": spec.object_key},
    )
    return release


def withdraw_release(
    session: Session, store: Store, product: Product, version: str, *, actor: str
) -> Release:
    """Take back a published release (a wrong file, hash, date or version number): update-check
    no longer offers it, nor counts it for ``UPDATES_EXPIRED`` or the perpetual fallback. The
    file in storage is left as it is. The audit log keeps what it was.

    Raises:
        NotFound: the product has no release of exactly this version.
    """
    from connector.stores import hold_live_store

    hold_live_store(session, store)
    # Locked: a withdrawal of it under way elsewhere (a retry, a second tab) is waited for,
    # and then it is gone here too (404), not deleted twice.
    release = session.execute(
        select(Release)
        .where(Release.product_id == product.id, Release.version == version)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()
    if release is None:
        raise NotFound(f"No release {version} is published for this product.")
    record_audit(
        session,
        store_id=store.id,
        actor=actor,
        action="release.withdrawn",
        subject=f"product:{product.shop_product_id}",
        detail={
            "version": release.version,
            "object_key": release.object_key,
            "sha256": release.sha256,
            "published_at": iso(release.published_at),
        },
    )
    session.delete(release)
    session.flush()
    return release


def release_file_warnings(store: Store, object_key: str, size: int) -> list[str]:
    """Owner-facing warnings about a release's file, never an error: not (yet) in storage,
    or not the size the release says. Products check the size and SHA-256 update-check
    signs (the client library refuses any other file), so a size typed wrong means every
    buyer's update is refused; the hash is not checked here (the whole file would be read).
    """
    from connector.downloads.storage import UNCHECKED, StorageUnavailable, store_for

    try:
        found = store_for(store).info(object_key)
    except StorageUnavailable:
        return [UNCHECKED]
    if found is None:
        return [f"{object_key}: not found in storage yet"]
    if found.size != size:
        return [
            f"{object_key}: the file in storage has {found.size} bytes, the release says"
            f" {size}: products refuse a download of another size (withdraw the release and"
            " publish it with the file's size and SHA-256)"
        ]
    return []


def release_json(release: Release) -> dict[str, Any]:
    return {
        "version": release.version,
        "object_key": release.object_key,
        "sha256": release.sha256,
        "size": release.size,
        "published_at": iso(release.published_at),
        "changelog": release.changelog,
    }


def release_download_url(store: Store, release: Release, ttl: int) -> str:
    """A URL that fetches the release for ``ttl`` seconds.

    A storage backend that presigns (R2) answers with its own URL; embedded storage gets a
    timed, signed Keygate link (``/api/v1/releases/download/<token>``).
    """
    from connector import get_settings
    from connector.downloads.storage import StorageUnavailable, store_for

    filename = release.object_key.rsplit("/", 1)[-1]
    backend = store_for(store)
    if backend.name != "local":
        try:
            url = backend.delivery(release.object_key, filename, ttl).url
        except (FileNotFoundError, StorageUnavailable):
            url = None  # Keygate's own link then says why when it is fetched (404 / 503)
        if url is not None:
            return url
    token = release_token(release.id)
    return f"{get_settings().base_url}/api/v1/releases/download/{token}"
