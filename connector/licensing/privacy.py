"""The license API's records in privacy requests and retention.

- export: a customer's activations (site, fingerprint, label, when), and the security
  events, binding changes and flags recorded for their licenses;
- erase: activation labels (free text a buyer may have filled with a name) are cleared;
  sites and fingerprints stay, as license enforcement needs them;
- purge: security records older than ``retention_security_days``, and binding changes once
  they are out of the abuse window as well.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from connector.licensing.service import ABUSE_WINDOW, iso
from connector.models import (
    Activation,
    BindingChange,
    License,
    LicenseFlag,
    Order,
    SecurityEvent,
)
from connector.privacy.service import delete_in_batches, register_hooks


def _activations(session: Session, orders: list[Order]) -> list[Activation]:
    order_ids = [o.id for o in orders]
    if not order_ids:
        return []
    return list(
        session.scalars(
            select(Activation)
            .join(License, Activation.license_id == License.id)
            .where(License.order_id.in_(order_ids))
            .order_by(Activation.id)
        )
    )


def _license_ids(session: Session, orders: list[Order]) -> list[int]:
    order_ids = [o.id for o in orders]
    if not order_ids:
        return []
    return list(session.scalars(select(License.id).where(License.order_id.in_(order_ids))))


def export_activations(session: Session, orders: list[Order]) -> dict[str, Any]:
    """Activations, security events, binding changes and flags of the customer's licenses."""
    license_ids = _license_ids(session, orders)
    events: list[SecurityEvent] = []
    changes: list[BindingChange] = []
    flags: list[LicenseFlag] = []
    if license_ids:
        events = list(
            session.scalars(
                select(SecurityEvent)
                .where(SecurityEvent.license_id.in_(license_ids))
                .order_by(SecurityEvent.id)
            )
        )
        changes = list(
            session.scalars(
                select(BindingChange)
                .where(BindingChange.license_id.in_(license_ids))
                .order_by(BindingChange.id)
            )
        )
        flags = list(
            session.scalars(
                select(LicenseFlag)
                .where(LicenseFlag.license_id.in_(license_ids))
                .order_by(LicenseFlag.id)
            )
        )
    return {
        "activations": [
            {
                "site": a.site or None,
                "fingerprint": a.fingerprint or None,
                "label": a.label,
                "staging": a.staging,
                "created_at": iso(a.created_at),
                "last_seen_at": iso(a.last_seen_at),
            }
            for a in _activations(session, orders)
        ],
        "security_events": [
            {
                "kind": e.kind,
                "scope": e.scope,
                "path": e.path,
                "ip_hash": e.ip_hash,
                "user_agent": e.user_agent,
                "at": iso(e.created_at),
            }
            for e in events
        ],
        "binding_changes": [{"kind": c.kind, "at": iso(c.created_at)} for c in changes],
        "license_flags": [
            {"reason": f.reason, "binding_changes": f.binding_changes, "at": iso(f.created_at)}
            for f in flags
        ],
    }


def erase_license_records(session: Session, orders: list[Order]) -> None:
    """Activation labels (the buyer names them), and the IP hash and user agent of the
    security records of the customer's licenses, as the download log's are erased."""
    ids = [a.id for a in _activations(session, orders)]
    if ids:
        session.execute(update(Activation).where(Activation.id.in_(ids)).values(label=None))
    license_ids = _license_ids(session, orders)
    if license_ids:
        session.execute(
            update(SecurityEvent)
            .where(SecurityEvent.license_id.in_(license_ids))
            .values(ip_hash=None, user_agent=None)
        )


def purge_license_records(session: Session, now: dt.datetime) -> dict[str, int]:
    from connector import get_settings

    days = get_settings().retention_security_days
    cutoff = now - dt.timedelta(days=days)
    return {
        "security_events": delete_in_batches(
            session, SecurityEvent, SecurityEvent.created_at < cutoff
        ),
        "binding_changes": delete_in_batches(
            session, BindingChange, BindingChange.created_at < min(cutoff, now - ABUSE_WINDOW)
        ),
    }


def register() -> None:
    """Add the hooks once (the views module calls this at import)."""
    register_hooks(export_activations, erase_license_records, purge_license_records)
