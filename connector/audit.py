"""The audit log (who did what, to what, when) and the security records (rate-limit
breaches: the IP as a keyed hash, the license's store's when the record is about a
license; an IPv6 caller's /64, as the limits count it). Neither ever holds a secret or a
license key."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from flask import request
from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.db import utcnow
from connector.errors import route_for_log
from connector.extensions import client_network
from connector.models import AdminUser, AuditEvent, License, SecurityEvent
from connector.vault.crypto import keyed_hash, store_keyed_hash

SECURITY_IP_HASH = "security-ip"
# At most one security record of a kind per address, scope and license in this time:
# anyone can call the license API, and a caller who keeps sending must not fill the table.
SECURITY_RECORD_EVERY = dt.timedelta(minutes=1)


def record_audit(
    session: Session,
    *,
    store_id: int | None,
    actor: str,
    action: str,
    subject: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit event to the current transaction."""
    event = AuditEvent(
        store_id=store_id, actor=actor, action=action, subject=subject, detail=detail or {}
    )
    session.add(event)
    return event


def store_admin_names(session: Session, store_id: int) -> set[str]:
    """The names the admins of store ``store_id`` only sign in with."""
    return set(session.scalars(select(AdminUser.username).where(AdminUser.store_id == store_id)))


def shown_actor(actor: str, own_admins: Collection[str] | None) -> str:
    """Who did it, as an audit log shows it: as recorded to an admin of every store
    (``own_admins`` None). To one store's admins and its API token (``own_admins``: the
    store's admins, :func:`store_admin_names`), an admin who is not one of them (an admin of
    every store, or one removed since) is ``admin``: the name an admin signs in with is half
    of their credentials, and not the store's to know."""
    name = actor.removeprefix("admin:")
    if own_admins is None or name == actor or name in own_admins:
        return actor
    return "admin"


def record_security_event(
    session: Session, *, kind: str, scope: str, license_id: int | None = None
) -> None:
    """Keep a security record of this request (the IP as a keyed hash, the route, the user
    agent) in the current transaction, unless one like it was kept within
    :data:`SECURITY_RECORD_EVERY`. The route's pattern, not its path: a path may carry a
    token (``/my/<token>``) or a key.

    A record about a license is in its buyer's export: its IP is hashed for the license's
    store (another hash in every store, so two owners' exports do not link one address).
    One like it kept before that, under the hash every store shared, counts all the same.
    The IP is the caller's network as the limits count it (an IPv6 address's /64,
    :func:`connector.extensions.client_network`): one holder of a /64 sending from address
    after address, refused by the one budget they share, keeps one record a minute too.
    """
    ip = client_network()
    ip_hash = keyed_hash(SECURITY_IP_HASH, ip)
    same_ip = [ip_hash]
    if license_id is not None:
        lic = session.get(License, license_id)  # the caller's, already in the session
        if lic is not None:
            ip_hash = store_keyed_hash(SECURITY_IP_HASH, lic.store_id, ip)
            same_ip.insert(0, ip_hash)
    recent = session.scalars(
        select(SecurityEvent.id)
        .where(
            SecurityEvent.kind == kind,
            SecurityEvent.scope == scope,
            SecurityEvent.ip_hash.in_(same_ip),
            SecurityEvent.license_id == license_id,
            SecurityEvent.created_at > utcnow() - SECURITY_RECORD_EVERY,
        )
        .limit(1)
    ).first()
    if recent is not None:
        return
    agent = request.user_agent.string
    session.add(
        SecurityEvent(
            kind=kind,
            scope=scope,
            ip_hash=ip_hash,
            path=route_for_log()[:200],
            license_id=license_id,
            user_agent=agent[:300] if agent else None,
        )
    )
