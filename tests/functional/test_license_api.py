"""The license API: every code, signed answers, seats, staging, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select

from connector import create_app
from connector.db import db
from connector.models import Activation
from tests.conftest import app_overrides
from tests.factories import WebhookSender, line_item, shifted, wc_order
from tests.licensing_helpers import call, issue_key, verify_signed


def test_valid_key_answers_valid_with_license_block(shop: WebhookSender) -> None:
    """A good key validates: signed 200, license block as the contract lists, nonce and ts."""
    key = issue_key(shop, activation_limit=3, duration_days=365)
    response = call(shop.client, "validate", {"key": key, "nonce": "n-123"})
    assert response.status_code == 200
    body = response.get_json()
    assert body["valid"] is True
    assert body["code"] == "VALID"
    assert body["nonce"] == "n-123"
    assert body["ts"].endswith("Z")
    assert body["license"] == {
        "status": "active",
        "product": "501",
        "expires_at": shifted("2027-11-20T11:59:30Z"),
        "updates_until": shifted("2027-11-20T11:59:30Z"),
        "activation_limit": 3,
        "activations_used": 0,
    }


def _count_activations(app: Flask) -> int:
    with app.app_context():
        return db.session.execute(select(func.count()).select_from(Activation)).scalar_one()


def test_unknown_key_is_signed_200_not_found(shop: WebhookSender) -> None:
    """A well-formed key nobody was sold: 200, valid=false, NOT_FOUND, no license block."""
    from connector.licensing.keys import KeyFormat, generate_key

    issue_key(shop)
    unknown = generate_key(KeyFormat())
    body = call(shop.client, "validate", {"key": unknown, "nonce": "x"}).get_json()
    assert (body["valid"], body["code"], body["license"]) == (False, "NOT_FOUND", None)
    assert body["nonce"] == "x"


def test_mistyped_key_is_not_found_with_a_typo_hint(shop: WebhookSender) -> None:
    """One wrong character fails the check character: NOT_FOUND, and the detail says typo."""
    from connector.licensing.keys import ALPHABET, normalize_key

    key = issue_key(shop)
    # A wrong last character; skip the rare one that a prefix reading would still accept.
    typo = next(
        key[:-1] + c for c in ALPHABET if c != key[-1] and normalize_key(key[:-1] + c) is None
    )
    response = call(shop.client, "validate", {"key": typo})
    assert response.status_code == 200
    body = response.get_json()
    assert (body["valid"], body["code"]) == (False, "NOT_FOUND")
    assert "typo" in body["detail"]


def test_key_is_forgiving_about_case_and_spaces(shop: WebhookSender) -> None:
    """The key as a person retypes it (lower case, spaces) still validates."""
    key = issue_key(shop)
    body = call(shop.client, "validate", {"key": key.lower().replace("-", " ")}).get_json()
    assert body["code"] == "VALID"


def test_a_key_typed_without_its_dashes_is_found(shop: WebhookSender) -> None:
    """A key with no dashes at all is forgiven too: a buyer retyping the key in one piece, or a
    settings field that strips them, is answered for the key, not told to look for a typo;
    and the owner's API finds it the same way."""
    key = issue_key(shop)
    typed = key.replace("-", "").lower()
    body = call(shop.client, "validate", {"key": typed}).get_json()
    assert (body["valid"], body["code"]) == (True, "VALID")
    found = shop.admin("GET", f"/licenses/{typed}")
    assert found.status_code == 200
    assert found.get_json()["license"]["key"] == key


def test_a_key_pasted_with_unicode_spaces_is_found(shop: WebhookSender) -> None:
    """A key copied out of a mail or PDF with a zero-width space, no-break spaces or a
    non-breaking hyphen validates, checks out, and its offline file verifies with the key as
    pasted or as typed (the client library forgives the same characters)."""
    from connector.client import verify_license_file
    from tests.licensing_helpers import public_keys

    key = issue_key(shop)
    pasted = "\u00a0" + key.replace("-", "\u2011", 1).replace("-", "\u200b") + "\u200b\u3000"
    body = call(shop.client, "validate", {"key": pasted}).get_json()
    assert (body["valid"], body["code"]) == (True, "VALID")
    checked_out = call(shop.client, "checkout", {"key": pasted, "encrypt": True}).get_json()
    assert checked_out["code"] == "VALID"
    keys = public_keys(shop.client)
    assert verify_license_file(checked_out["license_file"], keys, key=key)["product"] is None
    verify_license_file(checked_out["license_file"], keys, key=pasted)
    plain = call(shop.client, "checkout", {"key": key, "encrypt": False}).get_json()
    verify_license_file(plain["license_file"], keys, key=pasted)  # key_sha256 matches


