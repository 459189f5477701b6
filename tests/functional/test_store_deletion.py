"""Deleting a store: everything kept for it goes, another store's data stays untouched."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import delete, func, select

from connector.db import Base, db, lock_row, utcnow
from connector.errors import Conflict
from connector.jobs import run_pending
from connector.models import (
    Activation,
    AdminUser,
    AuditEvent,
    BrevoRemoval,
    Job,
    License,
    LicenseFlag,
    Order,
    SecurityEvent,
    ShopNote,
    Store,
    WebhookRegistration,
)
from connector.orders.service import apply_shop_order
from connector.privacy.store_deletion import DELETE_FILES_JOB, delete_store
from connector.stores import StoreDeleted, create_store, find_store, hold_live_store
from connector.vault.connection import connection_of
from connector.vault.service import put_credentials
from plugin.woocommerce.webhooks import parse_order
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_admin_pages import csrf_token, signed_in_owner
from tests.functional.test_downloads import get, link_path, make_pdf
from tests.licensing_helpers import call

EMAIL = "jurgen@example.org"
# Tables of the whole instance, not of one store.
INSTANCE_TABLES = {"stores", "signing_keys", "key_checks", "jobs", "audit_events"}


def storage(app: Flask) -> Path:
    return Path(app.extensions["keygate.settings"].storage_dir)


def fill(app: Flask, sender: WebhookSender) -> dict[str, Any]:
    """A store with a row in every table a store can have: a paid order with a stamped
    PDF, clicked; a renewal; an activation; credentials, a connection, a release..."""
    store_id = sender.store.store.id
    original = f"stores/{store_id}/guide.pdf"
    make_pdf(storage(app) / original)
    files = [{"object_key": original, "filename": "guide.pdf", "watermark": "pdf"}]
    sender.configure(501, duration_days=30, files=files)
    assert sender.deliver(wc_order(8800, "processing", [line_item(501)], email=EMAIL)).status_code
    run_pending(app)
    bought = sender.order(8800)
    key = bought["licenses"][0]["key"]
    assert get(sender.client, link_path(bought["downloads"][0])).status_code == 200
    renewal = line_item(501, line_id=306)
    renewal["meta_data"] = [{"id": 1, "key": "_keygate_renew_license", "value": key}]
    sender.deliver(wc_order(8801, "processing", [renewal], email=EMAIL, modified=5))
    activated = call(sender.client, "activate", {"key": key, "site": f"s{store_id}.example.com"})
    assert activated.get_json()["valid"] is True
    release = {"version": "1.0.0", "object_key": "r.zip", "sha256": "a" * 64, "size": 1}
    assert sender.admin("POST", "/products/501/releases", release).status_code == 201
    with app.app_context():
        session = db.session
        store = session.get(Store, store_id)
        assert store is not None
        license_id = session.scalar(select(License.id).where(License.store_id == store_id))
        order_id = session.scalar(select(Order.id).where(Order.store_id == store_id))
        assert license_id is not None and order_id is not None
        put_credentials(
            session,
            store,
            "brevo",
            {
                "api_key": "xkeysib-t",
                "sender_email": "s@example.org",
                "sender_name": "S",
                "list_id": 7,
            },
            actor="test",
        )
        connection_of(session, store)
        session.add_all(
            [
                LicenseFlag(license_id=license_id, reason="binding_changes", binding_changes=9),
                SecurityEvent(kind="rate_limited", ip_hash="h", path="/x", license_id=license_id),
                ShopNote(store_id=store_id, order_id=order_id, marker=f"m{store_id}"),
                BrevoRemoval(store_id=store_id, list_id=7, email=EMAIL, reason="erasure"),
                WebhookRegistration(store_id=store_id, topic="order.updated", shop_webhook_id="9"),
                AdminUser(username=f"ana{store_id}", password_hash="x", store_id=store_id),
            ]
        )
        session.commit()
    return {"key": key, "bought": bought}


def counts(app: Flask) -> dict[str, int]:
    with app.app_context(), db.engine.connect() as conn:
        return {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in Base.metadata.sorted_tables
        }


@pytest.fixture
def two_stores(app: Flask, shop: WebhookSender) -> tuple[WebhookSender, WebhookSender]:
    with app.app_context():
        created = create_store(db.session, "Other shop", "https://other.example")
        db.session.commit()
    return shop, WebhookSender(shop.client, created)


def test_deleting_a_store_deletes_every_row_kept_for_it_and_nothing_of_another(
    app: Flask, two_stores: tuple[WebhookSender, WebhookSender]
) -> None:
    """Both stores have a row in every table a store can have (a table added later fails
    here until deleting a store deletes its rows); deleting one halves each, and leaves
    no job or audit entry of it but the deletion's own."""
    gone, kept = two_stores
    gone_data, kept_data = fill(app, gone), fill(app, kept)
    before = counts(app)
    store_tables = set(before) - INSTANCE_TABLES
    assert {name for name in store_tables if before[name] == 0} == set()
    with app.app_context():
        store = db.session.get(Store, gone.store.store.id)
        assert store is not None
        # A buyer still to be taken out of its Brevo list: not while that can still be done.
        with pytest.raises(Conflict, match="Brevo"):
            delete_store(db.session, store, actor="test")
        db.session.rollback()
        assert counts(app) == before
        db.session.execute(delete(BrevoRemoval).where(BrevoRemoval.store_id == store.id))
        db.session.commit()  # as the removal job does once Brevo has done it
        done = delete_store(db.session, store, actor="test")
    assert (done.orders, done.licenses) == (2, 1)
    assert done.left_to_do() == []
    after = counts(app)
    assert {name: after[name] for name in store_tables} == {
        name: before[name] // 2 for name in store_tables
    }
    gone_id = gone.store.store.id
    with app.app_context():
        jobs = db.session.scalars(select(Job)).all()
        named = [j.kind for j in jobs if gone_id in (j.payload.get("store_id"), None)]
        assert DELETE_FILES_JOB in named
        orders_left = set(db.session.scalars(select(Order.id)))
        assert all(j.payload.get("order_id") in (None, *orders_left) for j in jobs)
        audit = db.session.scalars(
            select(AuditEvent.action).where(AuditEvent.store_id == gone_id)
        ).all()
        assert audit == ["store.deleted"]
        row = db.session.get(Store, gone_id)
        assert row is not None and row.deleted_at is not None
        assert (row.name, row.url) == ("(deleted store)", "")
    # What products, buyers and the shop reach now.
    validate = call(gone.client, "validate", {"key": gone_data["key"]}).get_json()
    assert (validate["valid"], validate["code"]) == (False, "NOT_FOUND")
    assert call(kept.client, "validate", {"key": kept_data["key"]}).get_json()["valid"] is True
    assert gone.deliver(wc_order(8802, "processing", [line_item(501)])).status_code == 404
    assert gone.admin("GET", "/orders/8800").status_code == 401
    assert kept.admin("GET", "/orders/8800").status_code == 200
    link = get(gone.client, link_path(gone_data["bought"]["downloads"][0]))
    assert link.status_code in (404, 410) and link.mimetype == "text/html"
    portal = get(gone.client, gone_data["bought"]["portal_url"].removeprefix("http://keygate.test"))
    assert portal.status_code in (404, 410)
    assert get(kept.client, link_path(kept_data["bought"]["downloads"][0])).status_code == 200


