"""``keygate reconcile`` and ``keygate sync-products``: re-read the shop on demand."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.models import Store
from connector.stores import StoreDeleted
from connector.vault.commands import command_app
from plugin.shop import parse_utc_datetime
from plugin.woocommerce.rest import ShopError, WooCommerceClient


def register(group: click.Group) -> None:
    group.add_command(reconcile)
    group.add_command(sync_products)


def _parse_since(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return parse_utc_datetime(value)
    except ValueError as exc:
        raise click.BadParameter(
            f"{value!r} {exc}; use an ISO date such as 2026-11-01 or 2026-11-01T12:00"
        ) from None


def _connected_stores(
    store_id: str | None,
) -> Iterator[tuple[Session, Store, WooCommerceClient]]:
    """Each connected store with its REST client, one transaction per store."""
    from connector.db import transaction
    from connector.vault.connection import shop_client_for

    for pk in _stores(store_id):
        with transaction() as session:
            store = session.get(Store, pk)
            if store is None:  # deleted since it was listed
                continue
            client = shop_client_for(session, store)
            if client is None:
                click.echo(f"{store.public_id}: not connected (no WooCommerce key), skipped")
                continue
            yield session, store, client


def _stores(store_id: str | None) -> list[int]:
    from connector.db import db
    from connector.models import Store

    if store_id is not None:
        from connector.cli import store_with_id

        return [store_with_id(store_id).id]
    query = select(Store.id).where(Store.deleted_at.is_(None)).order_by(Store.id)
    return list(db.session.scalars(query))


@click.command()
@click.option(
    "--since",
    help="Re-read orders modified after this date (UTC). Default: since the last run, or 7 days.",
)
@click.option("--store", "store_id", help="Only this store (its store_id).")
def reconcile(since: str | None, store_id: str | None) -> None:
    """Re-read changed orders from each connected shop and apply them like webhooks."""
    from connector import get_settings
    from connector.orders.reconcile import RECONCILE_JOB, reconcile_store, schedule_next

    moment = _parse_since(since)
    failed = False
    with command_app():
        for session, store, client in _connected_stores(store_id):
            try:
                result = reconcile_store(session, store, client, since=moment)
                # Resume the periodic runs if their chain was broken (one per time slot).
                schedule_next(
                    session, store, RECONCILE_JOB, get_settings().reconcile_interval_seconds
                )
            except StoreDeleted:
                session.rollback()
                click.echo(f"{store.public_id}: deleted meanwhile, skipped")
                continue
            except ShopError as exc:
                session.rollback()
                click.echo(f"{store.public_id}: the shop could not be read: {exc}", err=True)
                failed = True
                continue
            click.echo(
                f"{store.public_id}: {result.seen} orders since "
                f"{result.since.isoformat(timespec='seconds')}: {result.applied} applied, "
                f"{result.stale} unchanged, {result.issued_licenses} licenses issued, "
                f"{result.revoked_licenses} revoked"
                + (f", {len(result.unreadable)} unreadable" if result.unreadable else "")
                + (
                    f", webhooks repaired: {', '.join(result.webhooks_repaired)}"
                    if result.webhooks_repaired
                    else ""
                )
            )
    if failed:
        raise SystemExit(1)


@click.command("sync-products")
@click.option("--store", "store_id", help="Only this store (its store_id).")
def sync_products(store_id: str | None) -> None:
    """Read _keygate_* product meta from each connected shop (Keygate's own settings win)."""
    from connector.orders.product_sync import sync_products as sync

    failed = False
    with command_app():
        for session, store, client in _connected_stores(store_id):
            try:
                result = sync(session, store, client)
            except StoreDeleted:
                session.rollback()
                click.echo(f"{store.public_id}: deleted meanwhile, skipped")
                continue
            except ShopError as exc:
                session.rollback()
                click.echo(f"{store.public_id}: the shop could not be read: {exc}", err=True)
                failed = True
                continue
            click.echo(
                f"{store.public_id}: {len(result.configured)} configured, "
                f"{len(result.unchanged)} unchanged, {len(result.kept_keygate)} kept "
                f"(set in Keygate), {len(result.invalid)} with unreadable meta, "
                f"{len(result.retired)} retired (meta gone), "
                f"{len(result.reapplied)} sold before it read again"
            )
            for shop_id, problem in result.invalid.items():
                click.echo(f"  product {shop_id}: {problem}", err=True)
    if failed:
        raise SystemExit(1)
