"""A big, old shop: what the owner's lists read grows with the page, not with the store.

Plans are read with EXPLAIN ANALYZE on PostgreSQL (the rows a plan reads, not a timing).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, func, insert, select, text, update

import connector.privacy.service as privacy
from connector.db import db, transaction, utcnow
from connector.jobs import run_pending
from connector.licensing.admin import search_licenses
from connector.models import (
    Activation,
    AuditEvent,
    BrevoRemoval,
    Job,
    License,
    Order,
    WebhookDelivery,
)
from connector.privacy.service import purge_expired_records
from connector.stores import NewStore
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_license_export import sell

EMAIL = "jurgen@example.org"


@pytest.fixture
def postgresql(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("plans are PostgreSQL's")


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def plan_of(
    app: Flask, run: Any, *, index_scans: bool = False, last_on: str | None = None
) -> list[dict[str, Any]]:
    """The nodes of the plan of the last query ``run`` makes (of those reading the table
    ``last_on``, when given), as executed."""
    seen: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        if last_on is None or f"FROM {last_on}" in sql:
            seen.append((sql, params))

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", note)
        try:
            run(db.session)
        finally:
            event.remove(db.engine, "before_cursor_execute", note)
        sql, params = seen[-1]
        connection = db.session.connection()
        if index_scans:  # as on a big table, where reading it all is what costs
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        explained = connection.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + sql, params
        ).scalar_one()
        db.session.rollback()
    plan = explained if isinstance(explained, list) else json.loads(explained)
    return list(_nodes(plan[0]["Plan"]))


def rows_read(nodes: list[dict[str, Any]], table: str) -> int:
    return sum(
        n["Actual Rows"] * n["Actual Loops"] for n in nodes if n.get("Relation Name") == table
    )


def test_a_page_of_licenses_counts_the_seats_of_its_licenses_only(
    app: Flask, shop: WebhookSender, postgresql: None
) -> None:
    """Each page of the list (and of the CSV export, a page at a time) counted the seats of
    every license of the store: a big store's export took a minute, a page a fifth of a
    second; now it counts those of the page's licenses."""
    shop.configure(501)
    sell(shop, range(8300, 8312))
    with app.app_context():
        for lic in db.session.scalars(select(License)):
            db.session.add(Activation(license_id=lic.id, site=f"{lic.id}.example"))
        db.session.commit()
        store_id = db.session.scalars(select(License.store_id)).first()

    page = plan_of(app, lambda session: search_licenses(session, store_id, limit=3))
    assert rows_read(page, "activations") <= 3

    with app.app_context():
        rows = search_licenses(db.session, store_id, limit=3)
        assert [row.activations_used for row in rows] == [1, 1, 1]


def test_licenses_of_a_buyer_are_found_by_the_address_index(
    app: Flask, shop: WebhookSender, postgresql: None
) -> None:
    """Orders keep the address lower-cased: the list filtered by a buyer finds their orders
    through the address's index, not by reading every order of every store."""
    shop.configure(501)
    sell(shop, range(8320, 8323))
    nodes = plan_of(
        app,
        lambda session: search_licenses(session, None, email=" Jurgen@Example.org "),
        index_scans=True,
    )
    orders = [n for n in nodes if n.get("Relation Name") == "orders"]
    assert [n.get("Index Name") for n in orders] == ["ix_orders_email"], orders
    with app.app_context():
        found = search_licenses(db.session, None, email=" Jurgen@Example.org ")
        assert len(found) == 3


