"""watermark_copies: attempts count the failures since a copy was last made

Before, every stamp counted, those that succeeded too: a copy stamped anew a few times (a
new original, a corrected buyer) had used up the retries a later failure gets. Copies that
are ready have failed none since.

Revision ID: 0024
Revises: 0023
"""

import sqlalchemy as sa
from alembic import op


revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None


def upgrade() -> None:
    copies = sa.table('watermark_copies', sa.column('status', sa.String), sa.column('attempts', sa.Integer))
    op.execute(copies.update().where(copies.c.status == 'ready').values(attempts=0))


def downgrade() -> None:
    pass
