"""The daily sweep of buyers' stamped copies that no record refers to.

A stamped copy (the buyer's name and address inside) leaves storage through its
``watermark_copies`` row: an erasure, a refund, the purge each delete the row and queue the
file's deletion. A file whose row is missing is reached by none of them, and such files
happen: a ``keygate backup`` copies the files after the database (a copy stamped in
between, for a grant the snapshot lacks, comes back with a restore), a process is killed
between an upload and its record, a deletion job gives up while the storage is down.

Once a day every store's area of copies (``watermarked/<store id>/``) is listed in the
storage it uses and, for a store with a bucket of its own, in Keygate's shared storage too
(copies stamped there before). What no row refers to and was last written more than
:data:`UNRECORDED_MARGIN` ago goes to the copies' deletion job, which leaves alone a key
that a copy is recorded at by the time it runs. A storage that does not answer is named in
a warning and listed again by the next sweep.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select, union
from sqlalchemy.orm import Session

from connector.db import db, utcnow
from connector.downloads.privacy import DELETE_COPIES_JOB
from connector.downloads.storage import (
    ObjectStore,
    SharedArea,
    StorageUnavailable,
    shared_area,
    store_areas,
    store_for,
)
from connector.jobs import enqueue, handles
from connector.models import DownloadGrant, Store, WatermarkCopy
from connector.redact import keygate_logger

log = keygate_logger(__name__)

SWEEP_COPIES_JOB = "downloads.sweep_copies"

# A copy's file is written before its row: stamped, uploaded, then recorded once the
# order's lock shows the buyer's details unchanged, all in one call that takes seconds
# (minutes for a large file on a slow bucket). A file that young with no row may be such a
# copy, its row about to be committed. A day is far longer than any stamping, and than any
# difference between Keygate's clock and the bucket's (R2 dates objects by its own), while
# an unrecorded copy still goes within two days (this margin, then the next daily sweep).
UNRECORDED_MARGIN = dt.timedelta(days=1)
# Keys per deletion job (and per look-up of which are recorded).
BATCH = 500


@handles(SWEEP_COPIES_JOB)
def sweep_job(_payload: dict[str, Any]) -> None:
    sweep_unrecorded_copies(db.session, utcnow())


def sweep_unrecorded_copies(session: Session, now: dt.datetime) -> int:
    """Queue the deletion of every stamped copy in storage that no row records and that
    was last written before ``now`` less :data:`UNRECORDED_MARGIN`; returns how many.

    Commits as it goes (no transaction stays open while a storage answers). Logs counts and
    store ids only, never a key: a key holds a file's name.
    """
    cutoff = now - UNRECORDED_MARGIN
    store_ids = session.scalars(select(Store.id).order_by(Store.id)).all()
    queued, missed = 0, 0
    for store_id in store_ids:
        store = session.get(Store, store_id)
        if store is None:  # pragma: no cover - store rows are emptied, never deleted
            continue
        backend = store_for(store)
        storages = [backend]
        if not isinstance(backend, SharedArea):
            storages.append(shared_area(store_id))
        session.commit()
        for storage in storages:
            where = "Keygate's storage" if isinstance(storage, SharedArea) else "its own bucket"
            try:
                found = _sweep_area(session, store_id, storage, cutoff)
            except (StorageUnavailable, ValueError) as exc:
                session.rollback()
                missed += 1
                log.warning(
                    "copies sweep: store %s, %s not listed (%s); the next sweep tries again",
                    store_id,
                    where,
                    exc,
                )
                continue
            if found:
                log.info(
                    "copies sweep: store %s, %s: %s stamped copies no record refers to,"
                    " queued for deletion",
                    store_id,
                    where,
                    found,
                )
            queued += found
    log.info(
        "copies sweep: %s unrecorded stamped copies queued for deletion; %s storages not listed",
        queued,
        missed,
    )
    return queued


def _sweep_area(session: Session, store_id: int, storage: ObjectStore, cutoff: dt.datetime) -> int:
    """Queue the unrecorded copies older than ``cutoff`` in the store's area of copies of
    ``storage``, a listing page's worth at a time; returns how many."""
    queued = 0
    batch: list[str] = []
    for item in storage.list_objects(store_areas(store_id)[1]):
        if item.modified < cutoff:
            batch.append(item.key)
        if len(batch) == BATCH:
            queued += _queue_unrecorded(session, store_id, batch)
            batch = []
    if batch:
        queued += _queue_unrecorded(session, store_id, batch)
    return queued


def _queue_unrecorded(session: Session, store_id: int, keys: list[str]) -> int:
    """Queue the deletion of those of ``keys`` no copy of the store records (its row's key,
    or its grant's), and commit; returns how many."""
    recorded = set(
        session.scalars(
            union(
                select(WatermarkCopy.object_key)
                .join(DownloadGrant, WatermarkCopy.grant_id == DownloadGrant.id)
                .where(DownloadGrant.store_id == store_id, WatermarkCopy.object_key.in_(keys)),
                select(DownloadGrant.watermarked_key).where(
                    DownloadGrant.store_id == store_id, DownloadGrant.watermarked_key.in_(keys)
                ),
            )
        )
    )
    unrecorded = [key for key in keys if key not in recorded]
    if unrecorded:
        enqueue(session, DELETE_COPIES_JOB, {"store_id": store_id, "object_keys": unrecorded})
    session.commit()
    return len(unrecorded)
