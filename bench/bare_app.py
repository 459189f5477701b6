"""The baseline for bench/validate.py: a bare Flask JSON endpoint, no database, no signing."""

from __future__ import annotations

import datetime as dt

from flask import Flask, jsonify, request


def create_app() -> Flask:
    app = Flask("bare")

    @app.post("/api/v1/licenses/validate")
    def validate() -> object:
        data = request.get_json(silent=True) or {}
        return jsonify(
            {
                "valid": True,
                "code": "VALID",
                "detail": "bare endpoint",
                "license": None,
                "nonce": data.get("nonce"),
                "ts": dt.datetime.now(dt.UTC).isoformat(),
            }
        )

    return app
