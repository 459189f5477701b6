"""Downloads: a buyer's click becomes a counted, logged delivery of their copy of a file.

``start_download`` is the verb behind ``GET /d/<token>``. It checks the grant, asks the
storage (with no transaction open: a slow bucket must hold no lock), then counts the download
with a conditional UPDATE (so concurrent clicks can never pass the limit) and logs the click
with the IP as a keyed hash in one short write, and answers how to deliver the file.
Refusals are answers too (and logged), not exceptions, so their log rows commit.

``make_watermarked_copy`` stamps a buyer's copy (outbox job at payment, or on the spot when
a click comes first) and stores it beside the original under a per-order key.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import (
    Engine,
    Select,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, load_only

from connector.audit import record_audit
from connector.db import (
    Disconnected,
    RawConnection,
    SessionStatements,
    insert_ignoring_conflicts,
    lock_row,
    raw_connection,
    read_mostly,
    utcnow,
)
from connector.downloads.outage import StorageFailure
from connector.downloads.storage import Delivery, ObjectStore, store_areas, store_for
from connector.downloads.watermark import (
    STAMP_VERSION,
    ZIP_LICENSE_IN_ITS_FOLDER,
    Stamp,
    WatermarkError,
    stamp_pdf,
    stamp_zip,
)
from connector.errors import ServiceUnavailable
from connector.integrations.r2 import StorageUnavailable
from connector.models import (
    Credential,
    DownloadEvent,
    DownloadGrant,
    Order,
    Product,
    ProductFile,
    Store,
    WatermarkCopy,
)
from connector.redact import keygate_logger
from connector.stores import StoreDeleted, hold_live_store
from connector.tokens import COPY_KEY, LinkInvalid, fingerprint_token, sealed_id
from connector.vault.crypto import keyed_hash, store_keyed_hash

log = keygate_logger(__name__)

IP_HASH_PURPOSE = "download-ip"


def ip_hash(store_id: int, ip: str) -> str:
    """The keyed hash a click's IP is kept as in store ``store_id`` (never the IP itself):
    another in every store, so that two owners' download logs and exports do not show that
    one address downloaded from both."""
    return store_keyed_hash(IP_HASH_PURPOSE, store_id, ip)


def ip_hashes(store_id: int, ip: str) -> tuple[str, str]:
    """The hashes a click from ``ip`` in store ``store_id`` may have been logged under: the
    store's (:func:`ip_hash`), and the one every store shared before (clicks logged then,
    still in the log until its retention ends, are still this address's)."""
    return ip_hash(store_id, ip), keyed_hash(IP_HASH_PURPOSE, ip)


# A copy that failed this many times in a row is not tried again on clicks or by the job
# (the fallback applies) until the original changes.
MAX_WATERMARK_ATTEMPTS = 3


class LinkRemoved(LinkInvalid):
    """An authentic link (only Keygate can sign one) whose download is gone: the owner
    deleted the store, its orders and links with it. Its buyer is told so, not that the
    link is not valid (they would copy it again, and again)."""

    title = "This download no longer exists"

    def __init__(self) -> None:
        super().__init__(
            "This link is whole, but the shop no longer offers this download here. Contact"
            " the shop you bought from."
        )


class FileUnavailable(ServiceUnavailable):
    type = "file-unavailable"
    title = "This file is not available right now"


class StorageFailed(FileUnavailable):
    """A click the store's storage failed: it did not answer, or refused (``failure``
    says which, for the owner: :func:`connector.downloads.outage.record_storage_failure`)."""

    def __init__(self, store_id: int, exc: StorageUnavailable) -> None:
        super().__init__(UNREACHABLE)
        self.failure = StorageFailure.of(store_id, exc)


@dataclass(frozen=True)
class FileFacts:
    """What a served click's answer says of its file, known without serving it (HEAD)."""

    filename: str
    size: int | None = None  # None: not known before the buyer's copy is stamped
    media_type: str | None = None  # as stored (R2); None: none, or embedded storage


@dataclass(frozen=True)
class DownloadAnswer:
    """What to answer a click: a delivery, or a refusal with its status and words (a HEAD
    probe: ``file`` instead of a delivery)."""

    status: int
    outcome: str
    title: str = ""
    detail: str = ""
    delivery: Delivery | None = None
    file: FileFacts | None = None


REFUSALS = {
    "revoked": (
        410,
        "This download is no longer available",
        "The shop has withdrawn this download: the order was refunded or cancelled, or "
        "the license was paused or ended.",
    ),
    "expired": (
        410,
        "This download link has expired",
        "The download period of this purchase has ended.",
    ),
    "limit": (
        429,
        "Download limit reached",
        "This link has been used as many times as the purchase allows.",
    ),
    "refused": (
        409,
        "This file cannot be delivered yet",
        "Your personal copy of this file could not be prepared. The shop can see the problem.",
    ),
}


class _GrantLimits(Protocol):
    """What decides whether a grant may be downloaded now (a DownloadGrant, or its columns)."""

    @property
    def revoked_at(self) -> dt.datetime | None: ...
    @property
    def expires_at(self) -> dt.datetime | None: ...
    @property
    def download_limit(self) -> int | None: ...
    @property
    def download_count(self) -> int: ...


