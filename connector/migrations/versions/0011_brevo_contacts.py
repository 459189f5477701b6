"""brevo contacts: the list an order's buyer was pushed into, and addresses waiting to be
taken out of a list (erasure, consent withdrawn)

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

import connector.db  # noqa: F401
import connector.vault.crypto  # noqa: F401


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

# A buyer pushed before the list was recorded: "the store's list" (see Order.brevo_list_id).
LIST_NOT_RECORDED = 0
BATCH = 500


def upgrade() -> None:
    op.create_table('brevo_removals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('list_id', sa.BigInteger(), nullable=False),
    sa.Column('email', connector.vault.crypto.Encrypted(), nullable=False),
    sa.Column('reason', sa.String(length=16), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=True),
    sa.Column('created_at', connector.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_brevo_removals_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_brevo_removals'))
    )
    with op.batch_alter_table('brevo_removals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_brevo_removals_store_id'), ['store_id'], unique=False)

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('brevo_list_id', sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column(
                'brevo_consent_withdrawn', sa.Boolean(), nullable=False, server_default=sa.false()
            )
        )

    _mark_orders_already_pushed()


def _mark_orders_already_pushed() -> None:
    """Orders whose buyer may have been pushed before lists were recorded: every order of a
    store with Brevo credentials (finished push jobs are purged after 30 days, so they
    cannot tell), and orders whose push job finished (their store may have removed its
    credentials since). An erasure then takes the buyer out of the store's list; one who
    was never in it is answered "not in the list", which is harmless."""
    orders = sa.table(
        'orders',
        sa.column('id', sa.Integer()),
        sa.column('store_id', sa.Integer()),
        sa.column('brevo_list_id', sa.BigInteger()),
    )
    credentials = sa.table(
        'credentials', sa.column('store_id', sa.Integer()), sa.column('kind', sa.String())
    )
    op.get_bind().execute(
        sa.update(orders)
        .where(
            orders.c.brevo_list_id.is_(None),
            orders.c.store_id.in_(
                sa.select(credentials.c.store_id).where(credentials.c.kind == 'brevo')
            ),
        )
        .values(brevo_list_id=LIST_NOT_RECORDED)
    )
    _mark_orders_with_a_finished_push()


def _mark_orders_with_a_finished_push() -> None:
    jobs = sa.table(
        'jobs',
        sa.column('id', sa.Integer()),
        sa.column('kind', sa.String()),
        sa.column('status', sa.String()),
        sa.column('payload', sa.JSON()),
    )
    orders = sa.table('orders', sa.column('id', sa.Integer()), sa.column('brevo_list_id', sa.BigInteger()))
    connection = op.get_bind()
    last = 0
    while True:
        rows = connection.execute(
            sa.select(jobs.c.id, jobs.c.payload)
            .where(jobs.c.kind == 'brevo.push_contact', jobs.c.status == 'done', jobs.c.id > last)
            .order_by(jobs.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        last = rows[-1][0]
        order_ids = {
            payload['order_id']
            for _, payload in rows
            if isinstance(payload, dict) and isinstance(payload.get('order_id'), int)
        }
        if order_ids:
            connection.execute(
                sa.update(orders)
                .where(orders.c.id.in_(order_ids), orders.c.brevo_list_id.is_(None))
                .values(brevo_list_id=LIST_NOT_RECORDED)
            )


def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('brevo_consent_withdrawn')
        batch_op.drop_column('brevo_list_id')

    with op.batch_alter_table('brevo_removals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_brevo_removals_store_id'))

    op.drop_table('brevo_removals')
