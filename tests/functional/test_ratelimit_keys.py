"""Rate-limit storage never holds a client's address: counters are kept under a keyed hash
of the IP (purpose "ratelimit-ip"), for the license API's budgets and for Flask-Limiter's
sign-in and portal limits alike, in memory or in Redis. Limits still count per address."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from connector import create_app
from connector.db import db
from connector.extensions import RATELIMIT_IP_HASH, client_ip_key, limiter
from connector.models import AdminUser
from connector.vault.crypto import Keyring, keyed_hash
from tests.conftest import app_overrides

REDIS_URI = "redis://127.0.0.1:6379/0"
LOGIN_LIMIT = 10  # connector.admin.views: 10 sign-in POSTs a minute


@contextmanager
def _app(tmp_path: Path, database_url: str, **settings: Any) -> Iterator[Flask]:
    (tmp_path / "instance" / "files").mkdir(parents=True, exist_ok=True)
    application = create_app(
        app_overrides(tmp_path, database_url, ratelimit_license_per_ip="3/minute", **settings)
    )
    application.config["TESTING"] = True
    application.config["WTF_CSRF_ENABLED"] = False  # the limit is what is tested here
    with application.app_context():
        db.session.add(AdminUser(username="owner", password_hash=generate_password_hash("pw")))
        db.session.commit()
    try:
        yield application
    finally:
        application.extensions["keygate.db"].engine.dispose()


def _random_ip() -> str:
    """An address of TEST-NET-3 no other run (sharing Redis) is likely to use."""
    return f"203.0.113.{random.randrange(1, 255)}"  # noqa: S311 - not a secret


def _validate(client: FlaskClient, ip: str) -> int:
    response = client.post(
        "/api/v1/licenses/validate", json={"key": "KG-NOPE"}, environ_base={"REMOTE_ADDR": ip}
    )
    return response.status_code


def _sign_in(client: FlaskClient, ip: str, username: str) -> int:
    response = client.post(
        "/admin/login",
        data={"username": username, "password": "wrong"},
        environ_base={"REMOTE_ADDR": ip},
    )
    return response.status_code


def _memory_keys(app: Flask) -> list[str]:
    """Every key the app's two in-memory rate-limit storages hold."""
    keys: list[str] = []
    for storage in (limiter.storage, app.extensions["keygate.license_budgets"]._strategy.storage):
        keys += [*storage.storage, *storage.events, *storage.expirations]
    return keys


def _drive_both_limits(app: Flask, ip: str, other_ip: str) -> None:
    """Spend both limits from ``ip`` up to their 429s; ``other_ip`` is still served.

    The sign-ins name an account no other run uses: failed sign-ins are also counted per
    account, and Redis outlives a run."""
    client = app.test_client()
    username = f"owner-{random.randrange(10**9)}"  # noqa: S311 - not a secret
    assert [_validate(client, ip) for _ in range(4)] == [200, 200, 200, 429]
    assert _validate(client, other_ip) == 200  # still counted per address
    attempts = [_sign_in(client, ip, username) for _ in range(LOGIN_LIMIT + 1)]
    assert attempts == [401] * LOGIN_LIMIT + [429]
    assert _sign_in(client, other_ip, username) == 401


def test_memory_storage_keys_hold_a_hash_of_the_ip_not_the_ip(
    tmp_path: Path, database_url: str
) -> None:
    """After the license API's and the sign-in form's 429s, no in-memory key holds the IP."""
    ip, other_ip = "198.51.100.23", "198.51.100.24"
    with _app(tmp_path, database_url) as app:
        _drive_both_limits(app, ip, other_ip)
        keys = _memory_keys(app)
        with app.app_context():
            hashed = keyed_hash(RATELIMIT_IP_HASH, ip)
    assert keys
    assert not [k for k in keys if ip in k or other_ip in k], keys
    assert any(hashed in k and "license-ip" in k for k in keys), keys
    assert any(hashed in k and "login" in k for k in keys), keys


def test_redis_keys_hold_a_hash_of_the_ip_not_the_ip(tmp_path: Path, database_url: str) -> None:
    """With KEYGATE_RATELIMIT_STORAGE_URI=redis://..., Redis holds no client address."""
    ip = _random_ip()
    other_ip = ip.replace("203.0.113.", "192.0.2.")
    with _app(tmp_path, database_url, ratelimit_storage_uri=REDIS_URI) as app:
        with app.app_context():
            hashed = keyed_hash(RATELIMIT_IP_HASH, ip)
        store = redis.Redis.from_url(REDIS_URI)
        try:
            _drive_both_limits(app, ip, other_ip)
            raw = [k.decode() for k in store.scan_iter(match=f"*{ip}*")]
            raw += [k.decode() for k in store.scan_iter(match=f"*{other_ip}*")]
            hashed_keys = [k.decode() for k in store.scan_iter(match=f"*{hashed}*")]
            if hashed_keys:
                store.delete(*hashed_keys)  # this run's counters: a rerun starts afresh
        finally:
            store.close()
    assert raw == []
    assert any("license-ip" in k for k in hashed_keys), hashed_keys
    assert any("login" in k for k in hashed_keys), hashed_keys


def test_the_ip_key_is_hashed_once_per_request(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both rate-limit call sites in one request share one HMAC of the address."""
    purposes: list[str] = []
    original = Keyring.keyed_hash

    def counting(self: Keyring, purpose: str, value: str) -> str:
        purposes.append(purpose)
        return original(self, purpose, value)

    monkeypatch.setattr(Keyring, "keyed_hash", counting)
    with app.test_request_context("/admin/login", environ_base={"REMOTE_ADDR": "198.51.100.5"}):
        first = client_ip_key()
        assert client_ip_key() == first
        assert first == original(
            app.extensions["keygate.keyring"], RATELIMIT_IP_HASH, "198.51.100.5"
        )
    assert purposes.count(RATELIMIT_IP_HASH) == 1


def test_an_ipv6_network_shares_one_license_budget(tmp_path: Path, database_url: str) -> None:
    """One host's /64 (what an IPv6 customer is given) is one caller: rotating through its
    addresses spends one per-IP budget; the next /64 has its own."""
    with _app(tmp_path, database_url) as app:
        client = app.test_client()
        statuses = [_validate(client, f"2001:db8:1:2::{n:x}") for n in range(1, 5)]
        assert statuses == [200, 200, 200, 429]
        assert _validate(client, "2001:db8:1:2:ffff:ffff:ffff:ffff") == 429
        assert _validate(client, "2001:db8:1:3::1") == 200


def test_an_ipv4_mapped_address_spends_its_ipv4_budget(tmp_path: Path, database_url: str) -> None:
    """``::ffff:198.51.100.7`` (an IPv4 caller as a dual-stack socket sees it) is the IPv4
    address: one budget for both forms, not one per form nor one for all mapped addresses
    (which would share the /64 ``::ffff:0:0/64``)."""
    with _app(tmp_path, database_url) as app:
        client = app.test_client()
        ip = "198.51.100.7"
        statuses = [_validate(client, f) for f in (ip, f"::ffff:{ip}", ip, f"::ffff:{ip}")]
        assert statuses == [200, 200, 200, 429]
        assert _validate(client, "::ffff:198.51.100.8") == 200
        with app.app_context():
            hashed = keyed_hash(RATELIMIT_IP_HASH, ip)
        assert any(hashed in k and "license-ip" in k for k in _memory_keys(app))
