"""Blueprint for connector.privacy; routes are added by its issue."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("privacy_views", __name__)
