"""The downloads log and watermarked copies in privacy requests and retention.

- export: the customer's clicks (time, outcome, what was served, IP hash, user agent), their
  watermarked copies (file, state, the fingerprint hidden in them) and download windows a
  renewal moved;
- erase: clicks keep their time and outcome (download limits are enforced from the grant)
  but lose the IP hash and user agent; watermarked copies carry the buyer's name, so they
  are forgotten and deleted from storage by a job (a later click stamps a new copy with the
  erased identity);
- purge: clicks older than ``retention_download_log_days``, and the stamped copies no link
  serves any more.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from connector.db import db, iso
from connector.jobs import enqueue, handles
from connector.models import (
    DownloadEvent,
    DownloadGrant,
    GrantExtension,
    Order,
    ProductFile,
    Store,
    WatermarkCopy,
)
from connector.privacy.service import delete_in_batches, register_hooks

DELETE_COPIES_JOB = "downloads.delete_copies"


def _with_filenames(session: Session, model: Any, order_ids: list[int]) -> list[Any]:
    """Rows of ``model`` (a per-grant record: watermarked copies, grant extensions) of the
    orders' grants, each with its file's name, oldest first."""
    if not order_ids:
        return []
    rows = session.execute(
        select(model, ProductFile.filename)
        .join(DownloadGrant, model.grant_id == DownloadGrant.id)
        .join(ProductFile, DownloadGrant.product_file_id == ProductFile.id)
        .where(DownloadGrant.order_id.in_(order_ids))
        .order_by(model.id)
    )
    return [(row, filename) for row, filename in rows]


def export_downloads(session: Session, orders: list[Order]) -> dict[str, Any]:
    order_ids = [o.id for o in orders]
    events: list[DownloadEvent] = []
    if order_ids:
        events = list(
            session.scalars(
                select(DownloadEvent)
                .where(DownloadEvent.order_id.in_(order_ids))
                .order_by(DownloadEvent.id)
            )
        )
    copies: list[tuple[WatermarkCopy, str]] = _with_filenames(session, WatermarkCopy, order_ids)
    extensions: list[tuple[GrantExtension, str]] = _with_filenames(
        session, GrantExtension, order_ids
    )
    return {
        "download_log": [
            {
                "at": iso(e.created_at),
                "outcome": e.outcome,
                "served": e.served,
                "ip_hash": e.ip_hash,
                "user_agent": e.user_agent,
            }
            for e in events
        ],
        "watermarked_copies": [
            {
                "filename": filename,
                "status": copy.status,
                "kind": copy.kind,
                "fingerprint": copy.fingerprint,
                "error": copy.error,
                "updated_at": iso(copy.updated_at),
            }
            for copy, filename in copies
        ],
        "download_extensions": [
            {
                "filename": filename,
                "previous_expires_at": iso(extension.previous_expires_at),
                "expires_at": iso(extension.expires_at),
            }
            for extension, filename in extensions
        ],
    }


def erase_downloads(session: Session, orders: list[Order]) -> None:
    order_ids = [o.id for o in orders]
    if not order_ids:
        return
    # The orders' row locks first: a copy being recorded right now (it takes the same lock,
    # ``_stamp_still_current``) is either seen below and deleted, or sees the erasure and
    # throws itself away. Never a buyer's name left behind in storage. NO KEY UPDATE (the
    # erasure changes no key of the order): a click holding its grant's row while it logs
    # under the order (a foreign-key check, FOR KEY SHARE) is not kept waiting for this
    # lock while this erasure waits for the grant's (a deadlock).
    session.execute(select(Order.id).where(Order.id.in_(order_ids)).with_for_update(key_share=True))
    session.execute(
        update(DownloadEvent)
        .where(DownloadEvent.order_id.in_(order_ids))
        .values(ip_hash=None, user_agent=None)
    )
    _delete_copies(session, DownloadGrant.order_id.in_(order_ids))


def _delete_copies(session: Session, which: ColumnElement[bool]) -> int:
    """Forget the stamped copies of the grants ``which`` selects, and delete them from
    storage (a job, retried through an outage). A later click of a grant that gives the file
    again stamps a new one. Returns how many."""
    copies = session.execute(
        select(WatermarkCopy, DownloadGrant)
        .join(DownloadGrant, WatermarkCopy.grant_id == DownloadGrant.id)
        .where(which)
    ).all()
    keys_by_store: dict[int, list[str]] = {}
    for copy, grant in copies:
        if copy.object_key:
            keys_by_store.setdefault(grant.store_id, []).append(copy.object_key)
        grant.watermarked_key = None
        session.delete(copy)
    for store_id, keys in keys_by_store.items():
        enqueue(session, DELETE_COPIES_JOB, {"store_id": store_id, "object_keys": keys})
    return len(copies)


def purge_download_log(session: Session, now: dt.datetime) -> dict[str, int]:
    """The daily purge: click records past their retention, and the buyers' stamped copies
    (names and addresses in them) of links that no longer give the file: withdrawn
    (refunded, cancelled, revoked), expired or used up; copies of a kind their file's
    watermark no longer makes (the owner turned it off, or changed it); and copies naming
    someone the order no longer names. Kept only while they can serve."""
    from connector import get_settings

    cutoff = now - dt.timedelta(days=get_settings().retention_download_log_days)
    clicks = delete_in_batches(session, DownloadEvent, DownloadEvent.created_at < cutoff)
    ended = or_(
        DownloadGrant.revoked_at.is_not(None),
        DownloadGrant.expires_at <= now,
        and_(
            DownloadGrant.download_limit.is_not(None),
            DownloadGrant.download_count >= DownloadGrant.download_limit,
        ),
    )
    # A link serves the original of a file whose watermark is "none", and stamps a new copy
    # over one of another kind: a copy its file's watermark no longer makes is never served
    # again, yet its link may live for ever.
    not_made_any_more = (
        select(ProductFile.id)
        .where(
            ProductFile.id == DownloadGrant.product_file_id,
            ProductFile.watermark != WatermarkCopy.kind,
        )
        .exists()
    )
    # ZIP copies stamped when LICENSE.txt held the license key: deleted, a click stamps anew.
    with_key = and_(WatermarkCopy.kind == "zip", WatermarkCopy.stamp_version == 1)
    # A batch at a time, each committed (as the records, see delete_in_batches): the first
    # purge of an old shop's copies, all of whose links have long expired, is not one
    # transaction holding SQLite's write lock. Each batch starts after the last copy of the
    # one before: copies of live links are read once, not once per batch.
    removed, after = 0, 0
    while True:
        batch = session.scalars(
            select(WatermarkCopy.id)
            .join(DownloadGrant, WatermarkCopy.grant_id == DownloadGrant.id)
            .where(WatermarkCopy.id > after, or_(ended, not_made_any_more, with_key))
            .order_by(WatermarkCopy.id)
            .limit(COPY_BATCH)
        ).all()
        if batch:
            removed += _delete_copies(session, WatermarkCopy.id.in_(batch))
            session.commit()
        if len(batch) < COPY_BATCH:
            break
        after = batch[-1]
    # Copies are read (and those found stale named by id, never more than a statement may
    # carry: 65535 on PostgreSQL) a batch at a time: however many there are, every copy once
    # how a buyer is hashed changes, only a batch's buyers are in memory.
    next_after: int | None = 0
    while next_after is not None:
        next_after, stale = _naming_someone_else(session, next_after)
        if stale:
            removed += _delete_copies(session, WatermarkCopy.id.in_(stale))
            session.commit()
    return {"download_events": clicks, "watermark_copies": removed}


COPY_BATCH = 500


def _naming_someone_else(session: Session, after: int) -> tuple[int | None, list[int]]:
    """Of the :data:`COPY_BATCH` copies next after id ``after``, those stamped for a buyer
    their order no longer names (the shop corrected the name or address since): never
    served again, they would keep the wrong person's details in storage until the next
    click stamped over them. Returns the last copy read (None once all were) and those ids.
    Copies made before whom they name was recorded (no ``buyer_hash``) are left to their
    next click."""
    from connector.downloads.service import buyer_hash, stamped_as

    copies = session.execute(
        select(WatermarkCopy.id, WatermarkCopy.buyer_hash, Order.name, Order.email)
        .join(DownloadGrant, WatermarkCopy.grant_id == DownloadGrant.id)
        .join(Order, DownloadGrant.order_id == Order.id)
        .where(WatermarkCopy.id > after, WatermarkCopy.buyer_hash.is_not(None))
        .order_by(WatermarkCopy.id)
        .limit(COPY_BATCH)
    ).all()
    stale = [
        copy_id
        for copy_id, stamped_for, name, email in copies
        if stamped_for != buyer_hash(*stamped_as(name, email))
    ]
    return (copies[-1][0] if len(copies) == COPY_BATCH else None), stale


@handles(DELETE_COPIES_JOB)
def delete_copies(payload: dict[str, Any]) -> None:
    """Delete stamped copies from storage (safe to run twice): erased buyers', purged ones,
    and those a copy stamped under a renamed file replaced.

    A copy's key is the same each time its grant is stamped (while its file keeps its name,
    or gets it back): a link that works again (paid again, renewed, or simply clicked after
    an erasure) may be stamped anew at that key since this job was queued, with what the
    order says now. That copy stays: a key is skipped when a copy is recorded at it. A click
    can also stamp it between that check and the delete (its upload replaced the file the
    delete then takes): so after each delete the key is looked up again, and a copy
    recorded there meanwhile whose file is gone is stamped again at once. (A click that
    records its copy later still finds the file gone when it delivers it, and stamps it
    anew itself.)

    A store with a bucket of its own may still have copies in Keygate's shared storage,
    stamped there before the owner saved its R2 credentials and never served since: each
    key is deleted there too.
    """
    from connector.downloads.service import make_watermarked_copy
    from connector.downloads.storage import (
        SharedArea,
        StorageUnavailable,
        shared_area,
        store_areas,
        store_for,
    )
    from connector.jobs import RetryLater

    store = db.session.get(Store, payload["store_id"])
    if store is None:
        return
    backend = store_for(store)
    if not isinstance(backend, SharedArea):
        shared, copies_area = shared_area(store.id), store_areas(store.id)[1]
        try:
            for key in payload["object_keys"]:
                if key.startswith(copies_area):
                    shared.delete(key)
        except StorageUnavailable as exc:
            raise RetryLater(str(exc)) from None
    for key in payload["object_keys"]:
        # Asked per key, right before it goes: a long list takes a while, and a click may
        # stamp one of them anew meanwhile. No transaction stays open while storage works.
        stamped_again = _copy_at(key, ready_only=False)
        db.session.commit()
        if stamped_again is not None:
            continue
        try:
            backend.delete(key)
            restamp = _copy_at(key, ready_only=True)
            db.session.commit()
            if restamp is None or backend.exists(key):
                continue
            grant = db.session.get(DownloadGrant, restamp)
            if grant is not None:
                make_watermarked_copy(db.session, grant)
        except StorageUnavailable as exc:
            raise RetryLater(str(exc)) from None


def _copy_at(key: str, *, ready_only: bool) -> int | None:
    """The grant of a copy recorded at ``key`` (only a ready one: ``ready_only``), if any."""
    recorded = select(DownloadGrant.id).join(
        WatermarkCopy, WatermarkCopy.grant_id == DownloadGrant.id
    )
    recorded = recorded.where(WatermarkCopy.object_key == key)
    if ready_only:
        recorded = recorded.where(WatermarkCopy.status == "ready")
    grant_id: int | None = db.session.scalar(recorded.limit(1))
    return grant_id


def register() -> None:
    register_hooks(export_downloads, erase_downloads, purge_download_log)
