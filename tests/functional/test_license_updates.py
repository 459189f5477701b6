"""Releases, update-check, perpetual fallback and offline license files."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Connection, select
from sqlalchemy import text as sql

from connector import get_settings
from connector.client import LicenseFileError, verify_license_file
from connector.db import db
from connector.models import AuditEvent, Product
from connector.stores import create_store
from tests.factories import SHIFT, WebhookSender, shifted
from tests.licensing_helpers import call, issue_key, public_keys
from tests.transactions import while_another_transaction

# wc_order's date_paid (2026-11-20T11:59:30Z, moved by SHIFT); policies count from there.
PAID = dt.datetime(2026, 11, 20, 11, 59, 30, tzinfo=dt.UTC) + SHIFT


def publish(shop: WebhookSender, version: str, published: dt.datetime, **extra: object) -> None:
    body = {
        "version": version,
        "object_key": f"releases/plugin-{version}.zip",
        "sha256": hashlib.sha256(version.encode()).hexdigest(),
        "size": 1234,
        "published_at": published.isoformat(),
        "changelog": f"Changes in {version}",
        **extra,
    }
    response = shop.admin("POST", "/products/501/releases", body)
    assert response.status_code == 201, response.get_data(as_text=True)


def test_release_input_is_checked(shop: WebhookSender) -> None:
    """A release needs a version, hex sha256 and size; a version is published once."""
    issue_key(shop)
    publish(shop, "1.0.0", PAID)
    good = {"version": "1.0.1", "object_key": "r/x.zip", "sha256": "a" * 64, "size": 1}
    for bad in [
        {**good, "sha256": "xyz"},
        {**good, "size": None},
        {**good, "version": "1 0"},
        {**good, "object_key": "../etc/passwd"},
        {**good, "published_at": "yesterday"},
    ]:
        assert shop.admin("POST", "/products/501/releases", bad).status_code == 422, bad
    assert shop.admin("POST", "/products/999/releases", good).status_code == 404
    assert (
        shop.admin("POST", "/products/501/releases", {**good, "version": "1.0.0"}).status_code
        == 409
    )
    listed = shop.admin("GET", "/products/501/releases").get_json()["releases"]
    assert [r["version"] for r in listed] == ["1.0.0"]


UNCOMPARABLE = ["!!!", "latest", "beta", "v", "V.", "-1.0", "x-1.2"]
REAL_VERSIONS = ["1.2", "1.2.3", "1.2.3-beta.1", "v1.2.3", "2024.05.01", "1.2.3+build.7", "7"]


def test_a_version_that_cannot_be_compared_is_a_422_naming_it(shop: WebhookSender) -> None:
    """update-check with a version that has no number to compare (``!!!``) is a signed 422
    naming ``version``, not "up to date"; the version formats products use are answered."""
    key = issue_key(shop)
    publish(shop, "1.0.0", PAID)
    for version in UNCOMPARABLE:
        body = {"key": key, "product": "501", "version": version}
        response = call(shop.client, "update-check", body)  # signature checked
        assert response.status_code == 422, version
        assert response.mimetype == "application/problem+json"
        assert response.get_json()["field"] == "version"
        assert "version" in response.get_json()["detail"]
    for version in REAL_VERSIONS:
        answer = update_check(shop, key, version)
        assert answer["code"] == "VALID", version


def test_releases_are_held_to_the_same_version_rule(shop: WebhookSender) -> None:
    """Release creation refuses the versions update-check cannot compare (a release
    ``latest`` would be 0, older than every other) and takes the formats products use."""
    issue_key(shop)
    good = {"object_key": "r/x.zip", "sha256": "a" * 64, "size": 1}
    for version in UNCOMPARABLE:
        response = shop.admin("POST", "/products/501/releases", {**good, "version": version})
        assert response.status_code == 422, version
        assert response.get_json()["field"] == "version"
    for version in REAL_VERSIONS:
        response = shop.admin("POST", "/products/501/releases", {**good, "version": version})
        assert response.status_code == 201, (version, response.get_data(as_text=True))


def test_update_offered_within_the_update_window(app: Flask, shop: WebhookSender) -> None:
    """The newest release published before updates_until is offered with a working URL."""
    key = issue_key(shop, update_days=5)
    publish(shop, "1.0.0", PAID - dt.timedelta(days=10))
    publish(shop, "1.2.0", PAID + dt.timedelta(days=1))
    publish(shop, "1.10.0", PAID + dt.timedelta(days=4))
    publish(shop, "2.0.0", PAID + dt.timedelta(days=6))  # all in the past: future ones wait
    with app.app_context():
        target = get_settings().storage_dir / "releases" / "plugin-1.10.0.zip"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"zip bytes of 1.10.0")

    body = call(
        shop.client, "update-check", {"key": key, "product": "501", "version": "1.0.0"}
    ).get_json()
    assert (body["valid"], body["code"]) == (True, "VALID")
    update = body["update"]
    assert update["version"] == "1.10.0"
    assert update["sha256"] == hashlib.sha256(b"1.10.0").hexdigest()
    assert update["size"] == 1234
    assert update["changelog"] == "Changes in 1.10.0"
    url = update["download_url"]
    assert url.startswith("http://keygate.test/api/v1/releases/download/")
    download = shop.client.get(url.removeprefix("http://keygate.test"))
    assert download.status_code == 200
    assert download.get_data() == b"zip bytes of 1.10.0"
    download.close()
    tampered = shop.client.get(url.removeprefix("http://keygate.test")[:-3] + "abc")
    assert tampered.status_code == 404

    latest = call(
        shop.client, "update-check", {"key": key, "product": "501", "version": "1.10.0"}
    ).get_json()
    assert (latest["valid"], latest["code"]) == (False, "UPDATES_EXPIRED")
    assert latest["update"] is None


def test_up_to_date_and_product_mismatch(shop: WebhookSender) -> None:
    """Nothing newer: VALID with update null. Another product's key: PRODUCT_MISMATCH."""
    key = issue_key(shop)
    publish(shop, "1.0.0", PAID)
    body = call(
        shop.client, "update-check", {"key": key, "product": "501", "version": "1.0.0"}
    ).get_json()
    assert (body["code"], body["update"]) == ("VALID", None)
    other = call(
        shop.client, "update-check", {"key": key, "product": "9", "version": "1.0.0"}
    ).get_json()
    assert other["code"] == "PRODUCT_MISMATCH"
    missing = call(shop.client, "update-check", {"key": key, "version": "1.0.0"})
    assert missing.status_code == 422