@pytest.mark.parametrize(
    ("raw", "body", "status"),
    [
        (None, {"nonce": "n"}, 422),
        (None, {"key": 12345}, 422),
        (None, {"key": ""}, 422),
        (b"key=ABC", None, 400),
        (b"[1, 2]", None, 400),
        (b"{", None, 400),
        (b"[" * 16000, None, 400),
        (b'{"key": "\xff\xfe"}', None, 400),
        (b'{"key": "' + b"A" * 20000 + b'"}', None, 413),
    ],
)
def test_bad_input_is_a_signed_problem(
    shop: WebhookSender, raw: bytes | None, body: dict[str, object] | None, status: int
) -> None:
    """Missing key 422, non-JSON 400, oversized 413: problem+json, signed like any answer."""
    response = call(
        shop.client, "validate", body, raw=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    problem = response.get_json()
    assert problem["status"] == status
    assert "ts" in problem
    if status == 413:
        assert problem["type"].endswith("/payload-too-large")


def test_a_body_over_a_lower_body_limit_is_a_signed_413(tmp_path: Path, database_url: str) -> None:
    """With ``KEYGATE_MAX_BODY_BYTES`` under the API's 16 KiB, a body between the two is
    a signed 413 naming the lower limit (werkzeug's own refusal, raised again while the
    answer echoed the nonce, was a bare 500); a body within it is answered."""
    (tmp_path / "instance" / "files").mkdir(parents=True)
    application = create_app(app_overrides(tmp_path, database_url, max_body_bytes=4096))
    try:
        client = application.test_client()
        response = call(client, "validate", {"key": "AAAAA-BBBBB", "label": "x" * 5000})
        assert response.status_code == 413
        assert response.mimetype == "application/problem+json"
        assert "at most 4096 bytes" in response.get_json()["detail"]
        # The type of the API's own refusal, though werkzeug refused this one.
        assert response.get_json()["type"].endswith("/payload-too-large")
        assert call(client, "validate", {"key": "AAAAA-BBBBB"}).get_json()["code"] == "NOT_FOUND"
    finally:
        application.extensions["keygate.db"].engine.dispose()


def test_missing_key_problem_echoes_the_nonce(shop: WebhookSender) -> None:
    """Errors carry the nonce too, so a client can match them to its request."""
    response = call(shop.client, "activate", {"nonce": "abc", "site": "shop.com"})
    assert response.status_code == 422
    assert response.get_json()["nonce"] == "abc"


@pytest.mark.parametrize(
    "endpoint", ["validate", "activate", "deactivate", "update-check", "checkout"]
)
def test_a_nonce_that_is_not_text_is_a_signed_422_naming_it(
    app: Flask, shop: WebhookSender, endpoint: str
) -> None:
    """A nonce sent as a number (PHP's ``mt_rand()``) or any other non-string is refused with
    a problem naming ``nonce``, signed like every answer: echoed back as null it would fail the
    product's own nonce check with no word of why."""
    key = issue_key(shop)
    for nonce in (12345, 1.5, True, ["n"], {"n": 1}):
        body = {"key": key, "site": "shop.com", "product": "501", "version": "1.0", "nonce": nonce}
        response = call(shop.client, endpoint, body, check=False)
        assert response.status_code == 422, nonce
        assert response.mimetype == "application/problem+json"
        problem = verify_signed(shop.client, "POST", f"/api/v1/licenses/{endpoint}", response)
        assert problem["field"] == "nonce"
        assert "nonce" in problem["detail"]
        assert problem["nonce"] is None
    assert _count_activations(app) == 0  # refused before anything was done
    # A nonce that is text, or null (none), is answered as before.
    body = {"key": key, "site": "shop.com", "product": "501", "version": "1.0", "nonce": None}
    assert call(shop.client, endpoint, body).status_code == 200


def test_product_mismatch(shop: WebhookSender) -> None:
    """A key for product 501 asked about product 777: PRODUCT_MISMATCH."""
    key = issue_key(shop)
    body = call(shop.client, "validate", {"key": key, "product": "777"}).get_json()
    assert (body["valid"], body["code"]) == (False, "PRODUCT_MISMATCH")
    assert call(shop.client, "validate", {"key": key, "product": 501}).get_json()["valid"]


def test_a_key_for_another_product_takes_no_seat(app: Flask, shop: WebhookSender) -> None:
    """A buyer pastes product 501's key into product 777: activate naming 777 answers
    PRODUCT_MISMATCH and takes none of 501's seats (it activated, and every validate of 777
    then failed while a seat stayed taken); naming 501, or no product, activates."""
    key = issue_key(shop, activation_limit=1)
    body = call(shop.client, "activate", {"key": key, "site": "a.com", "product": "777"})
    assert (body.get_json()["valid"], body.get_json()["code"]) == (False, "PRODUCT_MISMATCH")
    assert body.get_json()["activation"] is None
    assert _count_activations(app) == 0
    named = call(shop.client, "activate", {"key": key, "site": "a.com", "product": 501})
    assert named.get_json()["code"] == "VALID"
    assert call(shop.client, "activate", {"key": key, "site": "a.com"}).get_json()["valid"]
    assert _count_activations(app) == 1


def test_expired_license(shop: WebhookSender) -> None:
    """A one-day license paid days ago is EXPIRED, and its status reads expired."""
    key = issue_key(shop, duration_days=1)
    body = call(shop.client, "validate", {"key": key}).get_json()
    assert (body["valid"], body["code"]) == (False, "EXPIRED")
    assert body["license"]["status"] == "expired"


def test_extend_without_a_number_of_days_says_a_number_is_needed(shop: WebhookSender) -> None:
    """`extend` needs `{"days": N}`: a wrong type is told to be a whole number, never "or
    null", which the same call refuses as missing."""
    key = issue_key(shop, duration_days=1)
    wrong = shop.admin("POST", f"/licenses/{key}/extend", {"days": "30"})
    assert wrong.status_code == 422
    assert wrong.get_json()["field"] == "days"
    assert wrong.get_json()["detail"] == "days must be a whole number"
    for missing in ({"days": None}, {}):
        refused = shop.admin("POST", f"/licenses/{key}/extend", missing)
        assert refused.status_code == 422
        assert refused.get_json()["detail"] == "days is required"


def test_owner_revokes_suspends_reinstates_and_extends(app: Flask, shop: WebhookSender) -> None:
    """Owner actions change what products hear, carry reason "admin" and are audited."""
    from connector.models import AuditEvent, License

    key = issue_key(shop, duration_days=1)
    assert shop.admin("POST", f"/licenses/{key}/suspend").status_code == 200
    assert call(shop.client, "validate", {"key": key}).get_json()["code"] == "SUSPENDED"
    response = shop.admin("POST", f"/licenses/{key}/revoke")
    assert response.get_json()["license"]["status_reason"] == "admin"
    assert call(shop.client, "validate", {"key": key}).get_json()["code"] == "REVOKED"
    shop.admin("POST", f"/licenses/{key}/reinstate")
    assert call(shop.client, "validate", {"key": key}).get_json()["code"] == "EXPIRED"
    extended = shop.admin("POST", f"/licenses/{key}/extend", {"days": 30})
    assert extended.status_code == 200
    assert call(shop.client, "validate", {"key": key}).get_json()["code"] == "VALID"
    assert shop.admin("POST", f"/licenses/{key}/extend", {}).status_code == 422
    assert shop.admin("POST", f"/licenses/{key}/explode").status_code == 404
    assert shop.admin("POST", "/licenses/NOPE-NOPE/revoke").status_code == 404
    with app.app_context():
        actions = db.session.scalars(
            select(AuditEvent.action).where(AuditEvent.action.like("license.%"))
        ).all()
        assert sorted(actions) == [
            "license.extend",
            "license.reinstate",
            "license.revoke",
            "license.suspend",
        ]
        lic = db.session.execute(select(License)).scalar_one()
        assert lic.status == "active"


def test_a_reinstated_key_shows_no_reason_and_an_extension_records_its_days_and_expiry(
    app: Flask, shop: WebhookSender
) -> None:
    """Reinstated by the owner, a key is active with no revocation reason left in what the
    owner reads; an extension's audit entry records the days added and the expiry before
    and after."""
    from connector.models import AuditEvent

    key = issue_key(shop, duration_days=30)
    assert shop.admin("POST", f"/licenses/{key}/revoke").status_code == 200
    reinstated = shop.admin("POST", f"/licenses/{key}/reinstate").get_json()["license"]
    assert (reinstated["status"], reinstated["status_reason"]) == ("active", None)
    read = shop.admin("GET", f"/licenses/{key}").get_json()["license"]
    assert (read["status"], read["status_reason"]) == ("active", None)
    (listed,) = shop.admin("GET", "/licenses").get_json()["licenses"]
    assert (listed["status"], listed["status_reason"]) == ("active", None)
    before = read["expires_at"]
    after = shop.admin("POST", f"/licenses/{key}/extend", {"days": 10}).get_json()["license"]
    assert after["expires_at"] > before
    with app.app_context():
        (entry,) = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "license.extend")
        ).all()
        assert entry.detail == {
            "before": {"status": "active", "expires_at": before},
            "after": {"status": "active", "expires_at": after["expires_at"]},
            "days": 10,
        }


