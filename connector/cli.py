"""The ``keygate`` command."""

from __future__ import annotations

import errno
import importlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
from cryptography.fernet import Fernet
from flask import Flask
from sqlalchemy import select
from werkzeug.security import generate_password_hash

from connector.config import MASTER_KEY_FILE, SECRET_KEY_FILE, ConfigError, Settings

# Modules that add commands: each has ``register(group: click.Group) -> None``.
COMMAND_MODULES: list[str] = [
    "connector.licensing.commands",
    "connector.downloads.commands",
    "connector.vault.commands",
    "connector.orders.commands",
    "connector.backup",
]


def make_app(**overrides: Any) -> Flask:
    """The app of a command; one whose database cannot be reached stops it with a line
    (:class:`_Keygate`), unless ``database_may_be_away`` (``keygate worker``)."""
    from connector import create_app

    overrides.setdefault("start_worker", False)
    overrides.setdefault("database_may_be_away", False)
    try:
        return create_app(overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _instance_dir() -> Path:
    return Path(os.environ.get("KEYGATE_INSTANCE_DIR") or "instance").resolve()


def _write_secret_file(path: Path, value: str) -> bool:
    """Write a new key file, readable by this user only, or say in a line why it can't be
    (leaving no empty or cut-short file behind, which the next start would take for a key
    lost). False when another `keygate init` (two started at once) made it meanwhile:
    its key stands."""
    made = False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        made = True
        with os.fdopen(fd, "w") as handle:
            handle.write(value + "\n")
    except FileExistsError:  # a link to a file that is not there (exists() said no)
        if not os.path.islink(path):  # or a file made since exists() was asked
            return False
        raise click.ClickException(
            f"{path} is a link to {os.readlink(path)}, which is not there: mount or restore"
            " what it links to (or remove the link to make a new key)"
        ) from None
    except OSError as exc:  # another user's folder, a read-only or full disk
        if made:
            path.unlink(missing_ok=True)
        reason = exc.strerror or type(exc).__name__
        raise click.ClickException(
            f"cannot write {path}: {reason} (the instance folder must be writable by the user"
            " Keygate runs as, on a disk with room)"
        ) from None
    return True


def _make_folder(path: Path) -> None:
    """Create a folder of the instance (and its parents), or say in a line why it can't be."""
    where = "the instance folder is KEYGATE_INSTANCE_DIR, ./instance by default"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # KEYGATE_INSTANCE_DIR mistyped: keygate.toml, the database
        raise click.ClickException(f"{path} is a file, not a folder ({where})") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise click.ClickException(f"cannot make the folder {path}: {reason} ({where})") from None


class _Keygate(click.Group):
    """Commands that cannot reach the database say so in a line, not a traceback."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Bytes that are not UTF-8 (a terminal or script in Latin-1) reach Python as lone
        # surrogates, which no database stores: refused here, once for every command.
        for arg in args:
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                shown = arg.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
                raise click.UsageError(
                    f"'{shown}' is not UTF-8 text: set the terminal (or the script) to UTF-8",
                    ctx,
                ) from None
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        from sqlalchemy.exc import DatabaseError, OperationalError

        from connector.db import connection_failure, damaged_database

        try:
            return super().invoke(ctx)
        except OperationalError as exc:
            reason = connection_failure(exc)
            if reason is None:  # not connecting: a failure of its own, shown
                raise
            raise click.ClickException(_unreachable_database(reason)) from None
        except DatabaseError as exc:
            damaged = damaged_database(exc, _configured_database_file())
            if damaged is None:
                raise
            raise click.ClickException(damaged) from None


def _configured_database_file() -> str | None:
    """The configured SQLite database's file (None for another database)."""
    from sqlalchemy.engine import make_url

    from connector.config import configured_database_url

    try:
        return make_url(configured_database_url()).database
    except ConfigError:
        return None


def _unreachable_database(reason: str) -> str:
    """Which database could not be connected to (no password, no query) and why."""
    from sqlalchemy.engine import make_url

    from connector.config import configured_database_url

    try:  # the settings the command's app was built from (environment, keygate.toml)
        url = make_url(configured_database_url())
    except ConfigError:
        where = "the configured database"
    else:
        where = url.set(query={}).render_as_string(hide_password=True)
    hint = ""
    if re.search(r'database "[^"]*" does not exist', reason):  # not a role that does not
        hint = " Create the database first (e.g. `createdb keygate`), then run `keygate init`."
    return f"cannot use the database at {where}: {reason}.{hint}"


@click.group(cls=_Keygate)
@click.version_option(package_name="keygate", prog_name="keygate", message="%(prog)s %(version)s")
def main() -> None:
    """Keygate: licenses and watermarked downloads for your shop."""
    # What Keygate writes (the SQLite database, buyers' stamped copies, uploaded files,
    # the instance folder) holds buyers' names and addresses: readable by this user only.
    os.umask(0o077)


@main.command()
@click.option("--admin-user", default="admin", show_default=True, help="Name of the first admin.")
@click.option(
    "--restored",
    is_flag=True,
    help="The database was just restored from a backup (a PostgreSQL dump, a file copy):"
    " new ids start far past the old ones, so links mailed after the backup never open"
    " another buyer's order. Implied in a backup's folder (it holds restore.pending).",
)
def init(admin_user: str, restored: bool) -> None:
    """Create instance/ (database, master key, secret key) and the first admin. Idempotent."""
    from alembic.util import CommandError
    from sqlalchemy.exc import IntegrityError

    from connector.backup import move_ids_ahead, restore_mark, settle_restored_copy
    from connector.db import db
    from connector.migrate import NewerDatabase, upgrade
    from connector.models import AdminUser
    from connector.vault.keycheck import check_keys, has_proof, missing_schema, write_problem

    admin_user = _checked_username(admin_user)
    instance = _instance_dir()
    _refuse_a_copy_beside_another_databases_log()
    _make_folder(instance)
    _make_folder(instance / "files")
    has_env_key = bool(
        os.environ.get("KEYGATE_MASTER_KEY") or os.environ.get("KEYGATE_MASTER_KEYS")
    )
    new_keys: dict[Path, str] = {}
    if not has_env_key and not (instance / MASTER_KEY_FILE).exists():
        new_keys[instance / MASTER_KEY_FILE] = Fernet.generate_key().decode()
    if not os.environ.get("KEYGATE_SECRET_KEY") and not (instance / SECRET_KEY_FILE).exists():
        new_keys[instance / SECRET_KEY_FILE] = secrets.token_urlsafe(48)
    if new_keys:
        new_keys = _refuse_new_keys_for_a_database_in_use(instance, new_keys)
    for path, value in new_keys.items():
        if not _write_secret_file(path, value):
            continue  # another `keygate init` wrote it meanwhile: its key is the one
        click.echo(
            f"wrote {path}"
            + (" (keep it safe: it decrypts every secret)" if path.name == MASTER_KEY_FILE else "")
        )

    app = make_app(check_database=False)
    with app.app_context():
        engine = db.get_engine()
        problem = write_problem(engine)
        if problem is not None:
            raise click.ClickException(problem)
        _refuse_to_start_anew_beside_a_restored_database(instance, engine)
        mark = restore_mark(instance)
        if mark is not None:
            _refuse_a_backups_folder_without_its_database(mark, engine)
        # Another instance's database (its URL given with this instance's keys) is refused
        # before it is migrated: its own servers may still run the code it was made for.
        if has_proof(engine):
            try:
                check_keys(db.session, app.extensions["keygate.keyring"])
            except ConfigError as exc:
                raise click.ClickException(str(exc)) from None
            db.session.rollback()
        try:
            before, after = upgrade(engine)
        except (NewerDatabase, CommandError) as exc:
            raise click.ClickException(str(exc)) from None
        if before == after:
            click.echo("database is up to date")
        elif before is None:
            click.echo(f"created the database's tables (migration {after})")
        else:
            click.echo(f"migrated the database from {before} to {after}")
        missing = missing_schema(engine)
        if missing:
            raise click.ClickException(
                f"the database is at migration {after} but lacks {', '.join(missing)}: it "
                "was restored only in part (a dump restored without --single-transaction goes "
                "on past what it cannot read); restore the backup again into a new, empty "
                "database, as the README's Backups says"
            )
        session = db.session
        try:
            check_keys(session, app.extensions["keygate.keyring"])
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None
        session.commit()
        if restored or mark is not None:
            move_ids_ahead(engine)
            click.echo(
                "restored: ids of new orders, links and licenses start far past those made"
                " before (links mailed after the backup never open another buyer's)"
            )
            if mark is not None:  # once the ids have moved: a start before would not wait
                _remove_restore_mark(mark)
        elif settle_restored_copy(engine):
            click.echo(
                "a restored backup: ids of new orders, links and licenses start past those "
                "made after the backup (their mailed links never open another buyer's)"
            )
        if session.execute(select(AdminUser).limit(1)).scalar_one_or_none() is None:
            try:
                password = _create_admin(session, admin_user, None)
            except IntegrityError:  # another `keygate init` (two at once) made it first
                session.rollback()
            else:
                click.echo(f"created admin user '{admin_user}'")
                _show_password(password)
                return
        click.echo(
            f"admin user exists (forgot the password? {_command()} admin password --username NAME)"
        )


def _refuse_a_copy_beside_another_databases_log() -> None:
    """A backup put over an instance folder whose database left a write-ahead log (a server
    killed, a crash) would, on its first open, take that database's pages instead of its
    own: said before anything opens it, so the copy stays as it was taken."""
    from connector.backup import foreign_log
    from connector.config import configured_database_url

    try:
        log = foreign_log(configured_database_url())
    except ConfigError:
        return  # a malformed setting: the start below says which, in its own line
    if log is not None:
        shm = log.with_name(log.name.removesuffix("-wal") + "-shm")
        raise click.ClickException(
            f"{log.parent / log.name.removesuffix('-wal')} is a backup's copy Keygate has "
            f"not started yet, and {log.name} beside it holds the unfinished writes of the "
            "database it was put over (left by a server stopped mid-write): opened, the copy "
            f"would take that database's pages instead of its own. Move {log} and {shm} "
            "away (with Keygate stopped), then run `keygate init` again."
        )


def _refuse_a_backups_folder_without_its_database(mark: Path, engine: Any) -> None:
    """A backup's folder made the instance folder before its dump is restored (the settings
    naming a new, empty database): init would start anew there and drop the mark, and the
    dump, restored later, would never have its ids moved."""
    from connector.vault.keycheck import database_in_use

    if database_in_use(engine):
        return
    where = engine.url.set(query={}).render_as_string(hide_password=True)  # no secret
    raise click.ClickException(
        f"{mark.parent} is a backup's folder ({mark.name} in it), but the database at {where}"
        " holds nothing: restore the backup's dump into it first, as the README's Backups"
        f" says, then run `keygate init`; to start anew instead, remove {mark}"
    )


def _remove_restore_mark(mark: Path) -> None:
    """The restore settled: servers and commands start from now on."""
    try:
        mark.unlink(missing_ok=True)  # two inits at once: the other may have removed it
    except OSError as exc:
        raise click.ClickException(
            f"the ids have moved, but {mark} cannot be removed"
            f" ({exc.strerror or type(exc).__name__}): remove it, then start Keygate"
        ) from None


def _refuse_new_keys_for_a_database_in_use(
    instance: Path, new_keys: dict[Path, str]
) -> dict[Path, str]:
    """New keys for a database that already holds data would lock that data away for good
    (its secrets unreadable, its license keys and tokens never found again); the keys
    still to write."""
    from connector.vault.keycheck import database_in_use

    overrides: dict[str, Any] = {"check_database": False}
    if instance / MASTER_KEY_FILE in new_keys:
        overrides["master_keys"] = [new_keys[instance / MASTER_KEY_FILE]]
    if instance / SECRET_KEY_FILE in new_keys:
        overrides["secret_key"] = new_keys[instance / SECRET_KEY_FILE]
    app = make_app(**overrides)
    try:
        used = database_in_use(app.extensions["keygate.db"].engine)
    finally:
        app.extensions["keygate.db"].engine.dispose()
    if used:  # those another `keygate init` wrote meanwhile (two at once) are its own
        new_keys = {path: value for path, value in new_keys.items() if not path.exists()}
    if used and new_keys:
        missing = " and ".join(path.name for path in new_keys)
        raise click.ClickException(
            f"this database already holds a Keygate instance's data, and {missing}"
            f" {'are' if len(new_keys) > 1 else 'is'} missing "
            f"from {instance}: restore it from the machine or backup it was made on (or set "
            "KEYGATE_MASTER_KEY / KEYGATE_SECRET_KEY). New keys would make every stored secret, "
            "license key and token unreadable."
        )
    return new_keys


def _refuse_to_start_anew_beside_a_restored_database(instance: Path, engine: Any) -> None:
    """A database in the instance folder that is not the one configured (a backup restored
    there while keygate.toml or KEYGATE_DATABASE_URL names another place) would be left
    unused, and the configured one, new and empty, given a new admin: every store gone."""
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from connector.vault.keycheck import database_in_use

    here = instance / "keygate.db"
    configured = engine.url.database if engine.dialect.name == "sqlite" else None
    if not here.is_file() or (configured and Path(configured).resolve() == here.resolve()):
        return
    if database_in_use(engine):
        return
    copy = create_engine(f"sqlite:///{here.as_uri()}?mode=ro&uri=true")  # never written
    try:
        holds_data = database_in_use(copy)
    except SQLAlchemyError:  # not a database, or not Keygate's: not ours to judge
        holds_data = False
    finally:
        copy.dispose()
    if holds_data:
        where = engine.url.set(query={}).render_as_string(hide_password=True)  # no secret
        raise click.ClickException(
            f"{here} holds a Keygate database (a restored backup?), but the settings "
            f"(KEYGATE_DATABASE_URL or database_url in keygate.toml) name {where}, which holds "
            "nothing: put the copy there (for PostgreSQL, pg_restore its dump), or remove the "
            f"setting; to start anew instead, move {here} away"
        )


def _command() -> str:
    """How this shell runs keygate: the path it was started by when that is not on PATH
    (``make run`` starts ``.venv/bin/keygate`` without activating the venv)."""
    started = sys.argv[0]
    on_path = shutil.which("keygate")
    if os.path.basename(started) != "keygate" or (on_path and os.path.samefile(on_path, started)):
        return "keygate"
    return os.path.relpath(started)


def _create_admin(session: Any, username: str, store_id: int | None) -> str | None:
    """Add an admin with KEYGATE_ADMIN_PASSWORD, else a new password, which is returned to
    be shown once (on the terminal of the person who runs the command; never logged).
    Audited ``admin.added`` in the log of the store the admin sees (every store's: none)."""
    from connector.audit import record_audit
    from connector.models import AdminUser

    password, given = _password_to_set()
    session.add(
        AdminUser(
            username=username, password_hash=generate_password_hash(password), store_id=store_id
        )
    )
    record_audit(
        session, store_id=store_id, actor="cli", action="admin.added", subject=f"admin:{username}"
    )
    session.commit()
    return None if given else password


def _password_to_set() -> tuple[str, bool]:
    """KEYGATE_ADMIN_PASSWORD (held to the sign-in page's rules), else a new random one;
    and whether it was given."""
    from connector.admin.forms import MIN_PASSWORD

    given = os.environ.get("KEYGATE_ADMIN_PASSWORD") or None  # set but empty: unset
    if given is None:
        return secrets.token_urlsafe(12), False
    if len(given) < MIN_PASSWORD or len(given) > 200:
        raise click.ClickException(
            f"KEYGATE_ADMIN_PASSWORD must be {MIN_PASSWORD} to 200 characters"
        )
    try:
        given.encode("utf-8")  # as the sign-in page reads what is typed into it
    except UnicodeEncodeError:  # bytes that are not UTF-8: never shown, nor a traceback
        raise click.ClickException(
            "KEYGATE_ADMIN_PASSWORD is not UTF-8 text: set it from a UTF-8 terminal or file"
        ) from None
    return given, True


def _checked_username(username: str) -> str:
    from connector.admin.forms import admin_username

    username = admin_username(username)
    if not username or len(username) > 100 or not username.isprintable():
        raise click.ClickException(
            "the username must be 1 to 100 printable characters (no tabs or line breaks)"
        )
    return username


def _show_password(password: str | None) -> None:
    if password is not None:
        click.echo(f"  initial password: {password}  (change it at /admin/password)")


@main.group()
def admin() -> None:
    """Manage who may sign in to /admin."""


@admin.command("add")
@click.option("--username", required=True, help="The name the new admin signs in with.")
@click.option(
    "--store",
    "store_public_id",
    default=None,
    help="The store_id (from `keygate store add`) this admin may see; omit for every store.",
)
def admin_add(username: str, store_public_id: str | None) -> None:
    """Add an admin; the password is KEYGATE_ADMIN_PASSWORD, or a new one printed once."""
    from connector.db import db
    from connector.models import AdminUser

    app = make_app()
    with app.app_context():
        session = db.session
        store_id = None
        if store_public_id is not None:
            store_id = store_with_id(store_public_id).id
        username = _checked_username(username)
        taken = session.execute(select(AdminUser.id).where(AdminUser.username == username))
        if taken.first() is not None:
            raise click.ClickException(f"admin user '{username}' exists")
        password = _create_admin(session, username, store_id)
    scope = f"store {store_public_id} only" if store_public_id else "every store"
    click.echo(f"created admin user '{username}' ({scope})")
    _show_password(password)


def _admin_named(username: str) -> Any:
    """The admin user of this name (in an app context), or a clear error."""
    from connector.admin.forms import admin_username
    from connector.db import db
    from connector.models import AdminUser

    # The name as kept first: an admin whose name differs from another's only in Unicode
    # form (kept before migration 0026, which left it) is still reached by its own spelling.
    user = None
    for name in dict.fromkeys((username, admin_username(username))):
        user = db.session.execute(
            select(AdminUser).where(AdminUser.username == name)
        ).scalar_one_or_none()
        if user is not None:
            break
    if user is None:
        raise click.ClickException(f"no admin user '{username}'")
    return user


@admin.command("list")
def admin_list() -> None:
    """The admin users: name, the store they may see (or every store), created."""
    from connector.db import db
    from connector.models import AdminUser, Store

    app = make_app()
    with app.app_context():
        rows = db.session.execute(
            select(AdminUser, Store.public_id)
            .outerjoin(Store, AdminUser.store_id == Store.id)
            .order_by(AdminUser.username)
        ).all()
        for user, store_public_id in rows:
            scope = f"store {store_public_id}" if store_public_id else "every store"
            click.echo(f"{user.username}\t{scope}\tsince {user.created_at:%Y-%m-%d}")


@admin.command("remove")
@click.option("--username", required=True, help="The admin to remove.")
def admin_remove(username: str) -> None:
    """Remove an admin user; their sessions end at once. The last admin of every store
    cannot be removed (nobody could add another from the pages)."""
    from sqlalchemy import func

    from connector.audit import record_audit
    from connector.db import db
    from connector.models import AdminUser

    app = make_app()
    with app.app_context():
        user = _admin_named(username)
        full = select(func.count()).select_from(AdminUser).where(AdminUser.store_id.is_(None))
        if user.store_id is None and db.session.execute(full).scalar_one() <= 1:
            raise click.ClickException(
                f"'{user.username}' is the last admin of every store: add another first"
            )
        db.session.delete(user)
        record_audit(
            db.session,
            store_id=user.store_id,
            actor="cli",
            action="admin.removed",
            subject=f"admin:{user.username}",
        )
        db.session.commit()
    click.echo(f"removed admin user '{user.username}'; their sessions have ended")


@admin.command("password")
@click.option("--username", required=True, help="The admin who gets the new password.")
def admin_password(username: str) -> None:
    """Give an admin a new password (KEYGATE_ADMIN_PASSWORD, or a new one printed once);
    the admin's sessions end: this is the way in after a forgotten password. Knowing the
    current one, an admin can also change it signed in, at /admin/password."""
    from connector.audit import record_audit
    from connector.db import db

    app = make_app()
    with app.app_context():
        user = _admin_named(username)
        password, given = _password_to_set()
        user.set_password(password)
        record_audit(
            db.session,
            store_id=user.store_id,
            actor="cli",
            action="admin.password",
            subject=f"admin:{user.username}",
        )
        db.session.commit()
    click.echo(f"new password set for '{user.username}'; their sessions have ended")
    if not given:
        click.echo(f"  password: {password}  (shown once)")


@main.group()
def store() -> None:
    """Manage connected shops."""


@store.command("add")
@click.option("--name", required=True, help="Shop name, shown to buyers in mails.")
@click.option("--url", required=True, help="Shop URL, e.g. https://shop.example")
@click.option("--key-prefix", default="", help="Letters/digits before every license key.")
@click.option("--key-groups", default=4, show_default=True, help="Groups in a license key.")
@click.option("--key-group-length", default=5, show_default=True, help="Characters per group.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def store_add(
    name: str, url: str, key_prefix: str, key_groups: int, key_group_length: int, as_json: bool
) -> None:
    """Register a shop; prints its webhook URL, webhook secret and admin API token once."""
    from connector import get_settings
    from connector.config import unset_base_url_warning
    from connector.db import db
    from connector.errors import KeygateError
    from connector.stores import create_store, key_format, setup_details

    app = make_app()
    with app.app_context():
        try:
            created = create_store(
                db.session,
                name,
                url,
                key_format=key_format(key_prefix, key_groups, key_group_length),
                actor="cli",
            )
        except KeygateError as exc:  # a bad URL, an empty name, a key format out of range
            raise click.ClickException(exc.detail) from None
        db.session.commit()
        info = setup_details(created)
        unset = unset_base_url_warning(get_settings())
    if unset is not None:
        click.echo(
            f"Note: webhook_url assumes Keygate is reached at {Settings.base_url}; set "
            "KEYGATE_BASE_URL to the address the shop can reach it at.",
            err=True,
        )
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        click.echo(f"{key}: {value}")
    click.echo("The secret and token are shown once; Keygate keeps only encrypted/hashed copies.")


@store.command("list")
def store_list() -> None:
    """The stores Keygate serves: id, name, shop address, storage area."""
    from connector.downloads.storage import own_area

    app = make_app()
    with app.app_context():
        rows = _live_stores()
        for row in rows:
            click.echo(f"{row.public_id}  {row.name}  {row.url}  {own_area(row.id)}")
    if not rows:  # said on stderr: a script reading the list reads none
        click.echo(f"No stores yet. {_add_store_hint()}", err=True)


def _live_stores() -> list[Any]:
    """The stores served (not deleted), oldest first; in an app context."""
    from sqlalchemy import select

    from connector.db import db
    from connector.models import Store

    return list(
        db.session.scalars(select(Store).where(Store.deleted_at.is_(None)).order_by(Store.id))
    )


def _add_store_hint() -> str:
    return f"Add a store:  {_command()} store add --name 'My shop' --url https://shop.example"


def store_with_id(store_id: str) -> Any:
    """The store of this id (in an app context), or a clear error."""
    from connector.db import db
    from connector.stores import find_store

    found = find_store(db.session, store_id)
    if found is None:
        # A long mistake (a pasted file) is named by its start, not printed whole.
        shown = store_id if len(store_id) <= 64 else store_id[:64] + "…"
        raise click.ClickException(f"no store with id {shown!r} (see `keygate store list`)")
    return found


@store.command("change")
@click.argument("store_id")
@click.option("--name", default=None, help="A new name, shown to buyers in mails.")
@click.option(
    "--url", default=None, help="The address the shop answers at, e.g. https://www.shop.example"
)
def store_change(store_id: str, name: str | None, url: str | None) -> None:
    """Correct a store's name or its shop's URL (a typo, the www. or https address the shop
    redirects to, a move to another domain); its id, secret, token and keys stay."""
    from connector.db import db
    from connector.errors import KeygateError
    from connector.stores import change_store
    from connector.vault.connection import retry_registration_now

    if name is None and url is None:
        raise click.UsageError("give --name, --url or both")
    app = make_app()
    with app.app_context():
        found = store_with_id(store_id)
        try:
            moved = change_store(
                db.session,
                found,
                found.name if name is None else name,
                found.url if url is None else url,
                actor="cli",
            )
        except KeygateError as exc:  # an empty name, a bad URL, another store's URL
            raise click.ClickException(exc.detail) from None
        retried = moved and retry_registration_now(db.session, found)
        db.session.commit()
        click.echo(f"{found.public_id}  {found.name}  {found.url}")
    if retried:
        click.echo("Keygate registers its webhooks in the shop again, at the new URL.")


@store.command("token")
@click.argument("store_id")
def store_token(store_id: str) -> None:
    """Replace a store's admin API token (lost or leaked); the old one stops working."""
    from connector.db import db
    from connector.stores import replace_api_token

    app = make_app()
    with app.app_context():
        token = replace_api_token(db.session, store_with_id(store_id), actor="cli")
        db.session.commit()
    click.echo(f"api_token: {token}")
    click.echo("Shown once; the previous token no longer works.")


@store.command("secret")
@click.argument("store_id")
def store_secret(store_id: str) -> None:
    """Replace a store's webhook secret (lost or leaked). Connected, Keygate registers its
    webhooks again; wired by hand, paste the new secret into the shop's webhooks."""
    from connector.db import db
    from connector.errors import ServiceUnavailable
    from connector.vault.connection import replace_webhook_secret

    app = make_app()
    with app.app_context():
        try:
            secret = replace_webhook_secret(db.session, store_with_id(store_id), actor="cli")
        except ServiceUnavailable as exc:
            raise click.ClickException(exc.detail) from None
        db.session.commit()
    if secret is None:
        click.echo("Keygate registers its webhooks in the shop again, with a new secret.")
        return
    click.echo(f"webhook_secret: {secret}")
    click.echo("Shown once: paste it into the store's webhooks in WooCommerce.")


@store.command("delete")
@click.argument("store_id")
@click.option("--yes", is_flag=True, help="Do not ask for the store id again.")
def store_delete(store_id: str, yes: bool) -> None:
    """Delete a store and everything Keygate keeps for it: orders, buyers, licenses (its
    keys stop working), links, mails, products, credentials, its audit log. No undo."""
    from connector.db import db
    from connector.errors import KeygateError
    from connector.privacy.store_deletion import delete_store

    app = make_app()
    with app.app_context():
        found = store_with_id(store_id)
        if not yes:
            name = found.name
            db.session.rollback()  # nothing held while the owner reads (SQLite's write lock)
            click.echo(
                f"This deletes store {store_id} ({name}) and everything Keygate keeps for"
                " it; its license keys stop working. There is no undo."
            )
            try:
                again = click.prompt(
                    "Type the store id again to delete it", default="", show_default=False
                )
            except click.Abort:  # no input at all (a script, cron): not click's "Aborted!"
                raise click.ClickException(
                    "not deleted: nothing was typed; type the store id again, or pass --yes"
                ) from None
            if again.strip() != store_id:
                raise click.ClickException("not deleted: the store id typed did not match")
            found = store_with_id(store_id)
        try:
            done = delete_store(db.session, found, actor="cli")
        except KeygateError as exc:  # buyers still to be taken out of its Brevo list
            raise click.ClickException(exc.detail) from None
    click.echo(f"Deleted store {store_id}: {done.orders} orders, {done.licenses} licenses.")
    for line in done.left_to_do():
        click.echo(line)


STOP_SECONDS = 40.0  # longer than a Brevo call may take (its timeout), so a mail ends cleanly


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address to listen on (0.0.0.0: every address of this machine).",
)
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="The port to listen on.",
)
@click.option(
    "--threads",
    default=8,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Requests served at once (waitress threads).",
)
def run(host: str, port: int, threads: int) -> None:
    """Serve Keygate with waitress (jobs run in a thread of this process by default)."""
    import logging

    import waitress

    from connector import create_app

    # Links in mails point at this server unless a public URL is configured (environment
    # or keygate.toml). Listening on every address names none a buyer could use.
    everywhere = host in {"0.0.0.0", "::", ""}  # noqa: S104 - compared, not bound
    shown = "127.0.0.1" if everywhere else f"[{host}]" if ":" in host else host
    own_url = f"http://{shown}:{port}"
    try:
        # The job worker starts once the port is ours: a second `keygate run` on it (a
        # second `make run`) stops with a line, without having taken a job.
        app = create_app({"defaults": {"base_url": own_url}, "start_worker": False})
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    settings = app.extensions["keygate.settings"]
    if everywhere and settings.base_url == own_url:
        click.echo(
            f"Links in mails and webhook URLs say {own_url}: set KEYGATE_BASE_URL to the"
            " address buyers and the shop reach this server at.",
            err=True,
        )
    from connector.jobs import start_worker_thread, stop_worker_thread

    logging.basicConfig()  # as waitress.serve does: its log lines, and Keygate's
    try:
        server = waitress.create_server(app, host=host, port=port, threads=threads, ident="keygate")
    except (OSError, ValueError) as exc:  # ValueError: a host name that does not resolve
        raise click.ClickException(_cannot_listen(host, port, exc)) from None
    # An address a browser can open ("http://0.0.0.0:8000" is not one everywhere).
    where = f"{own_url}  (listening on every address)" if everywhere else own_url
    click.echo(f"Keygate on {where}  (admin: {own_url}/admin)")
    with app.app_context():
        stores = len(_live_stores())
    click.echo(
        f"Serving {stores} store{'s' if stores != 1 else ''}" if stores else _add_store_hint()
    )

    def _interrupt(*_: Any) -> None:
        raise KeyboardInterrupt  # waitress stops serving on it, as on Ctrl-C

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if settings.worker == "thread":
            start_worker_thread(app)
        server.print_listen("Serving on http://{}:{}")
        server.run()
    finally:
        # The job in hand finishes (and is marked done) instead of waiting out its lease.
        stop_worker_thread(app, timeout=STOP_SECONDS)


