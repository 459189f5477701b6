"""admin sessions: a per-admin generation that signing out moves on; security events'
IP hash can be erased with the customer

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('admin_users', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('session_generation', sa.Integer(), nullable=False, server_default='0')
        )
    with op.batch_alter_table('security_events', schema=None) as batch_op:
        batch_op.alter_column('ip_hash', existing_type=sa.String(length=64), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table('security_events', schema=None) as batch_op:
        batch_op.alter_column('ip_hash', existing_type=sa.String(length=64), nullable=False)
    with op.batch_alter_table('admin_users', schema=None) as batch_op:
        batch_op.drop_column('session_generation')
