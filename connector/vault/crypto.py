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

import hashlib
import hmac
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app
from sqlalchemy import Text
from sqlalchemy.types import TypeDecorator


class Keyring:
    """The master keys of one app and the keyed-hash secret."""

    def __init__(self, master_keys: tuple[str, ...], secret_key: str) -> None:
        self._fernet = MultiFernet([Fernet(k) for k in master_keys])
        self._newest = Fernet(master_keys[0])
        #: The master keys' fingerprints, newest first (:func:`key_fingerprint`).
        self.fingerprints = tuple(key_fingerprint(k) for k in master_keys)
        self._secret = secret_key.encode()
        # Per-purpose HMAC states, keyed once; each hash copies one (license calls make one
        # or two per request).
        self._purposes: dict[str, hmac.HMAC] = {}

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode("ascii")

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode()
        except InvalidToken:
            raise DecryptionError(
                "stored secret cannot be decrypted with the master keys"
            ) from None

    def rotate(self, token: str) -> str:
        """Re-encrypt a token with the newest master key."""
        return self._fernet.rotate(token.encode("ascii")).decode("ascii")

    def newest_key_reads(self, token: str) -> bool:
        """Whether the newest master key alone decrypts ``token``."""
        try:
            self._newest.decrypt(token.encode("ascii"))
        except InvalidToken:
            return False
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