class _CopyFacts(Protocol):
    """What decides whether a buyer's copy can be served (a WatermarkCopy, or its columns)."""

    @property
    def status(self) -> str: ...
    @property
    def object_key(self) -> str | None: ...
    @property
    def kind(self) -> str: ...
    @property
    def source_version(self) -> str | None: ...
    @property
    def buyer_hash(self) -> str | None: ...
    @property
    def stamp_version(self) -> int: ...


@dataclass(frozen=True)
class _ClickedCopy:
    status: str
    object_key: str | None
    kind: str
    source_version: str | None
    buyer_hash: str | None
    stamp_version: int


@dataclass(frozen=True)
class _ClickedGrant:
    revoked_at: dt.datetime | None
    expires_at: dt.datetime | None
    download_limit: int | None
    download_count: int


def _url_ttl(ttl: int, expires_at: dt.datetime | None, now: dt.datetime) -> int:
    """How long a presigned URL handed out now may live: ``ttl``, but never past the end of
    the link itself (a link with a minute left hands out no URL that works for five), and at
    least the second R2 accepts (the link is open, so some time is left)."""
    if expires_at is None:
        return ttl
    return max(1, min(ttl, math.ceil((expires_at - now).total_seconds())))


def _refusal_reason(grant: _GrantLimits, now: dt.datetime) -> str | None:
    if grant.revoked_at is not None:
        return "revoked"
    if grant.expires_at is not None and grant.expires_at <= now:
        return "expired"
    if grant.download_limit is not None and grant.download_count >= grant.download_limit:
        return "limit"
    return None


GRANTS = cast(Table, DownloadGrant.__table__)
EVENTS = cast(Table, DownloadEvent.__table__)


# Core statements on the hot path, built once: the ORM's bulk-update bookkeeping and the
# per-call statement building are not needed here.
_COUNT_DOWNLOAD = (
    update(GRANTS)
    .where(
        GRANTS.c.id == bindparam("grant_id"),
        GRANTS.c.revoked_at.is_(None),
        or_(GRANTS.c.expires_at.is_(None), GRANTS.c.expires_at > bindparam("now")),
        or_(
            GRANTS.c.download_limit.is_(None),
            GRANTS.c.download_count < GRANTS.c.download_limit,
        ),
    )
    .values(download_count=GRANTS.c.download_count + 1)
)
_EVENT_COLUMNS = (
    "store_id",
    "order_id",
    "grant_id",
    "outcome",
    "served",
    "ip_hash",
    "user_agent",
    "created_at",
)
_LOG_CLICK = insert(EVENTS).values({name: bindparam(name) for name in _EVENT_COLUMNS})


def _count_and_log_statement() -> Any:
    counted = _COUNT_DOWNLOAD.returning(GRANTS.c.id).cte("counted")
    # SET LOCAL synchronous_commit = off for the statement's own (autocommit) transaction:
    # the count and its log row need not wait for the WAL flush (~3 ms here). A database
    # crash can lose the last fraction of a second of clicks (at worst a buyer gets one
    # download more); it never corrupts or double-counts them.
    no_flush_wait = select(func.set_config("synchronous_commit", "off", True).label("setting")).cte(
        "no_flush_wait"
    )
    values = select(
        bindparam("ev_store_id", type_=EVENTS.c.store_id.type),
        bindparam("ev_order_id", type_=EVENTS.c.order_id.type),
        counted.c.id,
        bindparam("ev_outcome", type_=EVENTS.c.outcome.type),
        bindparam("ev_served", type_=EVENTS.c.served.type),
        bindparam("ev_ip_hash", type_=EVENTS.c.ip_hash.type),
        bindparam("ev_user_agent", type_=EVENTS.c.user_agent.type),
        bindparam("ev_created_at", type_=EVENTS.c.created_at.type),
    ).select_from(counted.join(no_flush_wait, true()))
    return insert(EVENTS).from_select(list(_EVENT_COLUMNS), values).returning(EVENTS.c.id)


_COUNT_AND_LOG_PG = _count_and_log_statement()


def _log_click(
    session: Session,
    grant: DownloadGrant,
    outcome: str,
    *,
    ip: str | None,
    user_agent: str | None,
    served: str | None = None,
) -> None:
    session.connection().execute(
        _LOG_CLICK,
        _event(grant.store_id, grant.order_id, grant.id, outcome, served, ip, user_agent),
    )


def _event(
    store_id: int,
    order_id: int,
    grant_id: int,
    outcome: str,
    served: str | None,
    ip: str | None,
    user_agent: str | None,
) -> dict[str, Any]:
    """The values of a click's log row (the IP only as its keyed hash)."""
    return {
        "store_id": store_id,
        "order_id": order_id,
        "grant_id": grant_id,
        "outcome": outcome,
        "served": served,
        "ip_hash": ip_hash(store_id, ip) if ip else None,
        "user_agent": (user_agent or None) and user_agent[:400],
        "created_at": utcnow(),
    }


def _refuse(
    session: Session, grant: DownloadGrant, reason: str, ip: str | None, user_agent: str | None
) -> DownloadAnswer:
    _log_click(session, grant, reason, ip=ip, user_agent=user_agent)
    return _refusal(reason)