def _license_audit(app: Flask) -> list[str]:
    from connector.models import AuditEvent

    with app.app_context():
        return list(
            db.session.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.action.like("license.%"))
                .order_by(AuditEvent.id)
            )
        )


def test_a_revoked_key_is_not_suspended_and_says_why_it_is_revoked(
    app: Flask, shop: WebhookSender
) -> None:
    """Suspending a key its refund revoked is a 409 naming the revocation and its reason: the
    key stays revoked by the refund (it comes back if the order is paid again)."""
    shop.configure(501)
    shop.deliver(wc_order(8811, "processing", [line_item(501, line_id=1)]))
    key = shop.order(8811)["licenses"][0]["key"]
    shop.deliver(wc_order(8811, "refunded", [line_item(501, line_id=1)], modified=60))
    refused = shop.admin("POST", f"/licenses/{key}/suspend")
    assert refused.status_code == 409
    assert refused.content_type == "application/problem+json"
    problem = refused.get_json()
    assert problem["status_reason"] == "order:refunded"
    assert "revoked" in problem["detail"] and "refunded" in problem["detail"]
    license_ = shop.admin("GET", f"/licenses/{key}").get_json()["license"]
    assert (license_["status"], license_["status_reason"]) == ("revoked", "order:refunded")
    assert _license_audit(app) == []
    shop.deliver(wc_order(8811, "completed", [line_item(501, line_id=1)], modified=120))
    assert call(shop.client, "validate", {"key": key}).get_json()["code"] == "VALID"


