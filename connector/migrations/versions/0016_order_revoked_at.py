"""orders: revoked_at, when the order took its keys back (cleared when paid again), so a
key of an order waiting for payment since is not reinstated by hand

Orders whose state takes keys back now (refunded, cancelled, failed, deleted), and orders
with keys their state took back (cancelled, then pending again), get their last update as
that moment.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

import connector.db


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('revoked_at', connector.db.UTCDateTime(), nullable=True))
    op.execute(
        "UPDATE orders SET revoked_at = updated_at"
        " WHERE status IN ('refunded', 'cancelled', 'failed') OR deleted"
        " OR id IN (SELECT order_id FROM licenses WHERE status = 'revoked'"
        " AND status_reason LIKE 'order:%' AND order_id IS NOT NULL)"
    )


def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('revoked_at')
