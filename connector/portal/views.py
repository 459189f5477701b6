"""Blueprint for the buyer portal; routes are added by its issue."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("portal", __name__)
