"""The owner's sign-in limits: per account whatever the address, counted before any password
is checked; the record a lockout leaves for the owner; and the device cookie that lets the
owner's own browser past a lockout strangers caused, and nobody else's."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import func, select
from werkzeug.security import generate_password_hash

from connector.db import db
from connector.models import AdminUser, AuditEvent, SecurityEvent
from connector.stores import create_store
from connector.vault.crypto import keyed_hash
from tests.functional.test_admin_https import (
    FORWARDED,
    PUBLIC,
    _browser_get,
    owner_app,
    proxied_app,
)
from tests.functional.test_admin_pages import PASSWORD, admin_client, csrf_token, store_admin

__all__ = ["admin_client", "proxied_app"]  # fixtures the tests below use

ACCOUNT_LIMIT = 20  # sign-ins an hour per account that do not succeed (connector.admin)
DEVICE_LIMIT = 10  # the same per device cookie
DEVICE_COOKIE = "keygate_device"


def attempt(
    client: FlaskClient,
    password: str,
    n: int,
    username: str = "owner",
    user_agent: str | None = None,
) -> int:
    """A sign-in from address number ``n`` (each address has its own 10 a minute)."""
    form = {
        "username": username,
        "password": password,
        "csrf_token": csrf_token(client, "/admin/login"),
    }
    environ = {"REMOTE_ADDR": f"198.51.{100 + n // 250}.{n % 250 + 1}"}
    if user_agent is not None:
        environ["HTTP_USER_AGENT"] = user_agent
    answer = client.post("/admin/login", data=form, environ_base=environ)
    return answer.status_code


def lock(client: FlaskClient, username: str = "owner", first: int = 0) -> None:
    """Guess ``username``'s password until the account is locked, from many addresses."""
    guesses = [attempt(client, "wrong", first + n, username) for n in range(ACCOUNT_LIMIT)]
    assert guesses == [401] * ACCOUNT_LIMIT


def test_concurrent_guesses_stop_at_the_account_limit(
    app: Flask, admin_client: FlaskClient
) -> None:
    """20 failed sign-ins an hour per account "whatever the address": guesses sent at the
    same moment from many addresses get no more password checks than that."""
    guesses = ACCOUNT_LIMIT + 6
    clients = [app.test_client() for _ in range(guesses)]
    tokens = [csrf_token(client, "/admin/login") for client in clients]
    start = threading.Barrier(guesses)
    statuses: list[int] = []

    def guess(n: int) -> None:
        start.wait()
        answer = clients[n].post(
            "/admin/login",
            data={"username": "owner", "password": f"guess {n}", "csrf_token": tokens[n]},
            environ_base={"REMOTE_ADDR": f"198.51.100.{n + 1}"},
        )
        statuses.append(answer.status_code)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(guesses)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(statuses)) <= [401, 429]
    checked = statuses.count(401)  # a 401 is a password that was checked and was wrong
    assert checked <= ACCOUNT_LIMIT, f"{checked} passwords checked, the limit is {ACCOUNT_LIMIT}"


def test_a_sign_in_lockout_leaves_a_record_for_the_owner(
    app: Flask, admin_client: FlaskClient
) -> None:
    """An account locked by failed sign-ins (then refused even with the right password)
    leaves a security record or audit entry: the owner can see why, and that someone guessed
    (DESIGN: rate-limit events are kept, as the license API keeps its own)."""
    token = csrf_token(admin_client, "/admin/login")

    def attempt(password: str, n: int) -> int:
        form = {"username": "owner", "password": password, "csrf_token": token}
        environ = {"REMOTE_ADDR": f"198.51.100.{n + 1}"}
        return admin_client.post("/admin/login", data=form, environ_base=environ).status_code

    assert [attempt("wrong", n) for n in range(ACCOUNT_LIMIT)] == [401] * ACCOUNT_LIMIT
    assert attempt(PASSWORD, 200) == 429  # the owner is locked out now
    with app.app_context():
        security = db.session.scalar(
            select(func.count())
            .select_from(SecurityEvent)
            .where(SecurityEvent.path.like("/admin/login%"))
        )
        audited = db.session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action.like("admin.login%"), AuditEvent.action != "admin.login")
        )
    assert (security or 0) + (audited or 0) > 0, "no record of 20 failed sign-ins and a lockout"


