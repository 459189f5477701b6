"""``keygate backup DEST``: a copy of the instance another Keygate can start from.

The embedded database is copied with SQLite's online backup (one consistent snapshot,
taken while the server keeps answering: copying the file of a database in WAL mode could
give a torn copy). The key files, ``keygate.toml`` and the embedded file storage go with it:
a database without its master and secret keys cannot be read. Keys given in the environment
are never written to disk here; the command says to keep them with the copy. PostgreSQL is
backed up with its own tools (``pg_dump``): the command copies the rest and says so, and
marks the folder (:data:`RESTORE_MARK_FILE`): its dump carries no mark of its own.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import click
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL, make_url

from connector.config import CONFIG_FILE, MASTER_KEY_FILE, SECRET_KEY_FILE, Settings
from connector.db import Base


@dataclass
class Backup:
    """What a backup holds, and what the operator must keep beside it."""

    copied: list[str] = field(default_factory=list)
    keep_beside: list[str] = field(default_factory=list)


def back_up(settings: Settings, destination: Path) -> Backup:
    """Copy the instance of ``settings`` into ``destination`` (made, readable by this user
    only; it must not hold anything yet, nor lie inside the instance or its file storage).
    Files the storage links to are copied as files. A copy that fails leaves no folder
    behind (the next try would refuse it as not empty).

    Raises:
        click.ClickException: the destination is inside the instance, or exists and is not
            empty, or cannot be made this user's only, or a copy failed (a link to a file
            that is gone, a full disk).
    """
    destination = destination.resolve()
    inside = (settings.instance_dir.resolve(), settings.storage_dir.resolve())
    if any(destination.is_relative_to(folder) for folder in inside):
        raise click.ClickException(f"{destination}: choose a folder outside the instance folder")
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise click.ClickException(f"{destination} is not an empty folder: choose a new one")
    try:
        destination.mkdir(mode=0o700, parents=True, exist_ok=True)
        # An empty folder made beforehand (mkdir's mode applies to new folders only) is this
        # user's alone too: the backup's names and files are nobody else's business.
        destination.chmod(0o700)
    except OSError as exc:  # another user's folder, a disk without modes (FAT), read-only
        raise click.ClickException(
            f"cannot make {destination} a folder readable by this user only"
            f" ({exc.strerror or type(exc).__name__}): choose a folder of this user's own"
        ) from None
    try:
        return _copy_instance(settings, destination)
    except (OSError, shutil.Error) as exc:
        shutil.rmtree(destination, ignore_errors=True)
        raise click.ClickException(f"nothing backed up: {_why(exc)}") from None
    except click.ClickException:
        shutil.rmtree(destination, ignore_errors=True)
        raise


def _why(exc: OSError | shutil.Error) -> str:
    """What went wrong in a line: copytree gathers (source, target, why) for each file."""
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        failed = exc.args[0]
        source, _target, reason = failed[0]
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return f"cannot copy {source}: {reason}{more}"
    return f"cannot copy {exc.filename or 'a file'}: {exc.strerror or exc}"


def _copy_instance(settings: Settings, destination: Path) -> Backup:
    done = Backup()
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        _copy_sqlite(Path(url.database), destination / "keygate.db")
        done.copied.append("keygate.db (the database)")
    else:
        # Into the folder, which is this user's only: a dump made elsewhere is written with
        # the shell's umask (often readable by all), and it holds every buyer's name. The
        # URL is the configured one without its password (pg_dump asks, or reads ~/.pgpass),
        # in its user part or in its query.
        query = {name: value for name, value in url.query.items() if name != "password"}
        plain = URL.create(
            "postgresql", url.username, None, url.host, url.port, url.database, query
        )
        dump = shlex.quote(str(destination / "keygate.dump"))
        where = shlex.quote(plain.render_as_string(hide_password=False))
        (destination / RESTORE_MARK_FILE).write_text(RESTORE_MARK_TEXT)
        done.keep_beside.append(
            f"the PostgreSQL database: dump it into the folder now, with `pg_dump -Fc -f {dump}"
            f" {where}`"
        )
    instance = settings.instance_dir
    # Keys given in the environment win over the files: a key file beside them (an older
    # key, one left from before the move to the environment) is not the key in use, and a
    # backup holding only it could never be read.
    for name, what, in_use, variable in (
        (MASTER_KEY_FILE, "the master key", list(settings.master_keys), "KEYGATE_MASTER_KEY(S)"),
        (SECRET_KEY_FILE, "the secret key", [settings.secret_key], "KEYGATE_SECRET_KEY"),
    ):
        if _key_lines(instance / name)[: len(in_use)] == in_use:
            shutil.copy2(instance / name, destination / name)
            done.copied.append(f"{name} ({what})")
        else:
            stray = f" ({name} in the instance folder is not it: left out)"
            done.keep_beside.append(
                f"{variable} from the environment" + (stray if (instance / name).exists() else "")
            )
    if (instance / CONFIG_FILE).is_file():
        shutil.copy2(instance / CONFIG_FILE, destination / CONFIG_FILE)
        done.copied.append(f"{CONFIG_FILE} (the settings file)")
    if settings.storage_dir.is_dir():
        shutil.copytree(settings.storage_dir, destination / "files", copy_function=_copy_file)
        done.copied.append("files/ (the embedded file storage)")
    return done


def _key_lines(path: Path) -> list[str]:
    """The keys a key file holds, one a line as Keygate reads them; none when it cannot be
    read (it is then not the file the keys in use came from)."""
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        return []


def _copy_file(source: str, target: str) -> None:
    """Copy a file of the storage, unless it went while the backup ran: the purge or an
    erasure deleting a buyer's stamped copy (made again on the next click), a file the
    owner removed. A link to a file that is not there is still an error (a disk not
    mounted: the file is not gone, only out of reach)."""
    try:
        shutil.copy2(source, target)
    except FileNotFoundError:
        if os.path.lexists(source):
            raise


def _copy_sqlite(source: Path, target: Path) -> None:
    if not source.is_file():
        raise click.ClickException(f"there is no database at {source}: run `keygate init` first")
    # Read-only, so the copy never creates a database or changes the one it reads.
    reading = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True)
    writing = sqlite3.connect(target)
    try:
        with writing:
            reading.backup(writing)  # every page in one step: one consistent snapshot
        # Pages are copied as they are: damaged ones (a disk going bad) would be found only
        # on the day the copy is restored, once the earlier backups may be gone.
        damage = writing.execute("PRAGMA quick_check(1)").fetchone()[0]
        if damage != "ok":
            found = " ".join(damage.replace("*** in database main ***", "").split())
            raise click.ClickException(
                f"the database {source} is damaged ({found}): a copy would be too, nothing "
                "backed up; keep the earlier backups, the newest one may be what to restore"
            )
        writing.execute(f"PRAGMA user_version = {COPY_MARK}")  # see settle_restored_copy
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot copy the database {source}: {exc}") from None
    finally:
        writing.close()
        reading.close()


# A database copied by `keygate backup` says so (SQLite's user_version, which Keygate does
# not use otherwise) until its first start.
COPY_MARK = 0x4B474250
# How far ids move on when a copy first starts: more rows than an instance makes between a
# backup and its restore.
IDS_AHEAD = 1_000_000_000


# A PostgreSQL dump comes back with its sequences as they were dumped: the backup folder
# holds this file instead, never an instance folder in use (a backup's folder lies outside
# it). Once the folder is the instance folder, `keygate init` moves the ids ahead and then
# removes the file; until then every other start refuses (see unsettled_restore).
RESTORE_MARK_FILE = "restore.pending"
RESTORE_MARK_TEXT = (
    "This folder is a Keygate backup. Once it is the instance folder and its dump is restored,\n"
    "`keygate init` moves the database's ids past those given after the backup (links mailed\n"
    "since then never open another buyer's order) and removes this file; Keygate does not\n"
    "start before.\n"
)


def restore_mark(instance_dir: Path) -> Path | None:
    """The mark of a backup's folder (:data:`RESTORE_MARK_FILE`) in ``instance_dir``, if
    it is there: a restore `keygate init` has not settled yet."""
    mark = instance_dir / RESTORE_MARK_FILE
    return mark if os.path.lexists(mark) else None


def unsettled_restore(instance_dir: Path) -> str | None:
    """Why Keygate must not start on ``instance_dir`` yet (a restored backup whose ids
    `keygate init` has not moved ahead), or None. A server, a worker or a command started
    before would give ids of rows made after the backup (their links mailed) to new rows."""
    mark = restore_mark(instance_dir)
    if mark is None:
        return None
    return (
        f"{instance_dir} is a restored backup ({mark.name} in it): run `keygate init` before"
        " starting Keygate (it moves the ids of new orders and links past those mailed after"
        " the backup, then removes the file)"
    )


# PostgreSQL's ids are 32-bit (2.1 billion): a smaller step, still more rows than an
# instance makes between a backup and its restore.
PG_IDS_AHEAD = 10_000_000


def settle_restored_copy(engine: Engine) -> bool:
    """On the first start of a database `keygate backup` copied (a restore), move every
    id ahead (:func:`move_ids_ahead`); whether it did. Done once, under SQLite's write lock
    (servers starting at once: one moves them)."""
    if engine.dialect.name != "sqlite":
        return False
    with engine.begin() as connection:  # BEGIN IMMEDIATE: the write lock, then the read
        if connection.exec_driver_sql("PRAGMA user_version").scalar() != COPY_MARK:
            return False
        _move_sqlite_ids(connection)
    # The cleared mark into the file itself at once, not only into the write-ahead log: a
    # marked file beside a log is then a log left by another database (see foreign_log).
    # Outside a transaction (the driver's own connection: no BEGIN), and PASSIVE: servers
    # starting at once may be reading, and none waits for the others.
    raw = engine.raw_connection()
    try:
        raw.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)")  # type: ignore[union-attr]
    finally:
        raw.close()
    return True


def foreign_log(database_url: str) -> Path | None:
    """The write-ahead log (``keygate.db-wal``) beside a SQLite copy `keygate backup` made
    and Keygate never started, if there is one: it is not the copy's but that of the
    database the copy was put over (left by a crash or a kill), and SQLite would replay its
    pages into the copy on the first open (the copy silently becoming that database, or a
    corrupt mix of both). A copy's first start clears its mark in the file itself
    (:func:`settle_restored_copy`), so its own log never sits beside a marked file."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.query.get("uri"):
        return None
    database = Path(url.database)
    log = database.with_name(database.name + "-wal")
    try:
        with database.open("rb") as file:
            header = file.read(64)  # user_version: 4 bytes big-endian at offset 60
        logged = log.stat().st_size
    except OSError:  # no copy, or no log: nothing to replay
        return None
    if len(header) < 64 or int.from_bytes(header[60:64], "big") != COPY_MARK or not logged:
        return None
    return log


