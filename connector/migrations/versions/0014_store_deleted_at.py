"""stores: deleted_at, set when the owner deleted the store (the emptied row is kept so
its id is never reused)

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

import connector.db


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('stores', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deleted_at', connector.db.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('stores', schema=None) as batch_op:
        batch_op.drop_column('deleted_at')