def test_a_name_typed_with_spaces_or_decomposed_accents_signs_in_as_the_account(
    app: Flask, admin_client: FlaskClient
) -> None:
    """A phone's keyboard adds a space after a suggested word, and an "é" may come as "e"
    and an accent: the sign-in finds the account all the same."""
    with app.app_context():
        db.session.add(
            AdminUser(username="Ren\u00e9", password_hash=generate_password_hash(PASSWORD))
        )
        db.session.commit()
    assert attempt(admin_client, PASSWORD, 1, username="owner ") == 302
    assert attempt(app.test_client(), PASSWORD, 2, username=" Rene\u0301") == 302
    assert attempt(app.test_client(), PASSWORD, 3, username="Ren\u00e9s") == 401


def test_spaces_around_a_name_spend_the_same_account_budget(
    admin_client: FlaskClient,
) -> None:
    """Were " owner" and "owner " budgets of their own, each spelling would buy another 20
    guesses at the same account."""
    spellings = ["owner", " owner", "owner ", "  owner  "]
    guesses = [
        attempt(admin_client, "wrong", n, username=spellings[n % len(spellings)])
        for n in range(ACCOUNT_LIMIT)
    ]
    assert guesses == [401] * ACCOUNT_LIMIT
    assert attempt(admin_client, PASSWORD, 100, username=" owner") == 429


def test_signing_in_often_never_uses_the_account_budget(
    app: Flask, admin_client: FlaskClient
) -> None:
    """Only sign-ins that fail count: the owner signing in more than 20 times an hour (from
    browsers with no device cookie yet) is never held back, and 20 failures after that still
    lock the account."""
    signed_in = [attempt(app.test_client(), PASSWORD, n) for n in range(ACCOUNT_LIMIT + 5)]
    assert signed_in == [302] * (ACCOUNT_LIMIT + 5)
    lock(admin_client, first=100)
    assert attempt(admin_client, PASSWORD, 200) == 429


@pytest.fixture
def app_without_redis(tmp_path: Path, database_url: str) -> Iterator[Flask]:
    """Keygate told to keep its limits in a Redis that does not answer (nothing listens)."""
    with owner_app(tmp_path, database_url, ratelimit_storage_uri="redis://127.0.0.1:1/0") as app:
        yield app


def test_the_account_limit_holds_in_memory_while_the_limit_storage_is_down(
    app_without_redis: Flask,
) -> None:
    """Redis down: sign-ins are answered (never a 500) and the account still locks, its
    count kept in the server's memory meanwhile."""
    client = app_without_redis.test_client()
    lock(client)
    assert attempt(client, PASSWORD, 200) == 429


def _records(app: Flask) -> list[tuple[str | None, str | None, str, str | None]]:
    with app.app_context():
        events = db.session.scalars(select(SecurityEvent).order_by(SecurityEvent.id)).all()
        return [(e.scope, e.ip_hash, e.path, e.user_agent) for e in events]


def _lockouts(app: Flask) -> list[tuple[str, str | None, dict[str, object]]]:
    with app.app_context():
        events = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "admin.login_locked")
        ).all()
        return [(e.actor, e.subject, dict(e.detail)) for e in events]


def _ip_hash(app: Flask, n: int) -> str:
    with app.app_context():
        return keyed_hash("security-ip", f"198.51.{100 + n // 250}.{n % 250 + 1}")


def test_a_lockout_is_audited_once_and_refusals_recorded_once_a_minute_per_address(
    app: Flask, admin_client: FlaskClient
) -> None:
    """The lockout (the account's first refusal in its hour) is audited by user name, once,
    never with a password; each refused sign-in leaves a security record of scope
    "account" (address hashed, user agent), at most one a minute per address."""
    lock(admin_client)
    refused = [attempt(admin_client, PASSWORD, 200, user_agent="Guesser/1") for _ in range(3)]
    assert refused == [429] * 3
    assert attempt(admin_client, "wrong", 201, user_agent="Other/2") == 429
    assert _records(app) == [
        ("account", _ip_hash(app, 200), "/admin/login", "Guesser/1"),
        ("account", _ip_hash(app, 201), "/admin/login", "Other/2"),
    ]
    assert _lockouts(app) == [("keygate", "owner", {"scope": "account", "failed": ACCOUNT_LIMIT})]
    with app.app_context():
        audit_text = repr(db.session.scalars(select(AuditEvent.detail)).all())
    assert PASSWORD not in audit_text and "wrong" not in audit_text


