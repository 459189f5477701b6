"""Every route, fed seeded random input: never a 500, and errors in the route's own format.

Random JSON bodies built from the contract's field names and awkward values (NUL, half a
surrogate pair, huge numbers, deep nesting, a real key, wrong types), random path values and
query strings, with and without the store's token and a signed-in admin's session. The seed
is fixed, so a failure names a request that can be replayed. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from tests.factories import WebhookSender
from tests.functional.test_admin_pages import admin_client, sign_in
from tests.licensing_helpers import issue_key

__all__ = ["admin_client"]

SEED = 20261201
ROUNDS = 20  # requests per route and method

# The contract's field names (and WooCommerce's), as random bodies mix them.
FIELDS = (  # noqa: SIM905 - a word list reads better than 47 quoted lines
    "key product site fingerprint nonce label version ttl encrypt name policy activation_limit "
    "duration_days update_days staging_free files object_key filename watermark sha256 size "
    "published_at changelog reason email account_id access_key_id secret_access_key bucket "
    "endpoint api_key sender_email list_id consent_meta_key consumer_key consumer_secret key_id "
    "user_id key_permissions id status line_items billing refunds quantity total date_modified_gmt"
).split()
TEXTS = (
    "",
    " ",
    "x" * 3000,
    "a\x00b",
    "\ud800",
    "1e999999",
    "NaN",
    "-1",
    "501",
    "7",
    "r2",
    "brevo",
    "woocommerce",
    "revoke",
    "suspend",
    "https://WWW.Bücher.example:443/x",
    "localhost",
    "2026-01-01T00:00:00Z",
    "not a date",
    "a@b.c",
    "../../etc/passwd",
    "1.2.3",
)
NUMBERS = (0, -1, 1, 3, 501, 2**63, -(2**63), 10**30, 1.5, 1e308)


def _value(rnd: random.Random, key: str, depth: int = 0) -> Any:
    roll = rnd.random() * (0.7 if depth > 2 else 1.0)
    if roll < 0.1:
        return None
    if roll < 0.2:
        return rnd.choice((True, False))
    if roll < 0.35:
        return rnd.choice(NUMBERS)
    if roll < 0.6:
        return rnd.choice((*TEXTS, key, key.lower()))
    if roll < 0.75:
        return [_value(rnd, key, depth + 1) for _ in range(rnd.randint(0, 3))]
    return {rnd.choice(FIELDS): _value(rnd, key, depth + 1) for _ in range(rnd.randint(0, 4))}


def _body(rnd: random.Random, key: str) -> bytes:
    roll = rnd.random()
    if roll < 0.05:
        return b"not json"
    if roll < 0.1:
        return b"[" * 5000
    if roll < 0.15:
        return json.dumps(_value(rnd, key)).encode()
    fields = {rnd.choice(FIELDS): _value(rnd, key) for _ in range(rnd.randint(0, 7))}
    return json.dumps(fields).encode()


def _path(rnd: random.Random, rule: Any, values: list[str]) -> str:
    path: str = rule.rule
    for argument in rule.arguments:
        choice = rnd.choice(values)
        if "<int:" + argument in path:
            choice = rnd.choice(("1", "2", "99999999999999999999"))
        path = re.sub(rf"<(?:[^:>]+:)?{argument}>", choice, path)
    if rnd.random() < 0.25:
        path += "?" + rnd.choice(
            ("email=a%00b", "status=zzz", "limit=-5", "limit=abc", "product=%F0%28", "action=x")
        )
    return path


def test_random_input_on_every_route_never_gets_a_500(
    app: Flask, shop: WebhookSender, admin_client: FlaskClient
) -> None:
    key = issue_key(shop)
    assert sign_in(admin_client) in (200, 302)
    store_id = shop.store.store.public_id
    values = [key, "501", "7", "r2", "brevo", "x", "%2e%2e", "ünï", "a%00", store_id, "a@b.c"]
    rules = sorted(
        (rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"),
        key=lambda rule: rule.rule,
    )
    rnd = random.Random(SEED)  # noqa: S311 - a replayable test input, not a secret
    for rule in rules:
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for _ in range(ROUNDS):
                path = _path(rnd, rule, values)
                body = _body(rnd, key)
                headers = {"Authorization": f"Bearer {shop.store.api_token}"}
                if rnd.random() < 0.2:
                    headers = {}
                content_type = rnd.choice(("application/json", "text/plain", None))
                response = admin_client.open(
                    path, method=method, data=body, headers=headers, content_type=content_type
                )
                request = f"{method} {path} {body[:200]!r}"
                response.close()  # as a server does: a streamed answer ends in its context
                assert response.status_code < 500, request
                if path.startswith(("/api/", "/webhooks/")) and response.status_code >= 400:
                    assert response.mimetype == "application/problem+json", request