def test_the_files_job_empties_the_stores_areas_of_shared_storage(
    app: Flask, two_stores: tuple[WebhookSender, WebhookSender]
) -> None:
    """The owner's files in its area and the buyers' stamped copies go; the other store's
    and the instance's common files stay."""
    gone, kept = two_stores
    fill(app, gone)
    fill(app, kept)
    common = storage(app) / "common/readme.txt"
    common.parent.mkdir(parents=True)
    common.write_text("shared")
    gone_id, kept_id = gone.store.store.id, kept.store.store.id
    for store_id in (gone_id, kept_id):
        assert list((storage(app) / f"watermarked/{store_id}").rglob("*.pdf"))
    with app.app_context():
        store = db.session.get(Store, gone_id)
        assert store is not None
        db.session.execute(delete(BrevoRemoval))  # done in Brevo (else the deletion waits)
        delete_store(db.session, store, actor="test")
    run_pending(app)
    assert not (storage(app) / f"stores/{gone_id}").exists()
    assert not (storage(app) / f"watermarked/{gone_id}").exists()
    assert (storage(app) / f"stores/{kept_id}/guide.pdf").is_file()
    assert list((storage(app) / f"watermarked/{kept_id}").rglob("*.pdf"))
    assert common.read_text() == "shared"
    with app.app_context():
        job = db.session.scalars(select(Job).where(Job.kind == DELETE_FILES_JOB)).one()
        assert job.status == "done", job.last_error
        files = db.session.scalars(
            select(AuditEvent.detail).where(AuditEvent.action == "store.files_deleted")
        ).one()
        assert files == {"files": 2, "left": []}