def _refusal(reason: str) -> DownloadAnswer:
    """The answer refusing a click for ``reason`` (a key of :data:`REFUSALS`)."""
    status, title, detail = REFUSALS[reason]
    return DownloadAnswer(status=status, outcome=reason, title=title, detail=detail)


def peek_download(session: Session, grant_id: int) -> DownloadAnswer:
    """What a click would get now, without counting, logging or stamping (HEAD requests:
    download managers and browsers ask before they download, link checkers probe).

    The same read and the same choice of file as :func:`start_download` (no transaction
    open while the storage answers): a refusal's status and words, or ``file``, the facts
    of the file a click would be served: its size when the storage has it as it would be
    served (an original, or the buyer's copy already stamped), none when the copy is still
    to be stamped (the click would stamp it; without the original to stamp it from, what
    the product's fallback gives). Nothing is written and no copy is made.

    Raises:
        LinkRemoved: no such grant (404).
        FileUnavailable: storage is down or the file is missing (503), as for a click.
    """
    postgres = session.get_bind().dialect.name == "postgresql"
    _no_transaction_open(session, postgres)
    now = utcnow()
    read = read_mostly(session, lambda: _read_click(session, grant_id, None, now, resume=False))
    if read is None:
        raise LinkRemoved()
    row, reason, _ = read
    _grant, product_file, store, copy, r2_credentials, *buyer = row
    if reason is not None:
        return _refusal(reason)
    _no_transaction_open(session, postgres)
    backend = store_for(store, r2_credentials)
    try:
        chosen = _object_without_stamping(session, backend, product_file, copy, buyer)
        if chosen is None:
            return _refusal("refused")
        object_key, served = chosen
        _no_transaction_open(session, postgres)  # the product's fallback may have been read
        info = backend.info(object_key) if object_key is not None else None
        # A buyer's copy still to stamp, or gone from storage, is stamped by the click (see
        # _deliver) from the original: without one the stamp fails and the click gets what
        # the product's fallback gives (a refusal, or the missing original's 503).
        if info is None and served == "watermarked" and not backend.info(product_file.object_key):
            fallback = _fallback(session, product_file)
            _no_transaction_open(session, postgres)
            if fallback is None:
                return _refusal("refused")
            object_key, served = fallback
    except StorageUnavailable:
        raise FileUnavailable(UNREACHABLE) from None
    if object_key is not None and info is None and served != "watermarked":
        raise FileUnavailable("The file is missing from the shop's storage.")
    facts = FileFacts(product_file.filename)
    if info is not None:
        facts = dataclasses.replace(facts, size=info.size, media_type=info.media_type)
    return DownloadAnswer(status=200, outcome="available", file=facts)


def _click_statement(
    statement: Select[*tuple[Any, ...]],
) -> Select[*tuple[Any, ...]]:
    """One round trip for everything a click needs, built once: the grant, its file, the
    buyer's watermarked copy, the store's R2 credentials from the vault (None when it has
    none) and the buyer's name and address the order has now (a copy must name them)."""
    return (
        statement.join(ProductFile, DownloadGrant.product_file_id == ProductFile.id)
        .join(Order, DownloadGrant.order_id == Order.id)
        .outerjoin(WatermarkCopy, WatermarkCopy.grant_id == DownloadGrant.id)
        .outerjoin(
            Credential,
            and_(Credential.store_id == DownloadGrant.store_id, Credential.kind == "r2"),
        )
        .where(DownloadGrant.id == bindparam("grant_id"))
    )


_BUYER = (Order.name, Order.email)
_CLICK = _click_statement(
    select(DownloadGrant, ProductFile, Store, WatermarkCopy, Credential.data, *_BUYER)
    .select_from(DownloadGrant)
    .join(Store, DownloadGrant.store_id == Store.id)
    # A click needs only the store's id (its R2 credentials come in this row): no other
    # column, and never the webhook secret, is loaded or decrypted.
    .options(load_only(Store.id))
)
# The same as plain values, for the common click (start_download_fast).
_CLICK_FAST = _click_statement(
    select(
        DownloadGrant.store_id,
        DownloadGrant.order_id,
        DownloadGrant.revoked_at,
        DownloadGrant.expires_at,
        DownloadGrant.download_limit,
        DownloadGrant.download_count,
        ProductFile.object_key,
        ProductFile.filename,
        ProductFile.watermark,
        WatermarkCopy.status,
        WatermarkCopy.object_key,
        WatermarkCopy.kind,
        WatermarkCopy.source_version,
        WatermarkCopy.buyer_hash,
        WatermarkCopy.stamp_version,
        Credential.data,
        *_BUYER,
    ).select_from(DownloadGrant)
)


