"""Records: webhook deliveries, the outbox, audit events, stored mails."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from connector.db import Base, UTCDateTime, utcnow
from connector.vault.crypto import Encrypted

# The outcome of a delivery refused for its signature (kept at most once a minute a store).
BAD_SIGNATURE = "bad_signature"
# The outcome of a delivery whose body is over KEYGATE_MAX_BODY_BYTES (not read; kept as often).
TOO_LARGE = "too_large"


class WebhookDelivery(Base):
    """A webhook we received. The body is not kept (it holds addresses); its hash is."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), index=True)
    topic: Mapped[str | None] = mapped_column(String(64), default=None)
    shop_delivery_id: Mapped[str | None] = mapped_column(String(64), default=None)
    shop_webhook_id: Mapped[str | None] = mapped_column(String(64), default=None)
    resource_id: Mapped[str | None] = mapped_column(String(64), default=None)
    body_sha256: Mapped[str] = mapped_column(String(64))
    # applied | stale | ignored | rejected | BAD_SIGNATURE | TOO_LARGE
    # (body_sha256 is empty for TOO_LARGE: the body was not read)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Job(Base):
    """An outbox row, written in the same transaction as the data it follows.

    Payloads carry ids only (and flags, and when Brevo last refused a mail job's attempt),
    never secrets or keys. ``dedupe_key`` (unique) makes enqueueing the same work twice a
    no-op.
    """

    __tablename__ = "jobs"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)
    # pending | running | done | dead
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_after: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    locked_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)


class AuditEvent(Base):
    """Who did what to which license, order, credential or setting."""

    __tablename__ = "audit_events"
    __table_args__ = (
        # A customer's export and erasure, and the order page, find a store's entries about
        # an order or license. Not the subject alone: SQLite would read the whole log
        # through it to group the dashboard's sign-in lockouts by subject.
        Index("ix_audit_events_store_id_subject", "store_id", "subject"),
        # The dashboard's count of each store's refunds not applied, and the log of one
        # store (its kinds of entries, one kind): without it SQLite read all of the store's.
        Index("ix_audit_events_store_id_action", "store_id", "action"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[int | None] = mapped_column(ForeignKey("stores.id"), index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str | None] = mapped_column(String(200), default=None)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Mail(Base):
    """A mail Keygate sent (or will send). Recipient and body are stored encrypted."""

    __tablename__ = "mails"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[int | None] = mapped_column(ForeignKey("stores.id"), index=True)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    to_email: Mapped[str] = mapped_column(Encrypted)
    subject: Mapped[str] = mapped_column(Encrypted)
    body_text: Mapped[str] = mapped_column(Encrypted)
    body_html: Mapped[str | None] = mapped_column(Encrypted, default=None)
    backend: Mapped[str] = mapped_column(String(16))
    provider_message_id: Mapped[str | None] = mapped_column(String(200), default=None)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class BrevoRemoval(Base):
    """An address to take out of a store's Brevo list (customer erased, consent withdrawn),
    kept until job ``brevo.remove_contact`` has done it, then deleted.

    The job carries this row's id; the address is here, encrypted like the stored mails
    (and re-encrypted by ``keygate rotate-keys``, which a token in a job payload would not be).
    """

    __tablename__ = "brevo_removals"

    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), index=True)
    list_id: Mapped[int] = mapped_column(BigInteger)
    email: Mapped[str] = mapped_column(Encrypted)
    # erasure | withdrawal
    reason: Mapped[str] = mapped_column(String(16))
    # What the audit entry names: the erasure's pseudonym or the order, never the address.
    subject: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
