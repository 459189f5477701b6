"""Signing strings and license files, without a server."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import time
from email.utils import parsedate_to_datetime

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from connector.client import LicenseFileError, SignatureError, verify_license_file, verify_response
from connector.licensing.files import BEGIN, END, build_license_file, file_expiry, key_digest
from connector.signing import (
    Signer,
    digest_header,
    http_date,
    request_target,
    signature_header,
    signing_string,
)
from connector.vault.crypto import Keyring


def test_signing_string_is_exactly_designs() -> None:
    """Four lines: request target (query only when present), host, date, digest."""
    assert request_target("POST", "/api/v1/licenses/validate") == "post /api/v1/licenses/validate"
    assert request_target("GET", "/api/v1/signing-keys", "a=1") == "get /api/v1/signing-keys?a=1"
    signed = signing_string("post /x", "keygate.test:8443", "D", "sha-256=Z")
    assert (
        signed == b"(request-target): post /x\nhost: keygate.test:8443\ndate: D\ndigest: sha-256=Z"
    )


def test_digest_is_standard_base64_sha256() -> None:
    expected = base64.b64encode(hashlib.sha256(b"{}").digest()).decode()
    assert digest_header(b"{}") == "sha-256=" + expected
    assert expected.endswith("=")


def _signer() -> tuple[Signer, dict[str, bytes]]:
    private = Ed25519PrivateKey.generate()
    return Signer("kg-test", private, time.monotonic()), {
        "kg-test": private.public_key().public_bytes_raw()
    }


@pytest.mark.parametrize(
    ("signed_host", "url", "verifies"),
    [
        ("keygate.test:8443", "https://keygate.test:8443", True),
        ("keygate.test", "https://Keygate.Test:8443", True),  # nginx's $host
        ("[::1]", "http://[::1]:8000", True),
        ("other.test", "https://keygate.test:8443", False),
        ("keygate.test:9443", "https://keygate.test:8443", False),
    ],
)
def test_an_answer_verifies_for_the_host_sent_or_its_name_alone(
    signed_host: str, url: str, verifies: bool
) -> None:
    """The host signed is the Host Keygate received: the one sent, or the name alone as a
    proxy passing nginx's ``$host`` makes it; never another host or port."""
    signer, keys = _signer()
    body, date = b'{"valid": true}', http_date()
    path = "/api/v1/licenses/validate"
    digest = digest_header(body)
    signed = signing_string(request_target("POST", path), signed_host, date, digest)
    headers = {
        "Date": date,
        "Digest": digest,
        "Keygate-Signature": signature_header(signer.kid, signer.sign(signed)),
    }
    check = {"method": "POST", "url": url + path, "headers": headers, "body": body}
    if verifies:
        assert verify_response(**check, public_keys=keys)["valid"] is True
    else:
        with pytest.raises(SignatureError, match="does not verify"):
            verify_response(**check, public_keys=keys)


def test_license_file_round_trip_plain_and_encrypted() -> None:
    signer, keys = _signer()
    now = dt.datetime.now(dt.UTC)
    content = {"license": {"status": "active"}, "expiry": (now + dt.timedelta(hours=1)).isoformat()}
    assert verify_license_file(build_license_file(content, signer), keys)["license"] == {
        "status": "active"
    }
    sealed = build_license_file(content, signer, encrypt_with="KG-ABCDE-FGHJK")
    assert "active" not in base64.b64decode("".join(sealed.splitlines()[1:-1])).decode()
    assert verify_license_file(sealed, keys, key="kg abcde fghjk")["license"]["status"] == "active"


