"""Object storage behind a small Protocol: embedded local files or Cloudflare R2.

``store_for(store)`` picks the backend of a store: its own R2 bucket when the vault holds its
credentials; else its part of the instance's shared storage (the instance-wide
``KEYGATE_R2_*`` bucket, or the embedded folder ``<instance>/files``). Both answer the same
questions, and a buyer's click becomes a :class:`Delivery`: a redirect (R2) or a local file
to stream.

Shared storage is shared by every store of the instance, so each store has areas there that
no other store can name: ``stores/<store id>/`` for the owner's own files, and
``watermarked/<store id>/`` where Keygate keeps its buyers' stamped copies (their names and
license keys are inside). Objects outside those two areas are the instance's common files.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

from connector.errors import ValidationFailed
from connector.integrations.r2 import R2Config, R2Store, StorageUnavailable, StoredObject
from connector.models import Store
from connector.redact import keygate_logger

log = keygate_logger(__name__)
K = TypeVar("K")


@dataclass(frozen=True)
class Delivery:
    """How to hand a file to a buyer: redirect to ``url``, or stream ``path`` ourselves."""

    filename: str
    url: str | None = None
    path: Path | None = None


class ObjectInfo(NamedTuple):
    """What the storage says of an object, as a download's answer would: its size in bytes
    and the media type it was stored with (None: none, or embedded storage, which has none)."""

    size: int
    media_type: str | None = None


class ObjectStore(Protocol):
    name: str

    def exists(self, key: str) -> bool: ...

    def version(self, key: str) -> str | None: ...

    def info(self, key: str) -> ObjectInfo | None: ...

    def upload(self, key: str, source: Path) -> None: ...

    def download(self, key: str, target: Path) -> None: ...

    def delivery(self, key: str, filename: str, ttl: int) -> Delivery: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> int: ...

    def list_objects(self, prefix: str) -> Iterator[StoredObject]: ...


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; a name the file system cannot hold (a part over 255
    bytes, stored before keys were checked for it) is no file, never an error."""
    try:
        return path.is_file()
    except OSError:
        return False


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
            return _is_file(self.path(key))
        except ValueError:
            return False

    def version(self, key: str) -> str | None:
        """Size and modification time: they change whenever the file is replaced."""
        try:
            status = self.path(key).stat()
        except (ValueError, OSError):
            return None
        return f"{status.st_size}:{status.st_mtime_ns}"

    def info(self, key: str) -> ObjectInfo | None:
        """The file's size (None when there is no such file)."""
        try:
            status = self.path(key).stat()
        except (ValueError, OSError):
            return None
        return ObjectInfo(status.st_size) if stat.S_ISREG(status.st_mode) else None

    def upload(self, key: str, source: Path) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
        try:
            shutil.copyfile(source, partial)
            partial.replace(target)  # readers never see half a file
        except BaseException:
            # Half a stamped copy (a buyer's name inside) that no row records would never
            # be deleted, by an erasure or the purge.
            partial.unlink(missing_ok=True)
            raise

    def download(self, key: str, target: Path) -> None:
        source = self.path(key)
        if not _is_file(source):
            raise FileNotFoundError(key)
        shutil.copyfile(source, target)

    def delivery(self, key: str, filename: str, ttl: int) -> Delivery:
        path = self.path(key)
        if not _is_file(path):
            raise FileNotFoundError(key)
        return Delivery(filename=filename, path=path)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def _folder(self, prefix: str) -> Path:
        """The folder ``prefix`` names: a plain folder inside the storage, ending with ``/``,
        that is no link elsewhere."""
        parts = prefix.split("/")
        if parts[-1] != "" or any(part in ("", ".", "..") for part in parts[:-1]):
            raise ValueError("a prefix of embedded storage is a plain folder, ending with /")
        if (self.root / prefix).is_symlink():
            raise ValueError("a folder that is a link elsewhere is neither emptied nor listed")
        return self.path(prefix.rstrip("/"))

    def delete_prefix(self, prefix: str) -> int:
        """Remove the folder ``prefix`` names (it must end with ``/``) and everything in it;
        returns how many files."""
        folder = self._folder(prefix)
        if not folder.is_dir():
            return 0
        count = sum(1 for item in folder.rglob("*") if item.is_file())
        shutil.rmtree(folder)
        return count

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        """The files in the folder ``prefix`` names (it must end with ``/``), sub-folders
        included, with their modification times; links are neither followed nor listed.
        Half-written uploads (``.<name>.<id>.partial``, left by a process that was killed)
        are files like any other."""
        folder = self._folder(prefix)
        root = self.root.resolve()
        for parent, _folders, names in os.walk(folder):
            for name in names:
                path = Path(parent, name)
                try:
                    status = path.lstat()
                except OSError:
                    continue  # gone since the folder was read
                if stat.S_ISREG(status.st_mode):
                    modified = dt.datetime.fromtimestamp(status.st_mtime, dt.UTC)
                    yield StoredObject(path.relative_to(root).as_posix(), modified)


