"""watermark copies: the version of the original a copy was stamped from (restamp when the
owner replaces the file)

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Copies made before this have none: they are stamped anew on their next click.
    with op.batch_alter_table('watermark_copies', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source_version', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('watermark_copies', schema=None) as batch_op:
        batch_op.drop_column('source_version')
