"""Vault jobs: registering the shop's webhooks after a (re)connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from connector.db import db
from connector.jobs import JOB_ID, RetryLater, handles
from connector.models import Job, Store
from connector.vault.connection import (
    REGISTER_JOB,
    lock_store,
    refuse_current_secret,
    register_webhooks,
    shop_client_for,
)
from plugin.woocommerce.rest import ShopUnavailable

# In a registration an older Keygate queued (before 2026-12-01) when the owner replaced a
# lost or leaked secret: False, the secret the store had then is given no grace.
NO_GRACE = "grace"


@contextmanager
def shop_down_means_retry() -> Iterator[None]:
    """A shop that is down is retried later with backoff, without a traceback."""
    try:
        yield
    except ShopUnavailable as exc:
        raise RetryLater(str(exc)) from None


@handles(REGISTER_JOB)
def register_store_webhooks(payload: dict[str, Any]) -> None:
    """Register the store's order webhooks (a no-op once they all exist)."""
    store = db.session.get(Store, payload["store_id"])
    if store is None:
        return
    client = shop_client_for(db.session, store)
    if client is None:  # disconnected since: nothing to register
        return
    if payload.get(NO_GRACE) is False:
        _refuse_leaked_secret(db.session, store, payload)
    with shop_down_means_retry():
        register_webhooks(db.session, store, client)


def _refuse_leaked_secret(session: Session, store: Store, payload: dict[str, Any]) -> None:
    """A registration an older Keygate queued when the owner replaced a lost or leaked
    secret (``"grace": False``): that Keygate left the secret in place until this job ran,
    and the job refused it when it made the new one; today the replacement refuses it itself
    (:func:`~connector.vault.connection.replace_webhook_secret`), and the registration gives
    the secret it replaces a grace. Run as is, a registration queued before an upgrade would
    let the leaked secret in for that grace (for good, when an earlier run's grace still
    lasts: no new secret is made then), so here it is refused as the replacement does now.

    Once: the job's payload becomes today's in the same transaction (committed before the
    shop is asked), so a retry does not refuse the secret the webhooks made since sign with.
    """
    lock_store(session, store)
    refuse_current_secret(store)
    today = {key: value for key, value in payload.items() if key not in (NO_GRACE, JOB_ID)}
    session.execute(update(Job).where(Job.id == payload.get(JOB_ID)).values(payload=today))
