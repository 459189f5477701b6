"""orders: shop_digest forgotten, now that it is keyed with the secret key

The digest of what the shop says of an order holds the buyer's address; it was a plain
SHA-256, which on an erased order (or one whose buyer the purge forgot) let anyone with the
database confirm a guessed address. Digests are now keyed (as the erasure's pseudonym is);
those made before cannot be keyed without the payload, so they are forgotten: an order's
next payload of the same second as the last one applied asks for one read, as for orders
applied before 0023.

Revision ID: 0027
Revises: 0026
"""

import sqlalchemy as sa
from alembic import op


revision = '0027'
down_revision = '0026'
branch_labels = None
depends_on = None


def upgrade() -> None:
    orders = sa.table('orders', sa.column('shop_digest', sa.String))
    op.execute(orders.update().where(orders.c.shop_digest.is_not(None)).values(shop_digest=None))


def downgrade() -> None:
    pass