def update_check(shop: WebhookSender, key: str, version: str) -> dict[str, Any]:
    body: dict[str, Any] = call(
        shop.client, "update-check", {"key": key, "product": "501", "version": version}
    ).get_json()
    return body


def test_update_check_ranks_versions_by_semver_precedence(shop: WebhookSender) -> None:
    """Build metadata makes no newer version; pre-release numbers compare as numbers."""
    key = issue_key(shop)
    publish(shop, "1.10+build.7", PAID)
    for current in ("1.10", "1.10.0", "v1.10"):
        body = update_check(shop, key, current)
        assert (body["code"], body["update"]) == ("VALID", None), current
    publish(shop, "2.0.0-beta.2", PAID)
    publish(shop, "2.0.0-beta.10", PAID)
    assert update_check(shop, key, "2.0.0-beta.1")["update"]["version"] == "2.0.0-beta.10"


def test_pre_releases_are_offered_only_to_pre_release_callers(shop: WebhookSender) -> None:
    """Stable versions are offered stable releases only; a caller on a pre-release is offered
    the next pre-release, or the release itself once it is out."""
    key = issue_key(shop, update_days=5)
    publish(shop, "1.10.0", PAID)
    publish(shop, "2.0.0-beta.2", PAID)
    assert update_check(shop, key, "1.9")["update"]["version"] == "1.10.0"
    for current in ("1.10", "1.10.0"):
        body = update_check(shop, key, current)
        assert (body["code"], body["update"]) == ("VALID", None), current
    publish(shop, "3.0.0-alpha.1", PAID + dt.timedelta(days=6))
    assert update_check(shop, key, "1.10")["code"] == "VALID"  # not UPDATES_EXPIRED
    assert update_check(shop, key, "2.0.0-beta.1")["update"]["version"] == "2.0.0-beta.2"
    publish(shop, "2.0.0", PAID + dt.timedelta(days=1))
    assert update_check(shop, key, "2.0.0-beta.1")["update"]["version"] == "2.0.0"


def test_releases_dated_in_the_future_are_not_considered(shop: WebhookSender) -> None:
    """A release published later than now is neither offered nor a reason for
    UPDATES_EXPIRED while the caller's update window is open."""
    now = dt.datetime.now(dt.UTC)
    # The window stays open for 30 days from now, whatever day the tests run.
    key = issue_key(shop, update_days=(now - PAID).days + 30)
    publish(shop, "1.0.0", PAID)
    publish(shop, "2.0.0", now + dt.timedelta(days=60))
    body = update_check(shop, key, "1.0.0")
    assert (body["valid"], body["code"], body["update"]) == (True, "VALID", None)
    publish(shop, "1.1.0", now + dt.timedelta(days=1))
    assert update_check(shop, key, "1.0.0")["update"] is None


