"""Shared fixtures: a real database per backend, an app per test, loopback-only network.

Every test that takes ``app`` (or anything built on it) runs on SQLite and on PostgreSQL
(127.0.0.1:5432). ``KEYGATE_TEST_DATABASES=sqlite`` narrows that on purpose; a PostgreSQL
that is asked for and not running fails the run, it never skips silently.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from connector import create_app
from connector.db import Base, db, make_engine
from connector.jobs import stop_worker_thread
from connector.migrate import upgrade
from connector.stores import NewStore, create_store
from tests.factories import WebhookSender
from tests.localstack import localstack_endpoint  # noqa: F401 - a session fixture
from tests.peers import FakeBrevo, fake_brevo

MASTER_KEY = Fernet.generate_key().decode()
SECRET_KEY = "test-secret-" + "x" * 40
PG_ADMIN_URL = os.environ.get(
    "KEYGATE_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = [
    b.strip()
    for b in os.environ.get("KEYGATE_TEST_DATABASES", "sqlite,postgresql").split(",")
    if b.strip()
]


# --- network: loopback only ------------------------------------------------------------

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        try:
            allowed = ipaddress.ip_address(host).is_loopback
        except ValueError:
            allowed = host == "localhost"
        if not allowed:
            raise ConnectionRefusedError(f"tests may not reach {host}: only 127.0.0.1 peers")
    return _real_connect(self, address)


@pytest.fixture(autouse=True, scope="session")
def _no_outside_network() -> Iterator[None]:
    socket.socket.connect = _loopback_only  # type: ignore[method-assign]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]


# --- databases ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating once keeps tests fast)."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test process, migrated once, dropped at the end."""
    name = f"keygate_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(
            f"PostgreSQL at {PG_ADMIN_URL} is not reachable ({type(exc).__name__}); start it, "
            "or set KEYGATE_TEST_DATABASES=sqlite to run SQLite only",
            pytrace=False,
        )
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate_postgres(url: str) -> None:
    engine = make_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    backend = request.param
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        target = tmp_path / "keygate.db"
        shutil.copy(template, target)
        yield f"sqlite:///{target}"
    elif backend == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        yield url
        _truncate_postgres(url)
    else:
        raise ValueError(f"unknown backend {backend}")


def app_overrides(tmp_path: Path, database_url: str, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "instance_dir": tmp_path / "instance",
        "database_url": database_url,
        "master_keys": [MASTER_KEY],
        "secret_key": SECRET_KEY,
        "worker": "off",
        "mail_echo": False,
        "base_url": "http://keygate.test",
        "start_worker": False,
        # Never Brevo itself: saving Brevo settings tries them (a closed port answers at once).
        "brevo_api_host": "http://127.0.0.1:9/v3",
    }
    values.update(extra)
    return values


@pytest.fixture
def app_settings() -> dict[str, Any]:
    """Settings of ``app`` beyond the test ones (a test module overrides this fixture)."""
    return {}


@pytest.fixture
def app(tmp_path: Path, database_url: str, app_settings: dict[str, Any]) -> Iterator[Flask]:
    (tmp_path / "instance" / "files").mkdir(parents=True)
    application = create_app(app_overrides(tmp_path, database_url, **app_settings))
    application.config["TESTING"] = True
    yield application
    stop_worker_thread(application)
    engine = application.extensions["keygate.db"].engine
    engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def new_store(app: Flask) -> NewStore:
    with app.app_context():
        created = create_store(db.session, "Test Shop", "https://shop.example")
        db.session.commit()
        return created


@pytest.fixture
def shop(client: FlaskClient, new_store: NewStore) -> WebhookSender:
    """Posts WooCommerce-signed webhooks and calls the admin API for ``new_store``."""
    return WebhookSender(client, new_store)


@pytest.fixture
def brevo() -> Iterator[FakeBrevo]:
    """A local HTTP server standing in for Brevo's API, which the real SDK talks to."""
    with fake_brevo() as server:
        yield server


@pytest.fixture
def brevo_app(tmp_path: Path, database_url: str, brevo: FakeBrevo) -> Iterator[Flask]:
    """An app whose stores mail through the fake Brevo (once given Brevo credentials)."""
    (tmp_path / "instance" / "files").mkdir(parents=True)
    application = create_app(app_overrides(tmp_path, database_url, brevo_api_host=brevo.host))
    yield application
    stop_worker_thread(application)
    application.extensions["keygate.db"].engine.dispose()
