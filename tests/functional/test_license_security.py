"""Signatures on every answer, key rotation, tampering, and rate limits with records."""

from __future__ import annotations

import base64
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from flask import Flask
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from connector import create_app
from connector.client import SignatureError, verify_response
from connector.db import db, utcnow
from connector.models import SecurityEvent, SigningKey
from connector.stores import create_store
from tests.conftest import MASTER_KEY, SECRET_KEY, app_overrides
from tests.factories import WebhookSender
from tests.licensing_helpers import call, issue_key, public_keys, verify_signed


def _signed_answer(shop: WebhookSender) -> tuple[dict[str, str], bytes, dict[str, str]]:
    key = issue_key(shop)
    response = shop.client.post("/api/v1/licenses/validate", json={"key": key, "nonce": "n1"})
    return dict(response.headers.items()), response.get_data(), public_keys(shop.client)


def _verify(headers: dict[str, str], body: bytes, keys: dict[str, str], **kw: object) -> None:
    verify_response(
        method="POST",
        url="http://localhost/api/v1/licenses/validate",
        headers=headers,
        body=body,
        public_keys=keys,
        nonce=kw.pop("nonce", "n1"),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def test_signature_covers_target_host_date_and_digest(shop: WebhookSender) -> None:
    """The header names the key and the signed headers; the signed string is DESIGN's."""
    headers, body, keys = _signed_answer(shop)
    assert headers["Digest"].startswith("sha-256=")
    assert 'algorithm="ed25519"' in headers["Keygate-Signature"]
    assert 'headers="(request-target) host date digest"' in headers["Keygate-Signature"]
    _verify(headers, body, keys)
    # Checked by hand too, from DESIGN.md's definition, not through the client library.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    params = dict(part.strip().split("=", 1) for part in headers["Keygate-Signature"].split(","))
    kid = params["keyid"].strip('"')
    signed = (
        "(request-target): post /api/v1/licenses/validate\nhost: localhost\n"
        f"date: {headers['Date']}\ndigest: {headers['Digest']}"
    ).encode()
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(keys[kid]))
    public.verify(base64.b64decode(params["signature"].strip('"')), signed)


def test_client_rejects_a_changed_body(shop: WebhookSender) -> None:
    headers, body, keys = _signed_answer(shop)
    forged = body.replace(b'"valid":true', b'"valid":false')
    assert forged != body
    with pytest.raises(SignatureError, match="Digest"):
        _verify(headers, forged, keys)


def test_client_rejects_a_changed_body_with_a_recomputed_digest(shop: WebhookSender) -> None:
    """An attacker who also fixes the Digest still fails the signature."""
    import hashlib

    headers, body, keys = _signed_answer(shop)
    forged = body.replace(b'"valid":true', b'"valid":false')
    headers["Digest"] = "sha-256=" + base64.b64encode(hashlib.sha256(forged).digest()).decode()
    with pytest.raises(SignatureError, match="signature"):
        _verify(headers, forged, keys)


def test_client_rejects_changed_headers(shop: WebhookSender) -> None:
    """A changed Date, a stripped signature, another key id: all refused."""
    headers, body, keys = _signed_answer(shop)
    moved = dict(headers, Date="Mon, 23 Nov 2026 10:00:00 GMT")
    with pytest.raises(SignatureError):
        _verify(moved, body, keys, max_skew=None)
    with pytest.raises(SignatureError):
        _verify({k: v for k, v in headers.items() if k != "Keygate-Signature"}, body, keys)
    other = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    with pytest.raises(SignatureError, match="signature"):
        _verify(headers, body, {kid: base64.b64encode(other).decode() for kid in keys})
    with pytest.raises(SignatureError, match="unknown signing key"):
        _verify(headers, body, {"kg-nope": next(iter(keys.values()))})


def test_client_rejects_replays_and_stale_answers(shop: WebhookSender) -> None:
    """Another request's nonce, or an answer older than the allowed skew, is refused."""
    headers, body, keys = _signed_answer(shop)
    with pytest.raises(SignatureError, match="nonce"):
        _verify(headers, body, keys, nonce="another")
    with pytest.raises(SignatureError, match="Date"):
        _verify(headers, body, keys, now=time.time() + 3600)


