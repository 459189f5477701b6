"""Encryption at rest and keyed hashes.

Secrets and license-key copies are Fernet tokens made with a ``MultiFernet`` of the master
keys (newest first): new writes use the newest key, every listed key still decrypts, and
``keygate rotate-keys`` re-encrypts old tokens with :meth:`Keyring.rotate`.

Lookups (license keys, API tokens, IP addresses) use HMAC-SHA256 with a key derived from the
app's secret key and a purpose label, so a hash made for one purpose is useless for another.
What a store's owner sees about a buyer (the IP hashes and the erasure pseudonym in an
export) is hashed per store too (:meth:`Keyring.store_keyed_hash`): two owners comparing
their exports cannot tell they sold to the same person.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app
from sqlalchemy import Text
from sqlalchemy.types import TypeDecorator

from connector.redact import keygate_logger

_log = keygate_logger(__name__)


# How often a process looks at its master key file for a change, at most (seconds).
KEY_FILE_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class _Keys:
    """Master keys in use, newest first, ready to use; replaced whole, never changed."""

    keys: tuple[str, ...]
    fernet: MultiFernet
    newest: Fernet

    @classmethod
    def of(cls, keys: tuple[str, ...]) -> _Keys:
        return cls(keys, MultiFernet([Fernet(k) for k in keys]), Fernet(keys[0]))


class Keyring:
    """The master keys of one app and the keyed-hash secret.

    Keys read from a file (``master.key``: ``key_file``) are followed while the process
    runs: a new key put first there is used to encrypt, and to read what ``keygate
    rotate-keys`` re-encrypts with it, without a restart (a server left running through a
    rotation answered webhooks 500 until restarted). A key the process read once still
    decrypts after it left the file; a file being edited (unreadable, a key cut short) is
    ignored until it holds keys again.
    """

    def __init__(
        self, master_keys: tuple[str, ...], secret_key: str, *, key_file: Path | None = None
    ) -> None:
        self._keys = _Keys.of(master_keys)
        self._key_file = key_file
        self._file_seen = _file_stamp(key_file) if key_file is not None else None
        self._file_checked = time.monotonic()
        self._file_lock = threading.Lock()
        self._secret = secret_key.encode()
        # Per-purpose HMAC states, keyed once; each hash copies one (license calls make one
        # or two per request).
        self._purposes: dict[str, hmac.HMAC] = {}

    @property
    def fingerprints(self) -> tuple[str, ...]:
        """The master keys' fingerprints, newest first (:func:`key_fingerprint`)."""
        return tuple(key_fingerprint(k) for k in self._keys.keys)

    def encrypt(self, plaintext: str) -> str:
        return self._current().fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        raw = token.encode("ascii")
        try:
            return self._current().fernet.decrypt(raw).decode()
        except InvalidToken:
            pass
        # Made with a key put in the file since it was last looked at (another process
        # encrypts with it, or rotated): look now.
        if self._follow_file(at_once=True):
            with contextlib.suppress(InvalidToken):
                return self._keys.fernet.decrypt(raw).decode()
        raise DecryptionError("stored secret cannot be decrypted with the master keys")

    def rotate(self, token: str) -> str:
        """Re-encrypt a token with the newest master key."""
        return self._current().fernet.rotate(token.encode("ascii")).decode("ascii")

    def newest_key_reads(self, token: str) -> bool:
        """Whether the newest master key alone decrypts ``token``."""
        try:
            self._current().newest.decrypt(token.encode("ascii"))
        except InvalidToken:
            return False
        return True

    def _current(self) -> _Keys:
        self._follow_file()
        return self._keys

    def _follow_file(self, *, at_once: bool = False) -> bool:
        """Take the key file's keys if it changed since it was read (looked at once a
        second at most, unless ``at_once``); whether the keys in use changed."""
        path = self._key_file
        if path is None:
            return False
        now = time.monotonic()
        if not at_once and now - self._file_checked < KEY_FILE_CHECK_SECONDS:
            return False
        with self._file_lock:
            self._file_checked = now
            stamp = _file_stamp(path)
            if stamp is None or stamp == self._file_seen:
                return False
            from connector.config import ConfigError, read_master_key_file

            try:
                keys = read_master_key_file(path)
            except ConfigError as exc:  # mid-edit: the keys in use stay
                _log.warning("master keys not re-read: %s", exc)
                return False
            self._file_seen = stamp
            # Keys read before and gone from the file still decrypt (what this process
            # wrote with one before it saw the file change).
            in_use = keys + tuple(k for k in self._keys.keys if k not in keys)
            if in_use == self._keys.keys:
                return False
            self._keys = _Keys.of(in_use)
        _log.info(
            "master keys re-read from %s: encrypting with %s (%d keys)",
            path,
            key_fingerprint(keys[0]),
            len(in_use),
        )
        return True

    def keyed_hash(self, purpose: str, value: str) -> str:
        """HMAC-SHA256 of ``value`` under a key for ``purpose`` (hex)."""
        keyed = self._purposes.get(purpose)
        if keyed is None:
            purpose_key = hmac.new(self._secret, purpose.encode(), hashlib.sha256).digest()
            keyed = self._purposes[purpose] = hmac.new(purpose_key, digestmod=hashlib.sha256)
        state = keyed.copy()
        state.update(value.encode())
        return state.hexdigest()

    def store_keyed_hash(self, purpose: str, store_id: int, value: str) -> str:
        """:meth:`keyed_hash` of ``value`` in store ``store_id``: the same value hashes to
        another value in every store. Its own purpose key (``<purpose>@store``), so it is
        never the store-independent hash of any value either."""
        return self.keyed_hash(f"{purpose}@store", f"{store_id}:{value}")


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells a file changed (inode, size, modification time), or None if unreadable."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def key_fingerprint(key: str) -> str:
    """A master key's name for people: the first 8 hex digits of its SHA-256.

    Says which key is which (``printf %s "$KEY" | sha256sum``) and nothing of the key.
    """
    return hashlib.sha256(key.encode()).hexdigest()[:8]