# How long a bucket's "the object is there, with this ETag" is believed without asking again.
SEEN_SECONDS = 30.0
_SEEN_MAX_ENTRIES = 10_000


class _SeenObjects:
    """Objects recently found in a bucket, with their ETags, for :data:`SEEN_SECONDS`.

    Presigning never contacts the bucket, so a click asks it first (HEAD) whether the object
    is there; remembering the positive answers briefly keeps that off most clicks. Missing
    objects and errors are never remembered: an upload is seen on the very next click. An
    object deleted or replaced behind Keygate's back is noticed within the window.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str, str], tuple[str, float]] = {}

    def get(self, where: tuple[str, str, str]) -> str | None:
        entry = self._entries.get(where)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def remember(self, where: tuple[str, str, str], etag: str) -> None:
        with self._lock:
            if len(self._entries) >= _SEEN_MAX_ENTRIES:
                self._entries.clear()  # rare; the next clicks just ask the bucket again
            self._entries[where] = (etag, time.monotonic() + SEEN_SECONDS)

    def forget(self, where: tuple[str, str, str]) -> None:
        with self._lock:
            self._entries.pop(where, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


SEEN_OBJECTS = _SeenObjects()


class R2ObjectStore(R2Store):
    """R2 as an :class:`ObjectStore`: deliveries are fresh presigned URLs, for objects the
    bucket has just confirmed (a missing object or a bucket that is down is not delivered,
    so it is never counted)."""

    def _where(self, key: str) -> tuple[str, str, str]:
        return (self.config.endpoint, self.config.bucket, key)

    def version(self, key: str) -> str | None:
        """The object's ETag (remembered briefly), None when the bucket says it is missing.

        Raises:
            StorageUnavailable: the bucket did not answer.
        """
        where = self._where(key)
        known = SEEN_OBJECTS.get(where)
        if known is not None:
            return known
        etag = self.etag(key)
        if etag is not None:
            SEEN_OBJECTS.remember(where, etag)
        return etag

    def info(self, key: str) -> ObjectInfo | None:
        """The object's size and stored media type from the bucket (asked each time: a
        download's answer must give the size of the object as it is now), None when missing.

        Raises:
            StorageUnavailable: the bucket did not answer.
        """
        answer = self.head(key)
        if answer is None:
            SEEN_OBJECTS.forget(self._where(key))
            return None
        SEEN_OBJECTS.remember(self._where(key), str(answer.get("ETag") or ""))
        return ObjectInfo(int(answer.get("ContentLength") or 0), answer.get("ContentType") or None)

    def delivery(self, key: str, filename: str, ttl: int) -> Delivery:
        if self.version(key) is None:
            raise FileNotFoundError(key)
        return Delivery(filename=filename, url=self.presigned_url(key, filename, ttl))

    def upload(self, key: str, source: Path) -> None:
        super().upload(key, source)
        SEEN_OBJECTS.forget(self._where(key))  # a new ETag: ask the bucket next time

    def delete(self, key: str) -> None:
        super().delete(key)
        SEEN_OBJECTS.forget(self._where(key))


STORES = {"local": LocalStore, "r2": R2ObjectStore}

STORE_AREA = "stores"
COPIES_AREA = "watermarked"


def own_area(store_id: int) -> str:
    """The folder of shared storage that only store ``store_id`` can name."""
    return f"{STORE_AREA}/{store_id}/"


def store_areas(store_id: int) -> tuple[str, str]:
    """Both folders of shared storage that belong to store ``store_id``: its own files and
    its buyers' stamped copies."""
    return own_area(store_id), f"{COPIES_AREA}/{store_id}/"


