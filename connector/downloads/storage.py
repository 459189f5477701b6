"""Object storage behind a small Protocol: embedded local files or Cloudflare R2.

``store_for(store)`` picks the backend of a store: R2 when ``r2_config_for(store)`` finds
credentials, else the embedded folder ``<instance>/files``. Both answer the same questions,
and a buyer's click becomes a :class:`Delivery`: a redirect (R2) or a local file to stream.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from connector.integrations.r2 import R2Config, R2Store, StorageUnavailable
from connector.models import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """How to hand a file to a buyer: redirect to ``url``, or stream ``path`` ourselves."""

    filename: str
    url: str | None = None
    path: Path | None = None


class ObjectStore(Protocol):
    name: str

    def exists(self, key: str) -> bool: ...

    def upload(self, key: str, source: Path) -> None: ...

    def download(self, key: str, target: Path) -> None: ...

    def delivery(self, key: str, filename: str, ttl: int) -> Delivery: ...

    def delete(self, key: str) -> None: ...


class LocalStore:
    """Embedded storage: objects under ``<instance>/files/<object_key>``."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        candidate = (self.root / key).resolve()
        if self.root.resolve() not in candidate.parents:
            raise ValueError("object key escapes the storage folder")
        return candidate

    def exists(self, key: str) -> bool:
        try:
            return self.path(key).is_file()
        except ValueError:
            return False

    def upload(self, key: str, source: Path) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        shutil.copyfile(source, partial)
        partial.replace(target)  # readers never see half a file

    def download(self, key: str, target: Path) -> None:
        source = self.path(key)
        if not source.is_file():
            raise FileNotFoundError(key)
        shutil.copyfile(source, target)

    def delivery(self, key: str, filename: str, ttl: int) -> Delivery:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        return Delivery(filename=filename, path=path)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


class R2ObjectStore(R2Store):
    """R2 as an :class:`ObjectStore`: deliveries are fresh presigned URLs."""

    def delivery(self, key: str, filename: str, ttl: int) -> Delivery:
        return Delivery(filename=filename, url=self.presigned_url(key, filename, ttl))


STORES = {"local": LocalStore, "r2": R2ObjectStore}


_LOOK_UP: Any = object()


def r2_config_for(store: Store | None, stored: dict[str, Any] | None = _LOOK_UP) -> R2Config | None:
    """The R2 credentials of ``store``, or None for embedded storage.

    The store's own credentials from the encrypted vault (kind "r2") win; the instance-wide
    ``KEYGATE_R2_*`` settings serve stores that have none. ``stored``: the vault's "r2"
    set when the caller already read it in its own query (None: the store has none); then
    ``store`` itself is not needed.
    """
    from connector import get_settings
    from connector.db import db
    from connector.vault.service import credentials_for

    if stored is _LOOK_UP:
        if store is None:
            raise ValueError("a store, or its stored credentials, is needed")
        stored = credentials_for(db.session, store, "r2")
    if stored is not None:
        return R2Config(
            account_id=stored["account_id"],
            access_key_id=stored["access_key_id"],
            secret_access_key=stored["secret_access_key"],
            bucket=stored["bucket"],
            endpoint_url=stored.get("endpoint_url") or None,
        )
    settings = get_settings()
    if not (settings.r2_bucket and settings.r2_access_key_id and settings.r2_secret_access_key):
        return None
    if not (settings.r2_account_id or settings.r2_endpoint_url):
        return None
    return R2Config(
        account_id=settings.r2_account_id,
        access_key_id=settings.r2_access_key_id,
        secret_access_key=settings.r2_secret_access_key,
        bucket=settings.r2_bucket,
        endpoint_url=settings.r2_endpoint_url or None,
    )


def store_for(store: Store | None, stored: dict[str, Any] | None = _LOOK_UP) -> ObjectStore:
    """The object store that holds ``store``'s files (``stored``: see ``r2_config_for``)."""
    from connector import get_settings

    config = r2_config_for(store, stored)
    if config is not None:
        return R2ObjectStore(config)
    return LocalStore(get_settings().storage_dir)


def missing_objects(store: Store, keys: list[str]) -> list[str]:
    backend = store_for(store)
    return [key for key in keys if not backend.exists(key)]


def storage_warnings(store: Store, keys: list[str]) -> list[str]:
    """Owner-facing warnings about files not (yet) in storage; never an error.

    A store that does not answer is a warning too: the owner's settings are saved anyway.
    """
    try:
        return [f"{key}: not found in storage yet" for key in missing_objects(store, keys)]
    except StorageUnavailable:
        log.warning("could not check files of store %s: storage unavailable", store.id)
        return ["the file storage did not answer; files were not checked"]
