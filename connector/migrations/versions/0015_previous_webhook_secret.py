"""stores: the webhook secret a re-registration replaced, taken until the webhooks signed
with it are deleted (previous_webhook_secret, encrypted; previous_secret_until)

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
from alembic import op

import connector.db
import connector.vault.crypto


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('stores', schema=None) as batch_op:
        batch_op.add_column(sa.Column('previous_webhook_secret', connector.vault.crypto.Encrypted(), nullable=True))
        batch_op.add_column(sa.Column('previous_secret_until', connector.db.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('stores', schema=None) as batch_op:
        batch_op.drop_column('previous_secret_until')
        batch_op.drop_column('previous_webhook_secret')
