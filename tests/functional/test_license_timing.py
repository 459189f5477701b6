"""Unknown, malformed and known keys cost the same lookup (no early exit to time)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask
from sqlalchemy import event

from connector.db import db
from connector.licensing.keys import KeyFormat, generate_key
from connector.licensing.service import find_license
from tests.factories import WebhookSender
from tests.licensing_helpers import issue_key


@contextmanager
def statements_run(engine: Any) -> Iterator[list[str]]:
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):  # not SQLite's BEGIN
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def test_lookup_time_does_not_depend_on_whether_the_key_exists(
    app: Flask, shop: WebhookSender
) -> None:
    """Each kind of key runs the same statement (an early exit would run none), and the
    fastest of many interleaved lookups of each differ by far less than network jitter
    (< 1 ms). The fastest, not the median: a busy machine only ever slows a lookup down,
    and the median of a loaded run moves by more than that."""
    known = issue_key(shop)
    unknown = generate_key(KeyFormat())
    malformed = known[:-1] + ("2" if known[-1] != "2" else "3") + "Z"
    keys = {"known": known, "unknown": unknown, "malformed": malformed}
    samples: dict[str, list[float]] = {label: [] for label in keys}
    with app.app_context():
        session = db.session
        statements = {}
        for label, key in keys.items():
            with statements_run(db.engine) as seen:
                find_license(session, key)
            statements[label] = seen
        for _ in range(150):
            for label, key in keys.items():
                start = time.perf_counter()
                find_license(session, key)
                samples[label].append(time.perf_counter() - start)
        assert find_license(session, known)[0] is not None
        assert find_license(session, unknown)[0] is None
    assert len(statements["known"]) == 1, statements
    assert statements["unknown"] == statements["malformed"] == statements["known"]
    fastest = {label: min(values) for label, values in samples.items()}
    assert max(fastest.values()) - min(fastest.values()) < 0.001, fastest
