"""The durable outbox: jobs are rows written in the same transaction as the data they follow.

A job carries ids, never secrets. Handlers must be safe to run twice (a crash between the
work and the commit runs them again). Failures retry with exponential backoff; after
``job_max_attempts`` a job is ``dead`` and shows in the admin outbox.

A claim holds the job for ``LEASE``, renewed while its handler runs (however long it takes);
a job whose worker stopped renews nothing and is taken again when the lease ends (that
attempt counts as failed, so a job that stops its worker every time ends ``dead``), and a
worker that outlived its lease (its renewals failed) does not overwrite the new owner's
outcome.

Claiming uses ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so any number of ``keygate worker``
processes can share the table; on SQLite ``BEGIN IMMEDIATE`` serializes claims.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from flask import Flask
from sqlalchemy import Engine, Select, event, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from connector.db import (
    connection_failure,
    db,
    insert_ignoring_conflicts,
    iso,
    transaction,
    utcnow,
)
from connector.models import Job
from connector.redact import DATABASE_PATTERNS, keygate_logger, redact

# A failed job's traceback may quote a database error that names a buyer.
log = keygate_logger(__name__)

# Key under which a handler finds its own job id in the payload it is given.
JOB_ID = "_job_id"

Handler = Callable[[dict[str, Any]], None]
HANDLERS: dict[str, Handler] = {}

# Modules whose import registers handlers (with @handles).
HANDLER_MODULES = [
    "connector.vault.jobs",
    "connector.orders.reconcile",
    "connector.orders.writeback",
    "connector.orders.product_sync",
    "connector.orders.jobs",
    "connector.mail.service",
    "connector.mail.contacts",
    "connector.privacy.service",
    "connector.downloads.jobs",
    "connector.downloads.privacy",
    "connector.downloads.sweep",
    "connector.privacy.store_deletion",
]

# Jobs the worker starts on a schedule: (kind, interval in seconds). One job per kind and
# interval slot, whatever the number of workers (the slot is the dedupe key).
PERIODIC: list[tuple[str, int]] = [
    ("privacy.purge", 24 * 3600),
    # Stamped copies in storage that no record refers to (connector.downloads.sweep).
    ("downloads.sweep_copies", 24 * 3600),
    ("shop.keep_schedules", 3600),
]

LEASE = dt.timedelta(minutes=10)
_wakeup = threading.Event()


class RetryLater(Exception):
    """Raised by a handler whose outside peer is down: retry with backoff, no traceback."""


def handles(kind: str) -> Callable[[Handler], Handler]:
    """Register ``fn`` as the handler of jobs of ``kind``."""

    def register(fn: Handler) -> Handler:
        HANDLERS[kind] = fn
        return fn

    return register


def load_handlers() -> None:
    for module in HANDLER_MODULES:
        importlib.import_module(module)


def enqueue(
    session: Session,
    kind: str,
    payload: dict[str, Any],
    *,
    dedupe_key: str | None = None,
    run_after: dt.datetime | None = None,
) -> None:
    """Add a job to the current transaction. With ``dedupe_key``, a second enqueue is a no-op."""
    values: dict[str, Any] = {
        "kind": kind,
        "payload": payload,
        "status": "pending",
        "attempts": 0,
        "run_after": run_after or utcnow(),
        "created_at": utcnow(),
    }
    if dedupe_key is None:
        session.add(Job(**values))
    else:
        values["dedupe_key"] = dedupe_key
        # Looked for first: an INSERT that conflicts still draws an id (PostgreSQL's
        # sequence), and every poll of every worker asks for the periodic jobs queued
        # already: many workers polling often would run the 4-byte ids out within months.
        queued = session.scalar(select(Job.id).where(Job.dedupe_key == dedupe_key))
        if (
            queued is not None
            or insert_ignoring_conflicts(session, Job.__table__, values, ["dedupe_key"]) is None
        ):
            # Already queued: nothing new for the worker. Waking it would make every pass of
            # its loop (whose periodic jobs are such no-ops) wake the next at once: a busy
            # loop holding a core and writing to the database without pause.
            return
    session.info["keygate_jobs_added"] = True


def release_dedupe_key(session: Session, payload: dict[str, Any]) -> None:
    """For a handler whose job answers a question as of when it runs (a read of the shop):
    its ``dedupe_key`` is freed, so that the same question asked from now on queues a job
    again, while a job still queued answers every ask of it once. Other jobs keep their key
    for good (a slot, a marker: once ever). In the handler's transaction."""
    job_id = payload.get(JOB_ID)
    if isinstance(job_id, int):
        session.execute(update(Job).where(Job.id == job_id).values(dedupe_key=None))


