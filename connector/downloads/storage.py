"""Object storage behind a small Protocol: embedded local files or Cloudflare R2."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from connector.models import Store


class ObjectStore(Protocol):
    def exists(self, key: str) -> bool: ...


class LocalStore:
    """Embedded storage: objects under ``<instance>/files/<object_key>``."""

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


def store_for(store: Store) -> ObjectStore:
    from connector import get_settings

    return LocalStore(get_settings().storage_dir)


def missing_objects(store: Store, keys: list[str]) -> list[str]:
    backend = store_for(store)
    return [key for key in keys if not backend.exists(key)]
