"""licensing: license API: activations, signing keys, releases, security events (issue 3)

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

import connector.db
import connector.vault.crypto

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('signing_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('algorithm', sa.String(length=16), nullable=False),
    sa.Column('public_key', sa.String(length=64), nullable=False),
    sa.Column('private_key', connector.vault.crypto.Encrypted(), nullable=False),
    sa.Column('created_at', connector.db.UTCDateTime(), nullable=False),
    sa.Column('activated_at', connector.db.UTCDateTime(), nullable=True),
    sa.Column('retired_at', connector.db.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signing_keys')),
    sa.UniqueConstraint('kid', name=op.f('uq_signing_keys_kid'))
    )
    op.create_table('releases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('product_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('object_key', sa.String(length=1024), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('published_at', connector.db.UTCDateTime(), nullable=False),
    sa.Column('changelog', sa.Text(), nullable=True),
    sa.Column('created_at', connector.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['product_id'], ['products.id'], name=op.f('fk_releases_product_id_products')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_releases')),
    sa.UniqueConstraint('product_id', 'version', name=op.f('uq_releases_product_id_version'))
    )
    with op.batch_alter_table('releases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_releases_product_id'), ['product_id'], unique=False)

    op.create_table('activations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('license_id', sa.Integer(), nullable=False),
    sa.Column('site', sa.String(length=253), nullable=False),
    sa.Column('fingerprint', sa.String(length=200), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=True),
    sa.Column('staging', sa.Boolean(), nullable=False),
    sa.Column('created_at', connector.db.UTCDateTime(), nullable=False),
    sa.Column('last_seen_at', connector.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['license_id'], ['licenses.id'], name=op.f('fk_activations_license_id_licenses')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_activations')),
    sa.UniqueConstraint('license_id', 'site', 'fingerprint', name=op.f('uq_activations_license_id_site_fingerprint'))
    )
    with op.batch_alter_table('activations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_activations_license_id'), ['license_id'], unique=False)

    op.create_table('binding_changes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('license_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('created_at', connector.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['license_id'], ['licenses.id'], name=op.f('fk_binding_changes_license_id_licenses')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_binding_changes'))
    )
    with op.batch_alter_table('binding_changes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_binding_changes_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_binding_changes_license_id'), ['license_id'], unique=False)

    op.create_table('license_flags',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('license_id', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('binding_changes', sa.Integer(), nullable=False),
    sa.Column('created_at', connector.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['license_id'], ['licenses.id'], name=op.f('fk_license_flags_license_id_licenses')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_license_flags')),
    sa.UniqueConstraint('license_id', name=op.f('uq_license_flags_license_id'))
    )
    op.create_table('security_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=True),
    sa.Column('ip_hash', sa.String(length=64), nullable=False),
    sa.Column('path', sa.String(length=200), nullable=False),
    sa.Column('license_id', sa.Integer(), nullable=True),
    sa.Column('user_agent', sa.String(length=300), nullable=True),
    sa.Column('created_at', connector.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['license_id'], ['licenses.id'], name=op.f('fk_security_events_license_id_licenses')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_security_events'))
    )
    with op.batch_alter_table('security_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_security_events_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_security_events_kind'), ['kind'], unique=False)

    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('perpetual_fallback', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('abuse_threshold', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('abuse_suspend', sa.Boolean(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('abuse_suspend')
        batch_op.drop_column('abuse_threshold')
        batch_op.drop_column('perpetual_fallback')

    with op.batch_alter_table('security_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_security_events_kind'))
        batch_op.drop_index(batch_op.f('ix_security_events_created_at'))

    op.drop_table('security_events')
    op.drop_table('license_flags')
    with op.batch_alter_table('binding_changes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_binding_changes_license_id'))
        batch_op.drop_index(batch_op.f('ix_binding_changes_created_at'))

    op.drop_table('binding_changes')
    with op.batch_alter_table('activations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_activations_license_id'))

    op.drop_table('activations')
    with op.batch_alter_table('releases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_releases_product_id'))

    op.drop_table('releases')
    op.drop_table('signing_keys')
