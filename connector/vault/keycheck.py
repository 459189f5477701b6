"""Start only with the database's own keys, and only on a database that is up to date.

A server given another master key (a lost ``instance/master.key``, a second host set up with
its own ``keygate init``) answers 500 wherever a secret is read: every paid order's webhook
fails and WooCommerce does not send it again. Another secret key is worse: every license
lookup is a signed "NOT_FOUND", which products believe, and every mailed link stops working.
So the database keeps a proof of its keys (``key_checks``: a known text encrypted with the
master key, a keyed hash of it with the secret key), written on the first start and checked
on every one after.
"""

from __future__ import annotations

import hmac
import sqlite3
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, Text, inspect, literal, select, text, type_coerce
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from connector.backup import settle_restored_copy
from connector.config import ConfigError
from connector.db import Base, connection_failure, damaged_database, insert_ignoring_conflicts
from connector.migrate import alembic_config, newer_database_problem
from connector.models import KeyCheck
from connector.redact import keygate_logger
from connector.vault.crypto import DecryptionError, Keyring

log = keygate_logger(__name__)

KNOWN_TEXT = "keygate key check"
HASH_PURPOSE = "key-check"
# Tables whose rows mean the database is in use: new keys would lock their data away.
IN_USE_TABLES = ("key_checks", "stores", "signing_keys", "admin_users")

MASTER_MISMATCH = (
    "the master key does not open this database's secrets: start with the key it was made "
    "with (master.key in the instance folder, one key per line, or KEYGATE_MASTER_KEY / "
    "KEYGATE_MASTER_KEYS; after a rotation the new key first, the old one after it)"
)
HASH_KEY_MISMATCH = (
    "the secret key is not the one this database was made with: license lookups, API tokens "
    "and mailed links would all fail; start with its own (secret.key in the instance folder, "
    "or KEYGATE_SECRET_KEY)"
)


def schema_problem(engine: Engine) -> str | None:
    """What is wrong with the database's migration state for this code, or None."""
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    if current is None:
        return "the database has no Keygate tables: run `keygate init` (or check the URL)"
    if current != head:
        # Ahead of this code (a rolled-back deploy), `keygate init` cannot help.
        return newer_database_problem(engine, current) or (
            f"the database is at migration {current}, this Keygate needs {head}: "
            "run `keygate init` (it migrates)"
        )
    return None


def missing_schema(engine: Engine) -> list[str]:
    """The tables, columns, indexes and constraints of this code's models that the database
    lacks ("table signing_keys", "index ix_licenses_order_id"), for a database at the newest
    migration: a restore that stopped halfway leaves them out, while its migration says
    nothing is."""
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        differences = compare_metadata(context, Base.metadata)
    missing = []
    for difference in differences:
        if not isinstance(difference, tuple) or not difference[0].startswith("add_"):
            continue  # something the database has more of, or has otherwise: not lost
        kind = difference[0].removeprefix("add_")
        if kind == "column":
            missing.append(f"column {difference[2]}.{difference[3].name}")
        else:
            what = {"fk": "foreign key", "constraint": "constraint"}.get(kind, kind)
            missing.append(f"{what} {difference[1].name or difference[1]}")
    return missing


def database_in_use(engine: Engine) -> bool:
    """Whether the database already holds a Keygate instance's data."""
    present = set(inspect(engine).get_table_names())
    with engine.connect() as connection:
        for name in IN_USE_TABLES:
            if name not in present:
                continue
            table = Base.metadata.tables[name]
            if connection.execute(select(literal(1)).select_from(table).limit(1)).first():
                return True
    return False


def has_proof(engine: Engine) -> bool:
    """Whether the database holds a proof of its keys (written since migration 0010)."""
    if "key_checks" not in inspect(engine).get_table_names():
        return False
    with engine.connect() as connection:
        found = connection.execute(select(literal(1)).select_from(KeyCheck.__table__).limit(1))
        return found.first() is not None


# SQLite's words for a database this process can read and not write (a file or folder of
# another owner, a read-only mount): nothing that waiting would mend.
_CANNOT_WRITE = ("readonly database", "unable to open database file")


def write_problem(engine: Engine) -> str | None:
    """Why Keygate cannot write its database (nor read it: a damaged SQLite file), or None.

    Started on a database it can only read, Keygate would answer every webhook, form and
    activation 503 and every command that writes with a traceback. The check writes (rolled
    back), so it sees what the database sees: SQLite's modes, owners and mounts; a PostgreSQL
    standby, read-only sessions or a role without the right to write.
    """
    if engine.dialect.name == "postgresql":
        return _postgres_write_problem(engine)
    if engine.dialect.name != "sqlite":
        return None
    try:
        with engine.connect() as connection:
            raw: Any = connection.connection.driver_connection  # sqlite3, in autocommit
            # A writer holding the lock (a server, a worker) is not waited for: no check then.
            waits = raw.execute("PRAGMA busy_timeout").fetchone()[0]
            raw.execute("PRAGMA busy_timeout=0")
            try:
                raw.execute("BEGIN IMMEDIATE")
                raw.execute("CREATE TABLE keygate_write_check (x INTEGER)")
            finally:
                if raw.in_transaction:
                    raw.execute("ROLLBACK")
                raw.execute(f"PRAGMA busy_timeout={int(waits)}")
    except (DBAPIError, sqlite3.DatabaseError) as exc:
        damaged = damaged_database(exc, engine.url.database)
        if damaged is not None:  # the first read, which the pragmas of a connection make
            return damaged
        if not isinstance(exc, (OperationalError, sqlite3.OperationalError)):
            raise
        reason = str(getattr(exc, "orig", None) or exc).strip()
        if not any(words in reason for words in _CANNOT_WRITE):
            return None  # busy, locked: a moment's matter, not a reason to refuse to start
        return (
            f"cannot write the database at {engine.url.database}: {reason} (the database file, "
            "its -wal and -shm files and their folder must be writable by the user Keygate "
            "runs as)"
        )
    return None


