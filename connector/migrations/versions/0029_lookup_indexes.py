"""Indexes for a big, old shop: what the owner's pages and the daily work look rows up by

- download_grants.license_id: a license's page (its links and clicks), a refund or swap of a
  line's licenses, a renewal's links, each read every grant of every store without it;
- audit_events (store_id, subject): a customer's export and erasure, and the order page,
  read every entry of the store (not the subject alone: SQLite then reads the whole log
  through it to group the dashboard's sign-in lockouts by subject);
- audit_events (store_id, action): the dashboard's count of each store's refunds not applied,
  and a store's log (its kinds of entries, one kind), read all of the store's entries on
  SQLite;
- orders.number and orders.shop_order_id: the Orders page's search by order number read
  every order (the store's unique key starts with the store, which an admin of every store
  does not give).

Revision ID: 0029
Revises: 0028
"""

from alembic import op


revision = '0029'
down_revision = '0028'
branch_labels = None
depends_on = None

INDEXES = (
    ('ix_download_grants_license_id', 'download_grants', ['license_id']),
    ('ix_audit_events_store_id_subject', 'audit_events', ['store_id', 'subject']),
    ('ix_audit_events_store_id_action', 'audit_events', ['store_id', 'action']),
    ('ix_orders_number', 'orders', ['number']),
    ('ix_orders_shop_order_id', 'orders', ['shop_order_id']),
)


def upgrade() -> None:
    # Not in batch mode: an index needs no copy of the table (SQLite's autoincrement
    # tables keep their ids' sequence untouched).
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
