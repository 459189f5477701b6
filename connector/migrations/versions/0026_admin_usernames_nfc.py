"""admin_users: names stored in Unicode NFC, as the sign-in page and `keygate admin` now
read what is typed

An "é" typed as "e" and an accent was kept so; the sign-in page now makes it one character
before looking the name up, so a name kept otherwise could no longer sign in. A name whose
NFC form another admin already has is left as it was (`keygate admin remove` with either
spelling finds the one kept in NFC).

Revision ID: 0026
Revises: 0025
"""

import unicodedata

import sqlalchemy as sa
from alembic import op


revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None


def upgrade() -> None:
    admins = sa.table('admin_users', sa.column('id', sa.Integer), sa.column('username', sa.String))
    connection = op.get_bind()
    rows = connection.execute(sa.select(admins.c.id, admins.c.username)).all()
    taken = {username for _, username in rows}
    for admin_id, username in rows:
        normal = unicodedata.normalize('NFC', username.strip())
        if normal != username and normal not in taken:
            connection.execute(admins.update().where(admins.c.id == admin_id).values(username=normal))
            taken.add(normal)


def downgrade() -> None:
    pass
