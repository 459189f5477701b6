"""Schema migrations with Alembic, driven from Keygate's own engine."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


class NewerDatabase(Exception):
    """The database is at a migration this code does not have: a newer Keygate made it."""


def newer_database_problem(engine: Engine, current: str | None) -> str | None:
    """What to do when the database's migration ``current`` is unknown to this code, else None.

    After a deploy is rolled back, the database is ahead of the code: no migration of this
    Keygate leads anywhere from there (Alembic only says it "can't locate revision").
    """
    script = ScriptDirectory.from_config(alembic_config(engine))
    if current is None or current in {rev.revision for rev in script.walk_revisions()}:
        return None
    return (
        f"the database is at migration {current}, which this Keygate does not have (its "
        f"newest is {script.get_current_head()}): a newer Keygate migrated it; run that version"
    )


@contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """A connection with a transaction for a migration.

    On SQLite, foreign keys are off while it runs, as SQLite's own procedure for schema
    changes asks (and only outside a transaction can they be turned off): Alembic's batch
    mode rebuilds a table (copy, DROP TABLE, rename), and with foreign keys on that DROP is
    refused as soon as a row refers to the table. Every reference is checked before the
    commit instead: a migration that leaves one dangling is rolled back.
    """
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        raw = connection.connection.driver_connection
        if sqlite:
            raw.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with connection.begin():
                yield connection
                if sqlite:
                    dangling = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if dangling:
                        raise RuntimeError(
                            f"the migration left {len(dangling)} rows referring to rows that "
                            f"do not exist (first: {tuple(dangling[0])}); nothing was changed"
                        )
        finally:
            if sqlite:
                raw.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str | None]:
    """Bring the database to ``revision`` (idempotent); its revision before and after
    (None before: a new database).

    Raises:
        NewerDatabase: a newer Keygate migrated the database (nothing was changed).
    """
    config = alembic_config(engine)
    with _migrating(engine) as connection:
        current = MigrationContext.configure(connection).get_current_revision()
        problem = newer_database_problem(engine, current)
        if problem is not None:
            raise NewerDatabase(problem)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        return current, MigrationContext.configure(connection).get_current_revision()


def downgrade(engine: Engine, revision: str) -> None:
    """Take the database back to ``revision`` (developers and tests; data of the later
    revisions' columns is lost)."""
    config = alembic_config(engine)
    with _migrating(engine) as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def revision(engine: Engine, message: str) -> None:
    """Autogenerate a migration from the models (developers only)."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.revision(config, message=message, autogenerate=True)
