"""Database wiring: engine, one session per app context, commit at the request boundary.

Services only ``flush``; the request (or job) boundary commits once. SQLite runs in WAL mode
with ``BEGIN IMMEDIATE`` so that two writers queue instead of failing half-way; PostgreSQL
gets row locks where the services ask for them (``with_for_update``).

The hottest read (a license validate answered VALID or NOT_FOUND, a download click) is one
statement outside any transaction (:func:`read_one`), and the hottest write (a click's
count and its log row) one short write on the same pooled DBAPI connection
(:func:`raw_connection`).
Other hot read paths run as a :func:`read_mostly` unit: on SQLite a deferred ``BEGIN``
(readers never take the write lock, so they no longer queue behind each other), on
PostgreSQL autocommit (no ``BEGIN``/``COMMIT`` round trips; each
statement reads committed data, as under the default READ COMMITTED). A statement that
would write in such a unit is stopped before it runs, and the unit is run again from the
start in an ordinary writing transaction, so a read that turns into a write never upgrades
a SQLite read lock (which could fail with SQLITE_BUSY) and never writes outside a
transaction on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import sqlite3
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

from flask import Flask, current_app, g, request
from sqlalchemy import (
    CursorResult,
    DateTime,
    Engine,
    MetaData,
    Select,
    create_engine,
    event,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement
from sqlalchemy.types import TypeDecorator

from connector.redact import keygate_logger

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


def iso(value: dt.datetime | None) -> str | None:
    """A UTC time as the JSON APIs give it: ISO 8601 with a ``Z``."""
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def shown_utc(value: dt.datetime) -> str:
    """A UTC time as pages and mails show it (the ``utc`` template filter): to the minute,
    the zone said. A date alone would promise a buyer west of UTC a day their license or
    link does not last (one ending at 03:00 UTC ends the evening before in Honolulu)."""
    return f"{value.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"


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
    # FULL: a commit is on disk when it returns. With NORMAL, WAL commits are synced only at
    # checkpoints and may roll back after a power loss, yet a webhook is answered 200 (and
    # never sent again) once its commit returns.
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


T = TypeVar("T")
P = ParamSpec("P")
log = keygate_logger(__name__)

# Set while a read_mostly unit opens its transaction (per thread / task).
_READ_ONLY_BEGIN: ContextVar[bool] = ContextVar("keygate_read_only_begin", default=False)
# Marks a DBAPI connection (``Connection.info``) whose transaction must not write.
_READ_ONLY = "keygate.read_only"


class NeedsWrite(Exception):
    """A statement that writes was about to run inside a read-only unit (it did not run)."""


def _sqlite_begin(conn: Any) -> None:
    if _READ_ONLY_BEGIN.get():
        conn.exec_driver_sql("BEGIN")
    else:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _guard_read_only(
    conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool
) -> None:
    if conn.info.get(_READ_ONLY) and not statement.lstrip()[:6].upper() == "SELECT":
        raise NeedsWrite(statement.split(None, 1)[0] if statement.strip() else "?")


def connection_failure(exc: BaseException) -> str | None:
    """Why connecting to the database failed, in a line: the driver's first (it names the
    server, never a password or a query); None when ``exc`` is no failure to connect (a
    statement's own error, which says more with its traceback)."""
    if not isinstance(exc, OperationalError) or exc.statement is not None:
        return None
    lines = str(exc.orig).strip().splitlines()
    return lines[0][:300] if lines else type(exc.orig).__name__


# SQLite's (primary) result codes for a file it cannot read as a database: damaged pages
# (SQLITE_CORRUPT) or no database at all (SQLITE_NOTADB).
_SQLITE_DAMAGED = (11, 26)


def damaged_database(exc: BaseException, database: str | None) -> str | None:
    """What to do about the SQLite file ``database`` that cannot be read as a database (a
    backup's copy cut short on its way, another file put in its place, damaged pages), in a
    line; None when ``exc`` says no such thing."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlite_errorcode", None)
    if not isinstance(orig, sqlite3.DatabaseError) or code is None:
        return None
    if code & 0xFF not in _SQLITE_DAMAGED:  # extended codes keep the primary in the low byte
        return None
    return (
        f"the database at {database} is damaged ({orig}): keep it aside and put an intact "
        "copy in its place (the keygate.db of a `keygate backup` folder), then run "
        "`keygate init`"
    )


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
        event.listen(engine, "before_cursor_execute", _guard_read_only)
        _fresh_pool_after_fork(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # No pool_pre_ping: it costs a round trip on every checkout. Connections are recycled
    # after POOL_RECYCLE_SECONDS instead, and a connection that turns out dead (the server
    # restarted) fails its request once: SQLAlchemy detects the disconnect, drops it and
    # invalidates the connections older than it, so the next requests get fresh ones.
    engine = create_engine(
        url,
        pool_recycle=POOL_RECYCLE_SECONDS,
        pool_size=10,
        max_overflow=10,
        hide_parameters=True,
    )
    event.listen(engine, "before_cursor_execute", _guard_read_only)
    _fresh_pool_after_fork(engine)
    return engine


def _fresh_pool_after_fork(engine: Engine) -> None:
    """A process forked from this one (gunicorn's workers under ``--preload``, which load
    the app once, job thread and all, then fork) starts with a pool of its own. Each would
    otherwise take the parent's pooled connections, the same sockets as the parent and its
    siblings at once: answers read by the wrong process ("prepared statement already
    exists"), 500s, even a crash of gunicorn's master. The child leaves the parent's
    connections open (they are the parent's), as SQLAlchemy's guide to forking says."""
    ref = weakref.ref(engine)

    def forget_the_parents_connections() -> None:
        forked = ref()
        if forked is not None:
            forked.dispose(close=False)

    os.register_at_fork(after_in_child=forget_the_parents_connections)


POOL_RECYCLE_SECONDS = 300

# Keywords of psycopg's connect that are not connection parameters (SQLAlchemy passes some).
_PSYCOPG_OWN_ARGUMENTS = {
    "autocommit",
    "prepare_threshold",
    "context",
    "row_factory",
    "cursor_factory",
}


def url_problem(url: str) -> str | None:
    """Why no engine can be made for ``url``, or its driver would refuse the URL at every
    connection; None if neither. Nothing is connected to.

    The message never holds the URL, nor the password (a driver's reason that does is
    left out).
    """
    import warnings

    from sqlalchemy.engine import URL, make_url
    from sqlalchemy.exc import ArgumentError, SAWarning

    parsed: URL | None
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        parsed = None
    if parsed is None or parsed.get_backend_name() not in ("sqlite", "postgresql"):
        return (
            "must be a sqlite:/// or postgresql:// URL (a bracket left open? a port that is"
            " not a number? @ : / and % in a user name or password are written %-encoded)"
        )
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        return "must name the SQLite database's file: sqlite:///path/to/keygate.db"
    try:
        with warnings.catch_warnings():  # options it ignores: the app's own engine says so
            warnings.simplefilter("ignore", SAWarning)
            engine = make_engine(url)  # what the app does at start: parses the URL's options
            _, options = engine.dialect.create_connect_args(engine.url)
        engine.dispose()
        if engine.dialect.driver == "psycopg":
            _check_psycopg_options(options)
    except (ArgumentError, ValueError, TypeError, ImportError) as exc:  # ImportError: driver
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        given = parsed.query.get("password", ())
        passwords = [parsed.password, *((given,) if isinstance(given, str) else given)]
        if not reason or any(p and p in reason for p in passwords):
            return "has options the database driver refuses"
        return f"has options the database driver refuses ({reason})"
    return None


def _check_psycopg_options(options: Mapping[str, Any]) -> None:
    """What psycopg checks of a connection's options before it connects (their names,
    connect_timeout), raising ValueError for what it would refuse."""
    from psycopg import Error
    from psycopg.conninfo import conninfo_to_dict, make_conninfo, timeout_from_conninfo

    parameters = {k: v for k, v in options.items() if k not in _PSYCOPG_OWN_ARGUMENTS}
    try:
        timeout_from_conninfo(conninfo_to_dict(make_conninfo("", **parameters)))
    except Error as exc:
        raise ValueError(str(exc)) from None


def read_mostly(session: Session, unit: Callable[[], T]) -> T:
    """Run ``unit`` (reads, rarely a write) as cheaply as a read, and correctly if it writes.

    The unit runs in a read-only transaction (module docstring) that ends here, committed;
    loaded objects stay usable (``expire_on_commit=False``). If it would write (a statement
    or a pending ORM change), nothing was written: the transaction is rolled back and the
    unit runs again in the session's ordinary transaction, which the request commits. A
    session already in a transaction just runs the unit in it.
    """
    if session.in_transaction():
        return unit()
    token = _READ_ONLY_BEGIN.set(True)
    try:
        options: dict[str, Any] = {}
        if session.get_bind().dialect.name == "postgresql":
            options["isolation_level"] = "AUTOCOMMIT"
        connection = session.connection(execution_options=options)
        connection.info[_READ_ONLY] = True
        try:
            result = unit()
            session.flush()
        finally:
            connection.info.pop(_READ_ONLY, None)
    except NeedsWrite:
        session.rollback()
    else:
        session.commit()
        return result
    finally:
        _READ_ONLY_BEGIN.reset(token)
    return unit()


@dataclass(frozen=True)
class _Prepared:
    """A SELECT compiled for one dialect, with its parameter order and value converters."""

    sql: str
    positions: tuple[str, ...] | None  # parameter names in order (qmark), None: by name
    binds: Mapping[str, Callable[[Any], Any]]
    results: tuple[Callable[[Any], Any] | None, ...]  # empty: rows come back as they are
    fixed: Mapping[str, Any]  # values the statement carries itself (``count + 1``)

    @classmethod
    def compile(cls, statement: ClauseElement, dialect: Any) -> _Prepared:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        binds = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect))
        }
        results = (
            tuple(
                column.type.dialect_impl(dialect).result_processor(dialect, None)
                for column in statement.selected_columns
            )
            if isinstance(statement, Select)
            else ()
        )
        positions = tuple(compiled.positiontup or ()) if compiled.positional else None
        fixed = {name: value for name, value in compiled.params.items() if value is not None}
        return cls(compiled.string, positions, binds, results, fixed)

    def parameters(self, params: dict[str, Any]) -> Any:
        values = {
            name: self.binds[name](value) if name in self.binds else value
            for name, value in ({**self.fixed, **params} if self.fixed else params).items()
        }
        if self.positions is None:
            return values
        return tuple(values[name] for name in self.positions)

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        if not self.results:
            return tuple(raw)
        return tuple(
            value if process is None else process(value)
            for process, value in zip(self.results, raw, strict=True)
        )


_prepared: dict[tuple[str, ClauseElement], _Prepared] = {}


def _prepare(dialect: Any, statement: ClauseElement) -> _Prepared:
    key = (dialect.name, statement)
    prepared = _prepared.get(key)
    if prepared is None:
        prepared = _prepared[key] = _Prepared.compile(statement, dialect)
    return prepared


class Disconnected(Exception):
    """The database dropped the connection (the original error is chained); the pool that
    held it has been replaced."""


def read_one(
    engine: Engine, statement: Select[*tuple[Any, ...]], params: dict[str, Any]
) -> tuple[Any, ...] | None:
    """The first row of one SELECT, run on a pooled DBAPI connection outside any transaction.

    For the hottest read (license validate). A single statement reads one consistent
    snapshot on both backends, so it needs no BEGIN/COMMIT (autocommit on PostgreSQL: no
    round trips; SQLite connections already run without an implicit transaction). The
    statement is compiled once per dialect, with SQLAlchemy's own bind and result
    converters for its column types (UTC datetimes come back aware); what is skipped is
    the per-call execution machinery, which cost more than the query itself.

    If the database dropped the connection (it restarted; the pool does not ping), every
    pooled connection is as stale: the pool is replaced and the read runs once more.
    """
    try:
        with raw_connection(engine) as raw:
            return raw.one(statement, params)
    except Disconnected:
        pass
    with raw_connection(engine) as raw:
        return raw.one(statement, params)


class RawConnection:
    """Prepared statements on one pooled DBAPI connection (:func:`raw_connection`)."""

    def __init__(self, cursor: Any, dbapi_connection: Any, dialect: Any) -> None:
        self._cursor = cursor
        self._dbapi_connection = dbapi_connection
        self._dialect = dialect

    def run(self, statement: ClauseElement, params: dict[str, Any]) -> int:
        """Execute a statement that returns no rows; its row count."""
        prepared = _prepare(self._dialect, statement)
        self._cursor.execute(prepared.sql, prepared.parameters(params))
        count: int = self._cursor.rowcount
        return count

    def one(self, statement: ClauseElement, params: dict[str, Any]) -> tuple[Any, ...] | None:
        """Execute a statement that returns rows (a SELECT, a RETURNING); its first row.

        Outside :meth:`write`, a statement is its own transaction."""
        prepared = _prepare(self._dialect, statement)
        self._cursor.execute(prepared.sql, prepared.parameters(params))
        raw = self._cursor.fetchone()
        if self._dialect.name != "postgresql":
            self._cursor.fetchall()  # SQLite: the statement ends (and its snapshot) here
        return None if raw is None else prepared.row(raw)

    def write(self, unit: Callable[[RawConnection], T]) -> T:
        """Run ``unit``'s statements as one short write and commit what it returns.

        SQLite: ``BEGIN IMMEDIATE`` ... ``COMMIT``, the lock every writer queues on, held for
        just these statements. PostgreSQL: autocommit, so ``unit`` must make its write one
        self-contained statement (no BEGIN/COMMIT round trips). If ``unit`` raises, nothing
        is committed (:func:`raw_connection` drops the connection)."""
        if self._dialect.name == "postgresql":
            return unit(self)
        self._cursor.execute("BEGIN IMMEDIATE")
        result = unit(self)
        self._dbapi_connection.commit()
        return result


@contextmanager
def raw_connection(engine: Engine) -> Iterator[RawConnection]:
    """A pooled DBAPI connection for one short piece of the hottest work (a validate, a
    download click), outside any session; autocommit on PostgreSQL.

    What SQLAlchemy's execution machinery would add per statement cost more than the
    statements (compiled once per dialect, run with SQLAlchemy's own type converters). If
    anything fails, the connection is dropped (closing it rolls back what was begun); if
    the database had dropped it (it restarted; the pool does not ping), every pooled
    connection is as stale: the pool is replaced and :class:`Disconnected` raised.
    """
    dbapi_error = engine.dialect.loaded_dbapi.Error
    try:
        connection = engine.raw_connection()
    except dbapi_error as exc:  # the pool hands out the driver's own errors: wrap them
        raise DBAPIError.instance(None, None, exc, dbapi_error, dialect=engine.dialect) from exc
    dbapi_connection: Any = connection.driver_connection
    postgres = engine.dialect.name == "postgresql"
    cursor = None
    try:
        if postgres:
            dbapi_connection.autocommit = True
        cursor = connection.cursor()
        try:
            yield RawConnection(cursor, dbapi_connection, engine.dialect)
        finally:
            cursor.close()
        if postgres:
            dbapi_connection.autocommit = False
    except BaseException as exc:
        connection.invalidate()
        if isinstance(exc, dbapi_error) and engine.dialect.is_disconnect(
            exc, dbapi_connection, cursor
        ):
            # A new pool; the old one's idle connections are closed (connections in use in
            # other threads finish their work and go back to the old pool).
            engine.dispose()
            raise Disconnected() from exc
        raise
    finally:
        connection.close()


def survives_a_dropped_connection(view: Callable[P, T]) -> Callable[P, T]:
    """Run ``view`` once more if the database had dropped the connection it got.

    After the database restarts, every pooled connection is dead, and the pool does not ping
    (see ``make_engine``): the first statement of a request fails, SQLAlchemy marks the
    pool's older connections stale, and the request would fail. For views whose work is
    safe to repeat (a webhook delivery converges, license calls are idempotent), that
    statement wrote nothing yet: the session is rolled back and the view runs again on a
    fresh connection. Anything else (a failed COMMIT, whose outcome is unknown, happens
    after the view) is left alone.
    """
    return _run_again_after_a_drop(view, lambda: True)


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def reads_survive_a_dropped_connection(app: Flask) -> None:
    """Every view of ``app`` runs once more after a dropped connection when the request is
    a safe one (GET, HEAD: pages, the portal, downloads), which HTTP lets a server repeat;
    a form or API call that is not marked :func:`survives_a_dropped_connection` is answered
    503 instead (``connector.errors``), and the person or shop sends it again."""
    for endpoint, view in app.view_functions.items():
        app.view_functions[endpoint] = cast(Any, _run_again_after_a_drop(view, _safe_request))


def _safe_request() -> bool:
    return request.method in SAFE_METHODS


def _run_again_after_a_drop(view: Callable[P, T], allowed: Callable[[], bool]) -> Callable[P, T]:
    @functools.wraps(view)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return view(*args, **kwargs)
        except DBAPIError as exc:
            if not exc.connection_invalidated or not allowed():
                raise
            log.warning("database connection was dropped; running the request again")
            db.session.rollback()
        return view(*args, **kwargs)

    return run


class SessionStatements:
    """The :class:`RawConnection` calls, run through ``session``'s connection (in its
    transaction), so one piece of code can run either way."""

    def __init__(self, session: Session) -> None:
        self._connection = session.connection()

    def run(self, statement: ClauseElement, params: dict[str, Any]) -> int:
        result = cast(CursorResult[Any], self._connection.execute(cast(Any, statement), params))
        return result.rowcount

    def one(self, statement: ClauseElement, params: dict[str, Any]) -> tuple[Any, ...] | None:
        row = self._connection.execute(cast(Any, statement), params).first()
        return None if row is None else tuple(row)


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


def lock_row(session: Session, model: type[T], row_id: int, *, keep_key: bool = False) -> T:
    """The row, locked until the transaction ends (``FOR UPDATE`` on PostgreSQL; SQLite
    writers take turns anyway) and read again under the lock, so the session's copy is what
    the database holds now, not what was read before another writer committed.

    ``keep_key``: ``FOR NO KEY UPDATE`` (the row will not be deleted nor its id changed),
    which other writers of the row wait for as for ``FOR UPDATE``, but not a foreign-key
    check of a row that refers to it (``FOR KEY SHARE``): a writer holding a lock that this
    transaction will want next, and writing such a row, is not kept waiting (a deadlock)."""
    return session.execute(
        select(model)
        .where(model.id == row_id)  # type: ignore[attr-defined]
        .with_for_update(key_share=keep_key)
        .execution_options(populate_existing=True)
    ).scalar_one()


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