def test_every_update_check_answer_carries_update(shop: WebhookSender) -> None:
    """``update`` is in every signed update-check answer, failed ones too: null unless a
    release is offered."""
    key = issue_key(shop)
    call(shop.client, "activate", {"key": key, "site": "shop-one.com"})
    expired = issue_key(shop, product_id=502, duration_days=2)
    publish(shop, "2.0.0", PAID)
    asked = {"product": "501", "version": "1.0"}
    for body, code in [
        ({**asked, "key": "KG-AAAAA-BBBBB-CCCCC-DDDDD"}, "NOT_FOUND"),
        ({**asked, "key": key, "product": "9"}, "PRODUCT_MISMATCH"),
        ({**asked, "key": key, "site": "shop-two.com"}, "SITE_MISMATCH"),
        ({**asked, "key": expired, "product": "502"}, "EXPIRED"),
    ]:
        answer = call(shop.client, "update-check", body).get_json()
        assert (answer["code"], answer.get("update", "absent")) == (code, None), code


def test_perpetual_fallback_keeps_old_versions_working(shop: WebhookSender) -> None:
    """Expired + perpetual_fallback: versions released before expiry validate, newer don't."""
    key = issue_key(shop, duration_days=2, perpetual_fallback=True)
    publish(shop, "1.0.0", PAID + dt.timedelta(days=1))
    publish(shop, "2.0.0", PAID + dt.timedelta(days=3))
    old = call(shop.client, "validate", {"key": key, "version": "1.0.0"}).get_json()
    assert (old["valid"], old["code"]) == (True, "VALID")
    new = call(shop.client, "validate", {"key": key, "version": "2.0.0"}).get_json()
    assert (new["valid"], new["code"]) == (False, "EXPIRED")
    assert call(shop.client, "validate", {"key": key}).get_json()["code"] == "EXPIRED"


def test_perpetual_fallback_knows_a_version_however_it_is_written(shop: WebhookSender) -> None:
    """The fallback compares versions as update-check does: 1.9.0, v1.9 and 1.9+build.3
    are the 1.9 released before expiry; 1.10 is not."""
    key = issue_key(shop, duration_days=2, perpetual_fallback=True)
    publish(shop, "1.9", PAID + dt.timedelta(days=1))
    for version in ("1.9", "1.9.0", "v1.9", "1.9+build.3"):
        body = call(shop.client, "validate", {"key": key, "version": version}).get_json()
        assert (body["valid"], body["code"]) == (True, "VALID"), version
    body = call(shop.client, "validate", {"key": key, "version": "1.10"}).get_json()
    assert body["code"] == "EXPIRED"


def test_no_fallback_without_the_policy(shop: WebhookSender) -> None:
    """Without perpetual_fallback an expired license is expired for every version."""
    key = issue_key(shop, duration_days=2)
    publish(shop, "1.0.0", PAID + dt.timedelta(days=1))
    body = call(shop.client, "validate", {"key": key, "version": "1.0.0"}).get_json()
    assert body["code"] == "EXPIRED"


def test_offline_license_file_verifies_without_the_network(shop: WebhookSender) -> None:
    """checkout gives a signed, encrypted file the client checks offline, with a TTL."""
    key = issue_key(shop, duration_days=365)
    call(shop.client, "activate", {"key": key, "site": "shop-one.com"})
    body = call(
        shop.client,
        "checkout",
        {"key": key, "site": "shop-one.com", "ttl": 7200, "encrypt": True, "nonce": "c"},
    ).get_json()
    assert body["code"] == "VALID"
    text = body["license_file"]
    keys = public_keys(shop.client)
    content = verify_license_file(text, keys, key=key.lower())
    assert content["license"]["product"] == "501"
    assert content["site"] == "shop-one.com"
    expiry = dt.datetime.fromisoformat(content["expiry"].replace("Z", "+00:00"))
    issued = dt.datetime.fromisoformat(content["issued"].replace("Z", "+00:00"))
    assert expiry - issued == dt.timedelta(seconds=7200)

    with pytest.raises(LicenseFileError, match="pass the license key"):
        verify_license_file(text, keys)
    with pytest.raises(LicenseFileError, match="another key"):
        verify_license_file(text, keys, key="KG-AAAAA-BBBBB-CCCCC-DDDDD")
    with pytest.raises(LicenseFileError, match="expired"):
        verify_license_file(text, keys, key=key, now=expiry + dt.timedelta(seconds=1))
    with pytest.raises(ValueError, match="timezone-aware"):  # a clear word, not a TypeError
        verify_license_file(text, keys, key=key, now=dt.datetime.now())
    lines = text.splitlines()
    lines[2] = lines[2][:10] + ("A" if lines[2][10] != "A" else "B") + lines[2][11:]
    with pytest.raises(LicenseFileError):
        verify_license_file("\n".join(lines), keys, key=key)
    with pytest.raises(LicenseFileError, match="unknown key"):
        verify_license_file(text, {"kg-other": next(iter(keys.values()))}, key=key)


