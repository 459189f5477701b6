"""Forms of the admin pages (Flask-WTF: every POST carries a CSRF token)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

MIN_PASSWORD = 12


class LoginForm(FlaskForm):
    username = StringField("User", validators=[DataRequired(), Length(max=100)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=200)])


class ConfirmForm(FlaskForm):
    """A button that only posts a CSRF token (sign out, retry a job)."""


class ConfirmedForm(FlaskForm):
    """A button whose effect cannot be undone (disconnect the shop, replace the API token):
    a box ticked first. The pages run no script (CSP ``script-src 'none'``), so the
    browser's ``required`` asks, and the server checks the box too."""

    confirm = BooleanField("I understand", validators=[DataRequired()])


class DeleteStoreForm(ConfirmedForm):
    """Deleting a store: the box ticked and the store's id typed again."""

    store_id = StringField("Store id", validators=[DataRequired(), Length(max=32)])


class PasswordForm(FlaskForm):
    """Change the signed-in admin's password (the current one is asked again)."""

    current = PasswordField("Current password", validators=[DataRequired(), Length(max=200)])
    new = PasswordField(
        "New password", validators=[DataRequired(), Length(min=MIN_PASSWORD, max=200)]
    )
    repeat = PasswordField(
        "New password again",
        validators=[DataRequired(), EqualTo("new", message="The two new passwords differ.")],
    )