def test_an_action_repeated_answers_as_before_and_is_audited_once(
    app: Flask, shop: WebhookSender
) -> None:
    """Revoking a revoked key, suspending a suspended one or reinstating an active one is a
    200 with the license as it is, and no second audit entry. The owner's revoke of a key a
    refund revoked makes it the owner's, once: paid again, the order does not bring it back."""
    key = issue_key(shop)
    assert shop.admin("POST", f"/licenses/{key}/reinstate").status_code == 200
    for action in ("suspend", "suspend", "revoke", "revoke", "reinstate", "reinstate"):
        answer = shop.admin("POST", f"/licenses/{key}/{action}")
        assert answer.status_code == 200, action
        assert set(answer.get_json()["license"]) >= {"key", "status", "status_reason"}
    assert _license_audit(app) == ["license.suspend", "license.revoke", "license.reinstate"]

    shop.deliver(wc_order(8812, "processing", [line_item(501, line_id=1)]))
    refunded = shop.order(8812)["licenses"][0]["key"]
    shop.deliver(wc_order(8812, "refunded", [line_item(501, line_id=1)], modified=60))
    for _ in range(2):
        again = shop.admin("POST", f"/licenses/{refunded}/revoke")
        assert again.status_code == 200
        assert again.get_json()["license"]["status_reason"] == "admin"
    audited = ["license.suspend", "license.revoke", "license.reinstate", "license.revoke"]
    assert _license_audit(app) == audited
    shop.deliver(wc_order(8812, "processing", [line_item(501, line_id=1)], modified=90))
    assert shop.order(8812)["licenses"][0]["status"] == "revoked"


def test_owner_extension_moves_downloads_that_last_with_the_license(shop: WebhookSender) -> None:
    """Extending a license extends its downloads too when they last while the license lasts
    (no download_days); downloads with a window of their own keep it."""
    from tests.factories import line_item, wc_order

    one = [{"object_key": "a/one.pdf", "filename": "one.pdf"}]
    two = [{"object_key": "a/two.pdf", "filename": "two.pdf"}]
    shop.configure(501, duration_days=30, files=one)
    shop.configure(502, duration_days=30, download_days=5, files=two)
    shop.deliver(wc_order(9301, "processing", [line_item(501), line_item(502)]))
    before = {d["filename"]: d["expires_at"] for d in shop.order(9301)["downloads"]}
    for lic in shop.order(9301)["licenses"]:
        extended = shop.admin("POST", f"/licenses/{lic['key']}/extend", {"days": 10})
        assert extended.status_code == 200
    after = shop.order(9301)
    expiry = {lic["product_id"]: lic["expires_at"] for lic in after["licenses"]}
    downloads = {d["filename"]: d["expires_at"] for d in after["downloads"]}
    assert downloads["one.pdf"] == expiry["501"] > before["one.pdf"]
    assert downloads["two.pdf"] == before["two.pdf"]


def test_a_file_added_after_an_owner_extension_is_linked_until_the_licenses_end(
    shop: WebhookSender,
) -> None:
    """The owner extended a license whose downloads last while it lasts, then added a file:
    the new file's link ends with the license, like the links the extension moved, instead
    of from the payment (here: born expired)."""
    from tests.factories import line_item, wc_order

    shop.configure(501, duration_days=5)  # paid 2026-11-20: ran out on 2026-11-25
    item = line_item(501, line_id=301)
    shop.deliver(wc_order(9302, "processing", [item], modified=1))
    key = shop.order(9302)["licenses"][0]["key"]
    assert shop.admin("POST", f"/licenses/{key}/extend", {"days": 30}).status_code == 200
    files = [
        {"object_key": "a/manual.pdf", "filename": "manual.pdf"},
        {"object_key": "a/v2.zip", "filename": "v2.zip"},
    ]
    shop.configure(501, duration_days=5, files=files)
    shop.deliver(wc_order(9302, "completed", [item], modified=2))
    order = shop.order(9302)
    expiry = order["licenses"][0]["expires_at"]
    assert {d["filename"]: d["expires_at"] for d in order["downloads"]} == {
        "manual.pdf": expiry,
        "v2.zip": expiry,
    }


def test_owner_revocation_survives_a_redelivered_paid_order(shop: WebhookSender) -> None:
    """The order service never undoes a revocation the owner made."""
    from tests.factories import line_item, wc_order

    shop.configure(501)
    shop.deliver(wc_order(8801, "processing", [line_item(501, line_id=1)]))
    key = shop.order(8801)["licenses"][0]["key"]
    shop.admin("POST", f"/licenses/{key}/revoke")
    shop.deliver(wc_order(8801, "completed", [line_item(501, line_id=1)], modified=60))
    assert call(shop.client, "validate", {"key": key}).get_json()["code"] == "REVOKED"


def test_admin_license_list_filters(shop: WebhookSender) -> None:
    """GET /licenses filters by email, status and product, scoped to the store."""
    from tests.factories import line_item, wc_order

    shop.configure(501)
    shop.configure(777)
    shop.deliver(wc_order(8901, "processing", [line_item(501)], email="ada@example.org"))
    shop.deliver(wc_order(8902, "processing", [line_item(777)], email="bob@example.org"))
    bob_key = shop.order(8902)["licenses"][0]["key"]
    shop.admin("POST", f"/licenses/{bob_key}/suspend")

    def listed(query: str) -> list[str]:
        response = shop.admin("GET", f"/licenses?{query}")
        assert response.status_code == 200
        return [lic["email"] for lic in response.get_json()["licenses"]]

    assert sorted(listed("")) == ["ada@example.org", "bob@example.org"]
    assert listed("email=ADA@example.org") == ["ada@example.org"]
    assert listed("status=suspended") == ["bob@example.org"]
    assert listed("status=active") == ["ada@example.org"]
    assert listed("product=777") == ["bob@example.org"]
    assert shop.admin("GET", "/licenses?status=bogus").status_code == 422
    assert shop.client.get("/api/v1/admin/licenses").status_code == 401


