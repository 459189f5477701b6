"""Blueprint for connector.vault; routes are added by its issue."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("vault_views", __name__)
