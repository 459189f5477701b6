"""vault: credentials and store connection (issue 5)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

import connector.db  # noqa: F401
import connector.vault.crypto  # noqa: F401

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('credentials',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('data', connector.vault.crypto.EncryptedJSON(), nullable=False),
    sa.Column('created_at', connector.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', connector.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_credentials_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credentials')),
    sa.UniqueConstraint('store_id', 'kind', name=op.f('uq_credentials_store_id_kind'))
    )
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_credentials_store_id'), ['store_id'], unique=False)

    op.create_table('shop_connections',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('shop_key_id', sa.String(length=64), nullable=True),
    sa.Column('shop_user_id', sa.String(length=64), nullable=True),
    sa.Column('key_permissions', sa.String(length=16), nullable=True),
    sa.Column('connected_at', connector.db.UTCDateTime(), nullable=True),
    sa.Column('disconnected_at', connector.db.UTCDateTime(), nullable=True),
    sa.Column('reconciled_until', connector.db.UTCDateTime(), nullable=True),
    sa.Column('products_synced_at', connector.db.UTCDateTime(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_shop_connections_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_shop_connections')),
    sa.UniqueConstraint('store_id', name=op.f('uq_shop_connections_store_id'))
    )
    op.create_table('webhook_registrations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('topic', sa.String(length=64), nullable=False),
    sa.Column('shop_webhook_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', connector.db.UTCDateTime(), nullable=False),
    sa.Column('checked_at', connector.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_webhook_registrations_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_registrations')),
    sa.UniqueConstraint('store_id', 'topic', name=op.f('uq_webhook_registrations_store_id_topic'))
    )
    with op.batch_alter_table('webhook_registrations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_registrations_store_id'), ['store_id'], unique=False)

    op.create_table('shop_notes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('marker', sa.String(length=64), nullable=False),
    sa.Column('shop_note_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', connector.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_shop_notes_order_id_orders')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_shop_notes_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_shop_notes')),
    sa.UniqueConstraint('order_id', 'marker', name=op.f('uq_shop_notes_order_id_marker'))
    )
    with op.batch_alter_table('shop_notes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_shop_notes_order_id'), ['order_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_shop_notes_store_id'), ['store_id'], unique=False)

    op.create_table('license_renewals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('license_id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('line_item_id', sa.Integer(), nullable=False),
    sa.Column('unit', sa.Integer(), nullable=False),
    sa.Column('previous_expires_at', connector.db.UTCDateTime(), nullable=True),
    sa.Column('previous_updates_until', connector.db.UTCDateTime(), nullable=True),
    sa.Column('expires_at', connector.db.UTCDateTime(), nullable=True),
    sa.Column('updates_until', connector.db.UTCDateTime(), nullable=True),
    sa.Column('reverted_at', connector.db.UTCDateTime(), nullable=True),
    sa.Column('created_at', connector.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['license_id'], ['licenses.id'], name=op.f('fk_license_renewals_license_id_licenses')),
    sa.ForeignKeyConstraint(['line_item_id'], ['line_items.id'], name=op.f('fk_license_renewals_line_item_id_line_items')),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_license_renewals_order_id_orders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_license_renewals')),
    sa.UniqueConstraint('line_item_id', 'unit', name=op.f('uq_license_renewals_line_item_id_unit'))
    )
    with op.batch_alter_table('license_renewals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_license_renewals_license_id'), ['license_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_license_renewals_order_id'), ['order_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('license_renewals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_license_renewals_order_id'))
        batch_op.drop_index(batch_op.f('ix_license_renewals_license_id'))

    op.drop_table('license_renewals')
    with op.batch_alter_table('shop_notes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_shop_notes_store_id'))
        batch_op.drop_index(batch_op.f('ix_shop_notes_order_id'))

    op.drop_table('shop_notes')
    with op.batch_alter_table('webhook_registrations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_registrations_store_id'))

    op.drop_table('webhook_registrations')
    op.drop_table('shop_connections')
    with op.batch_alter_table('credentials', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_credentials_store_id'))

    op.drop_table('credentials')
