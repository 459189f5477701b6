"""downloads: download events, watermark state (issue 4)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

import connector.db
import connector.vault.crypto  # noqa: F401

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('download_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('grant_id', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('served', sa.String(length=24), nullable=True),
    sa.Column('ip_hash', sa.String(length=64), nullable=True),
    sa.Column('user_agent', sa.String(length=400), nullable=True),
    sa.Column('created_at', connector.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['grant_id'], ['download_grants.id'], name=op.f('fk_download_events_grant_id_download_grants')),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_download_events_order_id_orders')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_download_events_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_download_events'))
    )
    with op.batch_alter_table('download_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_download_events_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_download_events_grant_id'), ['grant_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_download_events_order_id'), ['order_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_download_events_store_id'), ['store_id'], unique=False)

    op.create_table('watermark_copies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('grant_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('object_key', sa.String(length=1024), nullable=True),
    sa.Column('fingerprint', sa.String(length=200), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('updated_at', connector.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['grant_id'], ['download_grants.id'], name=op.f('fk_watermark_copies_grant_id_download_grants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_watermark_copies')),
    sa.UniqueConstraint('grant_id', name=op.f('uq_watermark_copies_grant_id'))
    )
    with op.batch_alter_table('watermark_copies', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_watermark_copies_fingerprint'), ['fingerprint'], unique=False)

    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('watermark_fallback', sa.String(length=16), nullable=False, server_default='refuse'))


def downgrade() -> None:
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('watermark_fallback')

    with op.batch_alter_table('watermark_copies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_watermark_copies_fingerprint'))

    op.drop_table('watermark_copies')
    with op.batch_alter_table('download_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_download_events_store_id'))
        batch_op.drop_index(batch_op.f('ix_download_events_order_id'))
        batch_op.drop_index(batch_op.f('ix_download_events_grant_id'))
        batch_op.drop_index(batch_op.f('ix_download_events_created_at'))

    op.drop_table('download_events')