def test_work_that_adds_rows_meanwhile_is_deleted_again_by_the_files_job(
    app: Flask, shop: WebhookSender
) -> None:
    """A job already running when the store was deleted may still write for it: the files
    job deletes those rows again before it empties storage."""
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        delete_store(db.session, store, actor="test")
        # As a webhook delivery that read the store just before would.
        db.session.add(Order(store_id=store.id, shop_order_id="1", status="processing"))
        db.session.commit()
    run_pending(app)
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Order)) == 0


def test_a_deleted_stores_id_is_never_given_to_a_new_store(app: Flask, shop: WebhookSender) -> None:
    """Its storage areas are named by its id: a new store never gets it (SQLite would reuse
    the highest id of a deleted row)."""
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        delete_store(db.session, store, actor="test")
        created = create_store(db.session, "Next shop", "https://next.example")
        db.session.commit()
        assert created.store.id > store.id


def test_a_deleted_store_keeps_none_of_its_secrets(app: Flask, shop: WebhookSender) -> None:
    """The row left of a deleted store holds neither its webhook secret, nor one replaced
    and still in its grace, nor its API token: none of them opens anything again."""
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        store.previous_webhook_secret = "p" * 40
        store.previous_secret_until = utcnow() + dt.timedelta(minutes=5)
        db.session.commit()
        secret, token_hash = store.webhook_secret, store.api_token_hash
        delete_store(db.session, store, actor="test")
        row = db.session.get(Store, store.id)
        assert row is not None
        assert row.webhook_secret not in (secret, "p" * 40)
        assert (row.previous_webhook_secret, row.previous_secret_until) == (None, None)
        assert row.api_token_hash != token_hash


def test_deleting_a_deleted_store_again_is_not_found(app: Flask, shop: WebhookSender) -> None:
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        delete_store(db.session, store, actor="test")
        with pytest.raises(Exception, match="deleted"):
            delete_store(db.session, store, actor="test")


def test_the_admin_page_deletes_a_store_once_its_id_is_typed_again(
    app: Flask, shop: WebhookSender
) -> None:
    client = signed_in_owner(app)
    store = shop.store.store
    page = f"/admin/stores/{store.id}"
    token = csrf_token(client, page)
    assert "Delete this store" in client.get(page).get_data(as_text=True)
    unticked = client.post(
        f"{page}/delete", data={"csrf_token": token, "store_id": store.public_id}
    )
    assert unticked.status_code == 400
    mistyped = client.post(
        f"{page}/delete", data={"csrf_token": token, "store_id": "nope", "confirm": "y"}
    )
    assert mistyped.status_code == 422
    assert "does not match" in mistyped.get_data(as_text=True)
    accented = client.post(
        f"{page}/delete", data={"csrf_token": token, "store_id": "é", "confirm": "y"}
    )
    assert accented.status_code == 422
    no_csrf = client.post(f"{page}/delete", data={"store_id": store.public_id, "confirm": "y"})
    assert no_csrf.status_code == 400
    with app.app_context():
        assert db.session.get(Store, store.id).deleted_at is None  # type: ignore[union-attr]
    deleted = client.post(
        f"{page}/delete", data={"csrf_token": token, "store_id": store.public_id, "confirm": "y"}
    )
    assert deleted.status_code == 200
    assert "Test Shop is deleted" in deleted.get_data(as_text=True)
    assert client.get(page).status_code == 404
    assert store.public_id not in client.get("/admin/").get_data(as_text=True)
    with app.app_context():
        entry = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "store.deleted")
        ).one()
        assert entry.actor == "admin:owner"


def test_a_store_admin_cannot_delete_their_store(app: Flask, shop: WebhookSender) -> None:
    """Like adding one, deleting a store is for admins of every store."""
    from tests.functional.test_admin_pages import store_admin

    store = shop.store.store
    client = store_admin(app, store.id)
    page = f"/admin/stores/{store.id}"
    assert "Delete this store" not in client.get(page).get_data(as_text=True)
    token = csrf_token(client, page)
    refused = client.post(
        f"{page}/delete", data={"csrf_token": token, "store_id": store.public_id, "confirm": "y"}
    )
    assert refused.status_code == 404
    with app.app_context():
        assert db.session.get(Store, store.id).deleted_at is None  # type: ignore[union-attr]


