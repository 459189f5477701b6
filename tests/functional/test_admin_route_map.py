"""Every admin route, read off ``app.url_map``, fed bad input on purpose: never a 500.

The owner's side, systematically: every route under ``/admin`` and ``/api/v1/admin`` with
every method (HEAD, OPTIONS and one it does not allow included), ids that do not exist or
belong to another store, unicode and oversized path values, garbage in the query, JSON
bodies of the wrong type and forms without their CSRF token. A route added later is swept
too, with no list here to update. Each answer must be in the route's own format
(``application/problem+json`` for the API, a page for people), never echo a secret or a
stack trace; a form without its CSRF token changes nothing. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.routing import Rule
from werkzeug.test import TestResponse

from connector.db import db
from connector.models import AuditEvent
from tests.functional.test_admin_pages import signed_in_owner, store_admin
from tests.functional.test_store_isolation import THEIR_EMAIL, Two, two

__all__ = ["two"]

ADMIN_PREFIXES = ("/admin", "/api/v1/admin")
API_PREFIX = "/api/v1/admin"
ALL_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# Ids no row has: 0, past the largest a 32-bit column holds, and far past any integer type.
MISSING_IDS = ("0", "2147483647", "2147483648", "99999999999999999999")
ODD_TEXTS = ("ünï-😀", "x" * 600, "-1", "%2e%2e", "1e999", " ", "a%0Ab")
GARBAGE_QUERIES = (
    "limit=-1&before=-5&store=abc&status=zzz",
    "limit=99999999999999999999&before=99999999999999999999&store=99999999999999999999",
    "limit=1e999&before=%F0%28&email=%F0%28&product=%F0%28&action=%F0%28",
    "limit=&before=&store=&status=&product=&email=&action=&q=&shop_gone=1&done=x&withdrawn=x",
    "email=" + "x" * 5000 + "&product=ünï&status=active&action=" + "ü" * 300,
    "limit=0&limit=5&store=1&store=2",
)
JSON_BODIES: tuple[Any, ...] = (
    None,
    [],
    "text",
    1e308,
    {"name": [], "policy": "none", "files": {}, "days": "7", "version": 1},
    {"days": -1, "activation_limit": -5, "name": "ü" * 5000, "size": 2**70},
    {"days": 2**63, "policy": {"activation_limit": 1e308, "duration_days": -1}, "files": [None]},
    {"object_key": "../../etc/passwd", "filename": "\u202e.exe", "version": "x" * 300},
)
FORM_FIELDS = (  # noqa: SIM905 - a word list reads better than 38 quoted names
    "q email status product key action days name url key_prefix key_groups key_group_length"
    " kind api_key sender_email account_id access_key_id secret_access_key bucket endpoint_url"
    " consumer_key consumer_secret store store_id shop_product_id version object_key sha256"
    " size before confirm activation_limit duration_days update_days download_limit"
    " download_days filename watermark"
).split()
FORM_VALUES = ("", "-1", "99999999999999999999", "ünï 😀", "x" * 3000, "1e999", "0")
# Every field name any admin call knows, each set to one wrong type or awkward value.
ODD_JSON_VALUES: tuple[Any, ...] = ([], {}, None, True, -1, 2**64, 1e308, "ü" * 3000, "", "\ud800")
JSON_BODIES += tuple({name: value for name in FORM_FIELDS} for value in ODD_JSON_VALUES)


@pytest.fixture
def app_settings() -> dict[str, Any]:
    """No rate limits: the sweep sends thousands of requests, and a 429 would hide the
    answer the input gets (the limits have tests of their own)."""
    return {"ratelimit_enabled": False}


def admin_rules(app: Flask) -> list[Rule]:
    """The admin routes, signing out last (a sweep signed out would see only redirects)."""
    return sorted(
        (r for r in app.url_map.iter_rules() if r.rule.startswith(ADMIN_PREFIXES)),
        key=lambda r: (r.endpoint == "admin_views.logout", r.rule, sorted(r.methods or ())),
    )


def path_values(two: Two, argument: str, rule: Rule) -> list[str]:
    """Values for one argument of a route: some of the other store's, some of none."""
    theirs = two.theirs.store.store
    by_name: dict[str, list[str]] = {
        "store_id": [str(theirs.id)],
        "order_id": [str(two.their_order)],
        "license_id": [str(two.their_license)],
        "activation_id": [str(two.their_activation)],
        "job_id": [str(two.their_job)],
        "mail_id": [str(two.their_mail)],
        "shop_order_id": ["7200"],
        "shop_product_id": ["501", "777"],
        "key": [two.their_key, two.their_key.lower(), two.my_key[:-1] + "0"],
        "email": [THEIR_EMAIL, "nobody@example.org", "ünï@例え.jp"],
        "kind": ["r2", "brevo", "woocommerce", "zzz"],
        "action": ["revoke", "extend", "zzz"],
        "version": ["9.9.9", "0.0.0"],
    }
    if f"<int:{argument}>" in rule.rule:
        return [*by_name.get(argument, []), *MISSING_IDS]
    return [*by_name.get(argument, ["x"]), *ODD_TEXTS]