def start_download_fast(
    engine: Engine, grant_id: int, *, ip: str | None, user_agent: str | None, ttl: int = 300
) -> DownloadAnswer | None:
    """The common click, without a session: a grant that may be downloaded, whose original
    (or ready watermarked copy) the storage can deliver, counted and logged.

    On one pooled connection (``raw_connection``): one read outside any transaction, the
    delivery, then the count and its log row as one short write (the conditional UPDATE
    decides, as in :func:`start_download`). None whenever anything else could be the
    answer (no such grant, a refusal to log, a copy to make, a storage error, the last
    download taken meanwhile, a connection the database dropped before anything was
    written): the caller then asks :func:`start_download`, which decides every case.

    Raises:
        StorageFailed: the storage did not answer, or refused (503; nothing is counted).
    """
    postgres = engine.dialect.name == "postgresql"
    writing = False
    try:
        with raw_connection(engine) as raw:
            row = raw.one(_CLICK_FAST, {"grant_id": grant_id})
            if row is None:
                return None
            store_id, order_id, *limits = row[:6]
            object_key, filename, watermark = row[6:9]
            copy_facts, (r2_credentials, *buyer) = row[9:15], row[15:]
            now = utcnow()
            grant = _ClickedGrant(*limits)
            if _refusal_reason(grant, now) is not None:
                return None
            copy = _ClickedCopy(*copy_facts) if copy_facts[0] is not None else None
            backend = store_for(store_id, r2_credentials)
            try:
                ready = _ready_object(backend, watermark, object_key, copy, buyer)
                if ready is None:
                    return None
                object_key, served = ready
                delivery = backend.delivery(
                    object_key, filename, _url_ttl(ttl, grant.expires_at, now)
                )
            except FileNotFoundError:
                return None
            except StorageUnavailable as exc:
                # Not asked again by the full path: a bucket that stalls would keep the
                # buyer waiting twice as long for the same 503 page (nothing is counted).
                raise StorageFailed(store_id, exc) from None
            writing = True
            counted = raw.write(
                lambda statements: _count_and_log(
                    statements,
                    postgres,
                    grant_id,
                    store_id,
                    order_id,
                    now,
                    ip=ip,
                    user_agent=user_agent,
                    served=served,
                )
            )
    except Disconnected:
        if writing:  # the count may or may not have been made: never risk a second one
            raise
        return None
    return DownloadAnswer(status=200, outcome="served", delivery=delivery) if counted else None


def start_download(
    session: Session,
    grant_id: int,
    *,
    ip: str | None,
    user_agent: str | None,
    ttl: int = 300,
    resume: bool = False,
) -> DownloadAnswer:
    """Check, count and log one click on a grant's link, and say how to deliver the file.

    Args:
        session: the request's session. This commits before it asks the storage (only a
            copy made on the spot is written before), the request commits the rest.
        grant_id: from the verified link token.
        ip: the client address; only its keyed hash is stored.
        user_agent: the client's User-Agent header.
        ttl: lifetime of a presigned URL, in seconds (less when the link ends sooner).
        resume: the request continues a download (a Range not starting at byte 0): free,
            limit or not, when the same address was served this link within
            ``RESUME_WINDOW`` (a dropped connection, a download manager's parallel parts);
            counted like any click otherwise. A revoked or expired link is refused anyway.

    Raises:
        LinkRemoved: no such grant (404).
        FileUnavailable: storage is down or the file is missing (503; nothing is counted).
    """
    postgres = session.get_bind().dialect.name == "postgresql"
    _no_transaction_open(session, postgres)
    now = utcnow()
    read = read_mostly(session, lambda: _read_click(session, grant_id, ip, now, resume=resume))
    if read is None:
        raise LinkRemoved()
    row, reason, resumed = read
    grant, product_file, store, copy, r2_credentials, *buyer = row
    if reason is not None and not resumed:
        return _refuse(session, grant, reason, ip, user_agent)
    # From here on the file store is asked (a HEAD, a copy made on the spot) with no
    # transaction open; the count and its log row come after, as one short write whose
    # conditional UPDATE decides (as on the fast path).
    _no_transaction_open(session, postgres)
    backend = store_for(store, r2_credentials)
    # The delivery first (it has no side effects): a file that cannot be delivered is never
    # counted, and the count and its log row can then go together.
    chosen = _deliver(
        session, backend, grant, product_file, copy, buyer, ttl=ttl, postgres=postgres
    )
    if chosen is None:
        return _refuse(session, grant, "refused", ip, user_agent)
    served, delivery = chosen
    # The time of the write: a link that ended while a copy was stamped is not served.
    now = utcnow()
    if resumed:
        # Read again, in the write: the link may have been withdrawn while the store answered.
        grant = _read_again(session, grant)
        reason = _refusal_reason(grant, now)
        if reason not in (None, "limit"):
            return _refuse(session, grant, reason, ip, user_agent)
        _log_click(session, grant, "resumed", ip=ip, user_agent=user_agent, served=served)
        return DownloadAnswer(status=200, outcome="resumed", delivery=delivery)
    try:
        counted = _count_and_log(
            SessionStatements(session),
            postgres,
            grant.id,
            grant.store_id,
            grant.order_id,
            now,
            ip=ip,
            user_agent=user_agent,
            served=served,
        )
    except DBAPIError as exc:
        if exc.connection_invalidated:
            # The count may have been made (PostgreSQL commits it with its statement): the
            # click is never run again (a 503; the buyer clicks again), as on the fast path.
            raise Disconnected("the connection dropped while the click was counted") from exc
        raise
    if not counted:
        # Another click took the last download (or a refund landed, or the link ended)
        # since we read the grant.
        grant = _read_again(session, grant)
        return _refuse(session, grant, _refusal_reason(grant, now) or "limit", ip, user_agent)
    return DownloadAnswer(status=200, outcome="served", delivery=delivery)