def test_the_cli_asks_for_the_store_id_again(tmp_path: Path) -> None:
    """`keygate store delete` deletes only once the store id is typed again (or --yes)."""
    from tests.functional.test_cli import keygate

    assert keygate(tmp_path, "init").returncode == 0
    added = keygate(
        tmp_path, "store", "add", "--name", "Shop", "--url", "https://s.example", "--json"
    )
    public_id = json.loads(added.stdout)["store_id"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env |= {"KEYGATE_INSTANCE_DIR": str(tmp_path / "instance"), "KEYGATE_WORKER": "off"}

    def delete(*args: str, typed: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "connector.cli", "store", "delete", public_id, *args],
            env=env,
            input=typed,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    unanswered = subprocess.run(
        [sys.executable, "-m", "connector.cli", "store", "delete", public_id],
        env=env,
        stdin=subprocess.DEVNULL,  # a script or cron: nobody to type
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert unanswered.returncode == 1 and "Aborted" not in unanswered.stderr
    assert "not deleted: nothing was typed" in unanswered.stderr
    refused = delete(typed="wrong\n")
    assert refused.returncode != 0 and "did not match" in refused.stderr
    # The question shows no empty default ("[]") to take.
    assert "Type the store id again to delete it: " in refused.stdout
    assert "[]" not in refused.stdout
    assert public_id in keygate(tmp_path, "store", "list").stdout
    done = delete(typed=f"{public_id}\n")
    assert done.returncode == 0, done.stderr
    assert f"Deleted store {public_id}: 0 orders, 0 licenses." in done.stdout
    assert public_id not in keygate(tmp_path, "store", "list").stdout
    again = delete("--yes")
    assert again.returncode != 0 and "no store with id" in again.stderr
    # An id far too long (a file pasted) is named by its start, in a line of its own size.
    pasted = keygate(tmp_path, "store", "token", "x" * 5000)
    assert pasted.returncode == 1
    assert f"no store with id '{'x' * 64}…'" in pasted.stderr
    assert len(pasted.stderr) < 200


def test_a_removal_with_no_brevo_credentials_to_do_it_does_not_hold_the_deletion(
    app: Flask, shop: WebhookSender
) -> None:
    """It would wait for ever: the store is deleted, and the owner told to check the list."""
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        db.session.add(BrevoRemoval(store_id=store.id, list_id=7, email=EMAIL, reason="erasure"))
        db.session.commit()
        done = delete_store(db.session, store, actor="test")
        assert done.brevo_removals_dropped == 1
        assert db.session.scalars(select(BrevoRemoval)).all() == []
    [note] = done.left_to_do()
    assert "Brevo list" in note and EMAIL not in note


def test_the_admin_page_says_why_a_store_cannot_be_deleted_yet(
    app: Flask, shop: WebhookSender
) -> None:
    client = signed_in_owner(app)
    store = shop.store.store
    with app.app_context():
        row = db.session.get(Store, store.id)
        assert row is not None
        put_credentials(
            db.session,
            row,
            "brevo",
            {"api_key": "xkeysib-t", "sender_email": "s@example.org", "sender_name": "S"},
            actor="test",
        )
        db.session.add(BrevoRemoval(store_id=store.id, list_id=7, email=EMAIL, reason="erasure"))
        db.session.commit()
    page = f"/admin/stores/{store.id}"
    token = csrf_token(client, page)
    refused = client.post(
        f"{page}/delete", data={"csrf_token": token, "store_id": store.public_id, "confirm": "y"}
    )
    assert refused.status_code == 409
    assert "still to be taken out of the store&#39;s Brevo list" in refused.get_data(as_text=True)
    assert client.get(page).status_code == 200


def _in_thread(app: Flask, work: Any) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``work`` in its own thread and app context (its own database session)."""
    errors: list[BaseException] = []

    def run() -> None:
        with app.app_context():
            try:
                work()
            except BaseException as exc:  # reported to the test
                errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def _deletion_waiting_until(
    app: Flask, shop: WebhookSender, go_on: threading.Event
) -> tuple[threading.Thread, list[BaseException]]:
    """Start deleting the store in a thread of its own; check that it waits (for what the
    test's other thread holds), then let that thread go on."""

    def deletion() -> None:
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        delete_store(db.session, store, actor="test")

    deleter, errors = _in_thread(app, deletion)
    deleter.join(1.0)
    assert deleter.is_alive(), "the deletion waits for the work that holds the store"
    go_on.set()
    return deleter, errors


def test_a_webhook_under_way_finishes_first_and_its_order_is_deleted_too(
    app: Flask, shop: WebhookSender
) -> None:
    """A request that found its store holds it: the deletion waits for it, then deletes
    what it wrote (no row outlives the store)."""
    found, go_on = threading.Event(), threading.Event()

    def webhook() -> None:
        store = find_store(db.session, shop.store.store.public_id)
        assert store is not None
        hold_live_store(db.session, store)  # as applying an order does first
        found.set()
        go_on.wait(10)
        db.session.add(Order(store_id=store.id, shop_order_id="77", status="processing"))
        db.session.commit()

    writer, writer_errors = _in_thread(app, webhook)
    assert found.wait(10)
    deleter, deleter_errors = _deletion_waiting_until(app, shop, go_on)
    writer.join(30)
    deleter.join(30)
    assert writer_errors == [] and deleter_errors == []
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Order)) == 0
        assert db.session.scalars(select(Store.deleted_at)).one() is not None


def test_a_webhook_arriving_during_a_deletion_finds_the_store_gone(
    app: Flask, shop: WebhookSender
) -> None:
    """The deletion holds the store: a writer that found it just before waits, then sees
    it gone, and writes nothing."""
    found, deleting = threading.Event(), threading.Event()

    def webhook() -> None:
        # A job's store, read in a transaction of its own before (SQLite: a read begins
        # one too, and would wait for the deletion's write lock right here).
        store = find_store(db.session, shop.store.store.public_id)
        assert store is not None
        db.session.commit()
        found.set()
        deleting.wait(10)
        apply_shop_order(db.session, store, parse_order(wc_order(78, "processing")))

    writer, errors = _in_thread(app, webhook)
    assert found.wait(10)
    with app.app_context():
        store = lock_row(db.session, Store, shop.store.store.id)  # as delete_store does
        store.deleted_at = utcnow()
        db.session.flush()
        deleting.set()
        writer.join(1.0)
        assert writer.is_alive(), "the writer waits for the deletion"
        db.session.commit()
    writer.join(30)
    assert [type(e) for e in errors] == [StoreDeleted]
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Order)) == 0