def retry_dead(
    session: Session, job: Job, *, store_id: int | None, actor: str, reason: str | None = None
) -> bool:
    """Take a dead job up again from its first attempt, now, audited ``job.retried``.

    Only a job still dead is changed, in one statement: two clicks of the owner's button (or
    two admins, or the owner and saved credentials) at once would otherwise both write
    "pending, attempt 0", the second over a worker that had claimed the job meanwhile, and a
    second worker would run it again beside the first. Returns whether this call did it."""
    from connector.audit import record_audit

    retried = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == "dead")
        .values(status="pending", attempts=0, run_after=utcnow())
        .execution_options(synchronize_session=False)
    )
    if not getattr(retried, "rowcount", 0):
        return False
    session.info["keygate_jobs_added"] = True  # the server's job thread takes it now
    record_audit(
        session,
        store_id=store_id,
        actor=actor,
        action="job.retried",
        subject=f"job:{job.id}",
        detail={"kind": job.kind, "reason": reason} if reason else None,
    )
    return True


def run_held_now(session: Session, jobs: Select[Job], reason: str) -> list[int]:
    """Jobs that were held for something the owner has just given (credentials): those
    waiting out their backoff run now, and those that gave up waiting (``dead``) are taken
    up again from their first attempt, as the owner's retry does (:func:`retry_dead`).
    ``jobs``: the held jobs, narrowed to their store. Returns their ids."""
    now = utcnow()
    held = list(session.scalars(jobs.where(Job.status.in_(("pending", "dead")))))
    for job in held:
        if job.status == "dead":
            retry_dead(
                session,
                job,
                store_id=store_of(session, job.payload),
                actor="keygate",
                reason=reason,
            )
        else:
            job.run_after = min(job.run_after, now)
            session.info["keygate_jobs_added"] = True
    return [job.id for job in held]


@event.listens_for(Session, "after_commit")
def _wake_worker_after_commit(session: Session) -> None:
    # Dispatch only after commit: a job must never run against data that may roll back.
    if session.info.pop("keygate_jobs_added", False):
        _wakeup.set()


@event.listens_for(Session, "after_rollback")
def _forget_jobs_on_rollback(session: Session) -> None:
    session.info.pop("keygate_jobs_added", None)


def backoff(attempts: int) -> dt.timedelta:
    """5 s, 10 s, 20 s ... capped at one hour."""
    return dt.timedelta(seconds=min(3600, 5 * 2 ** max(0, attempts - 1)))


class Claim(NamedTuple):
    """A job taken by one worker. ``attempt`` is the claim's token: a later claim of the same
    job (after this one's lease ran out) has a higher attempt, and this one's result no longer
    counts."""

    job_id: int
    attempt: int
    kind: str
    payload: dict[str, Any]


