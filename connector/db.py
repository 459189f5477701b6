"""Database wiring: engine, one session per app context, commit at the request boundary.

Services only ``flush``; the request (or job) boundary commits once. SQLite runs in WAL mode
with ``BEGIN IMMEDIATE`` so that two writers queue instead of failing half-way; PostgreSQL
gets row locks where the services ask for them (``with_for_update``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, current_app, g
from sqlalchemy import DateTime, Engine, MetaData, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event open transactions, so they can be IMMEDIATE.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """Create an engine with the settings Keygate relies on for each backend.

    ``hide_parameters``: SQL logging and database errors never show bound values, which
    are secrets before the ``Encrypted`` type encrypts them.
    """
    if url.startswith("sqlite"):
        # A pool of file connections (SQLAlchemy's default for SQLite files): opening one per
        # request would redo the PRAGMAs and checkpoint the WAL on every close.
        engine = create_engine(url, pool_size=16, max_overflow=16, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=10, hide_parameters=True
    )


class DatabaseState:
    """The engine and session factory of one app (``app.extensions["keygate.db"]``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessionmaker: sessionmaker[Session] = sessionmaker(bind=engine, expire_on_commit=False)

    def get_engine(self) -> Engine:
        return self.engine


class Database:
    """Reaches the current app's database; ``connector.db.db`` is the one instance.

    It holds no engine itself, so several apps in one process (tests, an in-process CLI)
    never share or steal each other's engine.
    """

    def init_app(self, app: Flask, url: str) -> None:
        app.extensions["keygate.db"] = DatabaseState(make_engine(url))
        app.teardown_appcontext(_close_session)

    @staticmethod
    def current() -> DatabaseState:
        state: DatabaseState = current_app.extensions["keygate.db"]
        return state

    @property
    def session(self) -> Session:
        """The session of the current app context, opened on first use."""
        session: Session | None = g.get("_keygate_session")
        if session is None:
            session = Database.current().sessionmaker()
            g._keygate_session = session
        return session

    @property
    def engine(self) -> Engine:
        return Database.current().engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def get_engine(self) -> Engine:
        return self.engine


db = Database()


def _close_session(_exc: BaseException | None) -> None:
    session: Session | None = g.pop("_keygate_session", None)
    if session is not None:
        session.close()


@contextmanager
def transaction() -> Iterator[Session]:
    """A unit of work outside a request (jobs, CLI): commit on success, roll back on error."""
    session = db.session
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise


def insert_ignoring_conflicts(
    session: Session, table: Any, values: dict[str, Any], conflict_columns: list[str]
) -> int | None:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id, on SQLite and PostgreSQL alike.

    Returns:
        The new row's id, or None when the unique key already existed.
    """
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    statement = (
        module.insert(table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=conflict_columns)
        .returning(table.c.id)
    )
    inserted: int | None = session.execute(statement).scalar_one_or_none()
    return inserted