def test_the_purge_deletes_an_old_shops_records_a_committed_batch_at_a_time(
    app: Flask, new_store: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first purge of an old shop's records (or after the owner shortens a retention)
    deletes millions of rows: in one transaction it held SQLite's only write lock past the
    time a webhook or an activation waits for it. Each batch is committed: writers get their
    turn in between."""
    monkeypatch.setattr(privacy, "PURGE_BATCH", 2, raising=False)
    old = utcnow() - dt.timedelta(days=400)
    with app.app_context(), transaction() as session:
        for n in range(7):
            session.add(
                WebhookDelivery(
                    store_id=new_store.store.id,
                    topic="order.updated",
                    body_sha256=f"{n:064d}",
                    outcome="applied",
                    received_at=old,
                )
            )
    steps: list[Any] = []

    def deleted(_conn: Any, cursor: Any, sql: str, _params: Any, _ctx: Any, _many: bool) -> None:
        if sql.startswith("DELETE FROM webhook_deliveries"):
            steps.append(cursor.rowcount)

    def committed(_conn: Any) -> None:
        steps.append("commit")

    with app.app_context():
        engine = db.engine
    event.listen(engine, "after_cursor_execute", deleted)
    event.listen(engine, "commit", committed)
    try:
        with app.app_context(), transaction() as session:
            assert privacy.purge_expired_records(session)["webhook_deliveries"] == 7
    finally:
        event.remove(engine, "after_cursor_execute", deleted)
        event.remove(engine, "commit", committed)
    batches = [step for step in steps if step != "commit"]
    assert batches[:4] == [2, 2, 2, 1], steps
    for at, step in enumerate(steps):
        if step != "commit":
            assert steps[at + 1] == "commit", steps  # each batch committed before the next
    with app.app_context():
        assert db.session.execute(select(WebhookDelivery)).first() is None


def test_the_purge_reads_the_rows_it_keeps_once_not_once_per_batch(
    app: Flask, new_store: NewStore, monkeypatch: pytest.MonkeyPatch, postgresql: None
) -> None:
    """Jobs the purge keeps (done within the retention, or long ago but a mail refers to
    them) lie among those it deletes. Each batch looked for the next rows to delete from the
    first job on, reading the kept ones again: a purge of many batches read each kept job
    once per batch. Each batch now starts where the one before ended."""
    monkeypatch.setattr(privacy, "PURGE_BATCH", 2, raising=False)
    old, recent = utcnow() - dt.timedelta(days=400), utcnow()
    done = {"kind": "housekeeping", "payload": {}, "status": "done"}
    with app.app_context(), transaction() as session:
        session.execute(insert(Job), [{**done, "finished_at": recent}] * 3000)
        session.execute(insert(Job), [{**done, "finished_at": old}] * 5)
        session.execute(text("ANALYZE jobs"))

    nodes = plan_of(app, purge_expired_records, last_on="jobs")
    read = sum(
        n["Actual Loops"] * (n["Actual Rows"] + n.get("Rows Removed by Filter", 0))
        for n in nodes
        if n.get("Relation Name") == "jobs"
    )
    assert read < 100, nodes
    with app.app_context():
        assert db.session.scalars(select(func.count(Job.id))).one() == 3000


def test_a_licenses_links_are_found_by_its_index(
    app: Flask, shop: WebhookSender, postgresql: None
) -> None:
    """A license's page (its links, their clicks), a refund or swap of its line, a renewal:
    each looked its grants up by reading every grant of every store."""
    from connector.downloads.log import clicks, link_states

    shop.configure(501)
    sell(shop, range(8330, 8332))
    with app.app_context():
        license_id = db.session.scalars(select(License.id)).first()
    for read in (link_states, clicks):
        nodes = plan_of(
            app, lambda session, read=read: read(session, license_id=license_id), index_scans=True
        )
        grants = [n for n in nodes if n.get("Relation Name") == "download_grants"]
        assert [n.get("Index Name") for n in grants] == ["ix_download_grants_license_id"], read


def test_stamped_copies_are_found_by_their_keys_through_indexes(
    app: Flask, shop: WebhookSender, postgresql: None
) -> None:
    """The job deleting copies asks, per copy, whether a click stamped it again, and the
    sweep of a bucket asks which listed copies a row records: each read every copy (or
    every grant of the store) once per key or batch."""
    from connector.downloads.privacy import _copy_at
    from connector.downloads.sweep import _queue_unrecorded

    shop.configure(501)
    key = "watermarked/1/abc/guide.pdf"
    asked = plan_of(
        app,
        lambda _session: _copy_at(key, ready_only=True),
        index_scans=True,
        last_on="download_grants",
    )
    copies = [n for n in asked if n.get("Relation Name") == "watermark_copies"]
    assert [n.get("Index Name") for n in copies] == ["ix_watermark_copies_object_key"]

    swept = plan_of(
        app,
        lambda session: _queue_unrecorded(session, 1, [key]),
        index_scans=True,
        last_on="watermark_copies",
    )
    used = {n.get("Index Name") for n in swept if n.get("Relation Name")}
    assert {"ix_watermark_copies_object_key", "ix_download_grants_watermarked_key"} <= used, used


def test_an_order_is_found_by_its_number_through_an_index(
    app: Flask, shop: WebhookSender, postgresql: None
) -> None:
    """The Orders page's search by number (or the shop's order id), in every store."""
    from tests.functional.test_admin_pages import signed_in_owner

    sell(shop, range(8340, 8342))
    owner = signed_in_owner(app)
    seen: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        if sql.startswith("SELECT orders.id"):
            seen.append((sql, params))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        page = owner.get("/admin/orders").get_data(as_text=True)
        token = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
        found = owner.post("/admin/orders", data={"q": "#8341", "csrf_token": token})
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert found.status_code == 200 and "8341" in found.get_data(as_text=True)
    sql, params = seen[-1]
    with app.app_context():
        connection = db.session.connection()
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = connection.exec_driver_sql("EXPLAIN (FORMAT JSON) " + sql, params).scalar_one()
        db.session.rollback()
    used = {n.get("Index Name") for n in _nodes(plan[0]["Plan"])}
    assert {"ix_orders_number", "ix_orders_shop_order_id"} <= used, used


def test_a_customers_audit_entries_are_found_by_their_subject(
    app: Flask, shop: WebhookSender, postgresql: None
) -> None:
    """A customer's export (and erasure) reads the audit entries about their orders and
    licenses by subject, not every entry of the store."""
    from connector.models import Store
    from connector.privacy.service import export_customer

    sell(shop, range(8350, 8351))
    with app.app_context():
        store = db.session.scalars(select(Store)).one()
        # An old store's log: entries about everything else.
        db.session.execute(
            insert(AuditEvent),
            [
                {
                    "store_id": store.id,
                    "actor": "system",
                    "action": "order.updated",
                    "subject": f"order:{n}",
                    "detail": {},
                }
                for n in range(3000)
            ],
        )
        db.session.commit()
        db.session.connection().exec_driver_sql("ANALYZE audit_events")
        db.session.commit()
    nodes = plan_of(
        app,
        lambda session: export_customer(session, store, "jurgen@example.org"),
        index_scans=True,
        last_on="audit_events",
    )
    assert "ix_audit_events_store_id_subject" in {n.get("Index Name") for n in nodes}, nodes


def test_the_dashboards_lockouts_are_not_read_through_the_whole_log(
    app: Flask, database_url: str
) -> None:
    """The dashboard's sign-in lockouts (of the last hour, grouped by subject): SQLite would
    rather read the whole audit log in the order of an index on the subject than sort a
    handful of rows; the log's subjects are indexed after the store only."""
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's query plan")
    from tests.functional.test_admin_pages import signed_in_owner

    owner = signed_in_owner(app)
    with app.app_context():  # an old shop's log, its statistics gathered
        db.session.execute(
            insert(AuditEvent),
            [
                {"actor": "system", "action": f"order.{n % 2}", "subject": f"order:{n}"}
                for n in range(3000)
            ],
        )
        db.session.commit()
        db.session.connection().exec_driver_sql("ANALYZE")
        db.session.commit()
    seen: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        if "GROUP BY audit_events.subject" in sql:
            seen.append((sql, params))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        assert owner.get("/admin/").status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", note)
    [(sql, params)] = seen
    with app.app_context():
        plan = db.session.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)
        steps = [row[-1] for row in plan]
        db.session.rollback()
    assert not any(step.startswith("SCAN audit_events") for step in steps), steps


