"""Signed tokens for private links. One salt per purpose; never reuse a salt.

Library errors become ours: a tampered or unknown token is ``LinkInvalid`` (404); an expired
one (for timed purposes) is ``LinkExpired`` (410).

Tokens that reach buyers and products (download links, portal links and the portal's
deactivate buttons, release downloads, the fingerprint in a stamped copy) name their row by
a *sealed id*: the id, as one 16-byte block, encrypted with AES-256 under a key derived
(HKDF-SHA256) from the secret key and the purpose, then signed as every token is (its own
salt, ``<purpose>.sealed``). A single AES block is a keyed permutation: the same row always
gets the same token (links are stable, their validity decided by the row), and without the
secret key a token says nothing of the id, so a buyer cannot count the store's orders,
downloads or activations from their own links. Tokens made before carried the id in
readable JSON (``{"g": 1234}``), deactivate buttons the plain id; they are still accepted.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app
from itsdangerous import (
    BadData,
    SignatureExpired,
    Signer,
    TimestampSigner,
    URLSafeSerializer,
    URLSafeTimedSerializer,
)
from itsdangerous.encoding import base64_decode, base64_encode

from connector.errors import Gone, NotFound
from connector.validation import row_id

DOWNLOAD = "keygate.download"
PORTAL = "keygate.portal"
CONNECT_STATE = "keygate.wc-connect-state"
ADMIN_ACTION = "keygate.admin-action"
FINGERPRINT = "keygate.fingerprint"
RELEASE = "keygate.release-download"
ADMIN_DEVICE = "keygate.admin-device"
COPY_KEY = "keygate.copy-key"  # the folder of a buyer's stamped copy in storage
ACTIVATION = "keygate.portal-activation"  # the seat a portal page's deactivate button frees


class LinkInvalid(NotFound):
    type = "link-invalid"
    title = "This link is not valid"


class LinkExpired(Gone):
    type = "link-expired"
    title = "This link has expired"


def _secret() -> str:
    secret: str = current_app.config["SECRET_KEY"]
    return secret


def dumps(purpose: str, value: Any) -> str:
    """A stable signed token (validity is decided by the row it names, not by the token)."""
    return URLSafeSerializer(_secret(), salt=purpose).dumps(value)


def loads(purpose: str, token: str) -> Any:
    try:
        return URLSafeSerializer(_secret(), salt=purpose).loads(token)
    except (BadData, UnicodeError):  # UnicodeError: half a surrogate pair, not a token
        raise LinkInvalid("This link is not valid. Check that it was copied whole.") from None


def dumps_timed(purpose: str, value: Any) -> str:
    return URLSafeTimedSerializer(_secret(), salt=purpose).dumps(value)


def loads_timed(purpose: str, token: str, max_age: int | None) -> Any:
    """The value of a timed token; ``max_age`` None: authentic, whatever its age."""
    return loads_timed_with_time(purpose, token, max_age)[0]


def loads_timed_with_time(purpose: str, token: str, max_age: int | None) -> tuple[Any, dt.datetime]:
    """The value of a timed token and when it was signed (to the second, UTC)."""
    try:
        value, signed = URLSafeTimedSerializer(_secret(), salt=purpose).loads(
            token, max_age=max_age, return_timestamp=True
        )
        return value, signed
    except SignatureExpired:
        raise LinkExpired("This link has expired.") from None
    except (BadData, UnicodeError):
        raise LinkInvalid("This link is not valid. Check that it was copied whole.") from None


# The largest id a database row has (a signed 64-bit integer).
MAX_ROW_ID = 2**63 - 1


@functools.lru_cache(maxsize=32)
def _id_cipher(secret: str, purpose: str) -> Cipher[modes.ECB]:
    info = f"keygate.sealed-id:{purpose}".encode()
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret.encode())
    # ECB on exactly one block is AES itself, a keyed permutation of 16-byte blocks. ECB's
    # weakness (equal blocks of a longer message look equal) needs two blocks: a token has one.
    return Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305


def _id_signer(purpose: str) -> Signer:
    return Signer(_secret(), salt=f"{purpose}.sealed")


def _timed_id_signer(purpose: str) -> TimestampSigner:
    return TimestampSigner(_secret(), salt=f"{purpose}.sealed")


def _sealed(purpose: str, row_id: int) -> bytes:
    if not 0 < row_id <= MAX_ROW_ID:
        raise ValueError(f"not a row id: {row_id}")
    encryptor = _id_cipher(_secret(), purpose).encryptor()
    return encryptor.update(row_id.to_bytes(16, "big")) + encryptor.finalize()


def sealed_id(purpose: str, row_id: int) -> str:
    """``row_id`` sealed, unsigned, as 32 hex digits: a name that shows nothing of the id
    (a storage folder: lowercase, one case, for file systems that ignore it)."""
    return _sealed(purpose, row_id).hex()


def sealed_id_token(purpose: str, row_id: int, *, timed: bool = False) -> str:
    """A signed token naming ``row_id`` that shows nothing of it (see the module's doc)."""
    signer = _timed_id_signer(purpose) if timed else _id_signer(purpose)
    return signer.sign(base64_encode(_sealed(purpose, row_id))).decode("ascii")


def id_from_sealed_token(
    purpose: str, token: str, *, timed: bool = False, max_age: int | None = None
) -> int | None:
    """The row id a :func:`sealed_id_token` names; None when ``token`` is not one (it may be
    a token of the older, readable kind).

    Raises:
        LinkExpired: an authentic timed token older than ``max_age`` seconds.
    """
    try:
        if timed:
            sealed = _timed_id_signer(purpose).unsign(token, max_age=max_age)
        else:
            sealed = _id_signer(purpose).unsign(token)
        block = base64_decode(sealed)
    except SignatureExpired:
        raise LinkExpired("This link has expired.") from None
    except (BadData, UnicodeError):
        return None
    if len(block) != 16:
        return None
    decryptor = _id_cipher(_secret(), purpose).decryptor()
    row_id = int.from_bytes(decryptor.update(block) + decryptor.finalize(), "big")
    return row_id if 0 < row_id <= MAX_ROW_ID else None


def _readable_id(data: Any, field: str) -> int | None:
    """The id in an older token's readable payload (``{"g": 1234}``)."""
    if not isinstance(data, dict) or not isinstance(data.get(field), int):
        return None
    row_id: int = data[field]
    return row_id


def _grant_id(purpose: str, token: str, invalid: str) -> int:
    """The grant an untimed ``purpose`` token names, sealed or made before ids were."""
    grant_id = id_from_sealed_token(purpose, token)
    if grant_id is None:
        grant_id = _readable_id(loads(purpose, token), "g")
    if grant_id is None:
        raise LinkInvalid(invalid)
    return grant_id


def download_token(grant_id: int) -> str:
    return sealed_id_token(DOWNLOAD, grant_id)


def grant_id_from_token(token: str) -> int:
    """The grant a download link names (links made before ids were sealed too)."""
    return _grant_id(DOWNLOAD, token, "This link is not valid.")


def fingerprint_token(grant_id: int) -> str:
    """The hidden fingerprint of a buyer's watermarked copy: names its grant, signed."""
    return sealed_id_token(FINGERPRINT, grant_id)


def grant_id_from_fingerprint(token: str) -> int:
    """The grant a fingerprint names (those stamped before ids were sealed too)."""
    return _grant_id(FINGERPRINT, token, "This fingerprint is not valid.")


def release_token(release_id: int) -> str:
    """The token of a release's download link for products: names the release, expires."""
    return sealed_id_token(RELEASE, release_id, timed=True)


def release_id_from_token(token: str, max_age: int) -> int | None:
    """The release a release-download token names; None for an authentic token that names
    none. Older tokens (``{"r": id}``) too: made minutes before an upgrade, still valid.

    Raises:
        LinkExpired: a token older than ``max_age`` seconds.
        LinkInvalid: not a token of ours.
    """
    release_id = id_from_sealed_token(RELEASE, token, timed=True, max_age=max_age)
    if release_id is None:
        release_id = _readable_id(loads_timed(RELEASE, token, max_age=max_age), "r")
    return release_id


def portal_token(order_id: int) -> str:
    """The buyer's portal link token: names the order, expires (``portal_link_days``)."""
    return sealed_id_token(PORTAL, order_id, timed=True)


def order_id_from_portal_token(token: str, *, expired_too: bool = False) -> int:
    """The order a portal token names.

    Args:
        expired_too: accept an authentic token however old (to mail a fresh link to the
            order's own address, never to show the order).

    Raises:
        LinkExpired: an authentic token past ``portal_link_days``, or one made before
            portal links expired (no time in it).
        LinkInvalid: anything else.
    """
    from connector import get_settings

    max_age = None if expired_too else get_settings().portal_link_days * 86400
    order_id = id_from_sealed_token(PORTAL, token, timed=True, max_age=max_age)
    if order_id is not None:
        return order_id
    # A link made before ids were sealed: readable JSON, timed, or older still (untimed).
    try:
        data = loads_timed(PORTAL, token, max_age)
    except LinkInvalid:
        data = loads(PORTAL, token)  # LinkInvalid again unless it is an untimed link
        if not expired_too:
            raise LinkExpired("This link has expired.") from None
    order_id = _readable_id(data, "o")
    if order_id is None:
        raise LinkInvalid("This link is not valid.")
    return order_id


def activation_token(activation_id: int) -> str:
    """How the portal page names a seat in its deactivate button's URL (the API's
    ``activation.id`` stays the plain id: a product's own)."""
    return sealed_id_token(ACTIVATION, activation_id)


def activation_id_from_token(token: str) -> int:
    """The seat a deactivate button names: sealed, or its plain id (a portal page opened
    before seats were sealed, still open in the buyer's browser).

    Raises:
        LinkInvalid: neither (tampered with, or another purpose's token).
    """
    activation_id = id_from_sealed_token(ACTIVATION, token)
    if activation_id is None:
        # The plain id as the route took it before (<int:...>): one a row can have, never
        # one past the column's type (PostgreSQL refuses to compare it: a 500).
        activation_id = row_id(token) or None
    if activation_id is None:
        raise LinkInvalid("This button is not valid. Reload your order page and try again.")
    return activation_id


def download_url(grant_id: int) -> str:
    from connector import get_settings

    return f"{get_settings().base_url}/d/{download_token(grant_id)}"


def portal_url(order_id: int) -> str:
    from connector import get_settings

    return f"{get_settings().base_url}/my/{portal_token(order_id)}"
