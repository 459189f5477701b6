"""Tables of the license API: activations, signing keys, releases, security records."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from connector.db import Base, UTCDateTime, utcnow
from connector.vault.crypto import Encrypted


class Activation(Base):
    """A license bound to one identity: (site, fingerprint). Empty text means "not given".

    The unique key makes activating the same identity twice return the same row, and the
    seat limit is checked under a lock on the license row (see licensing.service).
    """

    __tablename__ = "activations"
    # The portal's and the admin's Deactivate name a seat by id: never given to another.
    __table_args__ = (
        UniqueConstraint("license_id", "site", "fingerprint"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    license_id: Mapped[int] = mapped_column(ForeignKey("licenses.id"), index=True)
    site: Mapped[str] = mapped_column(String(253), default="")
    fingerprint: Mapped[str] = mapped_column(String(200), default="")
    label: Mapped[str | None] = mapped_column(String(200), default=None)
    # Staging sites under a staging_free policy do not take a seat.
    staging: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class BindingChange(Base):
    """One activation or deactivation, counted for the abuse signal."""

    __tablename__ = "binding_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    license_id: Mapped[int] = mapped_column(ForeignKey("licenses.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # activate | deactivate
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class LicenseFlag(Base):
    """A license flagged for the owner (too many binding changes); one flag per license."""

    __tablename__ = "license_flags"

    id: Mapped[int] = mapped_column(primary_key=True)
    license_id: Mapped[int] = mapped_column(ForeignKey("licenses.id"), unique=True)
    reason: Mapped[str] = mapped_column(String(64))
    binding_changes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class SigningKey(Base):
    """An Ed25519 key that signs answers. The private half is encrypted at rest.

    States: *next* (published, not signing yet: ship it in products first), *active* (the
    newest activated key that is not retired signs), *retired* (still published so that
    answers and license files signed with it can be checked).
    """

    __tablename__ = "signing_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    kid: Mapped[str] = mapped_column(String(64), unique=True)
    algorithm: Mapped[str] = mapped_column(String(16), default="ed25519")
    public_key: Mapped[str] = mapped_column(String(64))  # standard base64 of the raw 32 bytes
    private_key: Mapped[str] = mapped_column(Encrypted)  # base64 of the raw 32-byte seed
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    retired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    @property
    def status(self) -> str:
        if self.retired_at is not None:
            return "retired"
        return "active" if self.activated_at is not None else "next"


class Release(Base):
    """A published version of a product, offered by update-check."""

    __tablename__ = "releases"
    # Never an id used before, on SQLite too (links name releases by id: migration 0018).
    __table_args__ = (UniqueConstraint("product_id", "version"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    version: Mapped[str] = mapped_column(String(64))
    object_key: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    published_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    changelog: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class SecurityEvent(Base):
    """A security record: rate-limit breaches and the like. The IP is kept as a keyed hash."""

    __tablename__ = "security_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)  # rate_limited
    scope: Mapped[str | None] = mapped_column(String(16), default=None)  # ip | key
    ip_hash: Mapped[str | None] = mapped_column(String(64))  # None once erased
    path: Mapped[str] = mapped_column(String(200))
    license_id: Mapped[int | None] = mapped_column(ForeignKey("licenses.id"), default=None)
    user_agent: Mapped[str | None] = mapped_column(String(300), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