def test_each_stores_refund_trouble_is_counted_through_an_index(
    app: Flask, new_store: NewStore, database_url: str
) -> None:
    """The dashboard counts each store's refunds not applied: SQLite read every entry of the
    store's log for it (40 ms a store at 500k entries), on every dashboard view."""
    if not database_url.startswith("sqlite"):
        pytest.skip("SQLite's query plan")
    from tests.functional.test_admin_pages import signed_in_owner

    owner = signed_in_owner(app)
    seen: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        if "count(DISTINCT audit_events.subject)" in sql:
            seen.append((sql, params))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        assert owner.get("/admin/").status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", note)
    [(sql, params)] = seen
    with app.app_context():
        plan = db.session.connection().exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params)
        steps = [row[-1] for row in plan]
        db.session.rollback()
    assert any("ix_audit_events_store_id_action" in step for step in steps), steps


@contextmanager
def crash_at(model: Any, moment: str, nth: int) -> Iterator[None]:
    """The ``nth`` row of ``model`` the session writes (``moment``: before_update,
    before_delete) fails: a purge stopped half-way (the worker killed, the database gone)."""
    seen: list[int] = []

    def fail(_mapper: Any, _connection: Any, row: Any) -> None:
        seen.append(row.id)
        if len(seen) == nth:
            raise RuntimeError("stopped half-way")

    event.listen(model, moment, fail)
    try:
        yield
    finally:
        event.remove(model, moment, fail)