def test_a_license_file_altered_or_signed_by_a_key_not_pinned_does_not_verify() -> None:
    """Only what a pinned key signed verifies: a file whose content was changed after
    signing (a later expiry), one signed by another key under the pinned kid, or one naming a
    kid not pinned is refused, though each is well formed."""
    signer, keys = _signer()
    now = dt.datetime.now(dt.UTC)
    content = {"license": {"status": "active"}, "expiry": (now + dt.timedelta(hours=1)).isoformat()}
    longer = dict(content, expiry=(now + dt.timedelta(days=3650)).isoformat())
    genuine = build_license_file(content, signer)
    envelope = json.loads(base64.b64decode("".join(genuine.splitlines()[1:-1])))
    envelope["enc"] = base64.b64encode(json.dumps(longer).encode()).decode()
    altered = "\n".join([BEGIN, base64.b64encode(json.dumps(envelope).encode()).decode(), END])
    with pytest.raises(LicenseFileError, match="signature does not verify"):
        verify_license_file(altered, keys)
    forger = Signer(signer.kid, Ed25519PrivateKey.generate(), time.monotonic())
    with pytest.raises(LicenseFileError, match="signature does not verify"):
        verify_license_file(build_license_file(longer, forger), keys)
    unpinned = Signer("kg-other", Ed25519PrivateKey.generate(), time.monotonic())
    with pytest.raises(LicenseFileError, match="unknown key"):
        verify_license_file(build_license_file(longer, unpinned), keys)
    assert verify_license_file(genuine, keys)["expiry"] == content["expiry"]


def test_a_plain_license_file_checked_with_a_key_must_name_that_key() -> None:
    """An unencrypted file is readable by anyone: given ``key``, the file must name that
    key (its ``key_sha256``), separators and case forgiven; another key's file is refused."""
    signer, keys = _signer()
    expiry = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    content = {"license": {"status": "active"}, "expiry": expiry}
    plain = build_license_file({**content, "key_sha256": key_digest("KG-ABCDE-FGHJK")}, signer)
    assert verify_license_file(plain, keys, key="kg abcde fghjk")["expiry"] == expiry
    with pytest.raises(LicenseFileError, match="another key"):
        verify_license_file(plain, keys, key="KG-ZZZZZ-FGHJK")


def test_a_license_file_ends_at_its_expiry_and_is_not_from_the_future() -> None:
    """A file serves until its expiry, not at it or a minute past it; one issued later than
    this machine's time plus max_skew (a file made on a clock set forward, or a machine set
    back to before it) is refused, one within max_skew is not; an expiry without a time
    zone is no file Keygate made."""
    signer, keys = _signer()
    issued = dt.datetime(2027, 3, 1, 12, 0, tzinfo=dt.UTC)
    expiry = issued + dt.timedelta(days=7)
    content = {"license": {"status": "active"}, "issued": issued.isoformat(), "expiry": ""}
    file = build_license_file({**content, "expiry": expiry.isoformat()}, signer)
    second = dt.timedelta(seconds=1)
    assert verify_license_file(file, keys, now=expiry - second)["license"]["status"] == "active"
    for moment in (expiry, expiry + dt.timedelta(minutes=1)):
        with pytest.raises(LicenseFileError, match="expired"):
            verify_license_file(file, keys, now=moment)
    early = dt.timedelta(seconds=300)
    assert verify_license_file(file, keys, now=issued - early + second, max_skew=300)
    with pytest.raises(LicenseFileError, match="issued after"):
        verify_license_file(file, keys, now=issued - early - second, max_skew=300)
    naive = build_license_file({**content, "expiry": "2099-01-01T00:00:00"}, signer)
    with pytest.raises(LicenseFileError, match="no valid expiry"):
        verify_license_file(naive, keys, now=issued)


def _answer(signer: Signer, data: dict[str, object]) -> tuple[dict[str, str], bytes]:
    """The headers and body of a signed validate answer carrying ``data``."""
    body, date = json.dumps(data).encode(), http_date()
    digest = digest_header(body)
    signed = signing_string(request_target("POST", VALIDATE), "keygate.test", date, digest)
    headers = {
        "Date": date,
        "Digest": digest,
        "Keygate-Signature": signature_header(signer.kid, signer.sign(signed)),
    }
    return headers, body