def in_another_stores_area(store_id: int, key: str) -> bool:
    """Does ``key`` lie in another store's area of shared storage (``stores/<id>/``, or
    the stamped copies under ``watermarked/<id>/``)? Any other spelling of those folders
    (an empty or non-numeric id) counts as another store's."""
    area, _, rest = key.partition("/")
    # Any case of the folder names: an embedded folder on a case-insensitive file system
    # (macOS, Windows) reads Stores/ as stores/.
    return area.casefold() in (STORE_AREA, COPIES_AREA) and rest.partition("/")[0] != str(store_id)


class SharedArea:
    """What one store may reach of shared storage: everything but other stores' areas.

    To the store, an object in another store's area does not exist (reads and deliveries
    raise ``FileNotFoundError``, ``exists`` is False), so neither its content nor whether it
    is there can be learned; writing or deleting one is a programming error.
    """

    def __init__(self, backend: ObjectStore, store_id: int) -> None:
        self.backend = backend
        self.store_id = store_id
        self.name = backend.name

    def _readable(self, key: str) -> str:
        if in_another_stores_area(self.store_id, key):
            raise FileNotFoundError(key)
        return key

    def _writable(self, key: str) -> str:
        if in_another_stores_area(self.store_id, key):
            raise ValueError(f"store {self.store_id} may not write {key!r}")
        return key

    def exists(self, key: str) -> bool:
        return not in_another_stores_area(self.store_id, key) and self.backend.exists(key)

    def version(self, key: str) -> str | None:
        if in_another_stores_area(self.store_id, key):
            return None
        return self.backend.version(key)

    def info(self, key: str) -> ObjectInfo | None:
        if in_another_stores_area(self.store_id, key):
            return None
        return self.backend.info(key)

    def upload(self, key: str, source: Path) -> None:
        self.backend.upload(self._writable(key), source)

    def download(self, key: str, target: Path) -> None:
        self.backend.download(self._readable(key), target)

    def delivery(self, key: str, filename: str, ttl: int) -> Delivery:
        return self.backend.delivery(self._readable(key), filename, ttl)

    def delete(self, key: str) -> None:
        self.backend.delete(self._writable(key))

    def delete_prefix(self, prefix: str) -> int:
        """Empty one of the store's two areas: nothing else of shared storage is the
        store's to delete wholesale."""
        if prefix not in store_areas(self.store_id):
            raise ValueError(f"store {self.store_id} may not delete the folder {prefix!r}")
        return self.backend.delete_prefix(prefix)

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        """List in one of the store's two areas only."""
        if not any(prefix.startswith(area) for area in store_areas(self.store_id)):
            raise ValueError(f"store {self.store_id} may not list {prefix!r}")
        return self.backend.list_objects(prefix)


_LOOK_UP: Any = object()


def _own_credentials(store: Store | int, stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """The store's own R2 credentials from the encrypted vault (kind "r2"), or None.
    ``stored``: that set when the caller already read it in its own query (None: the store
    has none); then the store's id is enough."""
    from connector.db import db
    from connector.vault.service import credentials_for

    if stored is not _LOOK_UP:
        return stored
    if isinstance(store, int):
        raise ValueError("a store, or its stored credentials, is needed")
    return credentials_for(db.session, store, "r2")


def store_r2_config(stored: dict[str, Any]) -> R2Config:
    """A store's own R2 credentials as an :class:`R2Config`: its endpoint_url must be
    public unless the instance allows private endpoints (KEYGATE_ALLOW_PRIVATE_ENDPOINTS)."""
    from connector import get_settings

    return R2Config(
        account_id=stored["account_id"],
        access_key_id=stored["access_key_id"],
        secret_access_key=stored["secret_access_key"],
        bucket=stored["bucket"],
        endpoint_url=stored.get("endpoint_url") or None,
        private_ok=get_settings().allow_private_endpoints,
    )


def instance_r2_config() -> R2Config | None:
    """The instance-wide bucket (``KEYGATE_R2_*``) shared by stores without their own."""
    from connector import get_settings

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
        private_ok=True,  # the operator's own setting, not a store's
    )