def move_ids_ahead(engine: Engine) -> None:
    """Move every id the database gives from now on far past those it gave: for a database
    restored from a backup (`keygate init --restored`, or `keygate init` in a PostgreSQL
    backup's folder; a SQLite copy `keygate backup` made does it on its first start).

    Links name their rows (orders, download links) and stay valid with the secret key a
    restore brings back. Rows made after the backup were lost with the database, but their
    links were mailed: the restored instance must not give their ids to other buyers' rows.
    """
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            _move_sqlite_ids(connection)
            return
        for table in Base.metadata.sorted_tables:
            if "id" not in table.c:
                continue
            sequence = connection.execute(
                text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": table.name}
            ).scalar()
            if sequence is None:
                continue
            # Names from the catalog and the models, not from input.
            connection.exec_driver_sql(
                f"SELECT setval(%(sequence)s, GREATEST("  # noqa: S608
                f'(SELECT COALESCE(max(id), 0) FROM "{table.name}"),'
                f" (SELECT last_value FROM {sequence})) + %(ahead)s)",
                {"sequence": sequence, "ahead": PG_IDS_AHEAD},
            )


def _move_sqlite_ids(connection: Connection) -> None:
    """Every AUTOINCREMENT table's next id :data:`IDS_AHEAD` past the highest given, and
    the copy's mark cleared."""
    tables = connection.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE '%AUTOINCREMENT%'"
    ).scalars()
    for table in list(tables):
        given = connection.exec_driver_sql(
            "SELECT max(seq) FROM sqlite_sequence WHERE name = ?", (table,)
        ).scalar()
        read = f'SELECT max(rowid) FROM "{table}"'  # noqa: S608 - a name from sqlite_master
        highest = connection.exec_driver_sql(read).scalar()
        ahead = max(given or 0, highest or 0) + IDS_AHEAD
        connection.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
        connection.exec_driver_sql(
            "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, ahead)
        )
    connection.exec_driver_sql("PRAGMA user_version = 0")


@click.command()
@click.argument("destination", type=click.Path(path_type=Path))
def backup(destination: Path) -> None:
    """Copy the instance (database, keys, settings, embedded files) into DESTINATION, a
    new folder, while Keygate keeps running. To restore, stop Keygate, move the instance
    folder aside, copy DESTINATION as the instance folder (or point KEYGATE_INSTANCE_DIR at
    it) and run `keygate init`."""
    from connector.config import ConfigError, load_settings

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    done = back_up(settings, destination)
    click.echo(f"backed up into {destination.resolve()}: " + ", ".join(done.copied))
    for what in done.keep_beside:
        click.echo(f"not in the folder, keep it with the backup: {what}")


def register(group: click.Group) -> None:
    group.add_command(backup)
