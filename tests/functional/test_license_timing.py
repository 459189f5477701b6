"""Unknown, malformed and known keys cost the same lookup (no early exit to time)."""

from __future__ import annotations

import statistics
import time

from flask import Flask

from connector.db import db
from connector.licensing.keys import KeyFormat, generate_key
from connector.licensing.service import find_license
from tests.factories import WebhookSender
from tests.licensing_helpers import issue_key


def test_lookup_time_does_not_depend_on_whether_the_key_exists(
    app: Flask, shop: WebhookSender
) -> None:
    """Medians of interleaved lookups differ by far less than network jitter (< 1 ms)."""
    known = issue_key(shop)
    unknown = generate_key(KeyFormat())
    malformed = known[:-1] + ("2" if known[-1] != "2" else "3") + "Z"
    samples: dict[str, list[float]] = {"known": [], "unknown": [], "malformed": []}
    with app.app_context():
        session = db.session
        for _ in range(150):
            for label, key in (("known", known), ("unknown", unknown), ("malformed", malformed)):
                start = time.perf_counter()
                find_license(session, key)
                samples[label].append(time.perf_counter() - start)
        assert find_license(session, known)[0] is not None
        assert find_license(session, unknown)[0] is None
    medians = {label: statistics.median(values) for label, values in samples.items()}
    assert max(medians.values()) - min(medians.values()) < 0.001, medians
