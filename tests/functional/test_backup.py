"""`keygate backup`: a copy of the instance, taken while Keygate runs, that starts again."""

from __future__ import annotations

import contextlib
import dataclasses
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import click
import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from connector import create_app
from connector.backup import COPY_MARK, back_up
from connector.config import MASTER_KEY_FILE, SECRET_KEY_FILE
from tests.conftest import MASTER_KEY, SECRET_KEY
from tests.factories import WebhookSender, line_item, wc_order
from tests.licensing_helpers import call


def _sold(app: Flask, shop: WebhookSender) -> str:
    """An order with a key and a file in the embedded storage; the instance keeps its keys
    in files, as `keygate init` writes them."""
    instance = app.extensions["keygate.settings"].instance_dir
    (instance / MASTER_KEY_FILE).write_text(MASTER_KEY + "\n")
    (instance / SECRET_KEY_FILE).write_text(SECRET_KEY + "\n")
    (instance / "files" / "books").mkdir(parents=True)
    (instance / "files" / "books" / "guide.pdf").write_bytes(b"%PDF-1.4 guide")
    shop.configure(501, files=[{"object_key": "books/guide.pdf", "filename": "guide.pdf"}])
    assert shop.deliver(wc_order(9601, "processing", [line_item(501)])).status_code == 200
    key: str = shop.order(9601)["licenses"][0]["key"]
    return key


def test_a_backup_taken_while_orders_arrive_starts_again_with_every_key(
    app: Flask, shop: WebhookSender, tmp_path: Path, database_url: str
) -> None:
    """SQLite: the copy is one consistent snapshot though orders keep arriving while it is
    taken; an app started on the copy alone (its keys from the copied files) answers the
    key VALID and serves the file. PostgreSQL: the rest is copied and pg_dump named."""
    key = _sold(app, shop)
    arriving = threading.Event()

    def orders_keep_arriving() -> None:
        for number in range(9602, 9612):
            shop.deliver(wc_order(number, "processing", [line_item(501)]))
        arriving.set()

    writer = threading.Thread(target=orders_keep_arriving)
    writer.start()
    done = back_up(app.extensions["keygate.settings"], tmp_path / "backup")
    writer.join()
    assert arriving.is_set()
    copy = tmp_path / "backup"
    assert (copy / "files" / "books" / "guide.pdf").read_bytes() == b"%PDF-1.4 guide"
    assert (copy / MASTER_KEY_FILE).read_text().strip() == MASTER_KEY
    assert copy.stat().st_mode & 0o077 == 0  # buyers' names: this user's only
    if not database_url.startswith("sqlite"):
        assert not (copy / "keygate.db").exists()
        assert any("pg_dump" in what for what in done.keep_beside)
        return
    assert done.keep_beside == []
    with sqlite3.connect(copy / "keygate.db") as check:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    restored = create_app(
        {
            "instance_dir": copy,
            "database_url": f"sqlite:///{copy / 'keygate.db'}",
            "worker": "off",
            "mail_echo": False,
        }
    )
    try:
        client = restored.test_client()
        assert call(client, "validate", {"key": key}).get_json()["code"] == "VALID"
        # Started without `keygate init`, the copy's ids move on all the same (once).
        with sqlite3.connect(copy / "keygate.db") as check:
            assert check.execute("PRAGMA user_version").fetchone() == (0,)
            (orders,) = check.execute("SELECT seq FROM sqlite_sequence WHERE name = 'orders'")
            assert orders[0] > 1_000_000_000
    finally:
        restored.extensions["keygate.db"].engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_backup_never_writes_into_a_folder_that_holds_something(
    app: Flask, tmp_path: Path
) -> None:
    """An earlier backup (or anything else) in the folder is never overwritten or mixed in;
    nor is a folder inside the instance, which the copy of its files would copy again."""
    taken = tmp_path / "earlier"
    taken.mkdir()
    (taken / "keygate.db").write_bytes(b"an earlier backup")
    settings = app.extensions["keygate.settings"]
    with pytest.raises(click.ClickException, match="not an empty folder"):
        back_up(settings, taken)
    assert (taken / "keygate.db").read_bytes() == b"an earlier backup"
    with pytest.raises(click.ClickException, match="outside the instance folder"):
        back_up(settings, settings.instance_dir / "files" / "backup")


