"""A big, old shop: what the owner's lists read grows with the page, not with the store.

Plans are read with EXPLAIN ANALYZE on PostgreSQL (the rows a plan reads, not a timing).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, select

import connector.privacy.service as privacy
from connector.db import db, transaction, utcnow
from connector.licensing.admin import search_licenses
from connector.models import Activation, License, WebhookDelivery
from connector.stores import NewStore
from tests.factories import WebhookSender
from tests.functional.test_license_export import sell


@pytest.fixture
def postgresql(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("plans are PostgreSQL's")


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def plan_of(app: Flask, run: Any, *, index_scans: bool = False) -> list[dict[str, Any]]:
    """The nodes of the plan of the (last) query ``run`` makes, as executed."""
    seen: list[tuple[str, Any]] = []

    def note(_conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
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