def _claim_one(kinds: set[str] | None) -> Claim | None:
    from connector import get_settings

    now = utcnow()
    with transaction() as session:
        query = (
            select(Job)
            .where(
                or_(
                    (Job.status == "pending") & (Job.run_after <= now),
                    (Job.status == "running") & (Job.locked_until < now),
                )
            )
            .order_by(Job.run_after, Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if kinds is not None:
            query = query.where(Job.kind.in_(kinds))
        while (job := session.execute(query).scalar_one_or_none()) is not None:
            if not isinstance(job.payload, dict):
                # No handler can be given it (a row edited by hand, written by another
                # version): dead at once, in the owner's outbox. Taken up again and failing
                # before any handler runs, it would stand first in line at every poll, and
                # no job behind it would ever run.
                job.last_error = (
                    f"ValueError: the payload is {type(job.payload).__name__}, not an object"
                )
                _bury(session, job)
                session.flush()
                continue
            if job.status == "pending":
                break
            # Its worker stopped (crash, kill, lost host) before finishing: that attempt failed.
            job.last_error = f"Interrupted: the worker stopped during attempt {job.attempts}"
            if job.attempts < get_settings().job_max_attempts:
                break
            # A job that stops its worker every time (memory, a native crash) must not be
            # taken forever: after its last attempt it is dead like any failing job.
            _bury(session, job)
            session.flush()
        if job is None:
            return None
        job.status = "running"
        job.attempts += 1
        job.locked_until = now + LEASE
        return Claim(job.id, job.attempts, job.kind, {**job.payload, JOB_ID: job.id})


def _bury(session: Session, job: Job) -> None:
    """Give up on a job after its last attempt, and tell the owner: an audit entry
    ``job.dead`` in the store's log (the instance's, for jobs of no store)."""
    from connector.audit import record_audit

    job.status = "dead"
    job.locked_until = None
    job.finished_at = utcnow()
    log.error("job %s (%s) is dead after %s attempts", job.id, job.kind, job.attempts)
    record_audit(
        session,
        store_id=store_of(session, job.payload),
        actor="keygate",
        action="job.dead",
        subject=f"job:{job.id}",
        # The error's type only: its text (kept on the job, which is purged) may name a
        # customer, and the audit log is kept longer.
        detail={"kind": job.kind, "attempts": job.attempts, "error": _error_type(job)},
    )


def _error_type(job: Job) -> str | None:
    return job.last_error.split(":", 1)[0] if job.last_error else None


def store_of(session: Session, payload: dict[str, Any]) -> int | None:
    """The store a job works for: named in its payload, or the store of its order (None for
    the instance's own work, like the daily purge)."""
    from connector.models import Order

    if not isinstance(payload, dict):
        return None
    store_id = payload.get("store_id")
    if isinstance(store_id, int):
        return store_id
    order_id = payload.get("order_id")
    if isinstance(order_id, int):
        return session.scalar(select(Order.store_id).where(Order.id == order_id))
    return None


def store_jobs(store_id: int) -> Select[Job]:
    """The jobs working for one store, as :func:`store_of` finds them, in SQL."""
    from connector.models import Order

    return select(Job).where(
        or_(
            Job.payload["store_id"].as_integer() == store_id,
            Job.payload["order_id"]
            .as_integer()
            .in_(select(Order.id).where(Order.store_id == store_id)),
        )
    )


def _finish(claim: Claim, error: BaseException | None, *, cut_off: bool = False) -> None:
    """Record how the claimed attempt ended. ``cut_off``: the worker was stopped during it
    (told twice): the job goes back to the queue even after its last attempt, since the job
    itself did not fail."""
    from connector import get_settings

    with transaction() as session:
        job = session.get(Job, claim.job_id, with_for_update=True)
        if job is None:
            return
        if job.status != "running" or job.attempts != claim.attempt:
            # The lease ran out while this worker ran the job, and another worker has it (or
            # has finished it): its outcome is the one that counts.
            log.warning(
                "job %s (%s) outlived its lease; attempt %s is not recorded",
                job.id,
                job.kind,
                claim.attempt,
            )
            return
        job.locked_until = None
        if error is None:
            job.status = "done"
            job.finished_at = utcnow()
            job.last_error = None
            return
        # Only the type and a short text: library messages can be long, never echo secrets,
        # and a database's name no values of the row it refused.
        job.last_error = f"{type(error).__name__}: {redact(str(error), DATABASE_PATTERNS)[:200]}"
        if job.attempts >= get_settings().job_max_attempts and not cut_off:
            _bury(session, job)
        else:
            job.status = "pending"
            job.run_after = utcnow() + backoff(job.attempts)


@contextmanager
def _lease_kept(claim: Claim, engine: Engine) -> Iterator[None]:
    """Renew ``claim``'s lease while the block runs, so that no other worker takes over a job
    still running here, however long it runs (a first reconciliation of a big shop, emptying
    a store's bucket, the daily purge). A worker that stops renews nothing: its job is taken
    again when the lease ends, as before.

    A thread of its own renews, each time in a short transaction on a connection of its own:
    never in the handler's session, whose transaction is the handler's (it may commit as it
    goes, or roll back). Waiting for that thread at the end, the block must have ended the
    handler's transaction first: a renewal may be waiting for it (on SQLite for the write
    lock, ``busy_timeout``; on PostgreSQL for the job's row, if the handler wrote to it).
    On SQLite, a handler that kept a write open for a whole lease would leave no turn to
    renew in; but no other worker could claim meanwhile either (claims write too).
    """
    done = threading.Event()
    renewer = threading.Thread(
        target=_renew_lease,
        args=(claim, engine, done),
        name=f"keygate-lease-{claim.job_id}",
        daemon=True,
    )
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()


def _renew_lease(claim: Claim, engine: Engine, done: threading.Event) -> None:
    # Four times a lease: a renewal held up (waiting its turn to write) or failed (the
    # database briefly away) leaves time for the next ones before the lease would end.
    while not done.wait(LEASE.total_seconds() / 4):
        try:
            with engine.begin() as connection:
                renewed = connection.execute(
                    update(Job)
                    # Only this attempt's claim: once the job is finished, or its lease ran
                    # out and another worker has it, it is not ours to extend.
                    .where(
                        Job.id == claim.job_id,
                        Job.status == "running",
                        Job.attempts == claim.attempt,
                    )
                    .values(locked_until=utcnow() + LEASE)
                ).rowcount
        except Exception as exc:
            log.warning(
                "job %s (%s): lease not renewed (%s); trying again",
                claim.job_id,
                claim.kind,
                type(exc).__name__,
            )
            continue
        if not renewed:
            return  # finished, or taken over: nothing of ours left to renew


def run_one(kinds: set[str] | None = None) -> bool:
    """Claim and run one due job. Returns False when none was due."""
    load_handlers()
    claimed = _claim_one(kinds)
    if claimed is None:
        return False
    job_id, _, kind, payload = claimed
    handler = HANDLERS.get(kind)
    error: BaseException | None = None
    if handler is None:
        error = LookupError(f"no handler for job kind {kind!r}")
    else:
        try:
            # The lease's renewals end after the handler's transaction (see _lease_kept).
            with _lease_kept(claimed, db.engine), transaction():
                handler(payload)
        except RetryLater as exc:
            error = exc
            log.warning("job %s (%s) will retry: %s", job_id, kind, exc)
        except DBAPIError as exc:
            error = exc
            if not exc.connection_invalidated:
                log.exception("job %s (%s) failed", job_id, kind)
            else:  # the database restarted under it: an outage, retried with the backoff
                log.warning(
                    "job %s (%s) will retry: the database dropped its connection", job_id, kind
                )
        except Exception as exc:
            error = exc
            log.exception("job %s (%s) failed", job_id, kind)
        except KeyboardInterrupt:
            # The worker stopped at once (told twice): the job goes back to the queue, rather
            # than sit "running" until its lease runs out.
            _finish(claimed, RetryLater("the worker was stopped during the job"), cut_off=True)
            raise
    _finish(claimed, error)
    return True


def run_pending(
    app: Flask,
    *,
    limit: int = 1000,
    kinds: set[str] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run due jobs until none is left (or ``limit``); returns how many ran.

    Once ``stop`` is set, no new job is started (the one in hand finishes): a worker told
    to stop with a backlog would otherwise go on taking jobs until it is killed mid-job.
    """
    ran = 0
    while ran < limit and not (stop is not None and stop.is_set()):
        with app.app_context():
            if not run_one(kinds):
                break
        ran += 1
    return ran


def schedule_periodic(app: Flask) -> None:
    """Enqueue the periodic jobs whose slot has started (idempotent across workers)."""
    now = int(utcnow().timestamp())
    with app.app_context(), transaction() as session:
        for kind, interval in PERIODIC:
            enqueue(session, kind, {}, dedupe_key=f"periodic:{kind}:{now // interval}")


def work_forever(app: Flask, stop: threading.Event) -> None:
    """The worker loop: run what is due, then sleep until woken or the poll interval passes.

    Setting ``stop`` (from any thread, or a signal handler) ends it: the job in hand
    finishes, no new one starts, and a sleeping loop wakes at once.
    """
    from connector.config import Settings

    settings: Settings = app.extensions["keygate.settings"]
    threading.Thread(
        target=_wake_when_set, args=(stop,), name="keygate-worker-stop", daemon=True
    ).start()
    while not stop.is_set():
        try:
            schedule_periodic(app)
            run_pending(app, stop=stop)
        except Exception as exc:
            # The database may be briefly away; never let the worker die of it.
            unreachable = connection_failure(exc)
            if isinstance(exc, DBAPIError) and exc.connection_invalidated:
                # It restarted: the pooled connections it dropped are replaced by new ones
                # at the next poll. An outage, said in a line like one, not a traceback.
                log.warning("the database dropped its connections (restarted?); retrying")
            elif unreachable is None:
                log.exception("worker loop error; retrying")
            else:  # a line each time, not the same traceback every poll
                log.warning("the database cannot be reached (%s); retrying", unreachable)
        _wakeup.wait(settings.worker_poll_seconds)
        _wakeup.clear()


def _wake_when_set(stop: threading.Event) -> None:
    # This thread wakes the loop, not whoever sets ``stop``: `keygate worker` sets it in a
    # signal handler, which Python runs in the loop's own thread between two of its steps.
    # Had the loop just taken ``_wakeup``'s lock there (to wait on it, to clear it),
    # setting ``_wakeup`` in the handler would wait for that lock for ever. The loop only
    # reads ``stop`` (``is_set`` takes no lock), so setting ``stop`` is safe anywhere.
    stop.wait()
    _wakeup.set()


def start_worker_thread(app: Flask) -> threading.Event:
    """Run jobs in a daemon thread of this process (the embedded default)."""
    stop = threading.Event()
    thread = threading.Thread(
        target=work_forever, args=(app, stop), name="keygate-worker", daemon=True
    )
    thread.start()
    app.extensions["keygate.worker"] = (thread, stop)
    _apps_with_a_worker.add(app)
    return stop


# Apps whose job thread runs in this process (see _worker_threads_after_fork).
_apps_with_a_worker: weakref.WeakSet[Flask] = weakref.WeakSet()


def _worker_threads_after_fork() -> None:
    """A forked process has none of its parent's threads: gunicorn's workers under
    ``--preload`` (the app, its job thread started, loaded once in the master) would run no
    job, and only the master would, woken by none of the webhooks its workers take in. Each
    forked process starts a job thread of its own, as each does without ``--preload``.
    ``_wakeup`` is new too: the parent's thread may have held its lock at the fork."""
    global _wakeup
    _wakeup = threading.Event()
    for app in list(_apps_with_a_worker):
        worker = app.extensions.get("keygate.worker")
        if worker is not None and not worker[1].is_set():
            start_worker_thread(app)


os.register_at_fork(after_in_child=_worker_threads_after_fork)


def stop_worker_thread(app: Flask, timeout: float = 10.0) -> None:
    """Stop the in-process worker (if any) and wait for its current job to finish."""
    worker = app.extensions.pop("keygate.worker", None)
    if worker is None:
        return
    thread, stop = worker
    stop.set()
    thread.join(timeout)


def trouble_json(job: Job) -> dict[str, Any]:
    """A job that failed at least once, as an owner sees it: retrying (with its next
    attempt) or dead after its last one, and why."""
    dead = job.status == "dead"
    return {
        "status": "dead" if dead else "retrying",
        "attempts": job.attempts,
        "last_error": job.last_error,
        "next_attempt_at": None if dead else iso(job.run_after),
    }


def stats() -> dict[str, int]:
    """Count of jobs per status, for the admin outbox view."""
    from sqlalchemy import func

    rows = db.session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: count for status, count in rows}
