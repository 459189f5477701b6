"""webhook_registrations: delivery_url, where the shop delivers each webhook as last seen

Null (every existing registration) until the next webhook check reads the shop's webhooks:
a webhook registered while KEYGATE_BASE_URL named another address is then shown to the
owner.

Revision ID: 0028
Revises: 0027
"""

import sqlalchemy as sa
from alembic import op


revision = '0028'
down_revision = '0027'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('webhook_registrations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('delivery_url', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('webhook_registrations', schema=None) as batch_op:
        batch_op.drop_column('delivery_url')