def store_for(store: Store | int, stored: dict[str, Any] | None = _LOOK_UP) -> ObjectStore:
    """The object store that holds ``store``'s files: its own bucket when the vault holds
    its R2 credentials (``stored``: see ``_own_credentials``), else its :class:`SharedArea`
    of the shared storage (the instance-wide bucket, or the embedded folder)."""
    own = _own_credentials(store, stored)
    if own is not None:
        return R2ObjectStore(store_r2_config(own))
    return shared_area(store if isinstance(store, int) else store.id)


def own_bucket(store: Store) -> R2ObjectStore | None:
    """The store's own R2 bucket, when the vault holds its credentials."""
    own = _own_credentials(store, _LOOK_UP)
    return R2ObjectStore(store_r2_config(own)) if own is not None else None


def shared_area(store_id: int) -> SharedArea:
    """Store ``store_id``'s part of the shared storage (the instance-wide bucket, or the
    embedded folder), whether or not it has a bucket of its own now."""
    from connector import get_settings

    shared = instance_r2_config()
    backend: ObjectStore = (
        R2ObjectStore(shared) if shared is not None else LocalStore(get_settings().storage_dir)
    )
    return SharedArea(backend, store_id)


class StorageInUse(NamedTuple):
    """Which storage holds a store's files, for its owner (never a credential)."""

    description: str
    # In an area of storage other stores share (no bucket of its own): its object keys
    # must start with its area, :func:`own_area`.
    shared: bool


def storage_in_use(store: Store) -> StorageInUse:
    own = _own_credentials(store, _LOOK_UP)
    if own is not None:
        return StorageInUse(f"its own R2 bucket {own.get('bucket')}", shared=False)
    instance = instance_r2_config()
    if instance is not None:
        return StorageInUse(f"the instance's R2 bucket {instance.bucket} (KEYGATE_R2_*)", True)
    return StorageInUse("the embedded folder on this server", shared=True)


def check_in_reach(store: Store, keys: list[str]) -> None:
    """Refuse (422) object keys in another store's area of the storage ``store`` uses."""
    if _own_credentials(store, _LOOK_UP) is not None:
        return  # the store's own bucket: every key in it is its own
    for key in keys:
        if in_another_stores_area(store.id, key):
            raise ValidationFailed(
                f"object_key {key!r} is in another store's area of the shared storage; "
                f"this store's own area is {own_area(store.id)}",
                field="object_key",
            )


def missing_objects(store: Store, keys: list[str]) -> list[str]:
    backend = store_for(store)
    return [key for key in keys if not backend.exists(key)]


# A storage that did not answer: the owner's settings are saved anyway, unchecked.
UNCHECKED = "the file storage did not answer; files were not checked"


def storage_warnings(store: Store, keys: Mapping[K, list[str]]) -> dict[K, list[str]]:
    """Owner-facing warnings about files not (yet) in storage, never an error: for each list
    of object keys of ``store`` (a product's files), by the same owner key.

    Each object is looked up once, and a storage that does not answer is asked only once
    (each list with keys then gets :data:`UNCHECKED`).
    """
    try:
        missing = set(missing_objects(store, sorted({key for ks in keys.values() for key in ks})))
    except StorageUnavailable:
        log.warning("could not check files of store %s: storage unavailable", store.id)
        return {owner: [UNCHECKED] if ks else [] for owner, ks in keys.items()}
    return {
        owner: [f"{key}: not found in storage yet" for key in ks if key in missing]
        for owner, ks in keys.items()
    }
