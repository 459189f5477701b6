"""SQLite: activations, licenses, mails and jobs never take an id used before either

Pages name these rows by id: the buyer's and the owner's Deactivate button (an activation),
the owner's license page, mail viewer and outbox Retry. SQLite without AUTOINCREMENT gives a
new row the id of the newest row deleted: a Deactivate button left open in a tab, pressed
after the seat was freed and another site activated, freed that other site's seat. Rebuilt
with AUTOINCREMENT as 0018 rebuilt orders; PostgreSQL's sequences never give an id twice.

Revision ID: 0022
Revises: 0021
"""

from alembic import op


revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None

TABLES = ('activations', 'licenses', 'mails', 'jobs')


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    for table in TABLES:
        with op.batch_alter_table(
            table, recreate='always', table_kwargs={'sqlite_autoincrement': autoincrement}
        ):
            pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
