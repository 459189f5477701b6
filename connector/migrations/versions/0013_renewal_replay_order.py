"""renewals: the order they were last applied in (applied_seq), and the expiries before
each was first applied (first_previous_*), so a refund replays them as they happened

Existing renewals keep the order Keygate replayed them in before (their id), and what
they hold as the expiry before them (a renewal re-applied before this migration lost the
one before its first application).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

import connector.db


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('license_renewals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('first_previous_expires_at', connector.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('first_previous_updates_until', connector.db.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('applied_seq', sa.Integer(), nullable=True))
    with op.batch_alter_table('grant_extensions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('first_previous_expires_at', connector.db.UTCDateTime(), nullable=True))
    op.execute(
        'UPDATE license_renewals SET applied_seq = id,'
        ' first_previous_expires_at = previous_expires_at,'
        ' first_previous_updates_until = previous_updates_until'
    )
    op.execute('UPDATE grant_extensions SET first_previous_expires_at = previous_expires_at')
    with op.batch_alter_table('grant_extensions', schema=None) as batch_op:
        batch_op.alter_column('first_previous_expires_at', existing_type=connector.db.UTCDateTime(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('grant_extensions', schema=None) as batch_op:
        batch_op.drop_column('first_previous_expires_at')
    with op.batch_alter_table('license_renewals', schema=None) as batch_op:
        batch_op.drop_column('applied_seq')
        batch_op.drop_column('first_previous_updates_until')
        batch_op.drop_column('first_previous_expires_at')