_GIVE_BACK = (
    update(GRANTS)
    .where(GRANTS.c.id == bindparam("grant_id"), GRANTS.c.download_count > 0)
    .values(download_count=GRANTS.c.download_count - 1)
)


def give_back_download(
    session: Session, grant_id: int, *, ip: str | None, user_agent: str | None
) -> None:
    """A counted click whose file was deleted from embedded storage before it could be sent
    (an erasure, a copy discarded or made anew, a store deleted, at that very moment): the
    download is given back and the click logged as ``not_sent``. Committed."""
    session.commit()  # the count, when the click's own transaction still holds it
    if SessionStatements(session).run(_GIVE_BACK, {"grant_id": grant_id}):
        grant = session.get(DownloadGrant, grant_id)
        if grant is not None:
            _log_click(session, grant, "not_sent", ip=ip, user_agent=user_agent)
    session.commit()


def _read_again(session: Session, grant: DownloadGrant) -> DownloadGrant:
    """The grant as the database holds it now.

    Raises:
        LinkRemoved: it is gone: its store was deleted while the file store answered.
    """
    again = session.get(DownloadGrant, grant.id, populate_existing=True)
    if again is None:
        raise LinkRemoved()
    return again


UNREACHABLE = "The file store is not answering; try again shortly."


def _deliver(
    session: Session,
    backend: ObjectStore,
    grant: DownloadGrant,
    product_file: ProductFile,
    copy: WatermarkCopy | None,
    buyer: Sequence[str | None],
    *,
    ttl: int,
    postgres: bool,
) -> tuple[str, Delivery] | None:
    """What the click serves and how to deliver it (no transaction open while the storage
    answers); None when the buyer's copy cannot be made and the product says to refuse.

    A ready copy whose file is gone from storage (deleted behind Keygate's back, or by a
    deletion that raced a new stamp at its key) is stale: it is stamped anew in this click,
    once, instead of answering 503 for ever.

    Raises:
        FileUnavailable: storage is down, the file is missing, or the copy is being made.
    """
    for stale in (False, True):
        try:
            choice = _object_to_serve(
                session, backend, grant, product_file, copy, buyer, stale=stale
            )
        except StorageUnavailable as exc:
            raise StorageFailed(grant.store_id, exc) from None
        if choice is None:
            return None
        object_key, served = choice
        _no_transaction_open(session, postgres)  # a copy made on the spot is recorded: committed
        # The time the link has left now: making a copy on the spot may have taken seconds.
        url_ttl = _url_ttl(ttl, grant.expires_at, utcnow())
        try:
            return served, backend.delivery(object_key, product_file.filename, url_ttl)
        except FileNotFoundError:
            if served != "watermarked" or stale:
                break
            log.warning(
                "grant %s: the buyer's copy is missing from storage; stamping anew", grant.id
            )
        except StorageUnavailable as exc:
            raise StorageFailed(grant.store_id, exc) from None
    log.warning("grant %s: object missing from storage", grant.id)
    raise FileUnavailable("The file is missing from the shop's storage.")


def _no_transaction_open(session: Session, postgres: bool) -> None:
    """End the session's transaction, if one is open, before the file store is asked
    anything: a bucket that is slow or down keeps the click waiting through boto3's
    timeouts and retries, and no lock may be held meanwhile (on SQLite every transaction
    holds the database's one write lock: webhooks, activations and other clicks would fail
    with "database is locked"; on PostgreSQL row locks, and a connection idle in a
    transaction). What a click has written before is safe to commit: the record of a copy
    made on the spot, nothing else.

    On PostgreSQL the click goes on in autocommit: each statement its own transaction, no
    BEGIN or COMMIT round trips (a served click is one read and one self-contained write,
    the count and its log row in one statement). On SQLite the next statement that writes
    begins a short transaction of its own.
    """
    if session.in_transaction():
        session.commit()
    if postgres:
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})


def _read_click(
    session: Session, grant_id: int, ip: str | None, now: dt.datetime, *, resume: bool
) -> tuple[Any, str | None, bool] | None:
    """The click's row (grant, file, store, copy, R2 credentials, the buyer's name and
    address), why it is refused (None: it is not) and whether it resumes a download for
    free; None when there is no such grant. Reads only (see
    :func:`connector.db.read_mostly`)."""
    row = session.execute(_CLICK, {"grant_id": grant_id}).one_or_none()
    if row is None:
        return None
    grant = row[0]
    reason = _refusal_reason(grant, now)
    resumed = resume and reason in (None, "limit") and _served_lately(session, grant, ip, now)
    return row, reason, resumed


# How long after a served (and counted) download the same address may resume it for free,
# and how many resumes one download allows (a download manager's parts, a few reconnects).
# A resume gets the rest of the file, or on R2 (and with a stale If-Range) the whole file:
# within these bounds the same address can fetch it again without counting.
RESUME_WINDOW = dt.timedelta(hours=1)
RESUMES_PER_DOWNLOAD = 32


