"""Leak lookup: a copy found in the wild names its order, buyer and grant."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadData
from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.downloads.watermark import read_fingerprints
from connector.errors import KeygateError
from connector.models import DownloadGrant, Order, ProductFile, Store, WatermarkCopy
from connector.tokens import grant_id_from_fingerprint


@dataclass(frozen=True)
class LeakMatch:
    grant_id: int
    store_public_id: str
    shop_order_id: str
    order_number: str | None
    buyer_name: str | None
    buyer_email: str | None
    filename: str
    license_id: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "grant_id": self.grant_id,
            "store_id": self.store_public_id,
            "order": {"id": self.shop_order_id, "number": self.order_number},
            "buyer": {"name": self.buyer_name, "email": self.buyer_email},
            "filename": self.filename,
            "license_id": self.license_id,
        }


def identify_leak(session: Session, path: Path, store: Store | None = None) -> LeakMatch | None:
    """Read the fingerprints in a PDF or ZIP and name the grant they were made for.

    Only fingerprints signed by this Keygate, or recorded for a copy it made, count (a
    forged one names nobody). With
    ``store``, grants of other stores are not revealed.
    """
    for fingerprint in read_fingerprints(path):
        try:
            grant_id: int | None = grant_id_from_fingerprint(fingerprint)
        except (KeygateError, BadData):
            # Not signed by the current secret key (forged, or made before a key change):
            # only a fingerprint recorded for a copy we made counts then.
            grant_id = session.execute(
                select(WatermarkCopy.grant_id).where(WatermarkCopy.fingerprint == fingerprint)
            ).scalar_one_or_none()
        if grant_id is None:
            continue
        grant = session.get(DownloadGrant, grant_id)
        if grant is None or (store is not None and grant.store_id != store.id):
            continue
        order = session.get(Order, grant.order_id)
        owner = session.get(Store, grant.store_id)
        product_file = session.get(ProductFile, grant.product_file_id)
        if order is None or owner is None or product_file is None:  # pragma: no cover
            continue
        return LeakMatch(
            grant_id=grant.id,
            store_public_id=owner.public_id,
            shop_order_id=order.shop_order_id,
            order_number=order.number,
            buyer_name=order.name,
            buyer_email=order.email,
            filename=product_file.filename,
            license_id=grant.license_id,
        )
    return None
