"""renewals: the download grants each one moved, and the subscription it renewed

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

import connector.db


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('license_renewals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('subscription_id', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_license_renewals_subscription_id'), ['subscription_id'], unique=False)

    op.create_table('grant_extensions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('renewal_id', sa.Integer(), nullable=False),
    sa.Column('grant_id', sa.Integer(), nullable=False),
    sa.Column('previous_expires_at', connector.db.UTCDateTime(), nullable=False),
    sa.Column('expires_at', connector.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['grant_id'], ['download_grants.id'], name=op.f('fk_grant_extensions_grant_id_download_grants')),
    sa.ForeignKeyConstraint(['renewal_id'], ['license_renewals.id'], name=op.f('fk_grant_extensions_renewal_id_license_renewals')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_grant_extensions')),
    sa.UniqueConstraint('renewal_id', 'grant_id', name=op.f('uq_grant_extensions_renewal_id_grant_id'))
    )
    with op.batch_alter_table('grant_extensions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_grant_extensions_grant_id'), ['grant_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_grant_extensions_renewal_id'), ['renewal_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('grant_extensions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_grant_extensions_renewal_id'))
        batch_op.drop_index(batch_op.f('ix_grant_extensions_grant_id'))

    op.drop_table('grant_extensions')
    with op.batch_alter_table('license_renewals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_license_renewals_subscription_id'))
        batch_op.drop_column('subscription_id')
