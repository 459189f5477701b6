"""licenses: one per (line item, product, unit), so a line whose product was swapped gets
licenses of the new product

Revision ID: 0009
Revises: 0008
"""

from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('licenses', schema=None) as batch_op:
        batch_op.drop_constraint('uq_licenses_line_item_id_unit', type_='unique')
        batch_op.create_unique_constraint(
            batch_op.f('uq_licenses_line_item_id_product_id_unit'),
            ['line_item_id', 'product_id', 'unit'],
        )


def downgrade() -> None:
    # Fails while a line has licenses of two products (a swap happened): which one to drop
    # is the owner's call, not a migration's.
    with op.batch_alter_table('licenses', schema=None) as batch_op:
        batch_op.drop_constraint('uq_licenses_line_item_id_product_id_unit', type_='unique')
        batch_op.create_unique_constraint(
            batch_op.f('uq_licenses_line_item_id_unit'), ['line_item_id', 'unit']
        )
