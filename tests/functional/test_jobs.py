"""The outbox: jobs commit with their data, retry with backoff, run once even when shared."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, update

from connector import jobs
from connector.db import db, transaction, utcnow
from connector.models import AuditEvent, Job, Mail
from tests.factories import WebhookSender, line_item, wc_order

CALLS: list[dict[str, Any]] = []


@pytest.fixture(autouse=True)
def _test_handlers() -> Iterator[None]:
    CALLS.clear()

    def ok(payload: dict[str, Any]) -> None:
        CALLS.append(payload)

    def flaky(payload: dict[str, Any]) -> None:
        CALLS.append(payload)
        raise jobs.RetryLater("peer is down")

    def broken(payload: dict[str, Any]) -> None:
        raise RuntimeError("bug")

    jobs.HANDLERS.update({"test.ok": ok, "test.flaky": flaky, "test.broken": broken})
    yield
    for kind in ("test.ok", "test.flaky", "test.broken"):
        jobs.HANDLERS.pop(kind, None)


def job(app: Flask, kind: str) -> Job:
    with app.app_context():
        return db.session.execute(select(Job).where(Job.kind == kind)).scalar_one()


def test_a_job_rolled_back_with_its_data_never_runs(app: Flask) -> None:
    with app.app_context():
        jobs.enqueue(db.session, "test.ok", {"n": 1})
        db.session.rollback()
    assert jobs.run_pending(app) == 0
    assert CALLS == []


def test_a_job_runs_once_and_gets_its_payload(app: Flask) -> None:
    with app.app_context(), transaction() as session:
        jobs.enqueue(session, "test.ok", {"n": 1})
    assert jobs.run_pending(app) == 1
    assert jobs.run_pending(app) == 0
    assert [c["n"] for c in CALLS] == [1]
    assert job(app, "test.ok").status == "done"


def test_dedupe_key_makes_a_second_enqueue_a_no_op(app: Flask) -> None:
    with app.app_context(), transaction() as session:
        jobs.enqueue(session, "test.ok", {"n": 1}, dedupe_key="same")
        jobs.enqueue(session, "test.ok", {"n": 2}, dedupe_key="same")
    jobs.run_pending(app)
    assert [c["n"] for c in CALLS] == [1]


def test_a_job_that_released_its_dedupe_key_is_queued_again_once_it_ran(app: Flask) -> None:
    """A question answered as of when the job runs (a read of the shop): asked again while
    the job is queued, it is the same job; asked after the job ran, it is another. A job
    that keeps its key is queued once ever."""
    ran: list[tuple[str, int]] = []

    def reads(payload: dict[str, Any]) -> None:
        ran.append(("reads", payload["n"]))
        jobs.release_dedupe_key(db.session, payload)

    jobs.HANDLERS.update({"test.reads": reads, "test.once": lambda p: ran.append(("once", p["n"]))})
    try:
        for n, then_run in ((1, True), (2, False), (3, True)):
            with app.app_context(), transaction() as session:
                jobs.enqueue(session, "test.reads", {"n": n}, dedupe_key="asked")
                jobs.enqueue(session, "test.once", {"n": n}, dedupe_key="once")
            if then_run:
                jobs.run_pending(app)
    finally:
        for kind in ("test.reads", "test.once"):
            jobs.HANDLERS.pop(kind)
    assert ran == [("reads", 1), ("once", 1), ("reads", 2)]


def test_failures_retry_with_backoff_then_die(app: Flask) -> None:
    with app.app_context(), transaction() as session:
        jobs.enqueue(session, "test.flaky", {})
    before = utcnow()
    assert jobs.run_pending(app) == 1
    flaky = job(app, "test.flaky")
    assert flaky.status == "pending"
    assert flaky.attempts == 1
    assert flaky.run_after >= before + dt.timedelta(seconds=4)
    assert "peer is down" in (flaky.last_error or "")
    # Not due yet: nothing runs.
    assert jobs.run_pending(app) == 0
    max_attempts = app.extensions["keygate.settings"].job_max_attempts
    for _ in range(max_attempts - 1):
        with app.app_context(), transaction() as session:
            row = session.get(Job, flaky.id)
            assert row is not None
            row.run_after = utcnow() - dt.timedelta(seconds=1)
        jobs.run_pending(app)
    dead = job(app, "test.flaky")
    assert dead.status == "dead"
    assert dead.attempts == max_attempts
    assert len(CALLS) == max_attempts


def test_retrying_a_job_no_longer_dead_changes_nothing(app: Flask) -> None:
    """The owner's second click (or a second admin's), landing after the first retry's
    job was claimed by a worker, neither resets that running attempt (a second worker would
    run it beside the first) nor says it retried it."""
    with app.app_context(), transaction() as session:
        jobs.enqueue(session, "test.ok", {})
        session.flush()
        row = session.execute(select(Job)).scalar_one()
        row.status, row.attempts, row.locked_until = "running", 1, utcnow() + jobs.LEASE
    with app.app_context(), transaction() as session:
        row = session.execute(select(Job)).scalar_one()
        assert not jobs.retry_dead(session, row, store_id=None, actor="owner")
    with app.app_context():
        row = db.session.execute(select(Job)).scalar_one()
        assert (row.status, row.attempts) == ("running", 1)
        retried = select(AuditEvent).where(AuditEvent.action == "job.retried")
        assert db.session.scalars(retried).all() == []


def test_a_dead_job_retried_by_the_owner_gets_all_its_attempts_again(app: Flask) -> None:
    """The owner's retry takes a dead job up from its first attempt: a failure then is
    retried with backoff, as at first, not given up on again at once."""
    with app.app_context(), transaction() as session:
        jobs.enqueue(session, "test.flaky", {})
        session.flush()
        row = session.execute(select(Job)).scalar_one()
        row.status = "dead"
        row.attempts = app.extensions["keygate.settings"].job_max_attempts
    with app.app_context(), transaction() as session:
        row = session.execute(select(Job)).scalar_one()
        assert jobs.retry_dead(session, row, store_id=None, actor="owner")
    assert jobs.run_pending(app) == 1
    retried = job(app, "test.flaky")
    assert (retried.status, retried.attempts) == ("pending", 1)
    assert len(CALLS) == 1


def test_backoff_grows_and_is_capped() -> None:
    assert [jobs.backoff(n).total_seconds() for n in (1, 2, 3)] == [5, 10, 20]
    assert jobs.backoff(30).total_seconds() == 3600


def test_a_job_is_retried_through_an_outage_of_hours(app: Flask) -> None:
    """With the default attempts, a job keeps being retried for more than eight hours (a
    Brevo, R2 or shop outage of a night) before it is dead."""
    attempts = app.extensions["keygate.settings"].job_max_attempts
    window = sum(jobs.backoff(n).total_seconds() for n in range(1, attempts))
    assert window > 8 * 3600


def test_a_crashed_workers_job_is_taken_over_after_its_lease(app: Flask) -> None:
    with app.app_context(), transaction() as session:
        jobs.enqueue(session, "test.ok", {"n": 7})
        session.flush()
        row = session.execute(select(Job)).scalar_one()
        row.status = "running"
        row.locked_until = utcnow() - dt.timedelta(seconds=1)
    assert jobs.run_pending(app) == 1
    assert [c["n"] for c in CALLS] == [7]


def test_a_job_that_stops_its_worker_every_time_dies_after_its_last_attempt(app: Flask) -> None:
    """A job that kills its worker (memory, a native crash) is never finished by anyone; after
    its last attempt's lease ends it is dead and says why, instead of being taken forever."""
    max_attempts = app.extensions["keygate.settings"].job_max_attempts
    with app.app_context(), transaction() as session:
        jobs.enqueue(session, "test.ok", {"n": 7})
        session.flush()
        row = session.execute(select(Job)).scalar_one()
        row.status = "running"
        row.attempts = max_attempts
        row.locked_until = utcnow() - dt.timedelta(seconds=1)
    assert jobs.run_pending(app) == 0
    assert CALLS == []
    dead = job(app, "test.ok")
    assert (dead.status, dead.attempts, dead.locked_until) == ("dead", max_attempts, None)
    assert dead.last_error == f"Interrupted: the worker stopped during attempt {max_attempts}"
    with app.app_context():
        [event] = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "job.dead"))
        assert (event.subject, event.detail["error"]) == (f"job:{dead.id}", "Interrupted")


