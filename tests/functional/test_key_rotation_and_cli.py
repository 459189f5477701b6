"""`keygate rotate-keys` leaves everything readable; `keygate reconcile` and `sync-products`."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet, InvalidToken
from flask import Flask
from sqlalchemy import select, text

from connector import create_app
from connector.cli import main
from connector.db import db
from connector.jobs import run_pending
from connector.models import Job, Mail, Store
from connector.vault.crypto import Keyring, current_keyring
from connector.vault.rotation import encrypted_tables, rotate_all
from connector.vault.service import credentials_for
from tests.conftest import MASTER_KEY, SECRET_KEY, app_overrides
from tests.factories import WebhookSender, line_item, shifted, wc_order
from tests.functional.test_vault_credentials import R2, app_settings
from tests.wc_rest import FakeShop, connect_store, fake_shop

__all__ = ["app_settings", "fake_shop"]  # app_settings: R2's endpoint is on 127.0.0.1


@contextmanager
def another_app_in_this_process() -> Iterator[None]:
    """A second app (the CLI's) in this process; each app keeps its own engine."""
    yield


def keygate(tmp_path: Path, database_url: str, *args: str, master_keys: str = MASTER_KEY) -> Result:
    env = {
        "KEYGATE_INSTANCE_DIR": str(tmp_path / "instance"),
        "KEYGATE_DATABASE_URL": database_url,
        "KEYGATE_MASTER_KEYS": master_keys,
        "KEYGATE_SECRET_KEY": SECRET_KEY,
        "KEYGATE_WORKER": "off",
        "KEYGATE_BASE_URL": "http://keygate.test",
    }
    with another_app_in_this_process():
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def raw_tokens(app: Flask) -> list[str]:
    tokens = []
    with app.app_context():
        for spec in encrypted_tables():
            for column in spec.columns:
                tokens += [
                    value
                    for (value,) in db.session.execute(
                        text(f'SELECT "{column.name}" FROM "{spec.table.name}"')  # noqa: S608
                    )
                    if value is not None
                ]
    return tokens


def test_rotation_leaves_everything_readable_under_the_new_key_alone(
    app: Flask, shop: WebhookSender, tmp_path: Path, database_url: str
) -> None:
    """After rotate-keys with (new, old), an app holding only the new key reads every secret."""
    shop.admin("PUT", "/credentials/r2", R2)
    shop.configure(501)
    shop.deliver(wc_order(9901, "processing", [line_item(501, quantity=2)]))
    run_pending(app)
    before = shop.order(9901)
    with app.app_context():
        assert db.session.scalars(select(Mail)).all(), "the order mail is stored"
    old_tokens = raw_tokens(app)
    assert len(old_tokens) >= 6  # store secret, credentials, two keys, mail fields

    new_key = Fernet.generate_key().decode()
    result = keygate(tmp_path, database_url, "rotate-keys", master_keys=f"{new_key},{MASTER_KEY}")
    assert result.exit_code == 0, result.output
    assert "Re-encrypting" in result.output
    rows = re.search(r"re-encrypted (\d+) rows", result.output)
    assert rows is not None and int(rows.group(1)) >= 5
    new_tokens = raw_tokens(app)
    assert len(new_tokens) == len(old_tokens)
    assert not set(new_tokens) & set(old_tokens)
    for token in new_tokens:
        with pytest.raises(InvalidToken):
            Fernet(MASTER_KEY).decrypt(token.encode())

    with another_app_in_this_process():
        rotated = create_app(app_overrides(tmp_path, database_url, master_keys=[new_key]))
        check_rotated_app(rotated, shop, before)


def test_a_server_left_running_follows_its_key_file_through_a_rotation(
    app: Flask,
    shop: WebhookSender,
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`make run` (its keys in instance/master.key) left running while the owner puts a new
    key first there and runs `keygate rotate-keys`: it reads what the rotation re-encrypted
    and encrypts with the new key, without a restart (it answered webhooks and jobs 500
    until restarted). A key gone from the file still reads what it wrote; a file being
    edited (not keys yet) changes nothing."""
    for name in ("KEYGATE_MASTER_KEY", "KEYGATE_MASTER_KEYS"):
        monkeypatch.delenv(name, raising=False)
    key_file = tmp_path / "instance" / "master.key"
    key_file.write_text(MASTER_KEY + "\n")
    from_file = app_overrides(tmp_path, database_url)
    del from_file["master_keys"]
    running = create_app(from_file)
    try:
        shop.admin("PUT", "/credentials/r2", R2)
        with running.app_context():
            written_before = current_keyring().encrypt("written before")
        new_key = Fernet.generate_key().decode()
        key_file.write_text(f"{new_key}\n{MASTER_KEY}\n")
        rotated = keygate(
            tmp_path, database_url, "rotate-keys", master_keys=f"{new_key},{MASTER_KEY}"
        )
        assert rotated.exit_code == 0, rotated.output
        with running.app_context():
            store = db.session.get(Store, shop.store.store.id)
            assert store is not None
            assert store.webhook_secret == shop.store.webhook_secret
            assert credentials_for(db.session, store, "r2") == R2
            made_now = current_keyring().encrypt("made now")
        assert Fernet(new_key).decrypt(made_now.encode()) == b"made now"
        monkeypatch.setattr("connector.vault.crypto.KEY_FILE_CHECK_SECONDS", 0.0)
        for edited in (f"{new_key}\n", "not a key yet\n"):  # the old key dropped; half-saved
            key_file.write_text(edited)
            with running.app_context():
                keyring = current_keyring()
                assert keyring.decrypt(written_before) == "written before"
                assert keyring.decrypt(made_now) == "made now"
                assert keyring.fingerprints == (fingerprint(new_key), fingerprint(MASTER_KEY))
    finally:
        running.extensions["keygate.db"].engine.dispose()


def check_rotated_app(rotated: Flask, shop: WebhookSender, before: dict[str, Any]) -> None:
    try:
        with rotated.app_context():
            store = db.session.get(Store, shop.store.store.id)
            assert store is not None
            assert store.webhook_secret == shop.store.webhook_secret
            assert credentials_for(db.session, store, "r2") == R2
            mails = db.session.scalars(select(Mail)).all()
            assert all(m.to_email == "jurgen@example.org" for m in mails)
        client = rotated.test_client()
        after = client.get(
            "/api/v1/admin/orders/9901",
            headers={"Authorization": f"Bearer {shop.store.api_token}"},
        ).get_json()
        assert [lic["key"] for lic in after["licenses"]] == [
            lic["key"] for lic in before["licenses"]
        ]
        # Links depend on the secret key alone: download links are the same, and the portal
        # link mailed before the rotation still opens the order's page.
        assert [d["link"] for d in after["downloads"]] == [d["link"] for d in before["downloads"]]
        page = client.get(before["portal_url"].removeprefix("http://keygate.test"))
        assert page.status_code == 200
        assert before["licenses"][0]["key"] in page.get_data(as_text=True)
    finally:
        rotated.extensions["keygate.db"].engine.dispose()


def fingerprint(key: str) -> str:
    """README's: the first 8 hex digits of the key's SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def test_rotation_names_its_key_and_check_says_when_old_keys_can_go(
    shop: WebhookSender, tmp_path: Path, database_url: str
) -> None:
    """rotate-keys names the key it encrypted with by a fingerprint, never the key itself;
    --check counts the values the newest key alone cannot read, so keys given oldest first
    are caught before the old key is dropped."""
    shop.admin("PUT", "/credentials/r2", R2)
    new_key = Fernet.generate_key().decode()
    new_first, old_first = f"{new_key},{MASTER_KEY}", f"{MASTER_KEY},{new_key}"

    before = keygate(tmp_path, database_url, "rotate-keys", "--check", master_keys=new_first)
    assert before.exit_code == 1, before.output
    assert re.search(r"\b[1-9]\d* of \d+ encrypted values", before.output), before.output
    assert fingerprint(new_key) in before.output

    wrong = keygate(tmp_path, database_url, "rotate-keys", master_keys=old_first)
    assert wrong.exit_code == 0, wrong.output
    assert f"newest master key (fingerprint {fingerprint(MASTER_KEY)})" in wrong.output
    assert MASTER_KEY not in wrong.output and new_key not in wrong.output
    still = keygate(tmp_path, database_url, "rotate-keys", "--check", master_keys=new_first)
    assert still.exit_code == 1, "the old key is still needed"

    right = keygate(tmp_path, database_url, "rotate-keys", master_keys=new_first)
    assert right.exit_code == 0, right.output
    assert f"newest master key (fingerprint {fingerprint(new_key)})" in right.output
    done = keygate(tmp_path, database_url, "rotate-keys", "--check", master_keys=new_first)
    assert done.exit_code == 0, done.output
    assert re.search(r"\b0 of [1-9]\d* encrypted values", done.output), done.output
    assert f"the older keys ({fingerprint(MASTER_KEY)}) can be dropped" in done.output
    assert MASTER_KEY not in done.output and new_key not in done.output


def test_rotation_with_one_key_says_how_to_rotate_and_changes_nothing(
    app: Flask, shop: WebhookSender, tmp_path: Path, database_url: str
) -> None:
    """An owner running rotate-keys with no new key configured is not told rows were
    "re-encrypted" (as if rotated): they are told there is nothing to rotate from, and how
    to make and place a new key."""
    shop.admin("PUT", "/credentials/r2", R2)
    before = raw_tokens(app)
    result = keygate(tmp_path, database_url, "rotate-keys", master_keys=MASTER_KEY)
    assert result.exit_code == 0, result.output
    assert f"Only one master key is configured (fingerprint {fingerprint(MASTER_KEY)})" in (
        result.output
    )
    assert "Fernet.generate_key()" in result.output and "put it first" in result.output
    assert "re-encrypted" not in result.output.replace("nothing was re-encrypted", "")
    assert MASTER_KEY not in result.output
    assert raw_tokens(app) == before


def test_rotation_never_undoes_a_secret_saved_while_it_runs(
    app: Flask, shop: WebhookSender, tmp_path: Path, database_url: str
) -> None:
    """A secret a server saves while rotate-keys runs (after the rotation has read the old
    one, before it writes it back re-encrypted) stays saved."""
    keys = (Fernet.generate_key().decode(), MASTER_KEY)
    store_id = shop.store.store.id
    with app.app_context():
        old_token = db.session.execute(text("SELECT webhook_secret FROM stores")).scalar_one()
        db.session.rollback()
    server = create_app(app_overrides(tmp_path, database_url, master_keys=list(keys)))
    rotator = create_app(app_overrides(tmp_path, database_url, master_keys=list(keys)))

    def save_a_new_secret() -> None:
        with server.app_context():
            store = db.session.get(Store, store_id)
            assert store is not None
            store.webhook_secret = "whsec-registered-during-rotation"
            db.session.commit()

    writer = threading.Thread(target=save_a_new_secret)

    class SavesWhileRotating(Keyring):
        def rotate(self, token: str) -> str:
            if token == old_token:
                writer.start()
                if database_url.startswith("postgresql"):
                    writer.join()  # committed between the rotation's read and its write
                # SQLite: the writer queues behind the rotation's write lock.
            return super().rotate(token)

    try:
        with rotator.app_context():
            rotate_all(db.session, SavesWhileRotating(keys, SECRET_KEY))
        writer.join()
        with server.app_context():
            store = db.session.get(Store, store_id)
            assert store is not None
            assert store.webhook_secret == "whsec-registered-during-rotation"
    finally:
        for application in (server, rotator):
            application.extensions["keygate.db"].engine.dispose()


def test_rotation_with_a_missing_old_key_stops_and_says_where(
    app: Flask, shop: WebhookSender, tmp_path: Path, database_url: str
) -> None:
    """Without the key the database was made with, rotation (like any start) stops before
    touching a row, saying which key is wanted, never showing a value."""
    other = Fernet.generate_key().decode()
    result = keygate(tmp_path, database_url, "rotate-keys", master_keys=other)
    assert result.exit_code == 1
    assert "the master key does not open this database's secrets" in result.output
    assert shop.store.webhook_secret not in result.output
    with app.app_context():
        assert db.session.get(Store, shop.store.store.id) is not None  # still readable


def test_keyring_rotation_keeps_the_plaintext() -> None:
    """Keyring.rotate re-encrypts under the newest key; both keyrings read the same text."""
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    token = Keyring((old,), SECRET_KEY).encrypt("cs_secret")
    rotated = Keyring((new, old), SECRET_KEY).rotate(token)
    assert Keyring((new,), SECRET_KEY).decrypt(rotated) == "cs_secret"


def test_rotation_stops_at_a_value_no_configured_key_opens_and_names_it(
    app: Flask, shop: WebhookSender, tmp_path: Path, database_url: str
) -> None:
    """A value made with a key no longer configured (an earlier rotation cut short, then its
    old key dropped): rotation stops there, naming the row, never the value."""
    stray = Fernet(Fernet.generate_key()).encrypt(b"secret from before").decode()
    with app.app_context():
        db.session.execute(
            text("UPDATE stores SET webhook_secret = :token WHERE id = :id"),
            {"token": stray, "id": shop.store.store.id},
        )
        db.session.commit()
    new = Fernet.generate_key().decode()
    result = keygate(tmp_path, database_url, "rotate-keys", master_keys=f"{new},{MASTER_KEY}")
    assert result.exit_code == 1
    assert f"stores.webhook_secret of row {shop.store.store.id}" in result.output
    assert "secret from before" not in result.output


def test_reconcile_command_fulfils_a_missed_order(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop, tmp_path: Path, database_url: str
) -> None:
    """`keygate reconcile --since` applies orders the webhooks missed, and reports them."""
    connect_store(app, shop, fake_shop)
    shop.configure(501)
    fake_shop.orders[9902] = wc_order(9902, "completed", [line_item(501)])
    result = keygate(tmp_path, database_url, "reconcile", "--since", shifted("2026-11-20T11:00:00"))
    assert result.exit_code == 0, result.output
    assert shifted("1 orders since 2026-11-20T11:00:00+00:00: 1 applied") in result.output
    assert "1 licenses issued" in result.output
    assert len(shop.order(9902)["licenses"]) == 1
    with app.app_context():
        scheduled = db.session.scalars(
            select(Job).where(Job.kind == "shop.reconcile", Job.status == "pending")
        ).all()
        assert len(scheduled) == 1, "the periodic run is (still) scheduled, once"


def test_reconcile_command_reports_a_shop_that_is_down(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop, tmp_path: Path, database_url: str
) -> None:
    """A shop that answers 503 makes the command fail with a message, not a traceback."""
    connect_store(app, shop, fake_shop)
    fake_shop.down = True
    result = keygate(tmp_path, database_url, "reconcile")
    assert result.exit_code == 1
    assert "HTTP 503" in result.output
    assert keygate(tmp_path, database_url, "reconcile", "--since", "yesterday").exit_code == 2


def test_commands_skip_stores_that_are_not_connected(
    shop: WebhookSender, tmp_path: Path, database_url: str
) -> None:
    """A store without a WooCommerce key is skipped with a word, not an error."""
    for command in ("reconcile", "sync-products"):
        result = keygate(tmp_path, database_url, command)
        assert result.exit_code == 0, result.output
        assert "not connected" in result.output
    unknown = keygate(tmp_path, database_url, "sync-products", "--store", "nope")
    assert unknown.exit_code == 1


def test_sync_products_command(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop, tmp_path: Path, database_url: str
) -> None:
    """`keygate sync-products` reads product meta and says what it configured."""
    connect_store(app, shop, fake_shop)
    fake_shop.products[501] = {
        "id": 501,
        "name": "Plugin Pro",
        "type": "simple",
        "meta_data": [{"id": 1, "key": "_keygate_activation_limit", "value": "2"}],
    }
    result = keygate(tmp_path, database_url, "sync-products")
    assert result.exit_code == 0, result.output
    assert "1 configured" in result.output