def _cannot_listen(host: str, port: int, exc: Exception) -> str:
    """Why ``keygate run`` cannot listen at host:port, in a line."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the port is in use (another Keygate, or another"
            " server): stop it, or choose another --port"
        )
    if isinstance(exc, OSError):
        return f"cannot listen on {where}: {exc.strerror or type(exc).__name__}"
    return f"cannot listen on {where}: not an address of this machine (--host)"


@main.command()
def worker() -> None:
    """Run outbox jobs until stopped (any number of workers may share the database)."""
    import logging

    from connector.config import unset_base_url_warning
    from connector.jobs import work_forever

    # As `keygate run` does: Keygate's lines at KEYGATE_LOG_LEVEL (INFO: what jobs did), not
    # only the warnings Python prints when nothing is set up.
    logging.basicConfig()
    app = make_app(database_may_be_away=True)  # it keeps trying until the database answers
    # The worker writes the buyers' mails: links without a public address lead nowhere.
    unset = unset_base_url_warning(app.extensions["keygate.settings"])
    if unset is not None:
        click.echo(f"Warning: {unset}", err=True)
    stop = threading.Event()
    stop_on_signals(stop)
    click.echo("keygate worker running; Ctrl-C to stop")
    work_forever(app, stop)


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM or Ctrl-C sets ``stop``: the worker finishes the job in hand and starts no
    other. A second one stops it at once (a job stuck on a peer that does not answer): the
    job in hand is cut off and goes back to the queue, its attempt spent."""

    def _stop(*_: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        # Not click.echo: a handler may run while the worker's own line is being written to
        # stderr, and a buffered stream refuses a reentrant write.
        os.write(2, b"stopping after the job in hand (Ctrl-C again to stop at once)\n")

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


for _module in COMMAND_MODULES:
    try:
        _commands = importlib.import_module(_module)
    except ModuleNotFoundError as _exc:  # a domain without commands yet
        if _exc.name != _module:
            raise
        continue
    _commands.register(main)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