def test_the_license_list_pages_on_past_its_limit_and_the_csv_has_every_one(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the list's limit, ``Link: <...>; rel="next"`` leads to the older licenses, the
    filters kept, each once; a bad ``before`` is a 422 naming it; another store's token
    pages only its own licenses; the CSV still has every license."""
    from connector.stores import create_store
    from tests.functional.test_admin_logs_api import follow_pages
    from tests.functional.test_license_export import rows

    monkeypatch.setattr("connector.licensing.admin_api.LIST_LIMIT", 2)
    shop.configure(501)
    shop.configure(502)
    for order_id in range(9001, 9006):
        shop.deliver(wc_order(order_id, "processing", [line_item(501)]))
    shop.deliver(wc_order(9006, "processing", [line_item(502)]))
    first = shop.admin("GET", "/licenses")
    assert len(first.get_json()["licenses"]) == 2 and 'rel="next"' in first.headers["Link"]
    pages = follow_pages(shop, "/licenses", "licenses")
    assert [len(page) for page in pages] == [2, 2, 2]
    listed = [lic["order_id"] for page in pages for lic in page]
    assert listed == ["9006", "9005", "9004", "9003", "9002", "9001"]
    of_501 = follow_pages(shop, "/licenses?product=501&status=active", "licenses")
    assert [lic["order_id"] for page in of_501 for lic in page] == listed[1:]
    csv_orders = [row["order_id"] for row in rows(shop.admin("GET", "/licenses.csv").data)]
    assert csv_orders == listed
    assert "Link" not in shop.admin("GET", "/licenses.csv").headers
    for garbage in ("", "x", "-3", "9" * 20):
        refused = shop.admin("GET", f"/licenses?before={garbage}")
        assert refused.status_code == 422 and refused.get_json()["field"] == "before"

    with app.app_context():
        other = create_store(db.session, "Other", "https://other.example")
        db.session.commit()
    other_shop = WebhookSender(app.test_client(), other)
    other_shop.configure(501)
    other_shop.deliver(wc_order(9001, "processing", [line_item(501)], email="o@example.org"))
    theirs = follow_pages(other_shop, "/licenses?before=2147483647", "licenses")
    assert [lic["email"] for page in theirs for lic in page] == ["o@example.org"]


def test_activation_limit_and_same_identity_twice(app: Flask, shop: WebhookSender) -> None:
    """Two seats: the same identity twice is one activation; a third site is refused."""
    key = issue_key(shop, activation_limit=2)
    first = call(shop.client, "activate", {"key": key, "site": "shop-one.com"}).get_json()
    again = call(shop.client, "activate", {"key": key, "site": "https://shop-one.com/"}).get_json()
    assert first["code"] == again["code"] == "VALID"
    assert first["activation"]["id"] == again["activation"]["id"]
    second = call(shop.client, "activate", {"key": key, "site": "shop-two.com", "label": "B"})
    assert second.get_json()["license"]["activations_used"] == 2
    third = call(shop.client, "activate", {"key": key, "site": "shop-three.com"}).get_json()
    assert (third["valid"], third["code"]) == (False, "TOO_MANY_ACTIVATIONS")
    assert _count_activations(app) == 2
    detail = shop.admin("GET", f"/licenses/{key}").get_json()
    assert [a["site"] for a in detail["activations"]] == ["shop-one.com", "shop-two.com"]
    assert detail["activations"][1]["label"] == "B"
    first_id = detail["activations"][0]["id"]
    assert shop.admin("DELETE", f"/licenses/{key}/activations/{first_id}").status_code == 204
    assert shop.admin("DELETE", f"/licenses/{key}/activations/{first_id}").status_code == 404
    assert call(shop.client, "activate", {"key": key, "site": "shop-three.com"}).get_json()["valid"]


def test_activate_needs_a_site_or_fingerprint(shop: WebhookSender) -> None:
    """Activating nothing in particular is bad input (422), not a silent seat."""
    key = issue_key(shop)
    assert call(shop.client, "activate", {"key": key}).status_code == 422


@pytest.mark.parametrize(
    "staging",
    [
        "localhost",
        "http://localhost:8080",
        "127.0.0.1",
        "[::1]",
        "::ffff:127.0.0.1",  # 127.0.0.1 as a dual-stack host names it
        "http://[::ffff:127.0.0.1]:8080/",
        "shop.test",
        "dev.shop.com",
        "staging.shop.com",
        "shop.staging.example.com",
        "stage.shop.com",
        "mysite.local",
    ],
)
def test_staging_sites_take_no_seat(shop: WebhookSender, staging: str) -> None:
    """With one seat used, staging sites still activate and validate: they are free."""
    key = issue_key(shop, activation_limit=1)
    call(shop.client, "activate", {"key": key, "site": "production.com"})
    body = call(shop.client, "activate", {"key": key, "site": staging}).get_json()
    assert body["code"] == "VALID", body
    assert body["activation"]["staging"] is True
    assert body["license"]["activations_used"] == 1


def test_the_owners_license_list_counts_no_free_staging_site_as_a_seat(
    shop: WebhookSender,
) -> None:
    """The owner's license list says the seats a key uses as the product hears
    them: its production sites, not the free staging sites beside them."""
    key = issue_key(shop, activation_limit=2)
    call(shop.client, "activate", {"key": key, "site": "production.com"})
    body = call(shop.client, "activate", {"key": key, "site": "staging.production.com"})
    assert body.get_json()["license"]["activations_used"] == 1
    (listed,) = shop.admin("GET", "/licenses").get_json()["licenses"]
    assert listed["activations_used"] == 1


@pytest.mark.parametrize(
    "production",
    ["devices.com", "mystaging.com", "mydev.com", "testing.com", "shop.localdomain.com"],
)
def test_lookalike_staging_names_are_production_sites(shop: WebhookSender, production: str) -> None:
    """Whole labels only: devices.com and friends take a seat like any production site."""
    key = issue_key(shop, activation_limit=1)
    call(shop.client, "activate", {"key": key, "site": "production.com"})
    body = call(shop.client, "activate", {"key": key, "site": production}).get_json()
    assert body["code"] == "TOO_MANY_ACTIVATIONS"


def test_staging_is_not_free_when_the_policy_says_so(shop: WebhookSender) -> None:
    """staging_free=false: localhost takes a seat like any site."""
    key = issue_key(shop, activation_limit=1, staging_free=False)
    call(shop.client, "activate", {"key": key, "site": "production.com"})
    body = call(shop.client, "activate", {"key": key, "site": "localhost"}).get_json()
    assert body["code"] == "TOO_MANY_ACTIVATIONS"


def test_idna_site_forms_are_one_site(app: Flask, shop: WebhookSender) -> None:
    """https://WWW.Bücher.de:443/shop/ and bücher.de and xn--bcher-kva.de. are one site."""
    key = issue_key(shop, activation_limit=1)
    body = call(
        shop.client, "activate", {"key": key, "site": "https://WWW.Bücher.de:443/shop/"}
    ).get_json()
    assert body["activation"]["site"] == "xn--bcher-kva.de"
    for form in ["bücher.de", "xn--bcher-kva.de.", "http://www.BÜCHER.de/x?y=1"]:
        assert call(shop.client, "validate", {"key": key, "site": form}).get_json()["valid"]
        again = call(shop.client, "activate", {"key": key, "site": form}).get_json()
        assert again["activation"]["id"] == body["activation"]["id"]
    assert _count_activations(app) == 1


@pytest.mark.parametrize(
    "garbage",
    ["not a site", "http://", "a_b.com", "-x-.com", "999.1.1.1", "example", "https://exa mple.com"],
)
def test_garbage_sites_are_422(shop: WebhookSender, garbage: str) -> None:
    """A site that is not a host is refused, signed, never a 500."""
    key = issue_key(shop)
    response = call(shop.client, "activate", {"key": key, "site": garbage})
    assert response.status_code == 422
    assert response.get_json()["field"] == "site"


@pytest.mark.parametrize("call_name", ["validate", "activate", "deactivate", "checkout"])
@pytest.mark.parametrize("length", [201, 301])
def test_a_fingerprint_over_its_limit_is_422_naming_the_limit(
    shop: WebhookSender, call_name: str, length: int
) -> None:
    """A fingerprint is at most 200 characters, and the refusal says 200 whatever the
    length sent (one over 300 said "longer than 300 characters")."""
    key = issue_key(shop)
    response = call(shop.client, call_name, {"key": key, "fingerprint": "f" * length})
    assert response.status_code == 422
    problem = response.get_json()
    assert problem["field"] == "fingerprint"
    assert "200" in problem["detail"] and "300" not in problem["detail"]


@pytest.mark.parametrize("empty", ["", "   "])
def test_an_empty_site_from_a_shipped_product_is_no_site(
    app: Flask, shop: WebhookSender, empty: str
) -> None:
    """Products built with clients before 2026-12 send a site setting never filled in as
    "": the API keeps reading it as no site (the seat is the fingerprint's), so they keep
    working after an upgrade; today's client refuses it before sending (a ValueError)."""
    key = issue_key(shop)
    body = {"key": key, "site": empty, "fingerprint": "machine-1"}
    activated = call(shop.client, "activate", body).get_json()
    assert activated["valid"] is True and activated["activation"]["site"] is None
    assert _count_activations(app) == 1
    for endpoint in ("validate", "checkout"):
        assert call(shop.client, endpoint, body).get_json()["valid"] is True, endpoint
    update = {"key": key, "product": "501", "version": "1.0", "site": empty}
    assert call(shop.client, "update-check", update).status_code == 200
    assert call(shop.client, "deactivate", body).get_json()["valid"] is True
    assert _count_activations(app) == 0


def test_identity_codes(shop: WebhookSender) -> None:
    """NO_ACTIVATION, SITE_MISMATCH and FINGERPRINT_MISMATCH say what is wrong."""
    key = issue_key(shop, activation_limit=3)
    body = call(shop.client, "validate", {"key": key, "site": "a-shop.com"}).get_json()
    assert (body["valid"], body["code"]) == (False, "NO_ACTIVATION")
    call(shop.client, "activate", {"key": key, "site": "a-shop.com", "fingerprint": "fp-1"})

    def code(**identity: str) -> str:
        result: str = call(shop.client, "validate", {"key": key, **identity}).get_json()["code"]
        return result

    assert code(site="a-shop.com", fingerprint="fp-1") == "VALID"
    assert code(site="a-shop.com", fingerprint="fp-2") == "FINGERPRINT_MISMATCH"
    assert code(site="b-shop.com", fingerprint="fp-1") == "SITE_MISMATCH"
    assert code(site="b-shop.com") == "SITE_MISMATCH"
    assert code(fingerprint="fp-9") == "FINGERPRINT_MISMATCH"


def test_deactivate_frees_the_seat(shop: WebhookSender) -> None:
    """Deactivating releases the seat for another site; a second time there is nothing."""
    key = issue_key(shop, activation_limit=1)
    call(shop.client, "activate", {"key": key, "site": "one.com"})
    body = call(shop.client, "deactivate", {"key": key, "site": "www.one.com"}).get_json()
    assert (body["valid"], body["code"]) == (True, "DEACTIVATED")
    assert body["license"]["activations_used"] == 0
    again = call(shop.client, "deactivate", {"key": key, "site": "one.com"}).get_json()
    assert again["code"] == "NO_ACTIVATION"
    assert call(shop.client, "activate", {"key": key, "site": "two.com"}).get_json()["valid"]


def test_binding_changes_past_the_threshold_flag_and_suspend(
    app: Flask, shop: WebhookSender
) -> None:
    """abuse_threshold=3 with abuse_suspend: the 4th change flags, suspends and audits."""
    from connector.models import AuditEvent, LicenseFlag

    key = issue_key(shop, activation_limit=1, abuse_threshold=3, abuse_suspend=True)
    for site in ["a.com", "b.com"]:
        call(shop.client, "activate", {"key": key, "site": site})
        call(shop.client, "deactivate", {"key": key, "site": site})
    assert call(shop.client, "validate", {"key": key}).get_json()["code"] == "SUSPENDED"
    listed = shop.admin("GET", "/licenses").get_json()["licenses"][0]
    assert listed["flagged"] is True
    assert listed["status_reason"] == "abuse"
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(LicenseFlag)).scalar_one() == 1
        actions = set(db.session.scalars(select(AuditEvent.action)))
        assert {"license.flagged", "license.suspended"} <= actions