def mine(two: Two, argument: str) -> str:
    """A value of the attacking store's own for an argument, where it has one."""
    store = two.mine.store.store
    return {
        "store_id": str(store.id),
        "order_id": str(two.my_order),
        "shop_order_id": "7100",
        "shop_product_id": "501",
        "key": two.my_key,
        "email": "mybuyer@example.org",
        "kind": "brevo",
        "action": "suspend",
        "version": "1.0.0",
    }.get(argument, "1")


def paths(two: Two, rule: Rule) -> Iterator[str]:
    """The route's path with one argument at a time set to a bad value, the rest to the
    attacking store's own; with and without garbage in the query."""
    arguments = sorted(rule.arguments)
    fill = {name: mine(two, name) for name in arguments}
    variants = [fill] + [
        {**fill, name: value} for name in arguments for value in path_values(two, name, rule)
    ]
    for index, values in enumerate(variants):
        path = rule.rule
        for name, value in values.items():
            path = re.sub(rf"<(?:[^:>]+:)?{name}>", value, path)
        yield path
        yield path + "?" + GARBAGE_QUERIES[index % len(GARBAGE_QUERIES)]


def secrets_of(two: Two) -> list[str]:
    """Both stores' admin API tokens and webhook secrets: no answer may carry one."""
    stores = (two.mine.store, two.theirs.store)
    return [s.api_token for s in stores] + [s.webhook_secret for s in stores]


def problems(response: TestResponse, method: str, path: str, two: Two) -> list[str]:
    """What is wrong with one answer, in words (none for a good one)."""
    where = f"{method} {path[:160]} -> {response.status_code}"
    body = response.get_data(as_text=True)
    found = []
    if response.status_code >= 500:
        found.append(f"{where}: a server error")
    if "Traceback" in body or 'File "/' in body:
        found.append(f"{where}: a stack trace in the answer")
    found += [f"{where}: a secret in the answer" for s in secrets_of(two) if s in body]
    if method == "HEAD" and body:
        found.append(f"{where}: a body on HEAD")
    if response.status_code < 400 or method == "HEAD":
        return found
    if path.startswith(API_PREFIX):
        if response.mimetype != "application/problem+json":
            found.append(f"{where}: {response.mimetype}, not problem+json")
        else:
            problem = json.loads(body)
            if not {"type", "title", "status", "detail"} <= set(problem):
                found.append(f"{where}: problem fields missing: {problem}")
            elif problem["status"] != response.status_code:
                found.append(f"{where}: problem status {problem['status']}")
    elif response.mimetype != "text/html":
        found.append(f"{where}: {response.mimetype}, not a page")
    elif "<html" not in body.lower():
        found.append(f"{where}: an error that is not a page")
    return found


def send(client: FlaskClient, method: str, path: str, two: Two, body: Any = ...) -> TestResponse:
    headers = {"Authorization": f"Bearer {two.mine.store.api_token}"}
    if body is ...:
        response = client.open(path, method=method, headers=headers)
    elif path.startswith(API_PREFIX):
        response = client.open(
            path,
            method=method,
            headers=headers,
            data=json.dumps(body),
            content_type="application/json",
        )
    else:
        response = client.open(path, method=method, headers=headers, data=body)
    response.close()
    return response