def test_an_activation_under_way_finishes_first_and_is_deleted_too(
    app: Flask, shop: WebhookSender
) -> None:
    """An activation holds its license's seat lock: the deletion waits for it (never an
    integrity error for a row added meanwhile), and its seat goes with the license."""
    from tests.licensing_helpers import issue_key

    issue_key(shop)
    holding, go_on = threading.Event(), threading.Event()

    def activation() -> None:
        license_id = db.session.scalars(select(License.id).with_for_update()).one()
        holding.set()
        go_on.wait(10)
        db.session.add(Activation(license_id=license_id, site="late.example.com"))
        db.session.commit()

    seat, seat_errors = _in_thread(app, activation)
    assert holding.wait(10)
    deleter, deleter_errors = _deletion_waiting_until(app, shop, go_on)
    seat.join(30)
    deleter.join(30)
    assert seat_errors == [] and deleter_errors == []
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Activation)) == 0


def _race_with_deletion(
    app: Flask,
    shop: WebhookSender,
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    pause_at: str,
    work: Any,
) -> None:
    """Run ``work`` in a thread, paused when it calls ``module.<pause_at>`` (after taking its
    locks) until a deletion of the store has started and waits: both must finish, neither
    aborted (PostgreSQL kills one of two transactions that wait for each other)."""
    inside, go_on = threading.Event(), threading.Event()
    original = getattr(module, pause_at)

    def paused(*args: Any, **kwargs: Any) -> Any:
        inside.set()
        go_on.wait(10)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, pause_at, paused)
    worker, work_errors = _in_thread(app, work)
    assert inside.wait(10)
    deleter, deleter_errors = _deletion_waiting_until(app, shop, go_on)
    worker.join(30)
    deleter.join(30)
    assert work_errors == [] and deleter_errors == []


