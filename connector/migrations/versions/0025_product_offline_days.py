"""products: offline_days, the longest an offline license file of the product's keys lasts

Null (every existing product): as the caller of checkout asks, up to 365 days, as before.

Revision ID: 0025
Revises: 0024
"""

import sqlalchemy as sa
from alembic import op


revision = '0025'
down_revision = '0024'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('offline_days', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('offline_days')
