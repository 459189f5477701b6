"""Edges of the admin's session and sign-in found by a mutation audit (each test fails when
the one check it names is left out)."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.security import generate_password_hash

from connector.db import db
from connector.models import AdminUser
from tests.functional.test_admin_pages import PASSWORD, admin_client, sign_in

__all__ = ["admin_client"]  # the fixture, used by name


def test_a_removed_admins_session_is_no_session_of_the_admin_given_its_id(
    app: Flask, admin_client: FlaskClient
) -> None:
    """A removed admin's id may be given to the next admin added (SQLite reuses the
    highest rowid): the old session, whose generation matches a new admin's, must not
    become theirs."""
    assert sign_in(admin_client) == 302
    assert admin_client.get("/admin/").status_code == 200
    with app.app_context():
        owner = db.session.execute(select(AdminUser)).scalar_one()
        user_id, generation = owner.id, owner.session_generation
        db.session.delete(owner)
        db.session.commit()
        db.session.add(
            AdminUser(
                id=user_id,
                username="newcomer",
                password_hash=generate_password_hash(PASSWORD),
                session_generation=generation,
            )
        )
        db.session.commit()
    assert admin_client.get("/admin/").status_code == 302
