"""The owner's sign-in limits: per account whatever the address, counted before any password
is checked, and the record a lockout leaves for the owner."""

from __future__ import annotations

import threading

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from connector.db import db
from connector.models import AuditEvent, SecurityEvent
from tests.functional.test_admin_pages import PASSWORD, admin_client, csrf_token

__all__ = ["admin_client"]  # a fixture the tests below use

ACCOUNT_LIMIT = 20  # sign-ins an hour per account that do not succeed (connector.admin)


def test_concurrent_guesses_stop_at_the_account_limit(
    app: Flask, admin_client: FlaskClient
) -> None:
    """20 failed sign-ins an hour per account "whatever the address": guesses sent at the
    same moment from many addresses get no more password checks than that."""
    guesses = ACCOUNT_LIMIT + 6
    clients = [app.test_client() for _ in range(guesses)]
    tokens = [csrf_token(client, "/admin/login") for client in clients]
    start = threading.Barrier(guesses)
    statuses: list[int] = []

    def guess(n: int) -> None:
        start.wait()
        answer = clients[n].post(
            "/admin/login",
            data={"username": "owner", "password": f"guess {n}", "csrf_token": tokens[n]},
            environ_base={"REMOTE_ADDR": f"198.51.100.{n + 1}"},
        )
        statuses.append(answer.status_code)

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(guesses)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(set(statuses)) <= [401, 429]
    checked = statuses.count(401)  # a 401 is a password that was checked and was wrong
    assert checked <= ACCOUNT_LIMIT, f"{checked} passwords checked, the limit is {ACCOUNT_LIMIT}"


def test_a_sign_in_lockout_leaves_a_record_for_the_owner(
    app: Flask, admin_client: FlaskClient
) -> None:
    """An account locked by failed sign-ins (then refused even with the right password)
    leaves a security record or audit entry: the owner can see why, and that someone guessed
    (DESIGN: rate-limit events are kept, as the license API keeps its own)."""
    token = csrf_token(admin_client, "/admin/login")

    def attempt(password: str, n: int) -> int:
        form = {"username": "owner", "password": password, "csrf_token": token}
        environ = {"REMOTE_ADDR": f"198.51.100.{n + 1}"}
        return admin_client.post("/admin/login", data=form, environ_base=environ).status_code

    assert [attempt("wrong", n) for n in range(ACCOUNT_LIMIT)] == [401] * ACCOUNT_LIMIT
    assert attempt(PASSWORD, 200) == 429  # the owner is locked out now
    with app.app_context():
        security = db.session.scalar(
            select(func.count())
            .select_from(SecurityEvent)
            .where(SecurityEvent.path.like("/admin/login%"))
        )
        audited = db.session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action.like("admin.login%"), AuditEvent.action != "admin.login")
        )
    assert (security or 0) + (audited or 0) > 0, "no record of 20 failed sign-ins and a lockout"