def test_a_key_the_abuse_signal_paused_shuts_its_download_links_until_reinstated(
    app: Flask, shop: WebhookSender
) -> None:
    """Paused by the abuse signal, the key's download links answer 410 ("the license was
    paused or ended") as after the owner's pause, and the portal offers none; the owner's
    reinstate opens them again."""
    from tests.functional.test_downloads import get, link_path, put_file

    put_file(app, "files/app.zip", b"PK app")
    files = [{"object_key": "files/app.zip", "filename": "app.zip"}]
    shop.configure(501, files=files, activation_limit=1, abuse_threshold=2, abuse_suspend=True)
    shop.deliver(wc_order(9952, "processing", [line_item(501)]))
    order = shop.order(9952)
    key, path = order["licenses"][0]["key"], link_path(order["downloads"][0])
    assert get(shop.client, path).status_code == 200
    for site in ["a.com", "b.com"]:
        call(shop.client, "activate", {"key": key, "site": site})
        call(shop.client, "deactivate", {"key": key, "site": site})
    assert call(shop.client, "validate", {"key": key}).get_json()["code"] == "SUSPENDED"
    shut = get(shop.client, path)
    assert shut.status_code == 410
    assert "the license was paused or ended" in shut.get_data(as_text=True)
    portal = shop.client.get(order["portal_url"].removeprefix("http://keygate.test"))
    assert path not in portal.get_data(as_text=True)
    assert shop.admin("POST", f"/licenses/{key}/reinstate").status_code == 200
    assert get(shop.client, path).status_code == 200