def test_client_rejects_a_different_request_target(shop: WebhookSender) -> None:
    """An answer to /validate replayed as the answer to /activate fails."""
    headers, body, keys = _signed_answer(shop)
    with pytest.raises(SignatureError):
        verify_response(
            method="POST",
            url="http://localhost/api/v1/licenses/activate",
            headers=headers,
            body=body,
            public_keys=keys,
        )


def test_signing_keys_are_signed_and_listed(shop: WebhookSender) -> None:
    """GET /signing-keys: kid, alg ed25519, 32-byte public keys in standard base64, signed."""
    response = shop.client.get("/api/v1/signing-keys")
    body = verify_signed(shop.client, "GET", "/api/v1/signing-keys", response)
    (key,) = body["keys"]
    assert key["alg"] == "ed25519"
    assert len(base64.b64decode(key["public_key"], validate=True)) == 32


def test_listing_signing_keys_reads_no_private_key(app: Flask, shop: WebhookSender) -> None:
    """GET /signing-keys lists public halves only: a retired key whose private half the
    configured master keys cannot read (made under a key since dropped) is listed all the
    same."""
    from cryptography.fernet import Fernet

    from connector.signing import ensure_signing_key, rotate_signing_key

    with app.app_context(), app.extensions["keygate.db"].sessionmaker() as session:
        retired = ensure_signing_key(session).kid
        active = rotate_signing_key(session).kid
        unreadable = Fernet(Fernet.generate_key()).encrypt(b"seed").decode()
        session.execute(
            text("UPDATE signing_keys SET private_key = :token WHERE kid = :kid"),
            {"token": unreadable, "kid": retired},
        )
        session.commit()
    response = shop.client.get("/api/v1/signing-keys")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = verify_signed(shop.client, "GET", "/api/v1/signing-keys", response)
    assert {k["kid"]: k["status"] for k in body["keys"]} == {active: "active", retired: "retired"}


def test_rotation_keeps_old_keys_published(app: Flask, shop: WebhookSender, tmp_path: Path) -> None:
    """rotate-signing-key --prepare publishes the next key without signing with it; the
    rotation then signs with that key, and the old one stays listed as retired."""
    from connector.cli import main
    from connector.signing import forget_cached_signer

    key = issue_key(shop)
    old_kid = next(iter(public_keys(shop.client)))
    env = {
        "KEYGATE_INSTANCE_DIR": str(tmp_path / "instance"),
        "KEYGATE_DATABASE_URL": app.extensions["keygate.settings"].database_url,
        "KEYGATE_MASTER_KEY": MASTER_KEY,
        "KEYGATE_SECRET_KEY": SECRET_KEY,
        "KEYGATE_WORKER": "off",
    }

    def statuses() -> dict[str, str]:
        listed = shop.client.get("/api/v1/signing-keys").get_json()["keys"]
        return {k["kid"]: k["status"] for k in listed}

    def signing_kid() -> str:
        header = call(shop.client, "validate", {"key": key}).headers["Keygate-Signature"]
        return header.split('keyid="', 1)[1].split('"', 1)[0]

    prepared = CliRunner().invoke(main, ["rotate-signing-key", "--prepare"], env=env)
    assert prepared.exit_code == 0, prepared.output
    forget_cached_signer(app)
    (next_kid,) = [kid for kid, status in statuses().items() if status == "next"]
    assert statuses()[old_kid] == "active"
    assert signing_kid() == old_kid  # published, not signing yet

    result = CliRunner().invoke(main, ["rotate-signing-key"], env=env)
    assert result.exit_code == 0, result.output
    assert next_kid in result.output
    forget_cached_signer(app)
    assert statuses() == {old_kid: "retired", next_kid: "active"}
    assert signing_kid() == next_kid

    again = CliRunner().invoke(main, ["rotate-signing-key"], env=env)
    assert again.exit_code == 0, again.output
    forget_cached_signer(app)
    assert sorted(statuses().values()) == ["active", "retired", "retired"]


