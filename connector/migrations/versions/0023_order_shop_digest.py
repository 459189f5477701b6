"""orders: shop_digest, what the newest payload applied says of the order (hashed), so that a
payload of the same second that says otherwise is settled by reading the order.

Orders applied before have none: their next same-second payload asks for one read.

Revision ID: 0023
Revises: 0022
"""

import sqlalchemy as sa
from alembic import op


revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('shop_digest', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('shop_digest')