def _served_lately(
    session: Session, grant: DownloadGrant, ip: str | None, now: dt.datetime
) -> bool:
    """Was this link served to this address (its keyed hash, either kind: :func:`ip_hashes`)
    within ``RESUME_WINDOW``, with fewer than ``RESUMES_PER_DOWNLOAD`` resumes since?"""
    if not ip:
        return False
    mine = (
        DownloadEvent.grant_id == grant.id,
        DownloadEvent.ip_hash.in_(ip_hashes(grant.store_id, ip)),
    )
    served_at = session.execute(
        select(func.max(DownloadEvent.created_at)).where(
            *mine,
            DownloadEvent.outcome == "served",
            DownloadEvent.created_at > now - RESUME_WINDOW,
        )
    ).scalar()
    if served_at is None:
        return False
    resumes = session.execute(
        select(func.count()).where(
            *mine, DownloadEvent.outcome == "resumed", DownloadEvent.created_at >= served_at
        )
    ).scalar_one()
    return resumes < RESUMES_PER_DOWNLOAD


def _count_and_log(
    statements: SessionStatements | RawConnection,
    postgres: bool,
    grant_id: int,
    store_id: int,
    order_id: int,
    now: dt.datetime,
    *,
    ip: str | None,
    user_agent: str | None,
    served: str,
) -> bool:
    """Count one download (if the grant still allows it) and log the served click; False
    when the grant no longer allows it (nothing written).

    PostgreSQL does both in one statement (the UPDATE in a CTE, the INSERT from what it
    returned): one round trip, and the log row exists exactly when the count went up.
    """
    event = _event(store_id, order_id, grant_id, "served", served, ip, user_agent)
    if postgres:
        params = {"grant_id": grant_id, "now": now} | {f"ev_{k}": v for k, v in event.items()}
        return statements.one(_COUNT_AND_LOG_PG, params) is not None
    if statements.run(_COUNT_DOWNLOAD, {"grant_id": grant_id, "now": now}) != 1:
        return False
    statements.run(_LOG_CLICK, event)
    return True


def _ready_object(
    backend: ObjectStore,
    watermark: str,
    original_key: str,
    copy: _CopyFacts | None,
    buyer: Sequence[str | None],
) -> tuple[str, str] | None:
    """(object key, what it is) when the file can be served as it stands: the original of an
    unwatermarked file, or the buyer's copy once it is ready and current (``buyer``: the
    name and address the order has now). None: a copy is still to make (or to make anew).

    Raises:
        StorageUnavailable: the store did not answer.
    """
    if watermark == "none":
        return original_key, "original"
    if copy is None or copy.status != "ready" or copy.object_key is None:
        return None
    if not _copy_is_current(backend, watermark, original_key, copy, buyer):
        return None
    return copy.object_key, "watermarked"


def _copy_is_current(
    backend: ObjectStore,
    watermark: str,
    original_key: str,
    copy: _CopyFacts,
    buyer: Sequence[str | None],
) -> bool:
    """Was the copy stamped from the original as it is now, with the file's kind of
    watermark, for the buyer the order names now? The owner may replace the original under
    the same key or change the kind; buyers must then get the new file. The shop may
    correct the order's name or address: a copy naming someone else is not served (nor kept:
    it is stamped anew over it). A copy with no recorded version or buyer (made before
    those were recorded), or a ZIP stamped before its license went into its one folder
    (WordPress found no plugin in it), is stamped anew once. An original missing now keeps
    its copy: it is what the buyer paid for, and the owner may be moving the file."""
    if copy.kind != watermark or copy.buyer_hash != buyer_hash(*stamped_as(*buyer)):
        return False
    if copy.kind == "zip" and copy.stamp_version < ZIP_LICENSE_IN_ITS_FOLDER:
        return False
    now = backend.version(original_key)  # remembered briefly on R2: no HEAD on most clicks
    return now is None or now == copy.source_version


def _object_to_serve(
    session: Session,
    backend: ObjectStore,
    grant: DownloadGrant,
    product_file: ProductFile,
    copy: WatermarkCopy | None,
    buyer: Sequence[str | None],
    *,
    stale: bool = False,
) -> tuple[str, str] | None:
    """(object key, what it is) for this grant, making the watermarked copy if need be
    (``stale``: the copy is made anew whatever its record says: its file is gone).

    None when the copy cannot be made and the product says to refuse rather than fall back.
    """
    if not stale:
        ready = _ready_object(backend, product_file.watermark, product_file.object_key, copy, buyer)
        if ready is not None:
            return ready
    if stale or copy is None or _copy_to_make(backend, product_file, copy):
        copy = make_watermarked_copy(session, grant)
        if copy is None:
            raise FileUnavailable("Your copy of this file is being prepared; try again shortly.")
    if copy.status == "ready" and copy.object_key is not None:
        return copy.object_key, "watermarked"
    return _fallback(session, product_file)


def _object_without_stamping(
    session: Session,
    backend: ObjectStore,
    product_file: ProductFile,
    copy: WatermarkCopy | None,
    buyer: Sequence[str | None],
) -> tuple[str | None, str] | None:
    """What :func:`_object_to_serve` would choose, without making the buyer's copy: the
    object key is None for a copy the click would stamp (none ready, or not current)."""
    ready = _ready_object(backend, product_file.watermark, product_file.object_key, copy, buyer)
    if ready is not None:
        return ready
    if copy is None or _copy_to_make(backend, product_file, copy):
        return None, "watermarked"
    return _fallback(session, product_file)