def test_the_activation_that_trips_the_suspension_is_answered_suspended(
    shop: WebhookSender,
) -> None:
    """abuse_threshold=2 with abuse_suspend: the activation that is the 3rd change pauses
    the key, and its own answer says so (the product must not record a good activation)."""
    key = issue_key(shop, activation_limit=1, abuse_threshold=2, abuse_suspend=True)
    call(shop.client, "activate", {"key": key, "site": "a.com"})
    call(shop.client, "deactivate", {"key": key, "site": "a.com"})
    body = call(shop.client, "activate", {"key": key, "site": "b.com"}).get_json()
    assert (body["valid"], body["code"], body["license"]["status"]) == (
        False,
        "SUSPENDED",
        "suspended",
    )
    assert call(shop.client, "validate", {"key": key}).get_json()["code"] == "SUSPENDED"


def test_binding_changes_under_the_threshold_do_nothing(shop: WebhookSender) -> None:
    """Three changes with a threshold of 3 is normal use."""
    key = issue_key(shop, activation_limit=1, abuse_threshold=3, abuse_suspend=True)
    call(shop.client, "activate", {"key": key, "site": "a.com"})
    call(shop.client, "deactivate", {"key": key, "site": "a.com"})
    call(shop.client, "activate", {"key": key, "site": "b.com"})
    assert call(shop.client, "validate", {"key": key}).get_json()["code"] == "VALID"
    assert shop.admin("GET", "/licenses").get_json()["licenses"][0]["flagged"] is False