def _twice_at_once(
    app: Flask, change: Callable[[Session], SigningKey], *, first_key: bool = True
) -> list[str]:
    """Run a signing-key ``change`` in two transactions (two operators, two hosts): the
    second starts once the first has made its change and not committed yet. The kids they
    were told, first's first. ``first_key``: a key signs already."""
    from connector.signing import ensure_signing_key

    sessions = app.extensions["keygate.db"].sessionmaker
    postgres = app.extensions["keygate.db"].engine.dialect.name == "postgresql"
    if first_key:
        with app.app_context(), sessions() as session:
            ensure_signing_key(session)
            session.commit()
    told: list[str] = []
    second_pid: list[int] = []

    def second() -> None:
        with app.app_context(), sessions() as session:
            if postgres:
                second_pid.append(session.scalar(text("SELECT pg_backend_pid()")))
            told.append(change(session).kid)
            session.commit()

    with app.app_context(), sessions() as session:
        first = change(session).kid
        thread = threading.Thread(target=second)
        thread.start()
        # Until the second has finished or waits on a lock (SQLite: its BEGIN IMMEDIATE
        # waits on the first's write lock, which pg_stat_activity cannot show).
        deadline = time.monotonic() + (10 if postgres else 0.5)
        while thread.is_alive() and time.monotonic() < deadline:
            if second_pid and _waits_on_a_lock(app, second_pid[0]):
                break
            time.sleep(0.01)
        session.commit()
    thread.join()
    return [first, *told]


def _waits_on_a_lock(app: Flask, pid: int) -> bool:
    with app.extensions["keygate.db"].engine.connect() as connection:
        waits = connection.scalar(
            text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        )
    return waits == "Lock"


def _statuses(app: Flask) -> dict[str, str]:
    with app.app_context(), app.extensions["keygate.db"].sessionmaker() as session:
        return {row.kid: row.status for row in session.scalars(select(SigningKey))}


def test_two_prepares_at_once_publish_one_next_key(app: Flask) -> None:
    """Two rotate-signing-key --prepare runs at once publish one next key, and both operators
    are told to pin that one."""
    from connector.signing import prepare_signing_key

    first, second = _twice_at_once(app, prepare_signing_key)
    assert first == second
    assert [kid for kid, status in _statuses(app).items() if status == "next"] == [first]


def test_two_rotations_at_once_leave_one_signing_key(app: Flask) -> None:
    """Two rotate-signing-key runs at once rotate twice, one after the other: one key is
    active, the one the second operator was told about."""
    from connector.signing import rotate_signing_key

    first, second = _twice_at_once(app, rotate_signing_key)
    statuses = _statuses(app)
    assert [kid for kid, status in statuses.items() if status == "active"] == [second]
    assert statuses[first] == "retired"


def test_two_servers_answering_first_at_once_make_one_signing_key(app: Flask) -> None:
    """Two servers' first answers on an empty database make one signing key, used by both."""
    from connector.signing import ensure_signing_key

    first, second = _twice_at_once(app, ensure_signing_key, first_key=False)
    assert first == second
    assert _statuses(app) == {first: "active"}


def test_unknown_path_under_the_api_is_signed_too(shop: WebhookSender) -> None:
    """Even a routing error (wrong method) on the license API is a signed answer."""
    response = shop.client.get("/api/v1/licenses/validate")
    assert response.status_code == 405
    verify_signed(shop.client, "GET", "/api/v1/licenses/validate", response)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/api/v1/licenses", 404),  # the API's base, no endpoint named
        ("GET", "/api/v1/licenses", 404),
        ("POST", "/api/v1/licenses/", 404),
        ("POST", "/api/v1/licenses/renew", 404),  # no such endpoint
        ("POST", "/api/v1/licenses/validate/extra", 404),
        ("POST", "/api/v1/signing-keys", 405),  # GET only
        ("GET", "/api/v1/signing-keys/extra", 404),
    ],
)
def test_a_path_or_method_no_route_has_is_a_signed_problem_echoing_the_request(
    shop: WebhookSender, method: str, path: str, status: int
) -> None:
    """A product's client posting to a wrong license API address reads a signed
    problem+json with ``ts`` and its nonce echoed, as for every other error: not an
    unsigned answer it would have to treat as tampered with."""
    response = shop.client.open(path, method=method, json={"key": "KG-NOPE", "nonce": "w1"})
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    body = verify_signed(shop.client, method, path, response, nonce="w1")
    assert body["nonce"] == "w1"
    assert body["ts"].endswith("Z")
    assert body["status"] == status