def test_plain_license_file_and_invalid_checkout(shop: WebhookSender) -> None:
    """encrypt=false gives a readable signed file; an invalid license gets no file."""
    key = issue_key(shop, activation_limit=1)
    plain = call(shop.client, "checkout", {"key": key, "encrypt": False}).get_json()
    content = verify_license_file(plain["license_file"], public_keys(shop.client))
    assert content["license"]["status"] == "active"
    assert verify_license_file(plain["license_file"], public_keys(shop.client), key=key)
    with pytest.raises(LicenseFileError, match="another key"):
        verify_license_file(
            plain["license_file"], public_keys(shop.client), key="KG-AAAAA-BBBBB-CCCCC-DDDDD"
        )
    refused = call(shop.client, "checkout", {"key": key, "site": "not-activated.com"}).get_json()
    assert (refused["code"], refused["license_file"]) == ("NO_ACTIVATION", None)


@pytest.mark.parametrize(
    ("sent", "site"),
    [
        ("2001:DB8::1", "2001:db8::1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("::ffff:1.2.3.4", "::ffff:102:304"),
    ],
)
def test_a_license_file_for_a_bare_ipv6_site_verifies_for_that_site_as_sent(
    shop: WebhookSender, sent: str, site: str
) -> None:
    """A server known by its IPv6 address, written without brackets as the product sends it
    to checkout (upper case, not compressed, with a zone), is the file's site offline too,
    as Keygate took it; the client read only the address's first group as the host."""
    key = issue_key(shop)
    assert call(shop.client, "activate", {"key": key, "site": sent}).get_json()["valid"]
    answer = call(shop.client, "checkout", {"key": key, "site": sent}).get_json()
    assert answer["code"] == "VALID", answer
    content = verify_license_file(
        answer["license_file"], public_keys(shop.client), key=key, site=sent
    )
    assert content["site"] == site
    with pytest.raises(LicenseFileError, match="another site"):
        verify_license_file(
            answer["license_file"], public_keys(shop.client), key=key, site="2001:db8::2"
        )


DAY = dt.timedelta(days=1)


def _lifetime(content: dict[str, Any]) -> dt.timedelta:
    """How long a file lasts, from its own issue time to its own expiry."""
    issued = dt.datetime.fromisoformat(content["issued"].replace("Z", "+00:00"))
    expiry = dt.datetime.fromisoformat(content["expiry"].replace("Z", "+00:00"))
    return expiry - issued


def checkout_file(shop: WebhookSender, key: str, **body: Any) -> dict[str, Any]:
    """A checkout's file content, checked offline, with the answer's stated expiry."""
    answer = call(shop.client, "checkout", {"key": key, "encrypt": False, **body}).get_json()
    assert answer["code"] == "VALID", answer
    content = verify_license_file(answer["license_file"], public_keys(shop.client), key=key)
    assert answer["license_file_expiry"] == content["expiry"]
    return content


@pytest.mark.parametrize(
    ("asked", "granted"),
    [
        ({"ttl": 365 * 24 * 3600}, 2 * DAY),  # a year asked: the product's two days
        ({}, 2 * DAY),  # the 7 days a checkout gets by default are longer too
        ({"ttl": 7200}, dt.timedelta(seconds=7200)),  # shorter than the cap: as asked
        ({"ttl": 2 * 24 * 3600}, 2 * DAY),
    ],
)
def test_an_offline_file_lasts_no_longer_than_the_products_offline_days(
    shop: WebhookSender, asked: dict[str, int], granted: dt.timedelta
) -> None:
    """The owner's offline_days caps what a caller asks for: a longer request is not refused,
    its file is shortened, and the file's ttl and the answer's expiry say what was given."""
    key = issue_key(shop, offline_days=2)
    content = checkout_file(shop, key, **asked)
    assert _lifetime(content) == granted
    assert content["ttl"] == granted.total_seconds()


def test_a_file_ended_by_its_license_says_so_in_its_ttl(shop: WebhookSender) -> None:
    """A week asked of a license ending sooner: the file ends with the license, and its ttl
    is the seconds it lasts, not the week asked (a product reading ttl would trust the file
    for days after the license ended)."""
    # Paid on PAID: one to two days left, whatever day the test runs.
    key = issue_key(shop, duration_days=(dt.datetime.now(dt.UTC) - PAID).days + 2)
    content = checkout_file(shop, key, ttl=7 * 24 * 3600)
    assert _lifetime(content) < 2 * DAY
    assert content["ttl"] == int(_lifetime(content).total_seconds())


def test_without_offline_days_a_file_lasts_as_long_as_asked_up_to_a_year(
    shop: WebhookSender,
) -> None:
    """A product that sets no offline_days keeps the API's own bounds: 7 days by default,
    what is asked up to 365 days, beyond that a 422."""
    key = issue_key(shop)
    assert _lifetime(checkout_file(shop, key)) == 7 * DAY
    assert _lifetime(checkout_file(shop, key, ttl=365 * 24 * 3600)) == 365 * DAY
    too_long = call(shop.client, "checkout", {"key": key, "ttl": 365 * 24 * 3600 + 1})
    assert too_long.status_code == 422


def test_a_refunded_orders_file_stops_verifying_after_the_offline_days(
    shop: WebhookSender,
) -> None:
    """Keys a refund revoked get no new file, and one checked out before verifies offline
    (it cannot know) only until the product's offline_days are over, not the year asked."""
    from tests.factories import line_item, wc_order

    shop.configure(501, activation_limit=1, offline_days=1)
    shop.deliver(wc_order(6101, "processing", [line_item(501)]))
    key = shop.order(6101)["licenses"][0]["key"]
    call(shop.client, "activate", {"key": key, "site": "one.com"})
    answer = call(
        shop.client, "checkout", {"key": key, "site": "one.com", "ttl": 365 * 24 * 3600}
    ).get_json()
    text = answer["license_file"]
    keys = public_keys(shop.client)
    content = verify_license_file(text, keys, key=key, site="one.com")
    issued = dt.datetime.fromisoformat(content["issued"].replace("Z", "+00:00"))

    shop.deliver(wc_order(6101, "refunded", [line_item(501)], modified=5))
    refused = call(shop.client, "checkout", {"key": key, "site": "one.com"}).get_json()
    assert (refused["code"], refused["license_file"]) == ("REVOKED", None)
    assert verify_license_file(text, keys, key=key, site="one.com", now=issued + DAY / 2)
    with pytest.raises(LicenseFileError, match="expired"):
        verify_license_file(text, keys, key=key, site="one.com", now=issued + DAY)


def test_a_seat_moved_elsewhere_leaves_no_file_that_outlives_the_offline_days(
    shop: WebhookSender,
) -> None:
    """A 1-seat key checked out on one site, moved to another and checked out again: each
    file verifies for the product's offline_days only, however long each asked for."""
    key = issue_key(shop, activation_limit=1, offline_days=1)
    year = 365 * 24 * 3600
    files = []
    for site in ("one.com", "two.com"):
        assert call(shop.client, "activate", {"key": key, "site": site}).get_json()["valid"]
        answer = call(shop.client, "checkout", {"key": key, "site": site, "ttl": year})
        files.append((site, answer.get_json()["license_file"]))
        call(shop.client, "deactivate", {"key": key, "site": site})
    keys = public_keys(shop.client)
    for site, text in files:
        content = verify_license_file(text, keys, key=key, site=site)
        issued = dt.datetime.fromisoformat(content["issued"].replace("Z", "+00:00"))
        with pytest.raises(LicenseFileError, match="expired"):
            verify_license_file(text, keys, key=key, site=site, now=issued + DAY)


def test_a_variation_keys_file_follows_the_variations_offline_days(
    shop: WebhookSender,
) -> None:
    """Sold as variation 777 (1 offline day) of 501 (none): a file asked for as 501 or as
    777 lasts the variation's day, the product the key was sold as."""
    from tests.factories import line_item, wc_order

    shop.configure(501)
    shop.configure(777, offline_days=1)
    shop.deliver(wc_order(6102, "processing", [line_item(501, variation_id=777)]))
    key = shop.order(6102)["licenses"][0]["key"]
    for named in ("501", "777"):
        content = checkout_file(shop, key, product=named, ttl=30 * 24 * 3600)
        assert _lifetime(content) == DAY, named


@pytest.mark.parametrize("bad", [0, -1, 366, 100_000, "7", 1.5, True])
def test_offline_days_outside_one_to_365_is_a_422_naming_it(
    shop: WebhookSender, bad: object
) -> None:
    """offline_days is a whole number of days from 1 to 365 (the longest file checkout
    gives); anything else is refused, naming the field, and changes nothing."""
    shop.configure(501, offline_days=5)
    response = shop.admin(
        "PUT", "/products/501", {"name": "Plugin Pro", "policy": {"offline_days": bad}}
    )
    assert response.status_code == 422, bad
    assert response.content_type == "application/problem+json"
    assert "offline_days" in response.get_json()["detail"]
    assert shop.admin("GET", "/products/501").get_json()["policy"]["offline_days"] == 5


def test_offline_days_reads_back_as_set_and_null_clears_it(shop: WebhookSender) -> None:
    """The policy round-trips through the API: set, read back, sent back, cleared."""
    shop.configure(501, offline_days=365)
    read = shop.admin("GET", "/products/501").get_json()
    assert read["policy"]["offline_days"] == 365
    assert shop.admin("PUT", "/products/501", read).status_code == 200
    assert shop.admin("GET", "/products/501").get_json()["policy"]["offline_days"] == 365
    shop.configure(501, offline_days=None)
    assert shop.admin("GET", "/products/501").get_json()["policy"]["offline_days"] is None


def test_release_download_of_a_missing_file_is_404(shop: WebhookSender, tmp_path: Path) -> None:
    """A release whose file is not in storage yet: the link answers 404, not 500."""
    key = issue_key(shop)
    publish(shop, "3.0.0", PAID)
    body = call(
        shop.client, "update-check", {"key": key, "product": "501", "version": "2.0"}
    ).get_json()
    url = body["update"]["download_url"].removeprefix("http://keygate.test")
    assert shop.client.get(url).status_code == 404


def test_a_variation_key_answers_to_its_parent_product_and_its_releases(
    shop: WebhookSender,
) -> None:
    """Sold as variation 777 of product 501: product=501 is no mismatch, and update-check
    offers releases published on 501."""
    from tests.factories import line_item, wc_order

    shop.configure(501)
    shop.configure(777, activation_limit=1)
    shop.deliver(wc_order(6001, "processing", [line_item(501, variation_id=777)]))
    key = shop.order(6001)["licenses"][0]["key"]
    for named in ("501", "777"):
        body = call(shop.client, "validate", {"key": key, "product": named}).get_json()
        assert body["code"] == "VALID", named
    assert call(shop.client, "validate", {"key": key, "product": "502"}).get_json()["code"] == (
        "PRODUCT_MISMATCH"
    )
    publish(shop, "2.0.0", PAID)
    body = call(
        shop.client, "update-check", {"key": key, "product": "501", "version": "1.0"}
    ).get_json()
    assert body["update"]["version"] == "2.0.0"


def test_perpetual_fallback_of_a_variation_key_knows_its_parents_releases(
    shop: WebhookSender,
) -> None:
    """Sold as variation 777 of 501, whose releases are published on 501: asking as 501 for
    a version released before expiry is the fallback's, as update-check would offer it."""
    from tests.factories import line_item, wc_order

    shop.configure(501)
    shop.configure(777, duration_days=2, perpetual_fallback=True)
    shop.deliver(wc_order(6002, "processing", [line_item(501, variation_id=777)]))
    key = shop.order(6002)["licenses"][0]["key"]
    publish(shop, "1.0.0", PAID + dt.timedelta(days=1))
    publish(shop, "2.0.0", PAID + dt.timedelta(days=3))
    asked = {"key": key, "product": "501"}
    old = call(shop.client, "validate", {**asked, "version": "1.0.0"}).get_json()
    assert (old["valid"], old["code"]) == (True, "VALID")
    new = call(shop.client, "validate", {**asked, "version": "2.0.0"}).get_json()
    assert new["code"] == "EXPIRED"


def test_publishing_a_release_whose_file_is_not_in_storage_warns_the_owner(
    app: Flask, shop: WebhookSender
) -> None:
    issue_key(shop)
    release = {"object_key": "releases/later.zip", "sha256": "a" * 64, "size": 3}
    answer = shop.admin("POST", "/products/501/releases", {**release, "version": "1.0.0"})
    assert answer.status_code == 201
    assert answer.get_json()["warnings"] == ["releases/later.zip: not found in storage yet"]
    with app.app_context():
        target = get_settings().storage_dir / "releases" / "later.zip"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"zip")
    answer = shop.admin("POST", "/products/501/releases", {**release, "version": "1.0.1"})
    assert (answer.status_code, answer.get_json()["warnings"]) == (201, [])


