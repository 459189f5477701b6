"""The audit log: who did what, to what, when. Never holds a secret or a license key."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from connector.models import AuditEvent


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