@contextmanager
def apps_with(
    tmp_path: Path, database_url: str, count: int = 1, **settings: Any
) -> Iterator[list[Flask]]:
    """``count`` apps (servers) on one database with these settings, disposed after."""
    (tmp_path / "instance" / "files").mkdir(parents=True, exist_ok=True)
    apps = [create_app(app_overrides(tmp_path, database_url, **settings)) for _ in range(count)]
    try:
        yield apps
    finally:
        for application in apps:
            application.extensions["keygate.db"].engine.dispose()


@pytest.fixture
def limited_app(tmp_path: Path, database_url: str) -> Iterator[Flask]:
    with apps_with(
        tmp_path,
        database_url,
        ratelimit_license_per_key="3/minute",
        ratelimit_license_per_ip="5/minute",
    ) as (application,):
        yield application


def _limited_shop(app: Flask) -> WebhookSender:
    with app.app_context():
        created = create_store(db.session, "Limited", "https://shop.example")
        db.session.commit()
    return WebhookSender(app.test_client(), created)


def test_per_key_limit_answers_signed_429_and_keeps_a_record(limited_app: Flask) -> None:
    """The 4th call with one key in a minute: 429 + Retry-After, signed; IP kept hashed."""
    shop = _limited_shop(limited_app)
    key = issue_key(shop)
    for _ in range(3):
        assert call(shop.client, "validate", {"key": key}).status_code == 200
    response = call(shop.client, "validate", {"key": key, "nonce": "r"})
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert response.get_json()["nonce"] == "r"
    with limited_app.app_context():
        (event,) = db.session.scalars(select(SecurityEvent)).all()
        assert (event.kind, event.scope) == ("rate_limited", "key")
        assert event.license_id is not None
        assert "127.0.0.1" not in event.ip_hash and len(event.ip_hash) == 64
    # Another key from the same address is still served (per-IP limit is 5).
    other = issue_key(shop, product_id=502)
    assert call(shop.client, "validate", {"key": other}).status_code == 200


def test_a_security_record_keeps_the_route_not_a_path_with_a_token(app: Flask) -> None:
    """A record names the route (``/my/<token>/resend``), never the path a caller sent: a
    path may carry a buyer's token or a license key, which the records must not keep."""
    from connector.audit import record_security_event

    path = "/my/SECRET-TOKEN-abc/resend"
    with app.test_request_context(path, method="POST"):
        record_security_event(db.session, kind="rate_limited", scope="ip")
        db.session.commit()
        (event,) = db.session.scalars(select(SecurityEvent)).all()
        assert event.path == "/my/<token>/resend"


def test_a_padded_key_spends_the_keys_budget(limited_app: Flask) -> None:
    """A key with spaces around it is the key, answered VALID, so it spends the key's budget
    too, however long the padding (within the field's 300 characters)."""
    shop = _limited_shop(limited_app)
    key = issue_key(shop)
    forms = [key, " " * 150 + key, key + " " * 150, "\t" * 100 + key + " " * 100]
    answers = [call(shop.client, "validate", {"key": form}) for form in forms]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[1].get_json()["code"] == "VALID"
    with limited_app.app_context():
        (event,) = db.session.scalars(select(SecurityEvent)).all()
        assert event.scope == "key"


def test_per_ip_limit_covers_keyless_and_unknown_keys(limited_app: Flask) -> None:
    """Guessing keys from one address hits the per-IP limit."""
    shop = _limited_shop(limited_app)
    statuses = [
        call(shop.client, "validate", {"key": f"KG-GUESS-{i}"}).status_code for i in range(6)
    ]
    assert statuses == [200] * 5 + [429]
    with limited_app.app_context():
        (event,) = db.session.scalars(select(SecurityEvent)).all()
        assert event.scope == "ip"


