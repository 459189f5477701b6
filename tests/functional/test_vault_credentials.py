"""Credentials API: secrets are write-only, shown masked, encrypted at rest."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, text

from connector.db import db
from connector.models import AuditEvent, Store
from connector.vault.service import credentials_for
from tests.factories import WebhookSender

R2 = {
    "account_id": "0123456789abcdef0123456789abcdef",
    "access_key_id": "AKIAR2EXAMPLEKEY1234",
    "secret_access_key": "r2-secret-Zq8mW3vN5bT7yU1pK9dF2gH4jL6",
    "bucket": "downloads",
    "endpoint_url": "http://127.0.0.1:9000",
}


BREVO = {
    "api_key": "xkeysib-0123456789abcdef-BrevoKeyTail",
    "sender_email": "shop@example.org",
    "sender_name": "Bücher Shop",
    "list_id": 7,
}


@pytest.fixture
def app_settings() -> dict[str, Any]:
    """R2's endpoint is on 127.0.0.1 (a closed port: the check after a save is quick)."""
    return {"allow_private_endpoints": True}


def test_r2_credentials_read_back_masked(shop: WebhookSender) -> None:
    """After PUT, GET shows the secrets as their last four characters only."""
    put = shop.admin("PUT", "/credentials/r2", R2)
    assert put.status_code == 200, put.get_data(as_text=True)
    body = shop.admin("GET", "/credentials/r2").get_json()
    assert body["kind"] == "r2"
    shown = body["credentials"]
    assert shown["secret_access_key"] == "****" + R2["secret_access_key"][-4:]
    assert shown["access_key_id"] == "****" + R2["access_key_id"][-4:]
    assert shown["bucket"] == "downloads"
    assert shown["account_id"] == R2["account_id"]
    assert shown["endpoint_url"] == "http://127.0.0.1:9000"
    for response in (put, shop.admin("GET", "/credentials/r2")):
        raw = response.get_data(as_text=True)
        assert R2["secret_access_key"] not in raw
        assert R2["access_key_id"] not in raw


def test_secret_left_out_keeps_the_stored_one(app: Flask, shop: WebhookSender) -> None:
    """Changing the bucket does not require typing the secret again."""
    shop.admin("PUT", "/credentials/r2", R2)
    changed = {k: v for k, v in R2.items() if k not in {"secret_access_key", "access_key_id"}}
    changed["bucket"] = "other-bucket"
    assert shop.admin("PUT", "/credentials/r2", changed).status_code == 200
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        stored = credentials_for(db.session, store, "r2")
    assert stored is not None
    assert stored["bucket"] == "other-bucket"
    assert stored["secret_access_key"] == R2["secret_access_key"]


def test_brevo_credentials_and_optional_fields(app: Flask, shop: WebhookSender) -> None:
    """Brevo: api key masked, sender shown, optional ids kept as numbers."""
    assert shop.admin("PUT", "/credentials/brevo", BREVO).status_code == 200
    shown = shop.admin("GET", "/credentials/brevo").get_json()["credentials"]
    assert shown == {
        "api_key": "****Tail",
        "sender_email": "shop@example.org",
        "sender_name": "Bücher Shop",
        "list_id": 7,
        "template_id": None,
        "consent_meta_key": None,
    }
    with_consent = {**BREVO, "consent_meta_key": "_billing_newsletter-ok"}
    assert shop.admin("PUT", "/credentials/brevo", with_consent).status_code == 200
    shown = shop.admin("GET", "/credentials/brevo").get_json()["credentials"]
    assert shown["consent_meta_key"] == "_billing_newsletter-ok"


@pytest.mark.parametrize("key", ["news letter", "a.b", "x" * 101, "ja\u0308", "k'ey"])
def test_a_consent_meta_key_that_is_no_meta_key_is_422(shop: WebhookSender, key: str) -> None:
    """The consent meta key is a plain meta key: letters, digits, _ and -, up to 100."""
    longest = {**BREVO, "consent_meta_key": "_Opt-in_" + "x" * 92}
    assert shop.admin("PUT", "/credentials/brevo", longest).status_code == 200
    response = shop.admin("PUT", "/credentials/brevo", {**BREVO, "consent_meta_key": key})
    assert response.status_code == 422
    problem = response.get_json()
    assert problem["field"] == "consent_meta_key"
    assert "letters, digits, _ and -" in problem["detail"]


def test_missing_required_field_is_422_naming_it(shop: WebhookSender) -> None:
    """A first PUT without a secret is refused, and the problem names the field."""
    response = shop.admin("PUT", "/credentials/brevo", {"sender_email": "a@b.example"})
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["field"] == "api_key"


def test_bad_input_is_never_a_500(shop: WebhookSender) -> None:
    """Unknown kind 404, unknown field and wrong types 422, non-JSON 400, no token 401."""
    assert shop.admin("PUT", "/credentials/paypal", {"x": 1}).status_code == 404
    assert shop.admin("PUT", "/credentials/r2", {**R2, "region": "auto"}).status_code == 422
    assert shop.admin("PUT", "/credentials/brevo", {**BREVO, "list_id": "7"}).status_code == 422
    assert shop.admin("PUT", "/credentials/r2", {**R2, "bucket": 5}).status_code == 422
    assert (
        shop.admin("PUT", "/credentials/r2", {**R2, "endpoint_url": "ftp://x"}).status_code == 422
    )
    raw = shop.client.put(
        "/api/v1/admin/credentials/r2",
        data=b"not json",
        headers={"Authorization": f"Bearer {shop.store.api_token}"},
    )
    assert raw.status_code == 400
    assert shop.client.get("/api/v1/admin/credentials/r2").status_code == 401
    assert shop.admin("GET", "/credentials/brevo").status_code == 404


