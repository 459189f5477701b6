"""One customer as the owner looks them up: their orders, licenses and downloads per store.

A customer is the orders of one email address in one store, as export and erasure find
them (:func:`connector.privacy.service.known_customer_orders`): the page shows exactly what
an export would hold, and what an erasure would reach (the orders not erased yet).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from connector.downloads.log import Click, clicks
from connector.models import Order, Store
from connector.orders.summary import DownloadView, LicenseView, order_entitlements
from connector.privacy.service import brevo_removals, erased_addresses, known_customer_orders

# Why an address waits to leave a store's Brevo list, as the Customers page says it.
REMOVAL_REASONS = {
    "erasure": "erased",
    "withdrawal": "consent withdrawn",
    "correction": "address corrected on the order",
    "list_changed": "the store's list changed",
}


@dataclass(frozen=True)
class CustomerOrder:
    """One of the customer's orders with the keys and links it gave them."""

    order: Order
    licenses: list[LicenseView]
    downloads: list[DownloadView]


@dataclass(frozen=True)
class CustomerInStore:
    """What one store keeps about the customer: orders, clicks on their links, and the
    removals from the store's Brevo list still waiting for Brevo (what an export lists; an
    address the shop corrected away from may be kept for that alone)."""

    store: Store
    orders: list[CustomerOrder]
    clicks: list[Click]
    brevo_removals: list[dict[str, Any]]

    @property
    def erasable(self) -> bool:
        """Some order still names the customer (the rest an erasure reached already)."""
        return any(not entry.order.is_erased for entry in self.orders)


def look_up_customer(session: Session, email: str, store_id: int | None) -> list[CustomerInStore]:
    """The stores that keep orders of ``email`` (only ``store_id`` when given), by store id,
    each with the customer's orders, licenses, download links and clicks; once erased, what
    was kept of their orders under the pseudonym too (what their export lists)."""
    stores_query = select(Store).order_by(Store.id)
    if store_id is not None:
        stores_query = stores_query.where(Store.id == store_id)
    stores = session.scalars(stores_query).all()
    # Each store knows them by the address, or once erased by its pseudonym (the store's,
    # or the one every store shared before: erased_addresses).
    addresses = {
        store.id: {email.strip().lower(), *erased_addresses(store.id, email)} for store in stores
    }
    holding = session.execute(
        select(Order.store_id, Order.email)
        .where(
            Order.store_id.in_(addresses),
            Order.email.in_(set().union(*addresses.values())),
        )
        .distinct()
    ).all()
    keeping = {held_in for held_in, address in holding if address in addresses[held_in]}
    found = []
    for store in stores:
        waiting = [
            {**removal, "since": dt.datetime.fromisoformat(removal["since"])}
            for removal in brevo_removals(session, store, address=email.strip().lower())
        ]
        if store.id not in keeping:
            if waiting:
                found.append(CustomerInStore(store, [], [], waiting))
            continue
        orders = known_customer_orders(session, store, email, erased_too=True)
        entitled = []
        for order in orders:
            entitlements = order_entitlements(session, order)
            entitled.append(
                CustomerOrder(order, entitlements["licenses"], entitlements["downloads"])
            )
        found.append(CustomerInStore(store, entitled, clicks(session, orders=orders), waiting))
    return found
