"""watermark_copies: buyer_hash (a keyed hash of the buyer's name and address a copy was
stamped with: when the order's details change, the copy is stamped anew; copies made before
have none and are stamped anew once, on their next click)

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op


revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('watermark_copies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('buyer_hash', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('watermark_copies', schema=None) as batch_op:
        batch_op.drop_column('buyer_hash')
