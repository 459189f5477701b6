"""Stores (one shop each) and the people who administer Keygate."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import generate_password_hash

from connector.db import Base, UTCDateTime, utcnow
from connector.vault.crypto import Encrypted


class Store(Base):
    """A connected shop. ``public_id`` is the store_id in webhook URLs and the CLI."""

    __tablename__ = "stores"

    id: Mapped[int] = mapped_column(primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(String(500))
    platform: Mapped[str] = mapped_column(String(32), default="woocommerce")
    webhook_secret: Mapped[str] = mapped_column(Encrypted)
    # The secret a re-registration replaced, still taken until Keygate has deleted the
    # webhooks signed with it (``previous_secret_until`` at the latest): the shop's
    # deliveries meanwhile are not refused. None once they are gone.
    previous_webhook_secret: Mapped[str | None] = mapped_column(Encrypted, default=None)
    previous_secret_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    api_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # License key format: PREFIX-XXXXX-XXXXX-XXXXX-XXXXC (the last character is a check).
    key_prefix: Mapped[str] = mapped_column(String(16), default="")
    key_groups: Mapped[int] = mapped_column(Integer, default=4)
    key_group_length: Mapped[int] = mapped_column(Integer, default=5)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when the owner deleted the store: the row stays, emptied, so that its id (and
    # with it its areas of shared storage) is never given to another store.
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    def webhook_secrets(self, now: dt.datetime) -> list[str]:
        """The secrets a delivery may be signed with now: the current one, and the one a
        re-registration replaced while the webhooks signed with it are being deleted."""
        taken = [self.webhook_secret]
        until = self.previous_secret_until
        if self.previous_webhook_secret and until is not None and now < until:
            taken.append(self.previous_webhook_secret)
        return taken


class AdminUser(Base):
    """A person who may sign in to /admin (created by `keygate init`)."""

    __tablename__ = "admin_users"
    # Never an id used before, on SQLite too (a session names its admin by id: migration 0018).
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(Text)
    store_id: Mapped[int | None] = mapped_column(ForeignKey("stores.id"), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Sessions carry the generation they were signed in under; signing out moves it on, so
    # a copy of the session cookie taken before is refused from then on.
    session_generation: Mapped[int] = mapped_column(default=0, server_default="0")

    def set_password(self, password: str) -> None:
        """A new password; every session signed in before it ends."""
        self.password_hash = generate_password_hash(password)
        self.session_generation += 1