class DecryptionError(RuntimeError):
    """A stored token was made with a master key that is no longer configured."""


def current_keyring() -> Keyring:
    keyring: Keyring = current_app.extensions["keygate.keyring"]
    return keyring


def keyed_hash(purpose: str, value: str) -> str:
    return current_keyring().keyed_hash(purpose, value)


def store_keyed_hash(purpose: str, store_id: int, value: str) -> str:
    return current_keyring().store_keyed_hash(purpose, store_id, value)


class Concealed(str):
    """A decrypted secret. It is its text everywhere (``str()``, f-strings, JSON, templates)
    except in ``repr``, which is what logs of rows, ``%r`` and tracebacks show."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<concealed>'"


class ConcealedDict(dict[str, Any]):
    """A decrypted credentials set; its ``repr`` hides the values (see :class:`Concealed`)."""

    def __repr__(self) -> str:
        return "{<concealed>}"


class Encrypted(TypeDecorator[str]):
    """A text column stored as a Fernet token. ``None`` stays ``None``; ``""`` is encrypted."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value is None:
            return None
        return current_keyring().encrypt(value)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        if value is None:
            return None
        return Concealed(current_keyring().decrypt(value))


class EncryptedJSON(TypeDecorator[dict[str, Any]]):
    """A JSON object stored as one Fernet token (credentials sets)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: dict[str, Any] | None, dialect: Any) -> str | None:
        if value is None:
            return None
        return current_keyring().encrypt(json.dumps(value, separators=(",", ":")))

    def process_result_value(self, value: str | None, dialect: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        loaded: dict[str, Any] = json.loads(current_keyring().decrypt(value))
        return ConcealedDict(loaded)


def mask(secret: str | None) -> str | None:
    """Show a secret as its last four characters at most (shorter ones fully masked)."""
    if secret is None:
        return None
    if len(secret) <= 8:
        return "****"
    return "****" + secret[-4:]