# PostgreSQL's codes for a write refused for good: a read-only transaction (a standby,
# default_transaction_read_only) and a role without the privilege.
_PG_CANNOT_WRITE = {"25006": "read_only_sql_transaction", "42501": "insufficient_privilege"}


def _postgres_write_problem(engine: Engine) -> str | None:
    url = engine.url.set(drivername=engine.url.get_backend_name(), query={})
    where = url.render_as_string(hide_password=True)  # as the owner wrote it, no secret
    try:
        with engine.connect() as connection:
            # A migration holding the table is not waited for: no check then.
            connection.execute(text("SET LOCAL lock_timeout = '2s'"))
            if "alembic_version" in inspect(connection).get_table_names():
                statement = "UPDATE alembic_version SET version_num = version_num"
            else:  # a new database: init is about to make the tables
                statement = "CREATE TABLE keygate_write_check (x integer)"
            connection.execute(text(statement))
            connection.rollback()
    except DBAPIError as exc:
        code = getattr(exc.orig, "sqlstate", None)
        if code not in _PG_CANNOT_WRITE:
            return None  # a lock, a dropped connection: a moment's matter, found elsewhere
        reason = str(exc.orig).strip().splitlines()[0]
        return (
            f"cannot write the database at {where}: {reason} (KEYGATE_DATABASE_URL must name "
            "the primary server, with a role that owns Keygate's tables, in sessions that are "
            "not read-only)"
        )
    return None


def check_keys(session: Session, keyring: Keyring) -> None:
    """Refuse keys that are not the database's own; record them on a database without proof.

    Raises:
        ConfigError: the master key or the secret key is not the database's.
    """
    proof = session.execute(
        select(type_coerce(KeyCheck.master_check, Text), KeyCheck.secret_check)
    ).first()
    if proof is None:
        _check_stored_data(session, keyring)  # a database from before key checks
        insert_ignoring_conflicts(
            session,
            KeyCheck.__table__,
            {
                "id": 1,
                "master_check": keyring.encrypt(KNOWN_TEXT),
                "secret_check": keyring.keyed_hash(HASH_PURPOSE, KNOWN_TEXT),
            },
            ["id"],
        )
        session.commit()
        # Another process may have written its proof first (two first starts at once, with
        # other keys): what counts is the row that is there, checked like any other time.
        proof = session.execute(
            select(type_coerce(KeyCheck.master_check, Text), KeyCheck.secret_check)
        ).one()
    master_check, secret_check = proof
    _decrypt_or_refuse(keyring, master_check)
    if not hmac.compare_digest(secret_check, keyring.keyed_hash(HASH_PURPOSE, KNOWN_TEXT)):
        raise ConfigError(HASH_KEY_MISMATCH)


def _check_stored_data(session: Session, keyring: Keyring) -> None:
    """Without a proof yet (a database from before it), the keys must still fit what is
    stored: the master key opens a stored secret, and a license key's keyed hash, made with
    the secret key, is found again from its decrypted copy."""
    from connector.licensing.keys import lookup_form
    from connector.models import License
    from connector.orders.service import LICENSE_KEY_HASH
    from connector.vault.rotation import encrypted_tables

    for spec in encrypted_tables():
        column = spec.columns[0]
        token = session.execute(
            select(type_coerce(column, Text)).where(column.is_not(None)).limit(1)
        ).scalar()
        if token is not None:
            _decrypt_or_refuse(keyring, token)
            break
    license_row = session.execute(
        select(type_coerce(License.key_encrypted, Text), License.key_hash).limit(1)
    ).first()
    if license_row is not None:
        key = _decrypt_or_refuse(keyring, license_row[0])
        found = keyring.keyed_hash(LICENSE_KEY_HASH, lookup_form(key))
        if not hmac.compare_digest(found, license_row[1]):
            raise ConfigError(HASH_KEY_MISMATCH)


def _decrypt_or_refuse(keyring: Keyring, token: str) -> str:
    try:
        return keyring.decrypt(token)
    except DecryptionError:
        raise ConfigError(MASTER_MISMATCH) from None


def check_database(
    engine: Engine, session: Session, keyring: Keyring, *, may_be_away: bool = True
) -> None:
    """The start-up check: an up-to-date database and its own keys.

    A database that cannot be reached is not a reason to refuse to start (it may come back
    before the first request): the check is skipped, with a warning, unless not
    ``may_be_away`` (a one-off command, which says why it cannot run in a line).

    Raises:
        ConfigError: what is wrong, and what to do.
        OperationalError: the database cannot be connected to, and not ``may_be_away``.
    """
    problem = write_problem(engine)
    if problem is not None:
        raise ConfigError(problem)
    try:
        problem = schema_problem(engine)
        if problem is not None:
            raise ConfigError(problem)
        check_keys(session, keyring)
        session.commit()  # SQLite: its write lock, which the next step takes
        settle_restored_copy(engine)  # a backup's first start: ids move past its links
    except OperationalError as exc:
        if not may_be_away and connection_failure(exc) is not None:
            raise
        log.warning("could not check the database at start (%s)", type(exc.orig).__name__)
        session.rollback()
