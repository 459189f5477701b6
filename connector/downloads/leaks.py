"""Leak lookup: a copy found in the wild names its order, buyer and grant."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from itsdangerous import BadData
from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.downloads.watermark import read_fingerprints
from connector.errors import InvalidInput, KeygateError
from connector.models import DownloadGrant, Order, ProductFile, Store, WatermarkCopy
from connector.tokens import grant_id_from_fingerprint


@dataclass(frozen=True)
class LeakMatch:
    grant_id: int
    store_public_id: str
    order_id: int  # Keygate's own id of the order (the admin pages' links)
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
            order_id=order.id,
            shop_order_id=order.shop_order_id,
            order_number=order.number,
            buyer_name=order.name,
            buyer_email=order.email,
            filename=product_file.filename,
            license_id=grant.license_id,
        )
    return None


def identify_leaked_copy(
    session: Session, stream: IO[bytes], store: Store | None = None
) -> LeakMatch | None:
    """Copy an uploaded file to a private temporary folder and :func:`identify_leak` it.

    Raises:
        InvalidInput: the upload is empty.
    """
    with tempfile.TemporaryDirectory(prefix="keygate-leak-") as folder:
        path = Path(folder) / "upload"
        with path.open("wb") as target:
            shutil.copyfileobj(stream, target, 1024 * 1024)
        if path.stat().st_size == 0:
            raise InvalidInput("The file is empty: send the copy that was found.")
        return identify_leak(session, path, store)
