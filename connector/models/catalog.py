"""Products the owner configured, their license policy and their files."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from connector.db import Base, UTCDateTime, utcnow

WATERMARKS = ("none", "pdf", "zip")
# When a buyer's watermarked copy cannot be made (encrypted or broken file).
WATERMARK_FALLBACKS = ("refuse", "original")


class Product(Base):
    """A shop product (or variation) Keygate licenses. Policy fields: None means default."""

    __tablename__ = "products"
    __table_args__ = (UniqueConstraint("store_id", "shop_product_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    store_id: Mapped[int] = mapped_column(ForeignKey("stores.id"), index=True)
    shop_product_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(300))
    activation_limit: Mapped[int | None] = mapped_column(Integer, default=None)
    duration_days: Mapped[int | None] = mapped_column(Integer, default=None)
    update_days: Mapped[int | None] = mapped_column(Integer, default=None)
    staging_free: Mapped[bool | None] = mapped_column(Boolean, default=None)
    download_limit: Mapped[int | None] = mapped_column(Integer, default=None)
    download_days: Mapped[int | None] = mapped_column(Integer, default=None)
    # An expired license keeps working for versions released before it expired.
    perpetual_fallback: Mapped[bool | None] = mapped_column(Boolean, default=None)
    # Binding changes (activations + deactivations) in 30 days past which a license is flagged.
    abuse_threshold: Mapped[int | None] = mapped_column(Integer, default=None)
    abuse_suspend: Mapped[bool | None] = mapped_column(Boolean, default=None)
    # The longest an offline license file of its keys lasts (days); None: as the caller asks.
    offline_days: Mapped[int | None] = mapped_column(Integer, default=None)
    # Where the settings came from: "keygate" (admin API/UI) wins over "shop" (product meta).
    watermark_fallback: Mapped[str] = mapped_column(String(16), default="refuse")
    source: Mapped[str] = mapped_column(String(16), default="keygate")
    # A product configured from shop meta whose meta is gone (or the product): new sales
    # no longer match it; what it licensed already keeps working (the row stays).
    retired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    files: Mapped[list[ProductFile]] = relationship(
        back_populates="product", order_by="ProductFile.position", cascade="all, delete-orphan"
    )


class ProductFile(Base):
    """A file in the owner's bucket (or embedded storage) delivered with a product."""

    __tablename__ = "product_files"
    __table_args__ = (UniqueConstraint("product_id", "object_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("products.id"), index=True)
    object_key: Mapped[str] = mapped_column(String(1024))
    filename: Mapped[str] = mapped_column(String(300))
    watermark: Mapped[str] = mapped_column(String(8), default="none")
    position: Mapped[int] = mapped_column(Integer, default=0)
    # Kept when the owner removes a file from the product, so grants already issued still
    # resolve; removed files get no new grants.
    active: Mapped[bool] = mapped_column(Boolean, default=True)

    product: Mapped[Product] = relationship(back_populates="files")