def test_credentials_are_one_encrypted_token_at_rest(app: Flask, shop: WebhookSender) -> None:
    """The stored row holds a Fernet token, no field name or value in the clear."""
    shop.admin("PUT", "/credentials/r2", R2)
    with app.app_context():
        raw = db.session.execute(text("SELECT kind, data FROM credentials")).all()
    assert [row[0] for row in raw] == ["r2"]
    assert raw[0][1].startswith("gAAAA")
    for value in R2.values():
        assert value not in raw[0][1]


def test_changes_are_audited_by_field_name_only(app: Flask, shop: WebhookSender) -> None:
    """The audit log says which fields changed, never their values."""
    shop.admin("PUT", "/credentials/r2", R2)
    with app.app_context():
        event = db.session.execute(
            select(AuditEvent).where(AuditEvent.action == "credentials.updated")
        ).scalar_one()
        assert event.detail["fields_changed"] == sorted(R2)
        assert R2["secret_access_key"] not in str(event.detail)


def test_delete_forgets_credentials(app: Flask, shop: WebhookSender) -> None:
    """DELETE removes a set; credentials_for then answers None."""
    shop.admin("PUT", "/credentials/brevo", BREVO)
    assert shop.admin("DELETE", "/credentials/brevo").status_code == 200
    assert shop.admin("DELETE", "/credentials/brevo").status_code == 404
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        assert credentials_for(db.session, store, "brevo") is None


def test_credentials_read_by_other_domains_never_show_a_secret_in_a_repr(
    app: Flask, shop: WebhookSender
) -> None:
    """What credentials_for hands to the mail and storage code hides every secret from repr
    (logs, tracebacks), while still reading as the plain values they pass to R2 and Brevo."""
    shop.admin("PUT", "/credentials/r2", R2)
    shop.admin("PUT", "/credentials/brevo", BREVO)
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        r2 = credentials_for(db.session, store, "r2")
        brevo = credentials_for(db.session, store, "brevo")
    assert r2 is not None and brevo is not None
    shown = " ".join(
        [
            repr(r2),
            str(r2),
            f"{brevo!r}",
            repr(list(r2.values())),
            repr(brevo["api_key"]),
            repr(r2["secret_access_key"]),
            repr(r2["access_key_id"]),
        ]
    )
    for secret in (R2["secret_access_key"], R2["access_key_id"], BREVO["api_key"]):
        assert secret not in shown
    assert r2 == R2 and brevo == BREVO
    assert f"{r2['secret_access_key']}" == R2["secret_access_key"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("account_id", "a b", "letters, digits"),
        ("bucket", "My_Bucket!", "a bucket name"),
        ("bucket", "ab", "a bucket name"),
        ("endpoint_url", "http://169.254.169.254/", "link-local"),
        ("endpoint_url", "http://[fe80::1]:9000", "link-local"),
        ("endpoint_url", "http://metadata.google.internal/", "internal"),
        ("endpoint_url", "http://metadata.google.internal./", "internal"),
        ("endpoint_url", "http://2852039166/", "link-local"),
        ("endpoint_url", "http://0xa9fea9fe/", "link-local"),
        ("endpoint_url", "http://[::ffff:169.254.169.254]/", "link-local"),
        ("endpoint_url", "http://169.254.169.254./", "link-local"),
        ("endpoint_url", "http://[fd00:ec2::254]/", "link-local"),
        ("endpoint_url", "http://100.100.100.200/", "link-local"),
        ("endpoint_url", "http://0251.0376.0251.0376/", "link-local"),
        ("endpoint_url", "http://169.254.43518/", "link-local"),
        ("endpoint_url", "http://0xa9.0xfe.0xa9.0xfe/", "link-local"),
    ],
)
def test_r2_settings_no_bucket_could_have_are_refused(
    shop: WebhookSender, field: str, value: str, message: str
) -> None:
    """Saved, they made every download a 503 with no trace; an endpoint at a cloud's
    metadata service would have Keygate send its requests there."""
    answer = shop.admin("PUT", "/credentials/r2", {**R2, field: value})
    assert answer.status_code == 422
    assert message in answer.get_json()["detail"] and value not in answer.get_json()["detail"]
    assert shop.admin("GET", "/credentials/r2").status_code == 404


def test_two_first_saves_at_once_both_succeed(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two first PUTs of one kind at once (a double-clicked form, two owners): both answer
    200 and one set is stored, never a 500 from the second insert. Each request, having read
    "none stored", waits up to a second for the other to read too."""
    import connector.vault.service as vault

    meet = threading.Barrier(2, timeout=1)
    read_row = vault._row

    def read_then_meet(*args: Any, **kwargs: Any) -> Any:
        row = read_row(*args, **kwargs)
        with contextlib.suppress(threading.BrokenBarrierError):
            meet.wait()
        return row

    monkeypatch.setattr(vault, "_row", read_then_meet)
    statuses: list[int] = []

    def save(bucket: str) -> None:
        sender = WebhookSender(app.test_client(), shop.store)
        statuses.append(
            sender.admin("PUT", "/credentials/r2", {**R2, "bucket": bucket}).status_code
        )

    threads = [threading.Thread(target=save, args=(name,)) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200, 200]
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        stored = credentials_for(db.session, store, "r2")
    assert stored is not None and stored["bucket"] in {"one", "two"}