def test_a_burst_past_the_limit_keeps_one_record_a_minute_per_address(limited_app: Flask) -> None:
    """Anyone can call the license API: a caller who keeps sending past the limit gets a
    429 each time but one security record a minute per address and scope, not one per
    call (the table would fill as fast as they send). Another address gets its own."""
    shop = _limited_shop(limited_app)
    agent = {"User-Agent": "KeyGuesser/1.0"}
    statuses = [
        call(shop.client, "validate", {"key": f"KG-GUESS-{n}"}, check=False, headers=agent)
        for n in range(30)
    ]
    assert [s.status_code for s in statuses] == [200] * 5 + [429] * 25
    other = {"REMOTE_ADDR": "198.51.100.20"}
    elsewhere = [
        shop.client.post(
            "/api/v1/licenses/validate", json={"key": f"KG-OTHER-{n}"}, environ_base=other
        ).status_code
        for n in range(7)
    ]
    assert elsewhere == [200] * 5 + [429] * 2
    with limited_app.app_context():
        records = db.session.scalars(select(SecurityEvent).order_by(SecurityEvent.id)).all()
        assert [r.scope for r in records] == ["ip", "ip"]
        assert records[0].user_agent == "KeyGuesser/1.0"
        assert records[0].ip_hash != records[1].ip_hash
        db.session.execute(
            update(SecurityEvent).values(created_at=utcnow() - dt.timedelta(minutes=2))
        )
        db.session.commit()
    # A minute on, the same caller still refused is recorded again.
    call(shop.client, "validate", {"key": "KG-GUESS-LATER"}, check=False, headers=agent)
    with limited_app.app_context():
        assert db.session.scalar(select(func.count()).select_from(SecurityEvent)) == 3


def test_a_network_sending_from_address_after_address_keeps_one_record_a_minute(
    limited_app: Flask,
) -> None:
    """An IPv6 host rotating through its /64 spends one per-IP budget, and its refusals
    keep one security record a minute as one address's do, not one per address it
    sent from (each a new address, the table would fill as fast as it sends)."""
    shop = _limited_shop(limited_app)
    statuses = [
        shop.client.post(
            "/api/v1/licenses/validate",
            json={"key": f"KG-GUESS-{n}"},
            environ_base={"REMOTE_ADDR": f"2001:db8:7:7::{n + 1:x}"},
        ).status_code
        for n in range(20)
    ]
    assert statuses == [200] * 5 + [429] * 15
    with limited_app.app_context():
        records = db.session.scalars(select(SecurityEvent)).all()
        assert [(r.kind, r.scope) for r in records] == [("rate_limited", "ip")]


def test_only_a_breach_carries_retry_after(limited_app: Flask) -> None:
    shop = _limited_shop(limited_app)
    key = issue_key(shop)
    answers = [call(shop.client, "validate", {"key": key}) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert all("Retry-After" not in a.headers for a in answers[:3])
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 60
    assert answers[3].get_json()["type"].endswith("/too-many-requests")


def test_an_unreachable_limit_store_does_not_stop_products(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing listens on the Redis port given: calls are answered, and it is logged once."""
    with apps_with(
        tmp_path,
        database_url,
        ratelimit_storage_uri="redis://127.0.0.1:1/0",
        ratelimit_license_per_key="1/minute",
    ) as (application,):
        shop = _limited_shop(application)
        key = issue_key(shop)
        with caplog.at_level("WARNING", logger="connector.ratelimit"):
            statuses = [call(shop.client, "validate", {"key": key}).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    warnings = [r for r in caplog.records if "rate-limit storage unreachable" in r.message]
    assert len(warnings) == 1


def test_limits_are_shared_through_redis(tmp_path: Path, database_url: str) -> None:
    """Two app instances (two servers) on one Redis share the per-key budget.

    Buckets are per (random) license key, so runs never share one; they expire in a minute.
    """
    with apps_with(
        tmp_path,
        database_url,
        2,
        ratelimit_storage_uri="redis://127.0.0.1:6379/0",
        ratelimit_license_per_key="4/minute",
    ) as apps:
        shop = _limited_shop(apps[0])
        key = issue_key(shop)
        clients = [a.test_client() for a in apps]
        statuses = [
            clients[i % 2].post("/api/v1/licenses/validate", json={"key": key}).status_code
            for i in range(6)
        ]
    assert statuses == [200, 200, 200, 200, 429, 429]


def test_an_unreachable_limit_store_keeps_sign_in_limited_in_memory(
    tmp_path: Path, database_url: str
) -> None:
    """Redis down: signing in is answered (never a 500), and its 10-a-minute limit holds in
    the server's memory meanwhile."""
    with apps_with(tmp_path, database_url, ratelimit_storage_uri="redis://127.0.0.1:1/0") as (
        application,
    ):
        client = application.test_client()
        statuses = []
        for _ in range(11):
            page = client.get("/admin/login").get_data(as_text=True)
            token = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
            answer = client.post(
                "/admin/login", data={"username": "x", "password": "y", "csrf_token": token}
            )
            statuses.append(answer.status_code)
    assert statuses == [401] * 10 + [429]
