"""The vault's tables: a store's credentials, its shop connection and registered webhooks."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from connector.db import Base, UTCDateTime, utcnow
from connector.vault.crypto import Encrypted, EncryptedJSON

CREDENTIAL_KINDS = ("r2", "brevo", "woocommerce")


class KeyCheck(Base):
    """Proof of the keys this database was made with, checked when Keygate starts: a server
    given another master key or secret key refuses to start, instead of answering 500s (or,
    worse, "no such license" to every product). One row."""

    __tablename__ = "key_checks"

    id: Mapped[int] = mapped_column(primary_key=True)
    master_check: Mapped[str] = mapped_column(Encrypted)  # a known text, encrypted
    secret_check: Mapped[str] = mapped_column(String(64))  # a keyed hash of a known text
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class Credential(Base):
    """One set of credentials of a store (r2, brevo or woocommerce), encrypted as a whole."""

    __tablename__ = "credentials"
    __table_args__ = (UniqueConstraint("store_id", "kind"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class ShopConnection(Base):
    """How a store is connected to its shop (wc-auth), and when it was last reconciled."""

    __tablename__ = "shop_connections"

    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), unique=True)
    # connected | disconnected
    status: Mapped[str] = mapped_column(String(16), default="disconnected")
    # WooCommerce's id of the API key it made for Keygate, and the shop user who approved.
    shop_key_id: Mapped[str | None] = mapped_column(String(64), default=None)
    shop_user_id: Mapped[str | None] = mapped_column(String(64), default=None)
    key_permissions: Mapped[str | None] = mapped_column(String(16), default=None)
    connected_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    disconnected_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    reconciled_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    products_synced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    # Shop product id -> why its _keygate_* meta was not applied, as of the last product sync.
    products_invalid: Mapped[dict[str, str] | None] = mapped_column(JSON, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)


class WebhookRegistration(Base):
    """A webhook Keygate registered in the shop, by topic, with the shop's id for it."""

    __tablename__ = "webhook_registrations"
    __table_args__ = (UniqueConstraint("store_id", "topic"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), index=True)
    topic: Mapped[str] = mapped_column(String(64))
    shop_webhook_id: Mapped[str] = mapped_column(String(64))
    # The shop's status when last seen: active | paused | disabled
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    checked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    # Where the shop delivers it, as last seen (None: not seen since this was recorded): a
    # webhook registered while KEYGATE_BASE_URL named another address keeps delivering there.
    delivery_url: Mapped[str | None] = mapped_column(Text, default=None)


class ShopNote(Base):
    """An order note Keygate wrote back to the shop; the unique marker makes it once only."""

    __tablename__ = "shop_notes"
    __table_args__ = (UniqueConstraint("order_id", "marker"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), index=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    marker: Mapped[str] = mapped_column(String(64))
    shop_note_id: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