def test_a_brevo_push_under_way_and_a_deletion_do_not_deadlock(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push that records its list under the order's lock writes a row under the store:
    it holds the store first, as the deletion does, so the two queue instead of each
    waiting for the other (PostgreSQL would abort one)."""
    import connector.mail.contacts as contacts

    shop.configure(501)
    assert shop.deliver(wc_order(8900, "processing", [line_item(501)])).status_code == 200
    assert shop.admin("DELETE", f"/customers/{EMAIL}").status_code == 200

    def push() -> None:
        store = db.session.get(Store, shop.store.store.id)
        order_id = db.session.scalars(select(Order.id)).one()
        assert store is not None
        contacts._record_push(db.session, store.id, order_id, 7, EMAIL)
        db.session.commit()

    _race_with_deletion(app, shop, monkeypatch, contacts, "queue_removal", push)
    with app.app_context():
        assert db.session.scalars(select(BrevoRemoval)).all() == []


def test_an_owners_license_action_under_way_and_a_deletion_do_not_deadlock(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Revoking a key locks it and then writes an audit entry under the store: it holds the
    store first, as the deletion does."""
    import connector.licensing.admin as licensing_admin
    from connector.licensing.admin import change_license
    from tests.licensing_helpers import issue_key

    key = issue_key(shop)

    def revoke() -> None:
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        change_license(db.session, store, key, "revoke", actor="test")
        db.session.commit()

    _race_with_deletion(app, shop, monkeypatch, licensing_admin, "record_audit", revoke)
    with app.app_context():
        assert db.session.scalars(select(License)).all() == []


def test_keygates_own_storage_is_never_given_up_on(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Buyers' names are in the shared storage's copies: even on its last attempt, the
    files job retries (then it is dead, named in the audit log, and retried from the
    outbox) rather than finishing with them left there."""
    import connector.privacy.store_deletion as store_deletion
    from connector.integrations.r2 import StorageUnavailable
    from connector.jobs import JOB_ID, RetryLater

    class Down:
        def delete_prefix(self, prefix: str) -> int:
            raise StorageUnavailable("the instance bucket does not answer")

    monkeypatch.setattr(store_deletion, "shared_area", lambda store_id: Down())
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        delete_store(db.session, store, actor="test")
        job = db.session.scalars(select(Job).where(Job.kind == DELETE_FILES_JOB)).one()
        job.attempts = app.extensions["keygate.settings"].job_max_attempts
        db.session.commit()
        with pytest.raises(RetryLater):
            store_deletion.delete_store_files({"store_id": store.id, JOB_ID: job.id})
        db.session.rollback()
        done = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "store.files_deleted")
        ).all()
        assert done == []


def test_a_deleted_stores_buyer_links_never_open_a_later_order(
    app: Flask, shop: WebhookSender
) -> None:
    """Links name orders and grants by id. A deleted store held the newest rows: on SQLite
    without AUTOINCREMENT another store's next order took those ids, and the deleted
    store's buyer's old portal and download links opened it (keys, the file, the stamp of
    another buyer). Ids are never given twice, on either backend."""
    from tests.functional.test_admin_licenses_pages import other_shop, sell
    from tests.functional.test_downloads import put_file

    put_file(app, "products/501/manual.pdf", b"%PDF-1.4 the other store's file")
    put_file(app, "products/601/manual.pdf", b"%PDF-1.4 the deleted store's file")
    theirs = other_shop(app)
    theirs.configure(601)
    bought = sell(theirs, 7001, 601)
    old_portal = bought["portal_url"].removeprefix("http://keygate.test")
    old_link = link_path(bought["downloads"][0])
    with app.app_context():
        store = db.session.get(Store, theirs.store.store.id)
        assert store is not None
        delete_store(db.session, store, actor="test")
        db.session.commit()
    shop.configure(501)
    key = sell(shop, 7000, email="new.buyer@example.org")["licenses"][0]["key"]
    page = get(app.test_client(), old_portal)
    assert page.status_code == 404 and key not in page.get_data(as_text=True)
    assert get(app.test_client(), old_link).status_code == 404


def test_a_removed_admins_cookie_never_signs_in_as_a_later_admin(
    app: Flask, shop: WebhookSender
) -> None:
    """A session names its admin by id: a removed admin's cookie must not sign in as the
    next admin added, who (on SQLite without AUTOINCREMENT) took the same id."""
    from werkzeug.security import generate_password_hash

    from tests.functional.test_admin_licenses_pages import other_shop
    from tests.functional.test_admin_pages import store_admin

    theirs = other_shop(app)
    old_cookie = store_admin(app, shop.store.store.id)
    with app.app_context():
        ana = db.session.execute(select(AdminUser).where(AdminUser.username == "ana")).scalar_one()
        db.session.delete(ana)  # keygate admin remove
        db.session.commit()
        db.session.add(
            AdminUser(
                username="ana",
                password_hash=generate_password_hash("x" * 20),
                store_id=theirs.store.store.id,
            )
        )
        db.session.commit()
    assert old_cookie.get(f"/admin/stores/{theirs.store.store.id}").status_code == 302
