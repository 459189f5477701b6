"""SQLite: orders, download grants, releases and admin users never take an id used before

Links and cookies name these rows by id: a buyer's portal and download links, a release's
download link, an admin's session. SQLite without AUTOINCREMENT gives a new row the id of
the newest rows deleted (a store's deletion, an admin removed), so an old link of a deleted
store's buyer opened another store's later order, and a removed admin's cookie signed in as
the next admin. Rebuilt with AUTOINCREMENT, each table's counter starts at its highest id.
PostgreSQL's sequences never give an id twice: nothing to do there.

Revision ID: 0018
Revises: 0017
"""

from alembic import op


revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

TABLES = ('orders', 'download_grants', 'releases', 'admin_users')


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
