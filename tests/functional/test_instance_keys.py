"""Keygate starts only with the database's own keys, on a database migrated for it; `keygate
init` never makes new keys for a database that already holds data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from flask import Flask
from sqlalchemy import create_engine, delete

from connector import create_app
from connector.config import ConfigError
from connector.db import db
from connector.migrate import upgrade
from connector.models import KeyCheck
from tests.conftest import MASTER_KEY, SECRET_KEY, app_overrides
from tests.factories import WebhookSender
from tests.functional.test_cli import keygate
from tests.licensing_helpers import issue_key


def start(tmp_path: Path, database_url: str, **extra: Any) -> Flask:
    app = create_app(app_overrides(tmp_path, database_url, **extra))
    app.extensions["keygate.db"].engine.dispose()
    return app


def test_another_master_key_is_refused_at_start(
    app: Flask, shop: WebhookSender, tmp_path: Path, database_url: str
) -> None:
    """Not a server that answers 500 to every webhook (which WooCommerce never resends)."""
    other = Fernet.generate_key().decode()
    with pytest.raises(ConfigError, match="master key does not open this database"):
        start(tmp_path, database_url, master_keys=[other])
    start(tmp_path, database_url, master_keys=[other, MASTER_KEY])  # mid-rotation: both


def test_another_secret_key_is_refused_at_start(
    app: Flask, shop: WebhookSender, tmp_path: Path, database_url: str
) -> None:
    """Not a server telling every product, signed, that its key does not exist."""
    with pytest.raises(ConfigError, match="secret key is not the one"):
        start(tmp_path, database_url, secret_key="s" * 40)
    assert SECRET_KEY != "s" * 40


def test_a_database_from_before_key_checks_is_checked_against_a_stored_secret(
    app: Flask, shop: WebhookSender, tmp_path: Path, database_url: str
) -> None:
    """Without a proof row (a database made before this check), the master key must open a
    secret already stored; then the proof is written."""
    with app.app_context():
        db.session.execute(delete(KeyCheck))
        db.session.commit()
    other = Fernet.generate_key().decode()
    with pytest.raises(ConfigError, match="master key does not open this database"):
        start(tmp_path, database_url, master_keys=[other])
    start(tmp_path, database_url)
    with app.app_context():
        assert db.session.query(KeyCheck).count() == 1


def test_a_database_from_before_key_checks_with_licenses_checks_the_secret_key_too(
    app: Flask, shop: WebhookSender, tmp_path: Path, database_url: str
) -> None:
    """A license key's keyed hash, found again from its decrypted copy, proves the secret
    key: the first start after the upgrade does not record a wrong one as the proof."""
    issue_key(shop)
    with app.app_context():
        db.session.execute(delete(KeyCheck))
        db.session.commit()
    with pytest.raises(ConfigError, match="secret key is not the one"):
        start(tmp_path, database_url, secret_key="s" * 40)
    with app.app_context():
        assert db.session.query(KeyCheck).count() == 0  # nothing recorded from the wrong key
    start(tmp_path, database_url)


def test_a_database_not_migrated_for_this_code_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(ConfigError, match="no Keygate tables: run `keygate init`"):
        start(tmp_path, url)
    engine = create_engine(url)
    upgrade(engine, "0006")
    engine.dispose()
    with pytest.raises(ConfigError, match=r"at migration 0006, .* run `keygate init`"):
        start(tmp_path, url)
    migrated = keygate(tmp_path, "init", database_url=url)
    assert migrated.returncode == 0, migrated.stderr
    assert "migrated the database from 0006 to 00" in migrated.stdout, migrated.stdout
    assert "up to date" not in migrated.stdout


def test_init_never_makes_new_keys_for_a_database_in_use(tmp_path: Path) -> None:
    """A lost master.key, or a second host set up with its own init: new keys would make
    every stored secret, license key and API token unreadable for good."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    one, two = tmp_path / "one", tmp_path / "two"
    first = keygate(one, "init", database_url=url)
    assert first.returncode == 0, first.stderr
    second = keygate(two, "init", database_url=url)
    assert second.returncode != 0
    assert "already holds a Keygate instance's data" in second.stderr
    assert not (two / "instance" / "master.key").exists()
    assert not (two / "instance" / "secret.key").exists()
    # With the first host's keys, the second host starts.
    for name in ("master.key", "secret.key"):
        (two / "instance" / name).write_text((one / "instance" / name).read_text())
    assert keygate(two, "init", database_url=url).returncode == 0


def test_an_unreadable_key_file_is_a_clear_error(tmp_path: Path, database_url: str) -> None:
    """Not a traceback: a key "file" that is a folder, or is not text, says so and where."""
    (tmp_path / "instance").mkdir()
    key_file = tmp_path / "instance" / "master.key"
    overrides = app_overrides(tmp_path, database_url)
    del overrides["master_keys"]
    key_file.mkdir()
    with pytest.raises(ConfigError, match=r"cannot read .*master\.key"):
        create_app(dict(overrides))
    key_file.rmdir()
    key_file.write_bytes(b"\xff\xfe not a key")
    with pytest.raises(ConfigError, match=r"cannot read .*master\.key: not text"):
        create_app(dict(overrides))


