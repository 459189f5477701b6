"""A store's storage failing buyers' clicks: told to its owner, not only to the buyer.

A click the storage cannot serve (the bucket does not answer, or refuses Keygate's
credentials or request: a rotated or revoked R2 token, a renamed or deleted bucket) is the
buyer's 503 page, and its transaction is rolled back: nothing of the click is kept. The
owner is told in an audit entry, ``downloads.storage_failed``, written in its own short
transaction after the rollback: what failed (``kind``: ``refused`` or ``unreachable``, and
the service's HTTP status when it answered), never the buyer, the link, the key or the
endpoint. At most one a store while a failure is fresh (:data:`RECORD_EVERY`) and no click
has been served since, so an outage with thousands of clicks is one entry, not thousands.

The dashboard names the latest such entry for :data:`NEWS`, until a click of the store is
served after it (:func:`open_failure`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from connector.audit import record_audit
from connector.db import read_mostly, utcnow
from connector.integrations.r2 import StorageUnavailable
from connector.models import AuditEvent, DownloadEvent
from connector.redact import keygate_logger

log = keygate_logger(__name__)

STORAGE_FAILED = "downloads.storage_failed"
REFUSED = "refused"
UNREACHABLE = "unreachable"
# One entry a store in this time while clicks keep failing (none served in between).
RECORD_EVERY = dt.timedelta(minutes=15)
# How long an unrecovered failure is news on the dashboard.
NEWS = dt.timedelta(hours=24)
# What the recording may wait for a lock on PostgreSQL: the buyer's 503 page waits for it.
LOCK_WAIT = "2s"


@dataclass(frozen=True)
class StorageFailure:
    """Why a store's storage failed a click: ``kind`` (:data:`REFUSED`, :data:`UNREACHABLE`)
    and the service's HTTP status when it answered (0: it did not)."""

    store_id: int
    kind: str
    status: int = 0

    @classmethod
    def of(cls, store_id: int, exc: StorageUnavailable) -> StorageFailure:
        return cls(store_id, REFUSED if exc.refused else UNREACHABLE, exc.status)


def _latest(session: Session, store_id: int, since: dt.datetime) -> AuditEvent | None:
    return session.scalars(
        select(AuditEvent)
        .where(
            AuditEvent.store_id == store_id,
            AuditEvent.action == STORAGE_FAILED,
            AuditEvent.created_at > since,
        )
        .order_by(AuditEvent.id.desc())
        .limit(1)
    ).first()


def _served_since(session: Session, store_id: int, when: dt.datetime) -> bool:
    """Was a click of the store served (or resumed) after ``when``: its storage answered."""
    return (
        session.scalar(
            select(DownloadEvent.id)
            .where(
                DownloadEvent.store_id == store_id,
                DownloadEvent.outcome.in_(("served", "resumed")),
                DownloadEvent.created_at > when,
            )
            .limit(1)
        )
        is not None
    )


def open_failure(session: Session, store_id: int) -> AuditEvent | None:
    """The store's latest ``downloads.storage_failed`` of the last :data:`NEWS`, unless a
    click of the store was served after it (the storage answers again)."""
    latest = _latest(session, store_id, utcnow() - NEWS)
    if latest is None or _served_since(session, store_id, latest.created_at):
        return None
    return latest


def record_storage_failure(engine: Engine, failure: StorageFailure) -> bool:
    """Record ``failure`` for the store's owner, in a transaction of its own (the click's is
    rolled back), unless one is fresh and no click was served since; True when recorded.
    Never raises: the buyer's 503 page does not depend on it."""

    def unit() -> bool:
        latest = _latest(session, failure.store_id, utcnow() - RECORD_EVERY)
        if latest is not None and not _served_since(session, failure.store_id, latest.created_at):
            return False
        if postgres:
            session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_WAIT}'"))
        detail: dict[str, object] = {"kind": failure.kind}
        if failure.status:
            detail["status"] = failure.status
        record_audit(
            session,
            store_id=failure.store_id,
            actor="keygate",
            action=STORAGE_FAILED,
            detail=detail,
        )
        session.flush()
        return True

    postgres = engine.dialect.name == "postgresql"
    try:
        with Session(engine, expire_on_commit=False) as session:
            # Reads only while an entry is fresh (every click of an outage); a write's
            # transaction of its own otherwise.
            recorded = read_mostly(session, unit)
            session.commit()
    except SQLAlchemyError as exc:
        log.warning(
            "store %s: buyers' downloads failed (storage %s); not recorded: %s",
            failure.store_id,
            failure.kind,
            type(exc).__name__,
        )
        return False
    if recorded:
        log.warning(
            "store %s: buyers' downloads failed: the storage %s%s",
            failure.store_id,
            "refused Keygate's request" if failure.kind == REFUSED else "did not answer",
            f" (HTTP {failure.status})" if failure.status else "",
        )
    return recorded