def taken_over() -> tuple[jobs.Claim, jobs.Claim]:
    """A "test.ok" job claimed, its lease run out, and claimed again: the two claims."""
    with transaction() as session:
        jobs.enqueue(session, "test.ok", {"n": 1})
    first = jobs._claim_one(None)
    assert first is not None
    with transaction() as session:
        row = session.get(Job, first.job_id)
        assert row is not None
        row.locked_until = utcnow() - dt.timedelta(seconds=1)
    second = jobs._claim_one(None)
    assert second is not None and second.attempt == first.attempt + 1
    return first, second


def test_a_worker_whose_lease_ran_out_does_not_overwrite_the_new_owner(app: Flask) -> None:
    """Worker A runs past its lease; worker B takes the job over. A's late result must not
    mark B's running job pending (to run a third time) or done while B still works."""
    with app.app_context():
        first, second = taken_over()
        jobs._finish(first, RuntimeError("late failure"))
        taken = job(app, "test.ok")
        assert (taken.status, taken.attempts) == ("running", 2)
        assert taken.last_error == "Interrupted: the worker stopped during attempt 1"
        jobs._finish(second, None)
    finished = job(app, "test.ok")
    assert (finished.status, finished.last_error) == ("done", None)


def test_a_late_result_of_a_last_attempt_given_up_on_is_not_recorded(app: Flask) -> None:
    """Worker A runs the job's last attempt past its lease; worker B finds it abandoned and
    buries it (dead, the owner told). A's late result does not turn it into done behind the
    owner's back: the outbox shows what the owner was told, and its Retry stays offered."""
    with_settings(app, job_max_attempts=1)
    with app.app_context():
        with transaction() as session:
            jobs.enqueue(session, "test.ok", {"n": 1})
        claim = jobs._claim_one(None)
        assert claim is not None
        with transaction() as session:
            row = session.get(Job, claim.job_id)
            assert row is not None
            row.locked_until = utcnow() - dt.timedelta(seconds=1)
        assert jobs._claim_one(None) is None  # buried: its last attempt was interrupted
        jobs._finish(claim, None)
    buried = job(app, "test.ok")
    assert (buried.status, buried.attempts) == ("dead", 1)
    assert buried.last_error == "Interrupted: the worker stopped during attempt 1"


