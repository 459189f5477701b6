"""``GET /healthz``: a load balancer's and a monitor's question, answered without secrets."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from flask import Flask

from connector.db import transaction, utcnow
from connector.models import Job
from tests.peers import drop_database_connections, unreachable_database


def _add_job(app: Flask, status: str, **when: dt.datetime) -> None:
    with app.app_context(), transaction() as session:
        session.add(Job(kind="mail.order_issued", payload={"order_id": 0}, status=status, **when))


def test_a_server_with_its_database_is_healthy(app: Flask) -> None:
    answer = app.test_client().get("/healthz")
    assert answer.status_code == 200
    assert answer.get_json() == {"status": "ok", "database": "ok", "jobs": "ok"}
    assert answer.headers["Cache-Control"] == "no-store"
    drop_database_connections(app)  # a restart: the next check reconnects
    assert app.test_client().get("/healthz").status_code == 200


def test_jobs_no_worker_takes_are_late_but_the_server_stays_in_rotation(app: Flask) -> None:
    """Due jobs waiting a while (a job just due, or one due later, is not late), or a job
    whose worker stopped and nobody took over: "late", still 200."""
    client = app.test_client()
    now = utcnow()
    _add_job(app, "pending", run_after=now - dt.timedelta(minutes=2))
    _add_job(app, "pending", run_after=now + dt.timedelta(hours=1))
    _add_job(app, "running", locked_until=now - dt.timedelta(minutes=1))
    _add_job(app, "dead", run_after=now - dt.timedelta(days=2))
    _add_job(app, "done", run_after=now - dt.timedelta(days=2))
    assert client.get("/healthz").get_json()["jobs"] == "ok"

    _add_job(app, "running", locked_until=now - dt.timedelta(minutes=11))
    answer = client.get("/healthz")
    assert answer.status_code == 200 and answer.get_json()["jobs"] == "late"
    with app.app_context(), transaction() as session:
        for job in session.query(Job).filter(Job.status == "running"):
            job.status = "done"
    assert client.get("/healthz").get_json()["jobs"] == "ok"
    _add_job(app, "pending", run_after=now - dt.timedelta(minutes=11))
    assert client.get("/healthz").get_json()["jobs"] == "late"


def test_a_server_whose_database_is_out_of_reach_is_503(
    app: Flask, database_url: str, tmp_path: Path
) -> None:
    with unreachable_database(app, database_url, tmp_path):
        answer = app.test_client().get("/healthz")
        assert answer.status_code == 503 and answer.mimetype == "application/problem+json"
        assert answer.get_json()["status"] == 503
        assert answer.headers["Retry-After"] == "5"
    assert app.test_client().get("/healthz").status_code == 200
