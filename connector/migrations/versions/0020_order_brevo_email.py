"""orders: brevo_email, the address Keygate pushed into brevo_list_id (encrypted), so that an
erasure or a withdrawal takes that address out after the shop corrected the order's

Orders pushed before have none: their address stands for it (it is recorded as the one
pushed before a delivery changes it).

Revision ID: 0020
Revises: 0019
"""

import sqlalchemy as sa
from alembic import op

import connector.vault.crypto


revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('brevo_email', connector.vault.crypto.Encrypted(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('brevo_email')
