"""Blueprint for connector.licensing; routes are added by its issue."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("licensing_views", __name__)