def test_two_workers_never_run_the_same_job(app: Flask) -> None:
    """Claims are exclusive: 40 jobs, two threads, 40 calls."""
    with app.app_context(), transaction() as session:
        for n in range(40):
            jobs.enqueue(session, "test.ok", {"n": n})
    threads = [threading.Thread(target=jobs.run_pending, args=(app,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(c["n"] for c in CALLS) == list(range(40))


def test_the_server_thread_mails_without_being_asked(app: Flask, shop: WebhookSender) -> None:
    """With the in-process worker, a paid order's mail goes out after the webhook commits."""
    app.extensions["keygate.settings"] = app.extensions["keygate.settings"].__class__(
        **{**app.extensions["keygate.settings"].__dict__, "worker_poll_seconds": 0.2}
    )
    jobs.start_worker_thread(app)
    try:
        shop.configure(501)
        shop.deliver(wc_order(9100, "processing", [line_item(501)]))
        deadline = time.monotonic() + 10
        sent = None
        while time.monotonic() < deadline:
            with app.app_context():
                sent = db.session.execute(select(Mail.sent_at)).scalar_one_or_none()
            if sent is not None:
                break
            time.sleep(0.1)
        assert sent is not None
    finally:
        jobs.stop_worker_thread(app)


def test_an_idle_worker_sleeps_between_polls(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing to do: the worker looks once per poll interval. Re-queuing the periodic jobs
    that are already queued wakes nobody (it once woke the loop at once, for ever: a core
    and a database busy on an idle Keygate)."""
    app.extensions["keygate.settings"] = app.extensions["keygate.settings"].__class__(
        **{**app.extensions["keygate.settings"].__dict__, "worker_poll_seconds": 0.5}
    )
    jobs.schedule_periodic(app)
    jobs._wakeup.clear()
    jobs.schedule_periodic(app)  # the same slots: nothing new
    assert not jobs._wakeup.is_set()

    passes = []
    scheduled = jobs.schedule_periodic
    monkeypatch.setattr(
        jobs, "schedule_periodic", lambda app: (passes.append(1), scheduled(app))[1]
    )
    jobs.start_worker_thread(app)
    try:
        time.sleep(1.6)
    finally:
        jobs.stop_worker_thread(app)
    assert 1 <= len(passes) <= 5


def test_polling_workers_spend_no_job_ids(app: Flask) -> None:
    """Every poll of every worker asks for the periodic jobs of the current slot, which are
    queued already: that takes no job id (on PostgreSQL a conflicting INSERT still draws
    one from the sequence, and many workers polling often would run 4-byte ids out within
    months, after which no order could queue its mail)."""
    jobs.schedule_periodic(app)
    with app.app_context():
        before = db.session.scalar(select(func.max(Job.id)))
    for _ in range(50):
        jobs.schedule_periodic(app)
    with app.app_context(), transaction() as session:
        jobs.enqueue(session, "test.ok", {"n": 1})
    with app.app_context():
        after = db.session.scalar(select(func.max(Job.id)))
    assert before is not None and after == before + 1


def with_settings(app: Flask, **values: Any) -> None:
    settings = app.extensions["keygate.settings"]
    app.extensions["keygate.settings"] = settings.__class__(**{**settings.__dict__, **values})


def test_periodic_jobs_are_queued_once_per_slot(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every poll asks for the periodic jobs, but each runs once per interval: polls
    within an hour queue the hourly one once, the next hour queues it again."""
    hour = utcnow().replace(minute=0, second=0, microsecond=0)
    for moment in (hour, hour + dt.timedelta(minutes=30), hour + dt.timedelta(minutes=59)):
        monkeypatch.setattr(jobs, "utcnow", lambda moment=moment: moment)
        jobs.schedule_periodic(app)
    hourly = select(func.count()).where(Job.kind == "shop.keep_schedules")
    with app.app_context():
        assert db.session.scalar(hourly) == 1
    monkeypatch.setattr(jobs, "utcnow", lambda: hour + dt.timedelta(minutes=61))
    jobs.schedule_periodic(app)
    with app.app_context():
        assert db.session.scalar(hourly) == 2


def test_a_committed_job_wakes_the_sleeping_worker_at_once(app: Flask) -> None:
    """A job runs as soon as the transaction that queued it commits, not at the worker's
    next poll."""
    with_settings(app, worker_poll_seconds=60)
    jobs.start_worker_thread(app)
    try:
        time.sleep(1)  # the periodic jobs are run, the worker sleeps
        with app.app_context(), transaction() as session:
            jobs.enqueue(session, "test.ok", {"n": 3})
        deadline = time.monotonic() + 10
        while not CALLS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [c["n"] for c in CALLS] == [3]
    finally:
        jobs.stop_worker_thread(app)


def test_a_stopped_worker_finishes_the_job_in_hand_and_starts_no_other(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Told to stop (SIGTERM, Ctrl-C) with a backlog, the worker finishes the job in hand
    and takes no new one: the others stay pending for the next worker, instead of being
    started until the supervisor's kill cuts one off (which then sits "running" for its
    lease and counts as a failed attempt)."""
    stop = threading.Event()

    def stopped_meanwhile(payload: dict[str, Any]) -> None:
        CALLS.append(payload)
        stop.set()  # SIGTERM arrives while the first job runs

    monkeypatch.setitem(jobs.HANDLERS, "test.stopped_meanwhile", stopped_meanwhile)
    with app.app_context(), transaction() as session:
        for n in range(5):
            jobs.enqueue(session, "test.stopped_meanwhile", {"n": n})
    with_settings(app, worker_poll_seconds=0.1)
    worker = threading.Thread(target=jobs.work_forever, args=(app, stop))
    worker.start()
    worker.join(20)
    assert not worker.is_alive()
    assert [c["n"] for c in CALLS] == [0]
    with app.app_context():
        statuses = db.session.scalars(
            select(Job.status).where(Job.kind == "test.stopped_meanwhile").order_by(Job.id)
        ).all()
    assert statuses == ["done", "pending", "pending", "pending", "pending"]


def test_a_sleeping_worker_stops_at_once(app: Flask) -> None:
    """A worker waiting for work stops as soon as it is told to, not at its next poll."""
    with_settings(app, worker_poll_seconds=60)
    stop = threading.Event()
    worker = threading.Thread(target=jobs.work_forever, args=(app, stop))
    worker.start()
    time.sleep(1)  # the periodic jobs are run, the worker sleeps
    stop.set()
    worker.join(10)
    assert not worker.is_alive()


@pytest.mark.parametrize("max_attempts", [20, 1])
def test_a_worker_told_twice_to_stop_cuts_its_job_off_and_queues_it_again(
    app: Flask,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    max_attempts: int,
) -> None:
    """The first Ctrl-C (or SIGTERM) lets the job in hand finish; a second, for a job stuck
    on a peer that does not answer, stops the worker at once. The job goes back to the
    queue (its attempt spent), instead of sitting "running" until its lease runs out; on its
    last attempt too, not given up on (dead) for the worker's stop."""
    from connector.cli import stop_on_signals

    stop = threading.Event()

    def stuck(payload: dict[str, Any]) -> None:
        CALLS.append(payload)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs: the job may finish
        CALLS.append({"told": stop.is_set()})
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # a peer that does not answer
        CALLS.append({"not": "cut off"})

    monkeypatch.setitem(jobs.HANDLERS, "test.stuck", stuck)
    with app.app_context(), transaction() as session:
        jobs.enqueue(session, "test.stuck", {"n": 1})
    with_settings(app, worker_poll_seconds=0.1, job_max_attempts=max_attempts)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        stop_on_signals(stop)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            jobs.work_forever(app, stop)
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    assert time.monotonic() - started < 8
    assert [call.get("n", call) for call in CALLS] == [1, {"told": True}]
    assert "Ctrl-C again to stop at once" in capfd.readouterr().err
    with app.app_context():
        job = db.session.scalars(select(Job).where(Job.kind == "test.stuck")).one()
        assert (job.status, job.attempts, job.locked_until) == ("pending", 1, None)
        assert job.last_error == "RetryLater: the worker was stopped during the job"
        assert job.run_after > utcnow()


def test_keygate_worker_stops_at_once_on_sigterm(tmp_path: Path) -> None:
    """`keygate worker` stopped by SIGTERM (a service manager, a container) while it waits
    for work exits at once and cleanly, instead of sitting out its poll interval."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env["KEYGATE_INSTANCE_DIR"] = str(tmp_path / "instance")
    env["KEYGATE_WORKER_POLL_SECONDS"] = "60"
    command = [sys.executable, "-m", "connector.cli"]
    init = subprocess.run(
        [*command, "init"], env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=60
    )
    assert init.returncode == 0, init.stderr
    worker = subprocess.Popen(
        [*command, "worker"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Its first pass runs the periodic jobs; then it sleeps.
        database = sqlite3.connect(tmp_path / "instance" / "keygate.db")
        deadline = time.monotonic() + 30
        done = 0
        while done < len(jobs.PERIODIC) and time.monotonic() < deadline:
            time.sleep(0.1)
            done = database.execute("SELECT count(*) FROM jobs WHERE status = 'done'").fetchone()[0]
        database.close()
        assert done == len(jobs.PERIODIC)
        time.sleep(0.5)
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert time.monotonic() - started < 10
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def two_workers_for(app: Flask, seconds: float) -> None:
    """Two workers (threads) run the due jobs, again and again, for ``seconds``."""
    deadline = time.monotonic() + seconds

    def worker() -> None:
        while time.monotonic() < deadline:
            jobs.run_pending(app)
            time.sleep(0.02)

    workers = [threading.Thread(target=worker) for _ in range(2)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()


def test_a_job_longer_than_its_lease_runs_once_and_is_done(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that runs longer than its lease (a first reconciliation of a big shop, a store's
    bucket being emptied, the daily purge) keeps it while it runs: another worker never takes
    it over, so it runs once, is done, and is not buried as interrupted. Scaled down: a
    0.4 s lease, a 1 s job, two workers, 3 attempts."""
    monkeypatch.setattr(jobs, "LEASE", dt.timedelta(seconds=0.4))
    with_settings(app, job_max_attempts=3)

    def long_but_fine(payload: dict[str, Any]) -> None:
        CALLS.append(payload)
        time.sleep(1)

    monkeypatch.setitem(jobs.HANDLERS, "test.long", long_but_fine)
    with app.app_context(), transaction() as session:
        jobs.enqueue(session, "test.long", {})
    two_workers_for(app, 2.5)
    row = job(app, "test.long")
    assert (row.status, row.attempts, row.last_error, len(CALLS)) == ("done", 1, None, 1)


def test_a_job_that_commits_as_it_goes_keeps_its_lease(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler that commits its work in steps (as the store deletion and the purge do)
    keeps its lease across them: the renewals are not made in its session."""
    monkeypatch.setattr(jobs, "LEASE", dt.timedelta(seconds=0.3))

    def in_steps(payload: dict[str, Any]) -> None:
        CALLS.append(payload)
        for step in range(3):
            db.session.execute(
                update(Job).where(Job.id == payload[jobs.JOB_ID]).values(last_error=f"{step}")
            )
            db.session.commit()
            time.sleep(0.3)

    monkeypatch.setitem(jobs.HANDLERS, "test.in_steps", in_steps)
    with app.app_context(), transaction() as session:
        jobs.enqueue(session, "test.in_steps", {})
    two_workers_for(app, 2)
    row = job(app, "test.in_steps")
    assert (row.status, row.attempts, len(CALLS)) == ("done", 1, 1)


def test_a_job_holding_its_write_open_is_not_held_up_by_its_lease(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler that keeps a write open past a renewal (on SQLite the database's one write
    lock; on PostgreSQL its own job's row) finishes as soon as it is done: the renewal
    waiting for that write never makes the handler wait in turn."""
    monkeypatch.setattr(jobs, "LEASE", dt.timedelta(seconds=0.2))

    def holding(payload: dict[str, Any]) -> None:
        CALLS.append(payload)
        db.session.execute(
            update(Job).where(Job.id == payload[jobs.JOB_ID]).values(last_error="working")
        )
        time.sleep(0.5)  # renewals are due meanwhile, and wait for this write

    monkeypatch.setitem(jobs.HANDLERS, "test.holding", holding)
    with app.app_context(), transaction() as session:
        jobs.enqueue(session, "test.holding", {})
    worker = threading.Thread(target=jobs.run_pending, args=(app,), daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(10)
    assert not worker.is_alive()
    assert time.monotonic() - started < 5
    row = job(app, "test.holding")
    assert (row.status, row.attempts, len(CALLS)) == ("done", 1, 1)


def test_a_lease_is_renewed_only_for_its_own_attempt(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker whose lease ran out (its renewals failed: the database away from it) and
    whose job another worker took over never extends the new owner's lease."""
    monkeypatch.setattr(jobs, "LEASE", dt.timedelta(seconds=0.2))
    with app.app_context():
        first, second = taken_over()
        granted = job(app, "test.ok").locked_until
        with jobs._lease_kept(first, db.engine):
            time.sleep(0.3)  # a few renewals of the first claim would be due
        assert job(app, "test.ok").locked_until == granted
        with jobs._lease_kept(second, db.engine):
            time.sleep(0.3)
        renewed = job(app, "test.ok").locked_until
        assert granted is not None and renewed is not None and renewed > granted


def test_a_forked_process_never_takes_its_parents_pooled_connections(app: Flask) -> None:
    """gunicorn --preload forks its workers from a master whose job thread has connections
    pooled: a worker handed one of them would talk over the master's socket (on PostgreSQL:
    answers read by the wrong process, "prepared statement already exists", 500s)."""
    with app.app_context():
        pooled = db.engine.raw_connection()
        parents = pooled.driver_connection  # kept: its id stays its own in the child
        pooled.close()  # back in the pool, as between two polls of the job thread
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            with app.app_context():
                taken = db.engine.raw_connection()
                os.write(write, b"shared" if taken.driver_connection is parents else b"own")
        finally:
            os._exit(0)
    os.close(write)
    said = os.read(read, 16)
    os.close(read)
    os.waitpid(child, 0)
    assert said == b"own"


def test_gunicorn_preload_workers_each_get_their_own_connections_and_job_thread(
    tmp_path: Path, database_url: str
) -> None:
    """`gunicorn --preload` loads the app (its job thread started, polling) once in the
    master, then forks: every worker answers from connections of its own (not the master's
    pooled sockets, which answered for the wrong process: 500s, a crashed master), and each
    runs jobs as it does without --preload. (PostgreSQL: SQLite is one file, served by one
    process: its locks do not survive a fork made while a thread writes.)"""
    if not database_url.startswith("postgresql"):
        pytest.skip("several server processes share PostgreSQL, not SQLite")
    from tests.conftest import MASTER_KEY, SECRET_KEY
    from tests.licensing_helpers import free_port, wait_until_serving

    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    (tmp_path / "instance").mkdir()
    env |= {
        "KEYGATE_INSTANCE_DIR": str(tmp_path / "instance"),
        "KEYGATE_DATABASE_URL": database_url,
        "KEYGATE_MASTER_KEYS": MASTER_KEY,
        "KEYGATE_SECRET_KEY": SECRET_KEY,
        "KEYGATE_BASE_URL": "http://keygate.test",
        "KEYGATE_WORKER_POLL_SECONDS": "0.1",  # the master's thread polls all along
    }
    port = free_port()
    gunicorn = Path(sys.executable).parent / "gunicorn"
    server = subprocess.Popen(
        [str(gunicorn), "--preload", "-w", "3", "-b", f"127.0.0.1:{port}", "connector.wsgi:app"],
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    import http.client

    answers: list[int] = []
    try:
        wait_until_serving(port)
        for _ in range(300):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                connection.request("GET", "/healthz")
                answers.append(connection.getresponse().status)
            except OSError:
                answers.append(0)
            finally:
                connection.close()
        workers = subprocess.run(
            ["pgrep", "-P", str(server.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        # A sync worker serves in its main thread alone: more are the job thread's.
        threads = [len(list((Path("/proc") / pid / "task").iterdir())) for pid in workers]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, said = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, said = server.communicate()
    assert answers == [200] * 300, (answers.count(200), said[-3000:])
    assert "Traceback" not in said, said[-3000:]
    assert len(threads) == 3 and min(threads) > 1, threads


def test_a_job_whose_payload_is_no_object_is_dead_and_holds_up_no_other(app: Flask) -> None:
    """A job row whose payload is not a JSON object (edited by hand, written by another
    version) cannot be given to any handler: it is dead at once, told in the audit log,
    and the jobs queued behind it run (it used to fail every poll before any handler ran,
    first in line, with a traceback each time)."""
    earlier = utcnow() - dt.timedelta(minutes=1)
    with app.app_context(), transaction() as session:
        session.add(Job(kind="test.ok", payload=None, run_after=earlier, created_at=earlier))
        session.add(Job(kind="test.ok", payload=[1], run_after=earlier, created_at=earlier))
        jobs.enqueue(session, "test.ok", {"n": 1})
    assert jobs.run_pending(app) == 1
    assert [call["n"] for call in CALLS] == [1]
    with app.app_context():
        rows = db.session.execute(
            select(Job.status, Job.last_error).where(Job.kind == "test.ok").order_by(Job.id)
        ).all()
        dead = db.session.scalars(
            select(AuditEvent.detail).where(AuditEvent.action == "job.dead")
        ).all()
    assert [status for status, _ in rows] == ["dead", "dead", "done"]
    assert "not an object" in (rows[0][1] or "")
    assert [detail["error"] for detail in dead] == ["ValueError", "ValueError"]


def test_a_job_of_a_kind_this_version_has_no_handler_for_is_retried_then_dead_and_told(
    app: Flask,
) -> None:
    """A kind queued by another version (renamed since, or newer than this worker: a
    mixed-version upgrade) stops no worker and holds up no job: it is retried with the
    backoff (a worker that knows it may take it meanwhile), then dead, named in its error
    and told to the owner (``job.dead``)."""
    with app.app_context(), transaction() as session:
        jobs.enqueue(session, "test.renamed_since", {})
        jobs.enqueue(session, "test.ok", {"n": 1})
    assert jobs.run_pending(app) == 2
    assert [call["n"] for call in CALLS] == [1]
    unknown = job(app, "test.renamed_since")
    assert (unknown.status, unknown.attempts) == ("pending", 1)
    assert unknown.last_error == "LookupError: no handler for job kind 'test.renamed_since'"
    assert unknown.run_after > utcnow()
    for _ in range(app.extensions["keygate.settings"].job_max_attempts - 1):
        with app.app_context(), transaction() as session:
            session.execute(update(Job).where(Job.id == unknown.id).values(run_after=utcnow()))
        assert jobs.run_pending(app) == 1
    assert job(app, "test.renamed_since").status == "dead"
    with app.app_context():
        told = db.session.scalars(
            select(AuditEvent.detail).where(AuditEvent.action == "job.dead")
        ).all()
    assert [(d["kind"], d["error"]) for d in told] == [("test.renamed_since", "LookupError")]