VALIDATE = "/api/v1/licenses/validate"


def test_an_answer_that_echoes_no_nonce_or_request_is_not_to_the_request_sent() -> None:
    """Given the nonce and body sent, a signed answer must echo both: one echoing neither
    (a reply to no particular request, playable again) is refused, naming what is missing."""
    signer, keys = _signer()
    sent = b'{"key": "KG-ABCDE-FGHJK", "nonce": "n1"}'
    echoed = {"valid": True, "nonce": "n1", "request_digest": digest_header(sent)}

    def verify(data: dict[str, object]) -> dict[str, object]:
        headers, body = _answer(signer, data)
        url = "https://keygate.test" + VALIDATE
        return verify_response(
            method="POST",
            url=url,
            headers=headers,
            body=body,
            public_keys=keys,
            nonce="n1",
            request_body=sent,
        )

    assert verify(echoed)["valid"] is True
    for missing in ("nonce", "request_digest"):
        with pytest.raises(SignatureError, match=f"its {missing} differs"):
            verify({k: v for k, v in echoed.items() if k != missing})


@pytest.mark.parametrize("max_skew", [300.0, 30.0])
def test_an_answer_dated_further_than_max_skew_either_way_is_refused(max_skew: float) -> None:
    """The Date must be within ``max_skew`` seconds of this machine's clock, before or after
    it: an answer a few seconds past the limit (a replay, or dated ahead) is refused."""
    signer, keys = _signer()
    headers, body = _answer(signer, {"valid": True})
    signed_at = parsedate_to_datetime(headers["Date"]).timestamp()
    url = "https://keygate.test" + VALIDATE

    def verify_at(now: float) -> dict[str, object]:
        return verify_response(
            method="POST",
            url=url,
            headers=headers,
            body=body,
            public_keys=keys,
            max_skew=max_skew,
            now=now,
        )

    for within in (max_skew - 2, -(max_skew - 2)):
        assert verify_at(signed_at + within)["valid"] is True
    for beyond in (max_skew + 2, -(max_skew + 2)):
        with pytest.raises(SignatureError, match="too far from this machine's clock"):
            verify_at(signed_at + beyond)


def test_a_license_file_never_outlives_its_license() -> None:
    issued = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    ends = issued + dt.timedelta(hours=2)
    assert file_expiry(issued, 86400, ends) == ends
    assert file_expiry(issued, 3600, None) == issued + dt.timedelta(hours=1)


def test_garbage_is_not_a_license_file() -> None:
    keys = _signer()[1]
    for text in [
        "",
        "hello",
        "-----BEGIN KEYGATE LICENSE FILE-----\n!!\n-----END KEYGATE LICENSE FILE-----",
    ]:
        with pytest.raises(LicenseFileError):
            verify_license_file(text, keys)


def test_date_header_is_the_current_imf_fixdate() -> None:
    before = time.time()
    value = http_date()
    parsed = parsedate_to_datetime(value).timestamp()
    assert value.endswith(" GMT") and int(before) <= parsed <= time.time()
    assert http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"


def test_keyed_hashes_are_the_two_step_hmac_stored_hashes_were_made_with() -> None:
    """Per-purpose keys are cached, but every hash stays HMAC(HMAC(secret, purpose), value)."""
    keyring = Keyring((Fernet.generate_key().decode(),), "s3cret")
    for purpose, value in [
        ("license-key", "KG-ABCD"),
        ("security-ip", "::1"),
        ("license-key", "x"),
    ]:
        purpose_key = hmac.new(b"s3cret", purpose.encode(), hashlib.sha256).digest()
        expected = hmac.new(purpose_key, value.encode(), hashlib.sha256).hexdigest()
        assert keyring.keyed_hash(purpose, value) == expected
        assert keyring.keyed_hash(purpose, value) == expected  # the cached state is untouched
