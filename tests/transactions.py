"""Races of real transactions: a request made while another transaction holds what it needs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from flask import Flask
from sqlalchemy import Connection, text

T = TypeVar("T")


def while_another_transaction(
    app: Flask, change: Callable[[Connection], None], request: Callable[[], T]
) -> T:
    """Make ``request`` (in a thread) while another transaction has made ``change`` and not
    yet committed it; that one commits once the request waits on a lock (PostgreSQL), or
    after half a second (SQLite, where the request's BEGIN IMMEDIATE waits for it). The
    request's answer."""
    engine = app.extensions["keygate.db"].engine
    postgres = engine.dialect.name == "postgresql"
    answers: list[T] = []
    with engine.connect() as connection:
        change(connection)
        thread = threading.Thread(target=lambda: answers.append(request()))
        thread.start()
        wait_for_a_lock_wait(connection, thread, 10 if postgres else 0.5)
        connection.commit()
    thread.join(timeout=30)
    assert answers, "the request did not answer"
    return answers[0]


def wait_for_a_lock_wait(connection: Connection, thread: threading.Thread, seconds: float) -> None:
    """Return once another transaction waits on a lock (PostgreSQL), ``thread`` has ended,
    or ``seconds`` have passed (SQLite, where nothing waits on a row lock)."""
    postgres = connection.dialect.name == "postgresql"
    deadline = time.monotonic() + seconds
    while thread.is_alive() and time.monotonic() < deadline:
        if postgres and connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"
            )
        ):
            return
        time.sleep(0.01)
