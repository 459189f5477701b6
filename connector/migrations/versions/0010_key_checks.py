"""key checks: proof of the keys the database was made with (a server given other keys
refuses to start)

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

import connector.db  # noqa: F401
import connector.vault.crypto  # noqa: F401


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'key_checks',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('master_check', connector.vault.crypto.Encrypted(), nullable=False),
        sa.Column('secret_check', sa.String(length=64), nullable=False),
        sa.Column('created_at', connector.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_key_checks')),
    )


def downgrade() -> None:
    op.drop_table('key_checks')
