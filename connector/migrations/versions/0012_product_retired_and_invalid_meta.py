"""products: retired_at (shop meta gone: new sales no longer match); shop connections:
products_invalid (product meta the last sync could not apply, and why)

Revision ID: 0012
Revises: 0011
"""

import sqlite3

import sqlalchemy as sa
from alembic import op

import connector.db  # noqa: F401


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retired_at', connector.db.UTCDateTime(), nullable=True))
    with op.batch_alter_table('shop_connections', schema=None) as batch_op:
        batch_op.add_column(sa.Column('products_invalid', sa.JSON(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == 'sqlite' and sqlite3.sqlite_version_info >= (3, 35):
        # Not batch mode: it rebuilds the table (DROP TABLE products), which foreign keys
        # (on in Keygate, and not switchable inside the migration's transaction) refuse as
        # soon as a product is referenced. SQLite 3.35+ drops a plain column in place.
        op.execute('ALTER TABLE shop_connections DROP COLUMN products_invalid')
        op.execute('ALTER TABLE products DROP COLUMN retired_at')
        return
    # PostgreSQL drops in place; an older SQLite rebuilds (works while no row refers to a
    # product).
    with op.batch_alter_table('shop_connections', schema=None) as batch_op:
        batch_op.drop_column('products_invalid')
    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('retired_at')