def test_release_dates_with_offsets_meet_updates_until_in_utc(shop: WebhookSender) -> None:
    """A release dated in the owner's zone counts at its UTC moment: one published at the
    second updates end is covered, one a second later is not. UPDATES_EXPIRED says when
    updates ended to the minute, zone said, as the license block's ``updates_until``."""
    key = issue_key(shop, update_days=5)  # updates until 2026-11-25T11:59:30Z
    publish_at = {
        "1.1.0": shifted("2026-11-25T22:59:30+11:00"),
        "1.2.0": shifted("2026-11-25T01:59:31-10:00"),
    }
    for version, published in publish_at.items():
        body = {
            "version": version,
            "object_key": f"releases/plugin-{version}.zip",
            "sha256": "a" * 64,
            "size": 1,
            "published_at": published,
        }
        assert shop.admin("POST", "/products/501/releases", body).status_code == 201
    listed = shop.admin("GET", "/products/501/releases").get_json()["releases"]
    assert [r["published_at"] for r in listed] == [
        shifted("2026-11-25T11:59:30Z"),
        shifted("2026-11-25T11:59:31Z"),
    ]
    assert update_check(shop, key, "1.0.0")["update"]["version"] == "1.1.0"
    ended = update_check(shop, key, "1.1.0")
    assert ended["code"] == "UPDATES_EXPIRED"
    assert ended["license"]["updates_until"] == shifted("2026-11-25T11:59:30Z")
    assert ended["detail"].startswith(shifted("Updates ended on 2026-11-25 11:59 UTC;"))


