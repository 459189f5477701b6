"""Offline license files: a signed (optionally encrypted) snapshot of a license with a TTL.

Keygen's idea. The file is::

    -----BEGIN KEYGATE LICENSE FILE-----
    <base64 of JSON {"enc", "sig", "alg", "kid"}, wrapped at 64 columns>
    -----END KEYGATE LICENSE FILE-----

``enc`` is standard base64 of the license JSON (``alg`` = ``base64+ed25519``), or of
``nonce(12) || AES-256-GCM ciphertext+tag`` (``alg`` = ``aes-256-gcm+ed25519``) under a key
derived from the license key with HKDF-SHA256 (info ``keygate license file v1``). ``sig``
is the Ed25519 signature, by signing key ``kid``, of ``b"license/" + enc``. The content
names its key by ``key_sha256`` (SHA-256 of the key without separators, upper case). The
client library (connector/client.py) verifies and decrypts it without the network.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from connector.licensing.keys import key_groups
from connector.signing import Signer

BEGIN = "-----BEGIN KEYGATE LICENSE FILE-----"
END = "-----END KEYGATE LICENSE FILE-----"
HKDF_INFO = b"keygate license file v1"
DAY = 24 * 3600
DEFAULT_TTL = 7 * DAY
MIN_TTL = 3600
MAX_TTL = 365 * DAY
# A product's ``offline_days`` (the longest its files last) goes up to the API's own maximum.
OFFLINE_DAYS_MAX = MAX_TTL // DAY


def compact_key(raw_key: str) -> str:
    """The key as typed, with case, spaces and dashes forgiven (as connector/client.py)."""
    return "".join(key_groups(raw_key))


def file_key(raw_key: str) -> bytes:
    """The AES key of an encrypted file, derived from the license key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(
        compact_key(raw_key).encode()
    )


def key_digest(raw_key: str) -> str:
    """Names the key a file is for (SHA-256 of the compact key; keys carry ~95 random bits)."""
    return hashlib.sha256(compact_key(raw_key).encode()).hexdigest()


def build_license_file(
    data: dict[str, Any], signer: Signer, *, encrypt_with: str | None = None
) -> str:
    """Sign (and, given the license key, encrypt) ``data`` into a license file."""
    plain = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    if encrypt_with is None:
        alg = "base64+ed25519"
        enc = base64.b64encode(plain).decode("ascii")
    else:
        alg = "aes-256-gcm+ed25519"
        nonce = os.urandom(12)
        sealed = AESGCM(file_key(encrypt_with)).encrypt(nonce, plain, None)
        enc = base64.b64encode(nonce + sealed).decode("ascii")
    signature = signer.sign(b"license/" + enc.encode("ascii"))
    envelope = json.dumps({"enc": enc, "sig": signature, "alg": alg, "kid": signer.kid})
    encoded = base64.b64encode(envelope.encode()).decode("ascii")
    lines = [encoded[i : i + 64] for i in range(0, len(encoded), 64)]
    return "\n".join([BEGIN, *lines, END]) + "\n"


def granted_ttl(requested: int, offline_days: int | None) -> int:
    """The seconds a file lasts: what the caller asked for, shortened to the product's
    ``offline_days`` (None: no cap below the API's maximum). A longer request is no error."""
    return requested if offline_days is None else min(requested, offline_days * DAY)


def file_expiry(issued: dt.datetime, ttl: int, license_expires: dt.datetime | None) -> dt.datetime:
    """A file never outlives its license."""
    expiry = issued + dt.timedelta(seconds=ttl)
    return min(expiry, license_expires) if license_expires is not None else expiry