def _copy_to_make(backend: ObjectStore, product_file: ProductFile, copy: WatermarkCopy) -> bool:
    """Is the buyer's copy, not ready to serve as it stands, to be stamped anew now? Not
    once it failed its attempts, until the owner changes the original or its watermark."""
    return (
        copy.status == "ready"
        or copy.attempts < MAX_WATERMARK_ATTEMPTS
        or _original_changed_since(backend, product_file, copy)
    )


def _fallback(session: Session, product_file: ProductFile) -> tuple[str, str] | None:
    """The original, when the buyer's copy cannot be made and the product says to serve it
    instead; None when it says to refuse."""
    product = session.get(Product, product_file.product_id)
    if product is not None and product.watermark_fallback == "original":
        return product_file.object_key, "original-fallback"
    return None


def _original_changed_since(
    backend: ObjectStore, product_file: ProductFile, copy: WatermarkCopy
) -> bool:
    """Has the owner replaced (or uploaded) the original, or changed the kind of watermark,
    since the copy last failed? Then a copy that failed its attempts is tried again: the
    owner fixed what made it fail (an encrypted PDF, a missing file)."""
    if copy.kind != product_file.watermark:
        return True
    now = backend.version(product_file.object_key)
    return now is not None and now != copy.source_version


def watermarked_key(order: Order, grant: DownloadGrant, filename: str) -> str:
    """Per-grant key of a buyer's copy, in its store's area of copies.

    On R2 the buyer's presigned URL shows the key: its folder is the grant's id sealed, so
    it shows nothing of how many orders or downloads the store has (copies stamped before
    were under ``<order id>/<grant id>/`` and move when they are next stamped).
    """
    return f"{store_areas(order.store_id)[1]}{sealed_id(COPY_KEY, grant.id)}/{filename}"


BUYER_HASH_PURPOSE = "watermark-buyer"


def stamped_as(name: str | None, email: str | None) -> tuple[str, str]:
    """The name and address a stamp gives the buyer of an order with these details."""
    return name or email or "", email or ""


def buyer_hash(name: str, email: str) -> str:
    """Whom a stamp names, as a keyed hash (``WatermarkCopy.buyer_hash``): the copy's record
    can tell it names someone else now without keeping a name or address of its own."""
    return keyed_hash(BUYER_HASH_PURPOSE, json.dumps([name, email]))


def stamp_for(session: Session, grant: DownloadGrant) -> Stamp:
    from connector import get_settings

    order = session.get(Order, grant.order_id)
    product_file = session.get(ProductFile, grant.product_file_id)
    if order is None or product_file is None:  # pragma: no cover - foreign keys forbid it
        raise LookupError(f"grant {grant.id} has no order or file")
    product = session.get(Product, product_file.product_id)
    paid = order.date_paid or grant.created_at
    name, email = stamped_as(order.name, order.email)
    return Stamp(
        name=name,
        email=email,
        order=order.number or order.shop_order_id,
        date=paid.date().isoformat(),
        fingerprint=fingerprint_token(grant.id),
        product=product.name if product is not None else None,
        template=get_settings().watermark_template,
    )


def make_watermarked_copy(session: Session, grant: DownloadGrant) -> WatermarkCopy | None:
    """Stamp the buyer's copy of the grant's file and store it; record success or why not.

    Safe to run twice: the copy's key and content depend only on the grant and its file (a
    copy stamped under a renamed file replaces the old one, which is deleted). None when
    the buyer's details changed while stamping (an erasure, a new name): that copy is
    thrown away and the next click or job stamps again.

    Raises:
        StorageUnavailable: the store did not answer (the caller retries later).
    """
    order = session.get(Order, grant.order_id)
    product_file = session.get(ProductFile, grant.product_file_id)
    store = session.get(Store, grant.store_id)
    if order is None or product_file is None or store is None:  # pragma: no cover
        raise LookupError(f"grant {grant.id} has no order, file or store")
    stamp = stamp_for(session, grant)
    backend = store_for(store)
    key = watermarked_key(order, grant, product_file.filename)
    error: str | None = None
    # The store may be slow and stamping a large file takes seconds: end the transaction
    # before either, so no lock is held meanwhile (SQLite's BEGIN IMMEDIATE would stall
    # every writer). Nothing of this click or job is lost: only reads came before, or
    # finished copies that are safe to keep.
    session.commit()
    # Read before the download: should the original change in between, the copy records
    # the older version and is stamped again, never the other way round.
    source = backend.version(product_file.object_key)
    with tempfile.TemporaryDirectory(prefix="keygate-wm-") as folder:
        original, stamped = Path(folder) / "original", Path(folder) / "stamped"
        try:
            backend.download(product_file.object_key, original)
            if product_file.watermark == "pdf":
                stamp_pdf(original, stamped, stamp)
            else:
                stamp_zip(original, stamped, stamp)
            backend.upload(key, stamped)
        except FileNotFoundError:
            error = "the original file is not in storage"
        except WatermarkError as exc:
            error = str(exc)
    try:
        current = error is not None or _stamp_still_current(session, grant, stamp)
    except StoreDeleted:
        # Deleted while stamping: its files job may have emptied the store's areas before
        # this upload landed, and nothing would delete the copy (the buyer's name) after.
        session.rollback()
        backend.delete(key)
        raise
    if not current:
        _discard_copy(session, grant, backend, key)
        return None
    made_from = (stamp.fingerprint, source, buyer_hash(stamp.name, stamp.email))
    return _record_copy(session, grant, order, product_file, key, made_from, error)


