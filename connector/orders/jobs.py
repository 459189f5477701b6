"""Follow-up jobs of an order: fan out the slow work, each piece retried on its own."""

from __future__ import annotations

from typing import Any

from connector.db import db
from connector.jobs import JOB_ID, enqueue, handles

ISSUED_JOB = "order.issued"
# Kinds of job started for every issuance; domains add theirs (watermarks, shop write-back).
ISSUED_FOLLOWUPS = [
    "downloads.watermark",
    "mail.order_issued",
    "brevo.push_contact",
    "shop.order_note",
]
REVOKED_FOLLOWUPS: list[str] = []


@handles(ISSUED_JOB)
def fan_out_issued(payload: dict[str, Any]) -> None:
    """Start each follow-up once for this issuance (dedupe key: kind + this job's ids)."""
    marker = f"{payload['order_id']}:{','.join(map(str, payload.get('license_ids', [])))}"
    marker += f":{','.join(map(str, payload.get('grant_ids', [])))}"
    data = {k: v for k, v in payload.items() if k != JOB_ID}
    for kind in ISSUED_FOLLOWUPS:
        enqueue(db.session, kind, data, dedupe_key=f"{kind}:{_short(marker)}")


@handles("order.revoked")
def fan_out_revoked(payload: dict[str, Any]) -> None:
    marker = f"{payload['order_id']}:{','.join(map(str, payload.get('license_ids', [])))}"
    data = {k: v for k, v in payload.items() if k != JOB_ID}
    for kind in REVOKED_FOLLOWUPS:
        enqueue(db.session, kind, data, dedupe_key=f"{kind}:{_short(marker)}")


def _short(marker: str) -> str:
    import hashlib

    return hashlib.sha256(marker.encode()).hexdigest()[:40]
