"""Ed25519 signatures on every license API answer, with key ids and rotation.

The newest activated key that is not retired signs. ``keygate rotate-signing-key --prepare``
publishes the next key (listed, not signing) so products can pin it first;
``keygate rotate-signing-key`` then retires the current key and signs with the next one (or
a new one); retired keys stay listed at ``GET /api/v1/signing-keys`` so answers and license
files signed with them can still be checked. Private keys are encrypted
at rest (``Encrypted`` column); the signer of a process is cached for ``CACHE_SECONDS`` so a
rotation done elsewhere is picked up within that time. Changes to the keys (prepare, rotate,
the first key) take a lock first, so two at once (two operators, two hosts) happen one after
the other: one next key, one active key.

Signed string (DESIGN.md), one line each, joined by ``\\n``::

    (request-target): <lowercase method> <path>[?<query>]
    host: <Host header as received>
    date: <Date header>
    digest: <Digest header>
"""

from __future__ import annotations

import base64
import functools
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, replace
from email.utils import formatdate

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flask import Flask, current_app
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, defer

from connector.db import Database, utcnow
from connector.models import SigningKey
from connector.redact import keygate_logger

log = keygate_logger(__name__)

ALGORITHM = "ed25519"
SIGNED_HEADERS = "(request-target) host date digest"
CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class Signer:
    kid: str
    private_key: Ed25519PrivateKey
    loaded_at: float

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.private_key.sign(data)).decode("ascii")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def digest_header(body: bytes) -> str:
    return "sha-256=" + b64(hashlib.sha256(body).digest())


def http_date(when: float | None = None) -> str:
    """An IMF-fixdate (``Date`` header); the current one is made once per second."""
    if when is not None:
        return formatdate(when, usegmt=True)
    return _date_of_second(int(time.time()))


@functools.lru_cache(maxsize=1)
def _date_of_second(second: int) -> str:
    return formatdate(second, usegmt=True)


def request_target(method: str, path: str, query: str = "") -> str:
    return f"{method.lower()} {path}" + (f"?{query}" if query else "")


def signing_string(target: str, host: str, date: str, digest: str) -> bytes:
    return f"(request-target): {target}\nhost: {host}\ndate: {date}\ndigest: {digest}".encode()


def signature_header(kid: str, signature: str) -> str:
    return (
        f'keyid="{kid}", algorithm="{ALGORITHM}", signature="{signature}", '
        f'headers="{SIGNED_HEADERS}"'
    )


def _new_key_row(*, active: bool) -> SigningKey:
    private = Ed25519PrivateKey.generate()
    seed = private.private_bytes_raw()
    public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    now = utcnow()
    return SigningKey(
        kid="kg-" + secrets.token_hex(6),
        algorithm=ALGORITHM,
        public_key=b64(public),
        private_key=b64(seed),
        created_at=now,
        activated_at=now if active else None,
    )


def _active_key(session: Session) -> SigningKey | None:
    return session.execute(
        select(SigningKey)
        .where(SigningKey.retired_at.is_(None), SigningKey.activated_at.is_not(None))
        .order_by(SigningKey.id.desc())
        .limit(1)
    ).scalar_one_or_none()


def _next_key(session: Session) -> SigningKey | None:
    return session.execute(
        select(SigningKey)
        .where(SigningKey.retired_at.is_(None), SigningKey.activated_at.is_(None))
        .order_by(SigningKey.id.desc())
        .limit(1)
    ).scalar_one_or_none()


# Any fixed number, the same in every process: PostgreSQL's advisory lock on key changes.
_KEY_CHANGES_LOCK = 0x6B67_5349  # "kgSI"


def _lock_key_changes(session: Session) -> None:
    """Hold off other changes to the signing keys until this transaction ends.

    The checks for a next or active key and the writes they lead to must not interleave with
    another run's. PostgreSQL: a transaction-scoped advisory lock (no table to lock rows
    of when there is no key yet). SQLite: already so, a writing transaction begins
    IMMEDIATE (``connector.db``) and holds the one write lock from its first statement.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_KEY_CHANGES_LOCK)))


def prepare_signing_key(session: Session) -> SigningKey:
    """Publish the next key without signing with it (idempotent: one next key at a time)."""
    _lock_key_changes(session)
    row = _next_key(session)
    if row is None:
        row = _new_key_row(active=False)
        session.add(row)
        session.flush()
    return row


def rotate_signing_key(session: Session) -> SigningKey:
    """Retire the signing key in use and sign with the prepared next key (or a new one).

    The caller commits.
    """
    _lock_key_changes(session)
    now = utcnow()
    row = _next_key(session)
    session.execute(
        update(SigningKey)
        .where(SigningKey.retired_at.is_(None), SigningKey.activated_at.is_not(None))
        .values(retired_at=now)
    )
    if row is None:
        row = _new_key_row(active=True)
        session.add(row)
    else:
        row.activated_at = now
    session.flush()
    return row


def ensure_signing_key(session: Session) -> SigningKey:
    """The key that signs now, made on first use (the caller commits)."""
    row = _active_key(session)
    if row is None:
        _lock_key_changes(session)  # two servers' first answers make one key
        row = _active_key(session)
    if row is None:
        row = _new_key_row(active=True)
        session.add(row)
        session.flush()
    return row


def published_keys(session: Session) -> list[SigningKey]:
    """Every key, newest first, retired ones included.

    Private halves are not loaded: the list needs none, and decrypting each would make it
    fail on any one the master keys cannot read.
    """
    listed = (
        select(SigningKey).options(defer(SigningKey.private_key)).order_by(SigningKey.id.desc())
    )
    keys = list(session.scalars(listed))
    if not any(key.status == "active" for key in keys):  # the first answer makes one
        ensure_signing_key(session)
        keys = list(session.scalars(listed))
    return keys


_lock = threading.Lock()


def current_signer(app: Flask | None = None) -> Signer:
    """This process's signer, reloaded from the database every ``CACHE_SECONDS``.

    It uses a session of its own, so signing never commits (or is rolled back with) the
    request's work. While the database cannot be reached, the signer loaded last keeps
    signing (the 503s of an outage are signed too); with none loaded yet, the error is
    raised.
    """
    app = app or current_app._get_current_object()  # type: ignore[attr-defined]
    cached: Signer | None = app.extensions.get("keygate.signer")
    now = time.monotonic()
    if cached is not None and now - cached.loaded_at < CACHE_SECONDS:
        return cached
    with _lock:
        cached = app.extensions.get("keygate.signer")
        if cached is not None and now - cached.loaded_at < CACHE_SECONDS:
            return cached
        try:
            with Database.current().sessionmaker() as session:
                row = ensure_signing_key(session)
                session.commit()
                seed = base64.b64decode(row.private_key)
                signer = Signer(row.kid, Ed25519PrivateKey.from_private_bytes(seed), now)
        except DBAPIError:
            if cached is None:
                raise
            log.warning("signing key not reloaded (database unavailable); %s signs", cached.kid)
            # Asked again in CACHE_SECONDS, not on every answer of the outage.
            signer = replace(cached, loaded_at=now)
        app.extensions["keygate.signer"] = signer
        return signer


def forget_cached_signer(app: Flask) -> None:
    """Make the next answer reload the signing key (after a rotation in this process)."""
    app.extensions.pop("keygate.signer", None)