def _stamp_still_current(session: Session, grant: DownloadGrant, stamp: Stamp) -> bool:
    """Does the stamp still say what the order says? Read under the order's row lock, which
    an erasure takes too (``erase_downloads``): an erasure that landed while the copy was
    being stamped is seen here, and one that comes later sees the copy this records."""
    hold_live_store(session, grant.store_id)  # before the order's lock, as a deletion takes them
    # The session's copy of the order refreshed. NO KEY UPDATE: a click counting this grant
    # (its row locked) logs the click under the order (a foreign-key check): it must not
    # wait for this lock while the record below waits for the grant's (two first clicks).
    lock_row(session, Order, grant.order_id, keep_key=True)
    current = stamp_for(session, grant)
    # The fingerprint is signed anew each time; everything else must match.
    return dataclasses.replace(current, fingerprint=stamp.fingerprint) == stamp


def _discard_copy(session: Session, grant: DownloadGrant, backend: ObjectStore, key: str) -> None:
    """Throw away a copy stamped with details the order no longer has (the buyer's name
    must not stay in storage after an erasure), and any record of an earlier copy: at the
    same key the upload replaced it, and one at another key (the file was renamed since)
    names the buyer as the order named them before, so its file goes too. Committed at
    once: the click then fails (503), and its rollback must not bring the record back.

    The file is deleted after the commit, with no lock held while the store answers; the
    deletion job is queued in the same commit, so the file goes even if this process stops
    (or the store does not answer) before it is deleted here."""
    from connector.downloads.privacy import DELETE_COPIES_JOB
    from connector.jobs import enqueue

    log.info("grant %s: buyer's details changed while stamping; copy discarded", grant.id)
    earlier = session.execute(
        delete(WatermarkCopy)
        .where(WatermarkCopy.grant_id == grant.id)
        .returning(WatermarkCopy.object_key)
    ).scalar_one_or_none()
    grant.watermarked_key = None
    keys = [key] if earlier in (None, key) else [key, earlier]
    enqueue(session, DELETE_COPIES_JOB, {"store_id": grant.store_id, "object_keys": keys})
    session.commit()
    try:
        backend.delete(key)
    except StorageUnavailable:
        log.warning("grant %s: discarded copy left to the deletion job", grant.id)


def _record_copy(
    session: Session,
    grant: DownloadGrant,
    order: Order,
    product_file: ProductFile,
    key: str,
    made_from: tuple[str, str | None, str],
    error: str | None,
) -> WatermarkCopy:
    """Record the copy ready (with its fingerprint, the original's version it was made from
    and whom it names, ``made_from``) or failed, under the copy's row lock (the store held first: a
    failure writes an audit entry under it)."""
    hold_live_store(session, grant.store_id)
    insert_ignoring_conflicts(
        session,
        WatermarkCopy.__table__,
        {
            "grant_id": grant.id,
            "status": "failed",
            "kind": product_file.watermark,
            "attempts": 0,
            "stamp_version": STAMP_VERSION,
            "updated_at": utcnow(),
        },
        ["grant_id"],
    )
    copy = session.execute(
        select(WatermarkCopy)
        .where(WatermarkCopy.grant_id == grant.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one()
    copy.kind = product_file.watermark
    copy.fingerprint, copy.source_version, stamped_for = made_from
    if error is None:
        if copy.object_key is not None and copy.object_key != key:
            _delete_replaced_copy(session, grant, copy.object_key)
        # Only a copy stamped now is of this version: an older one kept after a failure
        # (its file still in storage) stays what it was, for the purge to find.
        copy.stamp_version = STAMP_VERSION
        copy.buyer_hash = stamped_for
        copy.status, copy.object_key, copy.error = "ready", key, None
        copy.attempts = 0
        grant.watermarked_key = key
    else:
        copy.status, copy.error = "failed", error
        copy.attempts += 1
        log.warning("watermark for grant %s failed: %s", grant.id, error)
        record_audit(
            session,
            store_id=grant.store_id,
            actor="keygate",
            action="watermark.failed",
            subject=f"order:{order.shop_order_id}",
            detail={"grant": grant.id, "file": product_file.filename, "error": error},
        )
    session.flush()
    return copy


def _delete_replaced_copy(session: Session, grant: DownloadGrant, old_key: str) -> None:
    """Delete the file of the copy a new one replaces at another key (the owner renamed the
    file: the key holds its name). Once the record points at the new key nothing points at
    the old file, so no erasure or purge would ever reach it, and the buyer's name would
    stay in storage. The deletion job is queued with the new record, in its transaction:
    it goes exactly when the record moves. Should the grant be stamped at the old key again
    before the job runs (the file renamed back), the job leaves that copy alone, as for
    every copy it deletes."""
    from connector.downloads.privacy import DELETE_COPIES_JOB
    from connector.jobs import enqueue

    log.info("grant %s: copy stamped at a new key; the old one is deleted", grant.id)
    enqueue(session, DELETE_COPIES_JOB, {"store_id": grant.store_id, "object_keys": [old_key]})