def test_an_empty_key_file_is_named_not_answered_with_run_init(tmp_path: Path) -> None:
    """An empty master.key or secret.key (a copy cut short) is never replaced by init, so
    "run keygate init" would send the owner round in a circle: the file is named."""
    assert keygate(tmp_path, "init").returncode == 0
    for name, kind in (("master.key", "master"), ("secret.key", "secret")):
        key_file = tmp_path / "instance" / name
        kept = key_file.read_text()
        key_file.write_text("\n")
        for command in ("init", "store"):
            refused = keygate(tmp_path, command, *(["list"] if command == "store" else []))
            assert refused.returncode == 1, refused.stdout
            assert f"{key_file} holds no {kind} key" in refused.stderr
            assert "run `keygate init`" not in refused.stderr
        key_file.write_text(kept)
    key_file.unlink()  # no file at all: a new instance's first step
    assert "run `keygate init`" in keygate(tmp_path, "store", "list").stderr


def test_init_with_another_instances_keys_leaves_its_database_as_it_was(tmp_path: Path) -> None:
    """A second host set up with its own `keygate init`, then pointed at the first one's
    database (KEYGATE_DATABASE_URL copied over): init refuses its keys before it changes
    anything. It used to migrate the other instance's database first (its servers, still
    running the older code, then refused to start again), and only then refuse."""
    from sqlalchemy import text

    from connector.migrate import downgrade

    url = f"sqlite:///{tmp_path / 'first.db'}"
    assert keygate(tmp_path / "one", "init", database_url=url).returncode == 0
    engine = create_engine(url)
    downgrade(engine, "0020")  # the first instance runs an older Keygate
    assert keygate(tmp_path / "two", "init").returncode == 0  # its own keys, its own database

    refused = keygate(tmp_path / "two", "init", database_url=url)
    assert refused.returncode == 1, refused.stdout
    assert "the master key does not open this database" in refused.stderr
    assert "database is up to date" not in refused.stdout
    with engine.connect() as connection:
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    assert version == "0020"


def test_a_database_keygate_cannot_write_stops_it_with_a_line(tmp_path: Path) -> None:
    """A SQLite database Keygate's user can read and not write (restored as root, a
    read-only mount: here opened read-only): `keygate init` says so instead of "up to date",
    a server refuses to start instead of answering 503 to every webhook and form, and a
    command that writes says it in a line, not a traceback."""
    assert keygate(tmp_path, "init").returncode == 0
    database = tmp_path / "instance" / "keygate.db"
    read_only = f"sqlite:///file:{database}?mode=ro&uri=true"
    for args in (("init",), ("store", "add", "--name", "Shop", "--url", "https://x.example")):
        result = keygate(tmp_path, *args, database_url=read_only)
        assert result.returncode == 1, (args, result.stdout)
        assert "Traceback" not in result.stderr, result.stderr[-600:]
        assert result.stderr.startswith("Error: cannot write the database at ")
        assert f"{database}: attempt to write a readonly database" in result.stderr
        assert "writable by the user Keygate runs as" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    own_keys = {
        "master_keys": [(tmp_path / "instance" / "master.key").read_text().strip()],
        "secret_key": (tmp_path / "instance" / "secret.key").read_text().strip(),
    }
    with pytest.raises(ConfigError, match="cannot write the database"):
        start(tmp_path, read_only, **own_keys)
    start(tmp_path, f"sqlite:///{database}", **own_keys)  # writable, it starts


def test_a_postgresql_database_keygate_cannot_write_stops_it_with_a_line(
    tmp_path: Path, database_url: str
) -> None:
    """PostgreSQL that takes reads and refuses writes (a standby, sessions made read-only by
    default_transaction_read_only, a role granted SELECT only): `keygate init` and a server
    refuse to start in a line naming the database, instead of "up to date" then 503 to every
    webhook, form and activation."""
    import uuid

    from sqlalchemy import make_url, text

    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's standby, read-only sessions and roles")
    start(tmp_path, database_url)  # its keys' proof written, as a first start does
    (tmp_path / "instance").mkdir(mode=0o700, exist_ok=True)
    (tmp_path / "instance" / "master.key").write_text(MASTER_KEY)
    (tmp_path / "instance" / "secret.key").write_text(SECRET_KEY)
    read_only = database_url + "?options=-c%20default_transaction_read_only%3Don"
    result = keygate(tmp_path, "init", database_url=read_only)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr, result.stderr[-600:]
    assert "database is up to date" not in result.stdout
    assert result.stderr.startswith(f"Error: cannot write the database at {database_url}: ")
    assert "read-only transaction" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    with pytest.raises(ConfigError, match="read-only transaction"):
        start(tmp_path, read_only)

    role = f"kg_reader_{uuid.uuid4().hex[:8]}"
    admin = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as connection:
        connection.execute(text(f"CREATE ROLE {role} LOGIN"))
        connection.execute(text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
    try:
        as_reader = make_url(database_url).set(username=role).render_as_string()
        with pytest.raises(ConfigError, match="permission denied for table alembic_version"):
            start(tmp_path, as_reader)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP OWNED BY {role}"))
            connection.execute(text(f"DROP ROLE {role}"))
        admin.dispose()
    start(tmp_path, database_url)  # writable, it starts
