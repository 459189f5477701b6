"""Forms of the admin pages (Flask-WTF: every POST carries a CSRF token)."""

from __future__ import annotations

import unicodedata
from typing import Any

from flask import request
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

MIN_PASSWORD = 12


def admin_username(typed: str) -> str:
    """An admin's name as stored and looked up: without the spaces around it (a phone's
    keyboard adds one after a suggested word) and in Unicode NFC, so that an "é" typed as
    one character or as "e" and an accent is the same name on the sign-in page and in
    ``keygate admin``."""
    return unicodedata.normalize("NFC", typed.strip())


class PageForm(FlaskForm):
    """A form of Keygate's pages: filled from the posted form only. Flask-WTF would take a
    JSON body as the form's data too, and any JSON but an object of strings (a number, a
    list, a nested object) broke it with a 500; a page posts a form, so JSON fills nothing
    and the form is refused like an empty one."""

    class Meta:
        def wrap_formdata(self, form: Any, formdata: Any) -> Any:
            if request.is_json:
                formdata = request.form
            # WTForms joins this Meta with FlaskForm's, whose wrap_formdata super() finds.
            return super().wrap_formdata(form, formdata)  # type: ignore[misc]


class LoginForm(PageForm):
    username = StringField(
        "User",
        validators=[DataRequired(), Length(max=100)],
        filters=[lambda typed: admin_username(typed) if isinstance(typed, str) else typed],
    )
    password = PasswordField("Password", validators=[DataRequired(), Length(max=200)])


class ConfirmForm(PageForm):
    """A button that only posts a CSRF token (sign out, retry a job)."""


class ConfirmedForm(PageForm):
    """A button whose effect cannot be undone (disconnect the shop, replace the API token):
    a box ticked first. The pages run no script (CSP ``script-src 'none'``), so the
    browser's ``required`` asks, and the server checks the box too."""

    confirm = BooleanField("I understand", validators=[DataRequired()])


class DeleteStoreForm(ConfirmedForm):
    """Deleting a store: the box ticked and the store's id typed again."""

    store_id = StringField("Store id", validators=[DataRequired(), Length(max=32)])


class PasswordForm(PageForm):
    """Change the signed-in admin's password (the current one is asked again)."""

    current = PasswordField("Current password", validators=[DataRequired(), Length(max=200)])
    new = PasswordField(
        "New password", validators=[DataRequired(), Length(min=MIN_PASSWORD, max=200)]
    )
    repeat = PasswordField(
        "New password again",
        validators=[DataRequired(), EqualTo("new", message="The two new passwords differ.")],
    )