def test_a_name_no_account_has_is_recorded_but_not_audited(
    app: Flask, admin_client: FlaskClient
) -> None:
    """Guessing names must not fill the audit log: a locked name no account has leaves a
    security record only."""
    lock(admin_client, "nobody")
    assert attempt(admin_client, "wrong", 200, "nobody") == 429
    assert [scope for scope, *_ in _records(app)] == ["account"]
    assert _lockouts(app) == []
    assert attempt(admin_client, PASSWORD, 201) == 302  # another account is not locked


def test_the_per_address_limit_leaves_a_record_too(app: Flask, admin_client: FlaskClient) -> None:
    """Past 10 sign-ins a minute from one address: 429, and a record of scope "ip"."""
    statuses = [attempt(admin_client, "wrong", 7, user_agent="Guesser/1") for _ in range(12)]
    assert statuses == [401] * 10 + [429] * 2
    assert _records(app) == [("ip", _ip_hash(app, 7), "/admin/login", "Guesser/1")]


def test_the_dashboard_names_a_locked_sign_in(app: Flask, admin_client: FlaskClient) -> None:
    """Admins of every store see "Sign-in for owner locked ..." for an hour, linked to the
    audit log; an admin of one store does not."""
    with app.app_context():
        db.session.add(AdminUser(username="boss", password_hash=generate_password_hash(PASSWORD)))
        store = create_store(db.session, "Shop", "https://shop.example")
        db.session.commit()
        store_id = store.store.id
    lock(admin_client)
    assert attempt(admin_client, PASSWORD, 200) == 429
    boss = app.test_client()
    assert attempt(boss, PASSWORD, 201, "boss") == 302
    page = boss.get("/admin/").get_data(as_text=True)
    notice = f"Sign-in for owner locked after {ACCOUNT_LIMIT} failed attempts in the last hour."
    assert notice in page
    assert "/admin/audit?action=admin.login_locked" in page
    assert notice not in store_admin(app, store_id).get("/admin/").get_data(as_text=True)


def _device_cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie(DEVICE_COOKIE, path="/admin")
    assert cookie is not None, "no device cookie"
    return cookie.value


def _browser_with(app: Flask, device_cookie: str) -> FlaskClient:
    client = app.test_client()
    client.set_cookie(DEVICE_COOKIE, device_cookie, path="/admin")
    return client


def _add_admin(app: Flask, username: str) -> int:
    with app.app_context():
        user = AdminUser(username=username, password_hash=generate_password_hash(PASSWORD))
        db.session.add(user)
        db.session.commit()
        return user.id


def test_the_owner_signs_in_from_their_own_browser_while_strangers_locked_the_account(
    app: Flask, admin_client: FlaskClient
) -> None:
    """20 wrong guesses by a stranger lock the account for everyone without a device cookie,
    the right password included; the browser the owner signed in from before still signs in."""
    assert attempt(admin_client, PASSWORD, 0) == 302  # this browser is given its cookie
    admin_client.post("/admin/logout", data={"csrf_token": csrf_token(admin_client, "/admin/")})
    assert admin_client.get("/admin/").status_code == 302
    stranger = app.test_client()
    lock(stranger, first=1)
    assert attempt(stranger, PASSWORD, 100) == 429  # no cookie: locked out
    assert attempt(admin_client, PASSWORD, 101) == 302  # the owner's browser: signed in
    assert admin_client.get("/admin/").status_code == 200


