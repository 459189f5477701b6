"""Blueprint for connector.admin; routes are added by its issue."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("admin_views", __name__)