def test_a_release_published_by_mistake_is_withdrawn_and_published_again(
    app: Flask, shop: WebhookSender
) -> None:
    """A typo in a version ("11.0" for "1.1.0") would be offered to every buyer, and hide
    every real release after it, for good: the owner withdraws it (DELETE), update-check
    stops offering it, the right one is published, and the audit log keeps what was taken
    back. Another store's token withdraws nothing of this store's."""
    key = issue_key(shop)
    publish(shop, "1.0.0", PAID)
    publish(shop, "11.0", PAID)
    assert update_check(shop, key, "1.0.0")["update"]["version"] == "11.0"
    refused = shop.admin(
        "POST",
        "/products/501/releases",
        {
            "version": "11.0",
            "object_key": "r/x.zip",
            "sha256": "b" * 64,
            "size": 1,
        },
    )
    assert refused.status_code == 409
    assert "withdraw the published one first" in refused.get_json()["detail"]

    with app.app_context():
        other = create_store(db.session, "Other shop", "https://other.example")
        db.session.commit()
    theirs = WebhookSender(app.test_client(), other)
    theirs.configure(501)
    assert theirs.admin("DELETE", "/products/501/releases/11.0").status_code == 404

    withdrawn = shop.admin("DELETE", "/products/501/releases/11.0")
    assert withdrawn.status_code == 200, withdrawn.get_data(as_text=True)
    assert withdrawn.get_json()["withdrawn"]["version"] == "11.0"
    assert update_check(shop, key, "1.0.0")["update"] is None
    listed = shop.admin("GET", "/products/501/releases").get_json()["releases"]
    assert [r["version"] for r in listed] == ["1.0.0"]
    again = shop.admin("DELETE", "/products/501/releases/11.0")
    assert again.status_code == 404
    assert again.headers["Content-Type"] == "application/problem+json"
    assert shop.admin("DELETE", "/products/999/releases/1.0.0").status_code == 404

    publish(shop, "1.1.0", PAID)
    assert update_check(shop, key, "1.0.0")["update"]["version"] == "1.1.0"
    with app.app_context():
        events = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "release.withdrawn")
        ).all()
        assert [(e.actor, e.subject, e.detail["version"]) for e in events] == [
            ("api", "product:501", "11.0")
        ]


