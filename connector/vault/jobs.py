"""Vault jobs: registering the shop's webhooks after a (re)connection."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from connector.db import db
from connector.jobs import RetryLater, handles
from connector.models import Store
from connector.vault.connection import REGISTER_JOB, register_webhooks, shop_client_for
from plugin.woocommerce.rest import ShopUnavailable


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
    with shop_down_means_retry():
        register_webhooks(db.session, store, client)