def test_reinstating_a_key_the_abuse_signal_paused_reopens_links_its_order_shut(
    shop: WebhookSender,
) -> None:
    """Paused by the abuse signal, then the order is cancelled (its links shut) and paid
    again (the paused key's links stay shut: it is not active): the owner's reinstate gives
    the buyer the key and its links back."""
    shop.configure(501, activation_limit=1, abuse_threshold=3, abuse_suspend=True)
    item = line_item(501, line_id=97)
    shop.deliver(wc_order(9950, "processing", [item], modified=1))
    key = shop.order(9950)["licenses"][0]["key"]
    for site in ["a.com", "b.com"]:
        call(shop.client, "activate", {"key": key, "site": site})
        call(shop.client, "deactivate", {"key": key, "site": site})
    assert call(shop.client, "validate", {"key": key}).get_json()["code"] == "SUSPENDED"
    shop.deliver(wc_order(9950, "cancelled", [item], modified=2))
    shop.deliver(wc_order(9950, "processing", [item], modified=3))
    assert shop.order(9950)["downloads"][0]["revoked"] is True
    assert shop.admin("POST", f"/licenses/{key}/reinstate").status_code == 200
    order = shop.order(9950)
    assert order["licenses"][0]["status"] == "active"
    assert order["downloads"][0]["revoked"] is False


@pytest.mark.parametrize("paused_first", [False, True])
def test_a_key_its_order_revoked_is_not_reinstated_while_the_order_waits_for_payment(
    shop: WebhookSender, paused_first: bool
) -> None:
    """Paid, cancelled (the key revoked; or paused by the owner before), then pending again
    (the customer retries the payment): reinstating would hand out a key nobody paid for
    yet (409); once paid, a key the order revoked comes back by itself."""
    shop.configure(501)
    item = line_item(501, line_id=98)
    shop.deliver(wc_order(9951, "processing", [item], modified=1))
    key = shop.order(9951)["licenses"][0]["key"]
    if paused_first:
        assert shop.admin("POST", f"/licenses/{key}/suspend").status_code == 200
    shop.deliver(wc_order(9951, "cancelled", [item], modified=2))
    shop.deliver(wc_order(9951, "pending", [item], modified=3))
    refused = shop.admin("POST", f"/licenses/{key}/reinstate")
    assert refused.status_code == 409 and "pending" in refused.get_json()["detail"]
    assert shop.order(9951)["licenses"][0]["status"] != "active"
    shop.deliver(wc_order(9951, "processing", [item], modified=4))
    if paused_first:  # the owner's pause stays; now it may be lifted
        assert shop.admin("POST", f"/licenses/{key}/reinstate").status_code == 200
    assert shop.order(9951)["licenses"][0]["status"] == "active"


def test_a_key_of_a_unit_removed_from_its_order_is_not_reinstated(shop: WebhookSender) -> None:
    """An order for 2 keys lowered to 1 revokes the second unit's key: the owner's reinstate
    is refused (409: a key nobody pays for) and the key stays revoked."""
    shop.configure(501)
    shop.deliver(wc_order(9960, "processing", [line_item(501, quantity=2, line_id=96)]))
    shop.deliver(wc_order(9960, "processing", [line_item(501, line_id=96)], modified=2))
    [removed] = [lic for lic in shop.order(9960)["licenses"] if lic["status"] == "revoked"]
    refused = shop.admin("POST", f"/licenses/{removed['key']}/reinstate")
    assert refused.status_code == 409 and "refunded or removed" in refused.get_json()["detail"]
    statuses = sorted(lic["status"] for lic in shop.order(9960)["licenses"])
    assert statuses == ["active", "revoked"]


def test_a_key_of_a_line_changed_to_another_product_is_not_reinstated(
    shop: WebhookSender,
) -> None:
    """The owner changes an order's line to another product: the first product's key is
    revoked, and reinstating it is refused (409): the order no longer pays for it."""
    shop.configure(501)
    shop.configure(502)
    shop.deliver(wc_order(9961, "processing", [line_item(501, line_id=97)]))
    key = shop.order(9961)["licenses"][0]["key"]
    shop.deliver(wc_order(9961, "processing", [line_item(502, line_id=97)], modified=2))
    refused = shop.admin("POST", f"/licenses/{key}/reinstate")
    assert refused.status_code == 409 and "another product" in refused.get_json()["detail"]
    [old] = [lic for lic in shop.order(9961)["licenses"] if lic["key"] == key]
    assert old["status"] == "revoked"


def test_an_extension_of_a_lapsed_license_counts_from_now_and_moves_its_updates(
    app: Flask, shop: WebhookSender
) -> None:
    """The owner extends a license that ran out 100 days ago by 30 days: it runs 30 days
    from now (not from the day it ran out); an update window that ran with the license moves
    with it, one of its own stays as it was."""
    import datetime as dt

    from connector.db import utcnow
    from connector.models import License

    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9962, "processing", [line_item(501)]))
    shop.deliver(wc_order(9963, "processing", [line_item(501)]))
    lapsed = utcnow().replace(microsecond=0) - dt.timedelta(days=100)
    own_window = lapsed + dt.timedelta(days=10)
    with app.app_context():
        first, second = db.session.scalars(select(License).order_by(License.id)).all()
        first.expires_at = first.updates_until = lapsed
        second.expires_at, second.updates_until = lapsed, own_window
        db.session.commit()
    start = utcnow().replace(microsecond=0)
    for order_id in (9962, 9963):
        key = shop.order(order_id)["licenses"][0]["key"]
        assert shop.admin("POST", f"/licenses/{key}/extend", {"days": 30}).status_code == 200
    end = utcnow()
    with app.app_context():
        first, second = db.session.scalars(select(License).order_by(License.id)).all()
        for lic in (first, second):
            assert lic.expires_at is not None
            assert start + dt.timedelta(days=30) <= lic.expires_at <= end + dt.timedelta(days=30)
        assert first.updates_until == first.expires_at
        assert second.updates_until == own_window
