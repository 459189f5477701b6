"""Blueprint for connector.downloads; routes are added by its issue."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("downloads_views", __name__)
