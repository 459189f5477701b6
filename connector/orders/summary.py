"""What a buyer has from an order: license keys and download links, for mails and pages."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from connector.db import shown_utc, utcnow
from connector.models import (
    DownloadGrant,
    License,
    LineItem,
    Order,
    Product,
    ProductFile,
)
from connector.models.licensing import LINE_CHANGED, by_the_order
from connector.orders.renewals import own_renewed_query, renewed_by_query
from connector.tokens import download_url, portal_url


@dataclass(frozen=True)
class LicenseView:
    id: int
    key: str
    product_id: str | None
    product_name: str
    status: str
    expires_at: dt.datetime | None
    updates_until: dt.datetime | None
    activation_limit: int | None
    status_reason: str | None = None

    @property
    def revoked_by_its_order(self) -> bool:
        return self.status != "active" and by_the_order(self.status_reason)

    @property
    def why_not_active(self) -> str | None:
        """Why a suspended or revoked license no longer works, as its buyer reads it (None
        while it works): a buyer whose key stopped must know whether to wait, pay, or ask."""
        if self.status == "active":
            return None
        reason = self.status_reason or ""
        if reason == "abuse":
            return "paused: its activations changed unusually often; the shop can reinstate it"
        if reason == LINE_CHANGED:
            return "the order that bought it was changed to another product"
        if reason == "order:failed":
            return "the payment of the order that bought it failed"
        if reason == "order:deleted":
            return "the order that bought it was deleted in the shop"
        if reason == "refund":
            # A unit past what the order pays for now (a partial refund, a lower quantity):
            # the order itself stands, and its other keys work.
            return "this one was refunded or removed from the order"
        if by_the_order(reason):
            return "the order that bought it was refunded or cancelled"
        if self.status == "suspended":
            return "paused by the shop; contact them to reinstate it"
        return "withdrawn by the shop; contact them with questions"

    @property
    def expired(self) -> bool:
        """Past its end: the stored status stays "active" (a renewal extends it again)."""
        return self.expires_at is not None and self.expires_at <= utcnow()

    @property
    def term(self) -> str:
        """Its end as a mail tells its buyer: "valid until …", "expired on …", "lifetime"."""
        if self.expires_at is None:
            return "lifetime"
        return f"{'expired on' if self.expired else 'valid until'} {shown_utc(self.expires_at)}"

    @property
    def shown_status(self) -> str:
        """The status as a buyer reads it: "expired" once past the end."""
        return "expired" if self.status == "active" and self.expired else self.status


@dataclass(frozen=True)
class DownloadView:
    grant_id: int
    filename: str
    product_name: str
    copy: int  # which unit of its line (1 for the first): a quantity of 2 has two links
    link: str
    downloads_left: int | None
    expires_at: dt.datetime | None
    revoked: bool

    @property
    def ended(self) -> str | None:
        """Why the link no longer gives the file ("revoked", "expired", "used up"), None
        while it does: pages and mails show the reason instead of a link that answers 410."""
        if self.revoked:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= utcnow():
            return "expired"
        if self.downloads_left == 0:
            return "used up"
        return None

    @property
    def named(self) -> str:
        """Its product and file, and which copy past the first: "Plugin (copy 2), a.pdf"."""
        copy = f" (copy {self.copy})" if self.copy > 1 else ""
        return f"{self.product_name}{copy}, {self.filename}"

    @property
    def terms(self) -> str:
        """How much longer the link works, as a mail tells its buyer: the downloads it has
        left and its end ("2 downloads left, available until 2026-12-09 03:00 UTC")."""
        left = self.downloads_left
        count = [] if left is None else [f"{left} download{'' if left == 1 else 's'} left"]
        if self.expires_at is None:
            # Without a window of its own a link ends with its license (a key with an end
            # gives its links that end): it is a lifetime key's.
            return ", ".join([*count, "available while your license lasts"])
        return ", ".join([*count, f"available until {shown_utc(self.expires_at)}"])


def license_view(lic: License, product: Product) -> LicenseView:
    return LicenseView(
        id=lic.id,
        key=lic.key_encrypted,
        # The shop id its product is configured under: the one that matched its line (a
        # line swapped to another product since has licenses of both).
        product_id=product.shop_product_id,
        product_name=product.name,
        status=lic.status,
        expires_at=lic.expires_at,
        updates_until=lic.updates_until,
        activation_limit=lic.activation_limit,
        status_reason=lic.status_reason,
    )


def download_views(session: Session, which: ColumnElement[bool]) -> list[DownloadView]:
    """The download links of the grants ``which`` picks, in their order's order: by line,
    unit and file."""
    grant_rows = session.execute(
        select(DownloadGrant, ProductFile, Product.name)
        .join(ProductFile, DownloadGrant.product_file_id == ProductFile.id)
        .join(Product, ProductFile.product_id == Product.id)
        .where(which)
        .order_by(
            DownloadGrant.order_id,
            DownloadGrant.line_item_id,
            DownloadGrant.unit,
            ProductFile.position,
        )
    ).all()
    return [
        DownloadView(
            grant_id=grant.id,
            filename=product_file.filename,
            product_name=product_name,
            copy=grant.unit,
            link=download_url(grant.id),
            downloads_left=(
                None
                if grant.download_limit is None
                else max(0, grant.download_limit - grant.download_count)
            ),
            expires_at=grant.expires_at,
            revoked=grant.revoked_at is not None,
        )
        for grant, product_file, product_name in grant_rows
    ]


def order_entitlements(session: Session, order: Order) -> dict[str, Any]:
    """Licenses and downloads of an order (revoked ones included, marked), the licenses it
    renews and, of those its own customer bought, their downloads (``renewed_downloads``),
    and the portal."""
    license_rows = session.execute(
        select(License, LineItem, Product)
        .join(LineItem, License.line_item_id == LineItem.id)
        .join(Product, License.product_id == Product.id)
        .where(License.order_id == order.id)
        .order_by(LineItem.id, License.unit)
    ).all()
    licenses = [license_view(lic, product) for lic, _line, product in license_rows]
    # Licenses this order renews (their own order is an earlier one): a renewal order's
    # mail and page name the keys it extended, and until when they now last.
    renewed_rows = session.execute(
        select(License, Product)
        .join(Product, License.product_id == Product.id)
        .where(License.id.in_(renewed_by_query(order.id)))
        .order_by(License.id)
    ).all()
    renewed = [license_view(lic, product) for lic, product in renewed_rows]
    downloads = download_views(session, DownloadGrant.order_id == order.id)
    # The links of the licenses it renews for their own buyer: a renewal extends them, and
    # its buyer looks for them in its mail and on its page. Not those of a stranger's key
    # (their copies are stamped with its buyer's name; see own_renewed_query).
    renewed_downloads = download_views(
        session,
        DownloadGrant.license_id.in_(own_renewed_query(order))
        & (DownloadGrant.order_id != order.id),  # listed already
    )
    # Anything the buyer can still use: a mail or page about the order has something to say.
    usable = any(lic.status == "active" for lic in licenses + renewed) or any(
        d.ended is None for d in downloads
    )
    return {
        "licenses": licenses,
        "renewed": renewed,
        "downloads": downloads,
        "renewed_downloads": renewed_downloads,
        "usable": usable,
        "portal_url": portal_url(order.id),
    }