def test_a_forged_altered_expired_or_other_users_device_cookie_is_no_way_past_a_lockout(
    app: Flask, admin_client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only an authentic, unexpired cookie naming the user signing in counts."""
    _add_admin(app, "ana")  # ana signs in from her own browser
    ana = app.test_client()
    assert attempt(ana, PASSWORD, 0, "ana") == 302
    assert attempt(admin_client, PASSWORD, 1) == 302
    owners = _device_cookie(admin_client)
    with app.app_context():
        owner_id = db.session.scalars(
            select(AdminUser.id).where(AdminUser.username == "owner")
        ).one()
        secret = app.config["SECRET_KEY"]
    claim = {"u": owner_id, "n": "owner", "d": "a-device"}
    forged = URLSafeTimedSerializer("not-the-secret", salt="keygate.admin-device").dumps(claim)
    other_purpose = URLSafeTimedSerializer(secret, salt="keygate.portal").dumps(claim)
    altered = ("A" if owners[0] != "A" else "B") + owners[1:]
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: 1_000_000_000)
    expired = URLSafeTimedSerializer(secret, salt="keygate.admin-device").dumps(claim)
    monkeypatch.undo()
    lock(app.test_client(), first=2)
    for n, cookie in enumerate([forged, other_purpose, altered, expired, _device_cookie(ana)]):
        assert attempt(_browser_with(app, cookie), PASSWORD, 100 + n) == 429, n
    assert attempt(_browser_with(app, owners), PASSWORD, 110) == 302  # the authentic one


def test_a_new_password_ends_every_devices_way_past_a_lockout(
    app: Flask, admin_client: FlaskClient
) -> None:
    """A device cookie given before the password changed (the owner suspects someone knows
    it, or `keygate admin password` after a loss) no longer gets past the account's lockout;
    signing in again gives the browser a cookie for the new password."""
    assert attempt(admin_client, PASSWORD, 0) == 302
    before = _device_cookie(admin_client)
    with app.app_context():
        owner = db.session.scalars(select(AdminUser).where(AdminUser.username == "owner")).one()
        owner.set_password(PASSWORD)  # the same words: a new hash all the same
        db.session.commit()
    lock(app.test_client(), first=1)
    assert attempt(_browser_with(app, before), PASSWORD, 100) == 429


def test_guesses_with_a_stolen_device_cookie_stop_at_the_devices_own_budget(
    app: Flask, admin_client: FlaskClient
) -> None:
    """A copy of the owner's cookie spends that device's budget (10 failures an hour), not
    the account's; then it is refused, the right password included, and that lockout is
    audited and shown as the browser's."""
    assert attempt(admin_client, PASSWORD, 0) == 302
    thief = _browser_with(app, _device_cookie(admin_client))
    guesses = [attempt(thief, "wrong", 1 + n) for n in range(DEVICE_LIMIT)]
    assert guesses == [401] * DEVICE_LIMIT
    assert attempt(thief, PASSWORD, 50) == 429
    assert _lockouts(app) == [("keygate", "owner", {"scope": "device", "failed": DEVICE_LIMIT})]
    assert [scope for scope, *_ in _records(app)] == ["device"]
    assert attempt(app.test_client(), PASSWORD, 51) == 302  # the account's budget is whole
    _add_admin(app, "boss")
    boss = app.test_client()
    assert attempt(boss, PASSWORD, 52, "boss") == 302
    page = boss.get("/admin/").get_data(as_text=True)
    assert (
        f"Sign-in for owner from one of their browsers locked after {DEVICE_LIMIT} failed"
        " attempts in the last hour." in page
    )


def test_signing_in_often_from_a_device_never_uses_its_budget(admin_client: FlaskClient) -> None:
    assert attempt(admin_client, PASSWORD, 0) == 302
    signed_in = [attempt(admin_client, PASSWORD, 1 + n) for n in range(DEVICE_LIMIT + 3)]
    assert signed_in == [302] * (DEVICE_LIMIT + 3)


def test_the_device_cookie_is_http_only_lax_and_for_the_admin_only(
    admin_client: FlaskClient,
) -> None:
    form = {"username": "owner", "password": PASSWORD}
    form["csrf_token"] = csrf_token(admin_client, "/admin/login")
    answer = admin_client.post("/admin/login", data=form)
    (cookie,) = [c for c in answer.headers.getlist("Set-Cookie") if c.startswith(DEVICE_COOKIE)]
    attributes = {a.strip().split("=")[0]: a.strip() for a in cookie.split(";")[1:]}
    assert attributes["Path"] == "Path=/admin"
    assert attributes["SameSite"] == "SameSite=Lax"
    assert attributes["Max-Age"] == f"Max-Age={180 * 24 * 3600}"
    assert "HttpOnly" in attributes and "Secure" not in attributes  # plain http here


def test_the_device_cookie_is_secure_over_https(proxied_app: Flask) -> None:
    """Behind the README's proxy (https): the cookie is only ever sent over https."""
    client = proxied_app.test_client()
    page, sent = _browser_get(client, "/admin/login")
    token = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    answer = client.post(
        "/admin/login",
        base_url=f"http://{PUBLIC}",
        headers={**FORWARDED, **sent},
        data={"username": "owner", "password": PASSWORD, "csrf_token": token},
    )
    assert answer.status_code == 302
    (cookie,) = [c for c in answer.headers.getlist("Set-Cookie") if c.startswith(DEVICE_COOKIE)]
    assert "Secure" in [a.strip() for a in cookie.split(";")]


NEW_PASSWORD = "a much longer new passphrase"


def _change_password(client: FlaskClient, current: str, n: int) -> int:
    """A change of the signed-in admin's password to NEW_PASSWORD from address number ``n``."""
    form = {"current": current, "new": NEW_PASSWORD, "repeat": NEW_PASSWORD}
    form["csrf_token"] = csrf_token(client, "/admin/password")
    environ = {"REMOTE_ADDR": f"203.0.{113 + n // 250}.{n % 250 + 1}"}
    return client.post("/admin/password", data=form, environ_base=environ).status_code


def test_the_current_password_is_not_guessed_from_many_addresses(
    app: Flask, admin_client: FlaskClient
) -> None:
    """A copy of a signed-in session cookie gives 10 guesses an hour at the admin's current
    password on the password page, whatever the addresses they come from (the right one
    included after that); the password stays, and another admin's budget is whole."""
    assert attempt(admin_client, PASSWORD, 0) == 302
    guesses = [_change_password(admin_client, "wrong", n) for n in range(10)]
    assert guesses == [400] * 10
    assert _change_password(admin_client, PASSWORD, 50) == 429
    assert attempt(app.test_client(), PASSWORD, 1) == 302  # the password did not change
    _add_admin(app, "boss")
    boss = app.test_client()
    assert attempt(boss, PASSWORD, 2, "boss") == 302
    assert _change_password(boss, PASSWORD, 60) == 302


def test_the_browser_that_changed_the_password_keeps_its_way_past_a_lockout(
    app: Flask, admin_client: FlaskClient
) -> None:
    """The owner changes their password on the password page (strangers may know it): the
    browser they did it from stays signed in and keeps its device, so strangers locking the
    account do not lock the owner out of it once that session ends; a copy of its device
    cookie from before the change gets no way past, nor another browser's."""
    assert attempt(admin_client, PASSWORD, 0) == 302
    before = _device_cookie(admin_client)
    other = app.test_client()
    assert attempt(other, PASSWORD, 1) == 302
    assert _change_password(admin_client, PASSWORD, 2) == 302
    lock(app.test_client(), first=3)
    token = csrf_token(admin_client, "/admin/")
    assert admin_client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert attempt(admin_client, NEW_PASSWORD, 100) == 302
    assert attempt(_browser_with(app, before), NEW_PASSWORD, 101) == 429
    assert attempt(other, NEW_PASSWORD, 102) == 429


def test_an_ipv6_network_is_one_address_for_the_sign_in_limit(admin_client: FlaskClient) -> None:
    """The 10 sign-ins a minute per address count an IPv6 address as its /64: a guesser
    rotating through their network's addresses (and through names, each with a budget of
    its own) is held to them, each a password hash the server computes; another network,
    and IPv4 addresses, are not."""

    def from_address(address: str, n: int) -> int:
        form = {"username": f"guess{n}", "password": "wrong"}
        form["csrf_token"] = csrf_token(admin_client, "/admin/login")
        environ = {"REMOTE_ADDR": address}
        return admin_client.post("/admin/login", data=form, environ_base=environ).status_code

    network = [from_address(f"2001:db8:1:2::{n + 1:x}", n) for n in range(10)]
    assert network == [401] * 10
    assert from_address("2001:db8:1:2:ffff:ffff:ffff:fffe", 10) == 429
    assert from_address("2001:db8:1:3::1", 11) == 401
    assert from_address("198.51.100.1", 12) == 401
    assert from_address("198.51.100.2", 13) == 401
