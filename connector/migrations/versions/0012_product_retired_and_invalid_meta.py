"""products: retired_at (shop meta gone: new sales no longer match); shop connections:
products_invalid (product meta the last sync could not apply, and why)

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

import connector.db  # noqa: F401


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retired_at', connector.db.UTCDateTime(), nullable=True))
    with op.batch_alter_table('shop_connections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('products_invalid', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('shop_connections', schema=None) as batch_op:
        batch_op.drop_column('products_invalid')
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('retired_at')
