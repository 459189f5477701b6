"""orders: card numbers in payment notes and references masked but their last four digits

Keygate keeps a payment's reference and the owner's note on a manual payment, never a card
number; staff may have typed one into either (a phone order). Orders stored before the
shop's text was masked on arrival are masked here. Nothing is brought back on the way down.

Revision ID: 0021
Revises: 0020
"""

import sqlalchemy as sa
from alembic import op

from plugin.shop import without_card_numbers


revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None

BATCH = 500


def upgrade() -> None:
    orders = sa.table(
        'orders',
        sa.column('id', sa.Integer),
        sa.column('transaction_id', sa.String),
        sa.column('payment_note', sa.Text),
    )
    bind = op.get_bind()
    after = 0
    while True:
        rows = bind.execute(
            sa.select(orders.c.id, orders.c.transaction_id, orders.c.payment_note)
            .where(
                orders.c.id > after,
                sa.or_(orders.c.transaction_id.is_not(None), orders.c.payment_note.is_not(None)),
            )
            .order_by(orders.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        for row in rows:
            masked = without_card_numbers(row.transaction_id), without_card_numbers(row.payment_note)
            if masked != (row.transaction_id, row.payment_note):
                bind.execute(
                    orders.update()
                    .where(orders.c.id == row.id)
                    .values(transaction_id=masked[0], payment_note=masked[1])
                )
        after = rows[-1].id


def downgrade() -> None:
    pass
