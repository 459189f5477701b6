"""watermark_copies: stamp_version (1 for the copies made so far: a ZIP copy's LICENSE.txt
held the license key; the daily purge deletes those and a click stamps them anew)

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('watermark_copies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stamp_version', sa.Integer(), server_default='1', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('watermark_copies', schema=None) as batch_op:
        batch_op.drop_column('stamp_version')