def test_the_purge_forgets_unlicensed_buyers_a_committed_batch_at_a_time(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first purge of an old shop's orders that issued nothing locked every one of them
    (a delivery of any waited) and kept their buyers in one transaction until the purge's
    next commit: stopped half-way, it had forgotten nobody. Each batch is committed, and the
    next purge goes on with the rest; what is forgotten is what was due."""
    monkeypatch.setattr(privacy, "CHANGE_BATCH", 2, raising=False)
    shop.configure(501)
    for n in range(8401, 8406):
        shop.deliver(wc_order(n, "on-hold", [line_item(501)], email=EMAIL))
    shop.deliver(wc_order(8406, "completed", [line_item(501)], email=EMAIL))
    run_pending(app)
    purge_day = utcnow() + dt.timedelta(days=91)
    with app.app_context(), transaction() as session:
        # Changed by the shop since: not due.
        session.execute(
            update(Order)
            .where(Order.shop_order_id == "8405")
            .values(updated_at=purge_day - dt.timedelta(days=10))
        )

    def buyers() -> dict[str, str | None]:
        with app.app_context():
            rows = db.session.execute(select(Order.shop_order_id, Order.email))
            return {order: email for order, email in rows}

    with (
        crash_at(Order, "before_update", 3),
        pytest.raises(RuntimeError),
        app.app_context(),
        transaction() as session,
    ):
        purge_expired_records(session, now=purge_day)
    assert buyers() == {
        "8401": None,
        "8402": None,  # the first batch, committed
        "8403": EMAIL,
        "8404": EMAIL,
        "8405": EMAIL,
        "8406": EMAIL,
    }
    with app.app_context(), transaction() as session:
        assert purge_expired_records(session, now=purge_day)["unlicensed_order_buyers"] == 2
    assert buyers() == {
        "8401": None,
        "8402": None,
        "8403": None,
        "8404": None,
        "8405": EMAIL,  # changed since
        "8406": EMAIL,  # licensed
    }


def test_the_purge_cuts_dead_jobs_errors_a_committed_batch_at_a_time(
    app: Flask, new_store: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every dead job past the retention was read into memory at once (payload and all) and
    its error cut in one transaction: stopped half-way, none was. A batch at a time, each
    committed; a dead job within the retention keeps its error."""
    monkeypatch.setattr(privacy, "CHANGE_BATCH", 2, raising=False)
    error = "BrevoError: jurgen@example.org refused"
    with app.app_context(), transaction() as session:
        for days in (40, 40, 40, 40, 40, 3):
            session.add(
                Job(
                    kind="mail.order_issued",
                    status="dead",
                    last_error=error,
                    finished_at=utcnow() - dt.timedelta(days=days),
                )
            )

    def errors() -> list[str | None]:
        with app.app_context():
            return list(db.session.scalars(select(Job.last_error).order_by(Job.id)))

    with (
        crash_at(Job, "before_update", 3),
        pytest.raises(RuntimeError),
        app.app_context(),
        transaction() as session,
    ):
        purge_expired_records(session)
    assert errors() == ["BrevoError", "BrevoError", error, error, error, error]
    with app.app_context(), transaction() as session:
        assert purge_expired_records(session)["dead_job_errors"] == 3
    assert errors() == ["BrevoError"] * 5 + [error]


def test_the_purge_gives_up_brevo_removals_a_committed_batch_at_a_time(
    app: Flask, new_store: NewStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Addresses waiting to leave a Brevo list past the retention are forgotten (and the
    owner told) a committed batch at a time; one waiting within it stays."""
    monkeypatch.setattr(privacy, "CHANGE_BATCH", 2, raising=False)
    with app.app_context(), transaction() as session:
        for n, days in enumerate((60, 60, 60, 60, 60, 3)):
            session.add(
                BrevoRemoval(
                    store_id=new_store.store.id,
                    list_id=7,
                    email=f"buyer{n}@example.org",
                    reason="erasure",
                    subject=f"erased-{n}",
                    created_at=utcnow() - dt.timedelta(days=days),
                )
            )

    def state() -> tuple[list[str | None], list[str | None]]:
        with app.app_context():
            waiting = db.session.scalars(select(BrevoRemoval.subject).order_by(BrevoRemoval.id))
            told = db.session.scalars(
                select(AuditEvent.subject)
                .where(AuditEvent.action == "customer.brevo_removal_given_up")
                .order_by(AuditEvent.id)
            )
            return list(waiting), list(told)

    with (
        crash_at(BrevoRemoval, "before_delete", 3),
        pytest.raises(RuntimeError),
        app.app_context(),
        transaction() as session,
    ):
        purge_expired_records(session)
    assert state() == (
        ["erased-2", "erased-3", "erased-4", "erased-5"],
        ["erased-0", "erased-1"],
    )
    with app.app_context(), transaction() as session:
        assert purge_expired_records(session)["brevo_removals"] == 3
    assert state() == (["erased-5"], [f"erased-{n}" for n in range(5)])


def test_the_purge_of_old_jobs_reads_the_mails_once(
    app: Flask, new_store: NewStore, postgresql: None
) -> None:
    """A job a mail refers to is kept with the mail. Asked as "not in the list of every mail's
    job", PostgreSQL hashes the list only while it fits in work_mem: past that (a year of a
    busy shop's mails) it went through the list once for each old job. An anti-join reads
    the mails once, whatever their number."""
    old = utcnow() - dt.timedelta(days=400)
    with app.app_context(), transaction() as session:
        for _ in range(3):
            session.add(Job(kind="housekeeping", payload={}, status="done", finished_at=old))

    nodes = plan_of(app, purge_expired_records, last_on="jobs")
    assert not [n for n in nodes if n.get("Parent Relationship") == "SubPlan"], nodes
    assert any(n.get("Join Type") == "Anti" for n in nodes), nodes
