"""The app bench/download.py serves: Keygate on the bench's settings, plus its baseline.

``/bench/bare`` answers the same kind of 302 as a download click, from inside the same app
(same hooks, same server), and touches nothing. The settings come from the JSON file named
by ``KEYGATE_BENCH_SETTINGS``, written by bench/download.py after it set the database up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from flask import Flask, redirect

from connector import create_app as create_keygate

BARE_TARGET = "http://127.0.0.1:9/bench/apps/tool.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256"


def create_app() -> Flask:
    overrides = json.loads(Path(os.environ["KEYGATE_BENCH_SETTINGS"]).read_text())
    app = create_keygate(overrides)

    @app.get("/bench/bare")
    def bare() -> object:
        return redirect(BARE_TARGET, code=302)

    return app