def test_keygate_backup_copies_a_fresh_instance(tmp_path: Path) -> None:
    """The command on an instance `keygate init` made: a line naming what was copied."""
    from tests.functional.test_cli import keygate

    assert keygate(tmp_path, "init").returncode == 0
    result = keygate(tmp_path, "backup", str(tmp_path / "copy"))
    assert result.returncode == 0, result.stderr
    assert "keygate.db (the database), master.key (the master key)" in result.stdout
    assert "not in the folder" not in result.stdout
    names = sorted(path.name for path in (tmp_path / "copy").iterdir())
    assert names == ["files", "keygate.db", "master.key", "secret.key"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_file_that_cannot_be_copied_is_said_and_leaves_no_half_backup(
    app: Flask, tmp_path: Path
) -> None:
    """The owner moved a big file to another disk and left a link; the disk is gone. The
    backup stops with a line naming the file (not a traceback) and leaves no half-made
    folder, which a second try would refuse; with the link gone it is taken. A link to a
    file that is there is copied as the file."""
    settings = app.extensions["keygate.settings"]
    (settings.storage_dir / "books").mkdir(parents=True)
    elsewhere = tmp_path / "other-disk"
    elsewhere.mkdir()
    (elsewhere / "manual.pdf").write_bytes(b"%PDF-1.4 manual")
    (settings.storage_dir / "books" / "manual.pdf").symlink_to(elsewhere / "manual.pdf")
    gone = settings.storage_dir / "books" / "video.mp4"
    gone.symlink_to(tmp_path / "unmounted" / "video.mp4")
    with pytest.raises(click.ClickException, match=r"nothing backed up: cannot copy .*video\.mp4"):
        back_up(settings, tmp_path / "backup")
    assert not (tmp_path / "backup").exists()
    gone.unlink()
    back_up(settings, tmp_path / "backup")
    copied = tmp_path / "backup" / "files" / "books" / "manual.pdf"
    assert not copied.is_symlink() and copied.read_bytes() == b"%PDF-1.4 manual"


def test_a_restore_whose_settings_name_another_database_is_refused_not_started_empty(
    tmp_path: Path,
) -> None:
    """keygate.toml names the database elsewhere (`database_url`), the disk holding it dies,
    and the owner restores as the README says (the backup's contents into the instance
    folder, then `keygate init`): init used to make a new empty database there and a new
    admin, leaving the restored keygate.db unused, while every webhook found no store. It
    now stops with a line naming both places; with the copy put where the settings say, the
    instance comes back with its stores and admin."""
    from tests.functional.test_cli import keygate

    instance, data = tmp_path / "instance", tmp_path / "data"
    instance.mkdir()
    data.mkdir()
    (instance / "keygate.toml").write_text(f'database_url = "sqlite:///{data / "keygate.db"}"\n')
    assert keygate(tmp_path, "init").returncode == 0
    added = keygate(tmp_path, "store", "add", "--name", "Shop", "--url", "https://s.example")
    assert added.returncode == 0, added.stderr
    assert keygate(tmp_path, "backup", str(tmp_path / "copy")).returncode == 0

    (data / "keygate.db").unlink()  # the disk is replaced
    for path in instance.iterdir():
        if path.is_file():
            path.unlink()
    for path in (tmp_path / "copy").iterdir():
        path.rename(instance / path.name)
    refused = keygate(tmp_path, "init")
    assert refused.returncode == 1, refused.stdout
    assert "created admin user" not in refused.stdout
    assert "Traceback" not in refused.stderr, refused.stderr[-600:]
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert str(instance / "keygate.db") in refused.stderr
    assert str(data / "keygate.db") in refused.stderr

    (instance / "keygate.db").rename(data / "keygate.db")
    restored = keygate(tmp_path, "init")
    assert restored.returncode == 0, restored.stderr
    assert "admin user exists" in restored.stdout
    assert "https://s.example" in keygate(tmp_path, "store", "list").stdout


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_restored_copy_beside_an_empty_postgresql_database_is_named_without_secrets(
    tmp_path: Path, database_url: str
) -> None:
    """The instance folder holds the SQLite database of a backup, the settings name an
    empty PostgreSQL database: init refuses to start anew there, naming it without its
    password, in the URL or in its query, and writes nothing to it."""
    from tests.functional.test_cli import keygate

    assert keygate(tmp_path, "init").returncode == 0
    given = database_url.replace("postgresql://postgres@", "postgresql://postgres:pw-secret@")
    refused = keygate(tmp_path, "init", database_url=f"{given}?password=q-secret")
    assert refused.returncode == 1, refused.stdout
    assert "holds a Keygate database" in refused.stderr, refused.stderr[-600:]
    assert "***@" in refused.stderr
    assert "pw-secret" not in refused.stderr and "q-secret" not in refused.stderr
    engine = create_engine(database_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM key_checks")).scalar() == 0
    engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_links_mailed_after_a_backup_never_open_a_later_buyers_order_once_it_is_restored(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """Links name their row (order, download link) and are signed with the secret key, which
    a restore brings back. A buyer who was mailed links after the backup was taken still has
    them after the restore; the orders the restored instance issues next must not take those
    rows' ids, or that buyer's portal link shows another buyer's keys, name and address and
    their download link serves another buyer's stamped copy. Restored as the README says
    (the copy's contents into an instance folder, then `keygate init`)."""
    from tests.functional.test_cli import keygate

    _sold(app, shop)
    back_up(app.extensions["keygate.settings"], tmp_path / "copy")
    late = wc_order(9602, "processing", [line_item(501)], email="bea@example.org")
    assert shop.deliver(late).status_code == 200
    mailed = shop.order(9602)  # mailed to Bea; then the disk dies
    portal = urlsplit(mailed["portal_url"]).path
    download = urlsplit(mailed["downloads"][0]["link"]).path
    assert shop.client.get(portal).status_code == 200

    restored_instance = tmp_path / "restored" / "instance"
    restored_instance.mkdir(parents=True)
    for path in (tmp_path / "copy").iterdir():
        path.rename(restored_instance / path.name)
    init = keygate(tmp_path / "restored", "init")
    assert init.returncode == 0, init.stderr
    restored = create_app({"instance_dir": restored_instance, "worker": "off", "mail_echo": False})
    try:
        again = WebhookSender(restored.test_client(), shop.store)
        later = wc_order(9700, "processing", [line_item(501)], email="carl@example.org")
        assert again.deliver(later).status_code == 200
        assert again.order(9700)["order"]["email"] == "carl@example.org"
        carls_key = again.order(9700)["licenses"][0]["key"].encode()
        page = again.client.get(portal)
        assert carls_key not in page.get_data()
        assert page.status_code == 404
        assert again.client.get(download).status_code == 404
    finally:
        restored.extensions["keygate.db"].engine.dispose()


def test_init_restored_moves_every_id_past_those_given_before(
    tmp_path: Path, database_url: str
) -> None:
    """A PostgreSQL dump restored (or a SQLite file copied back by hand) carries no mark:
    `keygate init --restored` moves the ids ahead, so rows made after the backup (lost, but
    their links mailed) never have their ids given to other buyers' rows; without it, ids
    follow on."""
    from connector.backup import IDS_AHEAD, PG_IDS_AHEAD
    from connector.db import make_engine
    from tests.functional.test_cli import keygate

    assert keygate(tmp_path, "init", database_url=database_url).returncode == 0
    engine = make_engine(database_url)

    def add_admin(name: str) -> int:
        """An admin (a session names its admin by id, as links name orders)."""
        added = keygate(tmp_path, "admin", "add", "--username", name, database_url=database_url)
        assert added.returncode == 0, added.stderr
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT max(id) FROM admin_users")).scalar_one())

    try:
        first = add_admin("ana")
        assert add_admin("bea") == first + 1
        again = keygate(tmp_path, "init", database_url=database_url)
        assert again.returncode == 0 and "restored" not in again.stdout
        restored = keygate(tmp_path, "init", "--restored", database_url=database_url)
        assert restored.returncode == 0, restored.stderr
        assert "restored: ids of new orders" in restored.stdout
        ahead = IDS_AHEAD if database_url.startswith("sqlite") else PG_IDS_AHEAD
        assert add_admin("carl") >= first + 1 + ahead
    finally:
        engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_folder_that_cannot_be_made_this_users_only_is_said_not_a_traceback(
    app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty folder made beforehand by another user, or on a disk that keeps no modes
    (a FAT USB stick), refuses the change of its mode: the backup stops with a line naming
    the folder, not a PermissionError traceback, and writes nothing into it."""
    folder = tmp_path / "usb-stick"
    folder.mkdir()
    real_chmod = Path.chmod

    def refusing_chmod(path: Path, mode: int) -> None:
        if path == folder:
            raise PermissionError(1, "Operation not permitted", str(path))
        real_chmod(path, mode)

    monkeypatch.setattr(Path, "chmod", refusing_chmod)
    with pytest.raises(click.ClickException, match=r"usb-stick .*this user only .*not permitted"):
        back_up(app.extensions["keygate.settings"], folder)
    assert list(folder.iterdir()) == []


def _write_and_die(database: Path) -> None:
    """A Keygate process that wrote to ``database`` and was killed before closing it (a
    crash, `kill -9`, a stop that timed out): its write-ahead log stays beside the file."""
    dying = (
        "import os, sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1])\n"
        "db.execute('PRAGMA wal_autocheckpoint = 0')\n"
        "db.execute(\"UPDATE admin_users SET username = 'from-the-log'\")\n"
        "db.commit()\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", dying, str(database)], check=True, timeout=60)
    assert Path(f"{database}-wal").stat().st_size > 0


def test_a_backup_put_over_a_database_that_left_its_log_is_refused_not_mixed(
    tmp_path: Path,
) -> None:
    """The owner puts a backup over an instance folder whose server was killed mid-write:
    its keygate.db-wal stays, and SQLite replays a log into whatever file lies beside it,
    so the restored copy would silently become the database it replaced (or a corrupt mix
    of both). `keygate init` names the stray log before anything opens the copy; with it
    moved away the copy starts as it was taken; the copy's own log after that (a later
    kill) is its own and refused no more."""
    from tests.functional.test_cli import keygate

    assert keygate(tmp_path, "init", "--admin-user", "ana", instance="old").returncode == 0
    assert keygate(tmp_path, "backup", str(tmp_path / "copy"), instance="old").returncode == 0
    instance = tmp_path / "instance"
    assert keygate(tmp_path, "init", "--admin-user", "bea").returncode == 0
    _write_and_die(instance / "keygate.db")
    for path in (tmp_path / "copy").iterdir():  # the copy's contents over the folder
        if path.is_dir():
            shutil.copytree(path, instance / path.name, dirs_exist_ok=True)
        else:
            shutil.copy2(path, instance / path.name)

    refused = keygate(tmp_path, "init")
    assert refused.returncode == 1, refused.stdout
    assert "Traceback" not in refused.stderr, refused.stderr[-600:]
    assert f"Move {instance / 'keygate.db-wal'} and {instance / 'keygate.db-shm'}" in (
        refused.stderr
    )
    with (instance / "keygate.db").open("rb") as copy:
        assert int.from_bytes(copy.read(64)[60:64], "big") == COPY_MARK  # never opened

    for name in ("keygate.db-wal", "keygate.db-shm"):
        (instance / name).rename(tmp_path / name)
    restored = keygate(tmp_path, "init")
    assert restored.returncode == 0, restored.stderr
    assert "a restored backup" in restored.stdout
    with sqlite3.connect(instance / "keygate.db") as check:
        assert check.execute("SELECT username FROM admin_users").fetchall() == [("ana",)]
    _write_and_die(instance / "keygate.db")
    assert keygate(tmp_path, "init").returncode == 0


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_pg_dump_line_writes_the_dump_into_the_backup_folder_without_the_password(
    app: Flask, tmp_path: Path, database_url: str
) -> None:
    """On PostgreSQL the backup names the pg_dump command to run: for the configured
    database (not a guessed name), writing into the backup's folder, which is this user's
    only (a dump redirected elsewhere is written with the shell's umask, often readable by
    all, and holds every buyer's name), and never showing the password, in the URL or its
    query. Run as shown, it makes a dump pg_restore reads."""
    settings = app.extensions["keygate.settings"]
    given = database_url.replace("postgresql://postgres@", "postgresql://postgres:pw-secret@")
    with_password = dataclasses.replace(settings, database_url=f"{given}?password=q-secret")
    done = back_up(with_password, tmp_path / "copy")
    (line,) = [what for what in done.keep_beside if "pg_dump" in what]
    assert "pw-secret" not in line and "q-secret" not in line
    command = line.split("`")[1]
    assert command.startswith(f"pg_dump -Fc -f {tmp_path / 'copy' / 'keygate.dump'} ")
    assert make_url(database_url).database in command
    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not installed")
    subprocess.run(shlex.split(command), check=True, timeout=120, capture_output=True)
    listed = subprocess.run(
        ["pg_restore", "--list", str(tmp_path / "copy" / "keygate.dump")],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "TABLE public signing_keys" in listed.stdout


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_stamped_copy_deleted_while_the_backup_runs_is_left_out_not_a_failed_backup(
    app: Flask, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daily purge (or an erasure) deletes a buyer's stamped copy while the backup
    copies the files: the backup is taken without it (a click stamps it again), not
    thrown away whole with "nothing backed up" for that night."""
    storage = app.extensions["keygate.settings"].storage_dir
    (storage / "books").mkdir(parents=True)
    (storage / "books" / "guide.pdf").write_bytes(b"%PDF-1.4 guide")
    (storage / "watermarked" / "7").mkdir(parents=True)
    stamped = storage / "watermarked" / "7" / "guide.pdf"
    stamped.write_bytes(b"%PDF-1.4 stamped for Ana")
    real_copyfile = shutil.copyfile

    def purged_just_then(source: str, target: str, **kwargs: bool) -> str:
        if Path(source) == stamped:
            stamped.unlink()
        return real_copyfile(source, target, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", purged_just_then)
    back_up(app.extensions["keygate.settings"], tmp_path / "copy")
    assert (tmp_path / "copy" / "files" / "books" / "guide.pdf").read_bytes() == b"%PDF-1.4 guide"
    assert not (tmp_path / "copy" / "files" / "watermarked" / "7" / "guide.pdf").exists()
    assert (tmp_path / "copy" / "keygate.db").is_file()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_keys_given_in_the_environment_beside_an_older_key_file_are_named_to_keep(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """The owner moved the keys to the environment (KEYGATE_MASTER_KEYS, KEYGATE_SECRET_KEY,
    which win over the files) and left the old files in the instance folder. The backup
    must not take those files for the keys in use and say nothing: restored with them
    alone, the database could never be read. It names the variables to keep, and leaves
    the stray files out."""
    from cryptography.fernet import Fernet

    _sold(app, shop)  # the files hold MASTER_KEY and SECRET_KEY, the keys in use
    settings = app.extensions["keygate.settings"]
    (settings.instance_dir / MASTER_KEY_FILE).write_text(Fernet.generate_key().decode() + "\n")
    (settings.instance_dir / SECRET_KEY_FILE).write_text("an-older-secret-key-" * 3 + "\n")
    done = back_up(settings, tmp_path / "copy")
    assert not (tmp_path / "copy" / MASTER_KEY_FILE).exists()
    assert not (tmp_path / "copy" / SECRET_KEY_FILE).exists()
    assert done.keep_beside == [
        "KEYGATE_MASTER_KEY(S) from the environment (master.key in the instance folder is"
        " not it: left out)",
        "KEYGATE_SECRET_KEY from the environment (secret.key in the instance folder is not"
        " it: left out)",
    ]
    assert not any(what.startswith(("master.key", "secret.key")) for what in done.copied)


def test_a_copy_cut_short_is_refused_in_a_line_by_every_command_and_the_server(
    tmp_path: Path,
) -> None:
    """A backup's keygate.db damaged on its way (a transfer that died halfway, a full disk,
    a bad USB stick) or any file that is not a database put in its place: `keygate init`,
    the other commands and the server (gunicorn loads the app) said so with a
    DatabaseError traceback. Each now says in a line that the database is damaged and to put
    back an intact copy; nothing is written to it."""
    from connector.config import ConfigError
    from tests.functional.test_cli import cli_env, keygate

    assert keygate(tmp_path, "init", instance="old").returncode == 0
    assert keygate(tmp_path, "backup", str(tmp_path / "instance"), instance="old").returncode == 0
    database = tmp_path / "instance" / "keygate.db"
    whole = database.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"not a database, a saved web page" * 100):
        database.write_bytes(damaged)
        for command in (("init",), ("admin", "list")):
            refused = keygate(tmp_path, *command)
            assert refused.returncode == 1, refused.stdout
            assert "Traceback" not in refused.stderr, refused.stderr[-600:]
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            assert f"the database at {database} is damaged" in refused.stderr
            assert "intact copy" in refused.stderr
        assert database.read_bytes() == damaged
        environment = cli_env(tmp_path / "instance", WORKER="off")
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environment.items():
                patch.setenv(name, value)
            with pytest.raises(ConfigError, match="is damaged"):
                create_app()


def _readme_pg_restore(dump: Path, database: str) -> list[str]:
    """The README's pg_restore line, for ``dump`` into the database ``database`` (a URL)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (line,) = set(re.findall(r"`(pg_restore [^`]*)`", readme))
    named = {"keygate_restored": database, "instance/keygate.dump": str(dump)}
    words = [named.get(word, word) for word in shlex.split(line)]
    assert database in words and str(dump) in words, line
    return words


@contextlib.contextmanager
def _new_postgresql_database(database_url: str, name: str) -> Iterator[str]:
    """A new, empty database beside ``database_url``'s (`createdb`), dropped after."""
    from tests.conftest import PG_ADMIN_URL

    admin = create_engine(
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield str(make_url(database_url).set(database=name).render_as_string(False))
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_damaged_dump_restored_as_the_readme_says_restores_nothing_not_half(
    app: Flask, shop: WebhookSender, tmp_path: Path, database_url: str
) -> None:
    """A dump damaged on its way (here one table's definition unreadable) restored with the
    README's pg_restore line used to restore every other table, say "errors ignored" and
    exit, leaving a database `keygate init --restored` called up to date: every license call
    then failed on the table left out (the signing keys). The README's line now restores all
    or nothing. The intact dump, restored the same way, gives an instance that answers the
    key VALID, signed with a key products pinned before."""
    from connector.client import verify_response
    from tests.functional.test_cli import keygate
    from tests.licensing_helpers import public_keys

    if shutil.which("pg_restore") is None:
        pytest.skip("pg_restore is not installed")
    key = _sold(app, shop)
    assert call(shop.client, "validate", {"key": key}).get_json()["code"] == "VALID"
    pinned = public_keys(shop.client)
    done = back_up(app.extensions["keygate.settings"], tmp_path / "instance-copy")
    (line,) = [what for what in done.keep_beside if "pg_dump" in what]
    subprocess.run(shlex.split(line.split("`")[1]), check=True, timeout=120)
    dump = tmp_path / "instance-copy" / "keygate.dump"
    damaged = tmp_path / "damaged.dump"
    whole = dump.read_bytes()
    assert whole.count(b"CREATE TABLE public.signing_keys ") == 1
    damaged.write_bytes(
        whole.replace(b"CREATE TABLE public.signing", b"CREATE TABLE public.s\xffgning")
    )

    unique = uuid.uuid4().hex[:8]
    with _new_postgresql_database(database_url, f"keygate_damaged_{unique}") as target:
        restore = _readme_pg_restore(damaged, target)
        refused = subprocess.run(restore, capture_output=True, timeout=120)
        assert refused.returncode != 0
        engine = create_engine(target)
        with engine.connect() as connection:
            tables = connection.execute(
                text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            ).scalar()
        engine.dispose()
        assert tables == 0, "a damaged dump left a half-restored database"

    with _new_postgresql_database(database_url, f"keygate_restored_{unique}") as target:
        restore = _readme_pg_restore(dump, target)
        restored_run = subprocess.run(restore, capture_output=True, timeout=120)
        assert restored_run.returncode == 0, restored_run.stderr
        init = keygate(
            tmp_path, "init", "--restored", database_url=target, instance="instance-copy"
        )
        assert init.returncode == 0, init.stderr
        restored = create_app(
            {
                "instance_dir": tmp_path / "instance-copy",
                "database_url": target,
                "worker": "off",
                "mail_echo": False,
            }
        )
        try:
            client = restored.test_client()
            path = "/api/v1/licenses/validate"
            answer = client.post(path, json={"key": key})
            assert answer.get_json()["code"] == "VALID"
            verify_response(
                method="POST",
                url="http://localhost" + path,
                headers=dict(answer.headers.items()),
                body=answer.get_data(),
                public_keys=pinned,
            )
        finally:
            restored.extensions["keygate.db"].engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_database_with_damaged_pages_is_said_at_backup_not_at_restore(
    app: Flask, shop: WebhookSender, tmp_path: Path, database_url: str
) -> None:
    """SQLite's online backup copies pages as they are: a database whose pages are damaged
    (a disk going bad) while the server still answers used to give a backup that said
    "backed up", found damaged only on the day it was restored, when every earlier backup
    may have been deleted. The backup now checks its copy, names the damage and leaves no
    folder behind."""
    _sold(app, shop)
    app.extensions["keygate.db"].engine.dispose()
    database = Path(make_url(database_url).database or "")
    with sqlite3.connect(database) as live:
        live.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = live.execute("PRAGMA page_size").fetchone()[0]
        (root,) = live.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'orders'"
        ).fetchone()
    with database.open("r+b") as file:  # the table's page no longer a b-tree page
        file.seek((root - 1) * page_size)
        file.write(b"\x00" * 16)
    with pytest.raises(click.ClickException, match=f"{database} is damaged") as refused:
        back_up(app.extensions["keygate.settings"], tmp_path / "copy")
    assert "keep the earlier backups" in refused.value.message
    assert not (tmp_path / "copy").exists()


def test_init_refuses_a_database_missing_tables_or_indexes_of_its_migration(
    tmp_path: Path, database_url: str
) -> None:
    """A restore that stopped halfway (a damaged dump restored without
    `--single-transaction`, which restores every table but the ones it cannot read and only
    warns) leaves a database at the newest migration without some of its tables or
    indexes: `keygate init` called it up to date, and every license call then failed on the
    signing keys' table left out (a unique index left out lets two rows take one key). It
    now names what is missing and says to restore again; a whole database passes."""

    with contextlib.ExitStack() as stack:
        if database_url.startswith("sqlite"):
            restored = f"sqlite:///{tmp_path / 'restored.db'}"
        else:  # not the tests' own database: its tables are dropped
            name = f"keygate_half_{uuid.uuid4().hex[:8]}"
            restored = stack.enter_context(_new_postgresql_database(database_url, name))
        _init_then_lose_a_table_and_an_index(tmp_path, restored)


def _init_then_lose_a_table_and_an_index(tmp_path: Path, database_url: str) -> None:
    from tests.functional.test_cli import keygate

    assert keygate(tmp_path, "init", database_url=database_url).returncode == 0
    assert keygate(tmp_path, "init", database_url=database_url).returncode == 0  # a whole one
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE signing_keys"))
            connection.execute(text("DROP INDEX ix_licenses_order_id"))
    finally:
        engine.dispose()
    refused = keygate(tmp_path, "init", database_url=database_url)
    assert refused.returncode == 1, refused.stdout
    assert "Traceback" not in refused.stderr, refused.stderr[-600:]
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "table signing_keys" in refused.stderr
    assert "index ix_licenses_order_id" in refused.stderr
    assert "restore" in refused.stderr


def test_a_backup_restored_as_the_readme_says_never_gives_away_ids_of_links_mailed_after_it(
    tmp_path: Path, database_url: str
) -> None:
    """Restored as the README says (the backup's folder as the instance folder, on
    PostgreSQL its dump restored into a new database, then `keygate init`), rows made after
    the backup (lost, their links mailed) never have their ids given to new rows. On
    PostgreSQL the dump carries no mark, and init moved nothing unless the owner remembered
    `--restored`: the folder is marked instead, init moves the ids and drops the mark, and
    until then the server, the worker and the other commands refuse in a line. The mark is
    never in the instance in use; SQLite's copy marks itself and its folder holds none."""
    from connector.backup import IDS_AHEAD, PG_IDS_AHEAD, RESTORE_MARK_FILE
    from connector.config import ConfigError
    from connector.db import make_engine
    from tests.functional.test_cli import keygate

    on_sqlite = database_url.startswith("sqlite")
    live_url = None if on_sqlite else database_url  # SQLite: the instance folder's own

    def add_admin(url: str | None, name: str) -> int:
        """An admin's id (a session names its admin by id, as links name orders)."""
        added = keygate(tmp_path, "admin", "add", "--username", name, database_url=url)
        assert added.returncode == 0, added.stderr
        engine = make_engine(url or f"sqlite:///{tmp_path / 'instance' / 'keygate.db'}")
        with engine.connect() as connection:
            highest = connection.execute(text("SELECT max(id) FROM admin_users")).scalar_one()
        engine.dispose()
        return int(highest)

    assert keygate(tmp_path, "init", database_url=live_url).returncode == 0
    ana = add_admin(live_url, "ana")
    backed = keygate(tmp_path, "backup", str(tmp_path / "copy"), database_url=live_url)
    assert backed.returncode == 0, backed.stderr
    assert not (tmp_path / "instance" / RESTORE_MARK_FILE).exists()
    mark = tmp_path / "copy" / RESTORE_MARK_FILE
    assert mark.exists() != on_sqlite
    if not on_sqlite:
        (line,) = [row for row in backed.stdout.splitlines() if "pg_dump" in row]
        subprocess.run(shlex.split(line.split("`")[1]), check=True, timeout=120)
    bea = add_admin(live_url, "bea")  # after the backup: lost with the disk, link mailed

    (tmp_path / "instance").rename(tmp_path / "aside")
    shutil.copytree(tmp_path / "copy", tmp_path / "instance")
    with contextlib.ExitStack() as stack:
        target = None
        if not on_sqlite:
            name = f"keygate_restored_{uuid.uuid4().hex[:8]}"
            target = stack.enter_context(_new_postgresql_database(database_url, name))
            # The dump not restored yet: init makes nothing in the empty database.
            refused = keygate(tmp_path, "init", database_url=target)
            assert refused.returncode == 1, refused.stdout
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            assert f"{RESTORE_MARK_FILE} in it" in refused.stderr
            assert "holds nothing" in refused.stderr
            empty = create_engine(target)
            with empty.connect() as connection:
                tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                assert connection.execute(text(tables)).scalar() == 0
            empty.dispose()
            assert (tmp_path / "instance" / RESTORE_MARK_FILE).exists()
            dump = tmp_path / "instance" / "keygate.dump"
            subprocess.run(_readme_pg_restore(dump, target), check=True, timeout=120)
            # Restored, not settled: nothing but init starts (gunicorn loads the app).
            for command in (("admin", "list"), ("worker",)):
                refused = keygate(tmp_path, *command, database_url=target)
                assert refused.returncode == 1, refused.stdout
                assert "Traceback" not in refused.stderr, refused.stderr[-600:]
                assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
                assert f"{RESTORE_MARK_FILE} in it): run `keygate init`" in refused.stderr
            with pytest.raises(ConfigError, match="run `keygate init` before starting"):
                create_app({"instance_dir": tmp_path / "instance", "database_url": target})
        init = keygate(tmp_path, "init", database_url=target)
        assert init.returncode == 0, init.stderr
        ahead = IDS_AHEAD if on_sqlite else PG_IDS_AHEAD
        carl = add_admin(target, "carl")
        assert carl > bea
        assert carl >= ana + 1 + ahead
        assert "restored" in init.stdout
        assert not (tmp_path / "instance" / RESTORE_MARK_FILE).exists()
        listed = keygate(tmp_path, "admin", "list", database_url=target)
        assert listed.returncode == 0, listed.stderr
        assert "carl" in listed.stdout and "bea" not in listed.stdout