def _product_row_id(app: Flask, shop_product_id: str = "501") -> int:
    with app.app_context():
        found: int = db.session.execute(
            select(Product.id).where(Product.shop_product_id == shop_product_id)
        ).scalar_one()
        return found


def test_a_version_published_twice_at_once_is_one_release_and_a_409(
    app: Flask, shop: WebhookSender
) -> None:
    """A release pipeline retrying its publish (a timeout, a second runner) sends the same
    version while the first POST is still being written: the second is told 409, as any
    second publish, not a 500, and one release of it is kept."""
    issue_key(shop)
    product_id = _product_row_id(app)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)

    def publish_first(connection: Connection) -> None:
        connection.execute(
            sql(
                "INSERT INTO releases (product_id, version, object_key, sha256, size,"
                " published_at, created_at) VALUES (:p, '2.0.0', 'r/a.zip', :h, 1, :t, :t)"
            ),
            {"p": product_id, "h": "a" * 64, "t": now},
        )

    body = {"version": "2.0.0", "object_key": "r/a.zip", "sha256": "a" * 64, "size": 1}
    answer = while_another_transaction(
        app, publish_first, lambda: shop.admin("POST", "/products/501/releases", body)
    )
    assert answer.status_code == 409, answer.get_data(as_text=True)
    assert answer.mimetype == "application/problem+json"
    listed = shop.admin("GET", "/products/501/releases").get_json()["releases"]
    assert [r["version"] for r in listed] == ["2.0.0"]


