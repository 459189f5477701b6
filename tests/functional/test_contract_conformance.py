"""Keygate against its public contract (DESIGN.md) and what the README promises owners and
product developers: each test is one place where the code had drifted from the text."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from connector import create_app
from connector.backup import back_up
from connector.config import ConfigError
from tests.conftest import app_overrides
from tests.factories import WebhookSender
from tests.functional.test_cli import keygate
from tests.licensing_helpers import call, issue_key


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("worker_poll_seconds", "nan"),
        ("worker_poll_seconds", "inf"),
        ("worker_poll_seconds", "1e999"),
    ],
)
def test_a_number_that_is_none_stops_keygate_at_boot(
    tmp_path: Path, database_url: str, setting: str, value: str
) -> None:
    """README, Settings: a malformed value (a number that is none) stops Keygate with a
    message naming the setting. "nan" passed every floor (nan < 0.1 is false), and the
    worker then waited nan seconds: no wait at all, a busy loop on the database."""
    with pytest.raises(ConfigError, match=f"KEYGATE_{setting.upper()} must be a"):
        create_app(app_overrides(tmp_path, database_url, **{setting: value}))


@pytest.mark.parametrize(
    ("line", "setting"),
    [
        ("job_max_attempts = inf", "KEYGATE_JOB_MAX_ATTEMPTS"),
        ("job_max_attempts = 2.5", "KEYGATE_JOB_MAX_ATTEMPTS"),
        ("retention_jobs_days = true", "KEYGATE_RETENTION_JOBS_DAYS"),
        ("worker_poll_seconds = nan", "KEYGATE_WORKER_POLL_SECONDS"),
    ],
)
def test_keygate_toml_numbers_are_checked_as_the_environments_are(
    tmp_path: Path, database_url: str, line: str, setting: str
) -> None:
    """A whole-number setting in keygate.toml given a float or a boolean is refused in a line
    naming it (as "2.5" in the environment is), not cut down to 2 or 1, nor a traceback
    (``inf`` raised OverflowError from ``int()``)."""
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "keygate.toml").write_text(line + "\n")
    result = keygate(tmp_path, "init", database_url=database_url)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert f"{setting} must be a" in result.stderr, result.stderr


def test_every_activate_and_checkout_answer_carries_its_documented_fields(
    shop: WebhookSender,
) -> None:
    """README, License API: answers carry ``activation`` (activate) and ``license_file``
    (checkout, whose ``license_file_expiry`` is its expiry). A refused activation left
    ``activation`` out altogether and a refused checkout ``license_file_expiry``, while
    ``license_file`` and update-check's ``update`` are there, null: a product reading
    ``body["activation"]`` after a refusal failed on a KeyError."""
    key = issue_key(shop, activation_limit=1)
    taken = call(shop.client, "activate", {"key": key, "site": "first.example.com"}).get_json()
    assert taken["code"] == "VALID"
    assert taken["activation"]["site"] == "first.example.com"

    refused = call(shop.client, "activate", {"key": key, "site": "second.example.com"})
    body = refused.get_json()
    assert body["code"] == "TOO_MANY_ACTIVATIONS"
    assert "activation" in body and body["activation"] is None
    unknown = call(shop.client, "activate", {"key": "AAAAA-BBBBB", "site": "x.example.com"})
    assert unknown.get_json()["code"] == "NOT_FOUND"
    assert unknown.get_json()["activation"] is None

    not_here = call(shop.client, "checkout", {"key": key, "site": "second.example.com"})
    body = not_here.get_json()
    assert body["valid"] is False
    assert body["license_file"] is None
    assert "license_file_expiry" in body and body["license_file_expiry"] is None
    granted = call(shop.client, "checkout", {"key": key, "site": "first.example.com"}).get_json()
    assert granted["license_file"] is not None
    assert granted["license_file_expiry"].endswith("Z")


def test_a_backup_into_an_empty_folder_made_beforehand_is_this_users_only(
    app: Flask, tmp_path: Path
) -> None:
    """README, Backups: `keygate backup DEST` copies the instance into a new folder
    readable by this user only. An empty folder the operator made first (mode 0755 under
    the usual umask) was taken as it was, listing the backup to every user."""
    folder = tmp_path / "made-first"
    folder.mkdir()
    folder.chmod(0o755)
    back_up(app.extensions["keygate.settings"], folder)
    assert folder.stat().st_mode & 0o777 == 0o700


def test_one_license_read_by_key_answers_what_the_list_says_of_it(shop: WebhookSender) -> None:
    """README, Owner endpoints: `GET /api/v1/admin/licenses/<key>` is the license "with
    activations". It answered only key, status and dates, so an owner looking a key up could
    not see its product, order, buyer or seats taken, which the list shows."""
    key = issue_key(shop, activation_limit=3, duration_days=30)
    call(shop.client, "activate", {"key": key, "site": "shop.example.org"})
    [listed] = shop.admin("GET", "/licenses").get_json()["licenses"]
    read = shop.admin("GET", f"/licenses/{key}").get_json()
    assert read["license"] == listed
    assert (listed["product_id"], listed["activations_used"]) == ("501", 1)
    assert [a["site"] for a in read["activations"]] == ["shop.example.org"]