def csrf_of(client: FlaskClient) -> str:
    page = client.get("/admin/orders").get_data(as_text=True)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def forms(token: str) -> Iterator[dict[str, str]]:
    """Every form field the admin pages know, each value odd (no ``confirm`` ticked: a
    sweep must not delete the stores it sweeps)."""
    for index, value in enumerate(FORM_VALUES):
        form = {name: value for name in FORM_FIELDS if name != "confirm"}
        form["kind"] = ("r2", "brevo", "woocommerce", "zzz")[index % 4]
        yield {**form, "csrf_token": token}
    yield {"csrf_token": token}


def sweep(app: Flask, client: FlaskClient, two: Two) -> list[str]:
    found: list[str] = []
    token = csrf_of(client)
    for rule in admin_rules(app):
        allowed = set(rule.methods or ()) - {"HEAD", "OPTIONS"}
        for path in paths(two, rule):
            for method in sorted(allowed):
                if method in {"GET", "DELETE"} or path.startswith(API_PREFIX):
                    bodies: tuple[Any, ...] = (...,) if method in {"GET", "DELETE"} else JSON_BODIES
                else:
                    bodies = tuple(forms(token)) if "?" not in path else ({},)
                for body in bodies:
                    found += problems(send(client, method, path, two, body), method, path, two)
            for method in ("HEAD", "OPTIONS", *[m for m in ALL_METHODS if m not in allowed][:1]):
                response = send(client, method, path, two)
                found += problems(response, method, path, two)
                if method == "HEAD" and "GET" in allowed:
                    got = send(client, "GET", path, two).status_code
                    if response.status_code != got:
                        found.append(f"HEAD {path[:160]} -> {response.status_code}, GET {got}")
    return found


def test_every_admin_route_answers_bad_input_in_its_own_format(app: Flask, two: Two) -> None:
    """Signed in as an admin of every store and with a store's token, every admin route,
    every method, given ids of nothing or of another store, odd text, garbage queries,
    JSON of the wrong shape and odd forms: no 500, no trace, no secret; errors as
    problem+json on the API and as a page for people."""
    found = sweep(app, signed_in_owner(app), two)
    assert not found, "\n".join(found[:60]) + f"\n({len(found)} in all)"


def test_a_store_admin_sweeping_every_route_changes_nothing_of_another_store(
    app: Flask, two: Two
) -> None:
    """The same sweep by an admin of one store (and its token): the same good answers, and
    the other store's audit log is as it was."""
    theirs = two.theirs.store.store.id
    with app.app_context():
        before = db.session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.store_id == theirs)
        )
    found = sweep(app, store_admin(app, two.mine.store.store.id), two)
    assert not found, "\n".join(found[:60]) + f"\n({len(found)} in all)"
    with app.app_context():
        after = db.session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.store_id == theirs)
        )
    assert after == before
    assert two.theirs.order(7200)["licenses"][0]["status"] == "active"


def test_no_admin_form_is_taken_without_its_csrf_token(app: Flask, two: Two) -> None:
    """Every form the admin pages post (read off the route map), sent with everything but
    its CSRF token, by a signed-in admin: a 400 page saying to reload, and nothing changed."""
    client = signed_in_owner(app)
    with app.app_context():
        before = db.session.scalar(select(func.count()).select_from(AuditEvent))
    posted = [
        r for r in admin_rules(app) if not r.rule.startswith(API_PREFIX) and "POST" in r.methods
    ]
    assert len(posted) > 20
    found = []
    for rule in posted:
        path = next(paths(two, rule))
        form = {name: "1" for name in FORM_FIELDS} | {"confirm": "y"}
        response = client.post(path, data=form)
        where = f"POST {path} -> {response.status_code}"
        if rule.endpoint == "admin_views.login":
            ok = response.status_code == 400 and "sign in again" in response.get_data(as_text=True)
        else:
            ok = response.status_code == 400 and "reload" in response.get_data(as_text=True)
        if not ok or response.mimetype != "text/html":
            found.append(where)
    assert not found, found
    with app.app_context():
        after = db.session.scalar(select(func.count()).select_from(AuditEvent))
    assert after == before


def test_the_sweep_reaches_every_admin_route(app: Flask) -> None:
    """The sweep reads its routes off the app: both the pages and the API, dozens of them."""
    rules = admin_rules(app)
    assert sum(r.rule.startswith(API_PREFIX) for r in rules) > 25
    assert sum(not r.rule.startswith(API_PREFIX) for r in rules) > 30
    assert list(itertools.chain.from_iterable(r.arguments for r in rules))