def test_a_release_withdrawn_twice_at_once_is_a_404_not_a_500(
    app: Flask, shop: WebhookSender
) -> None:
    """Two withdrawals of one release at once (the API retried, a second tab): the one that
    finds it already gone is told 404, as a withdrawal of a version not published, and the
    audit log has one entry."""
    issue_key(shop)
    publish(shop, "11.0", PAID)
    product_id = _product_row_id(app)

    def withdraw_first(connection: Connection) -> None:
        connection.execute(
            sql("DELETE FROM releases WHERE product_id = :p AND version = '11.0'"),
            {"p": product_id},
        )

    answer = while_another_transaction(
        app, withdraw_first, lambda: shop.admin("DELETE", "/products/501/releases/11.0")
    )
    assert answer.status_code == 404, answer.get_data(as_text=True)
    assert answer.mimetype == "application/problem+json"
    with app.app_context():
        withdrawn = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "release.withdrawn")
        ).all()
        assert withdrawn == []


def test_a_release_whose_size_is_not_its_files_warns_the_owner(
    app: Flask, shop: WebhookSender
) -> None:
    """The client library refuses a download of another size than the release says, so a
    size typed wrong would have every buyer's update refused with no word to the owner:
    the publish answer says so (published all the same: the file may be replaced next)."""
    issue_key(shop)
    with app.app_context():
        target = get_settings().storage_dir / "releases" / "plugin.zip"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"PK twelve by")  # 12 bytes
    release = {"object_key": "releases/plugin.zip", "sha256": "a" * 64, "size": 1200}
    answer = shop.admin("POST", "/products/501/releases", {**release, "version": "1.0.0"})
    assert answer.status_code == 201
    assert answer.get_json()["warnings"] == [
        "releases/plugin.zip: the file in storage has 12 bytes, the release says 1200: products"
        " refuse a download of another size (withdraw the release and publish it with the"
        " file's size and SHA-256)"
    ]
    right = shop.admin(
        "POST", "/products/501/releases", {**release, "version": "1.0.1", "size": 12}
    )
    assert (right.status_code, right.get_json()["warnings"]) == (201, [])


def test_an_expired_key_on_the_fallback_is_offered_no_release_it_could_not_run(
    shop: WebhookSender,
) -> None:
    """Perpetual fallback with updates paid past the license (``update_days`` longer than
    ``duration_days``): an expired key running an old release is offered the newest
    release published before it expired, never a later one, which validate would answer
    EXPIRED (installing it would stop the product)."""
    key = issue_key(shop, duration_days=2, update_days=6, perpetual_fallback=True)
    publish(shop, "1.0.0", PAID + dt.timedelta(days=1))
    publish(shop, "1.5.0", PAID + dt.timedelta(days=1, hours=12))
    publish(shop, "2.0.0", PAID + dt.timedelta(days=4))
    offered = update_check(shop, key, "1.0.0")
    assert (offered["code"], offered["update"]["version"]) == ("VALID", "1.5.0")
    runs = call(shop.client, "validate", {"key": key, "version": "1.5.0"}).get_json()
    assert runs["code"] == "VALID"
    latest = update_check(shop, key, "1.5.0")
    assert (latest["valid"], latest["code"], latest["update"]) == (False, "UPDATES_EXPIRED", None)
    assert latest["detail"].startswith(shifted("Updates ended on 2026-11-22 11:59 UTC;"))
