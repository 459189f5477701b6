"""Races around a click, a copy stamped on the spot, the order mail and the Brevo push: a
store deleted, a customer erased, a link ending or a connection dropped while the file store
or Brevo answers."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import delete, select, update

from connector.db import db, transaction, utcnow
from connector.jobs import run_pending
from connector.models import BrevoRemoval, DownloadGrant, Job, Mail, Store
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_brevo_contacts import EMAIL, erase
from tests.functional.test_brevo_mail import brevo_shop  # noqa: F401
from tests.functional.test_downloads import (
    _pdf_files,
    events,
    get,
    link_path,
    make_pdf,
    paid_order,
    put_file,
)
from tests.peers import FakeBrevo


def _delete_store(app: Flask, store_id: int) -> None:
    from connector.privacy.store_deletion import delete_store

    with app.app_context():
        db.session.execute(delete(BrevoRemoval))
        store = db.session.get(Store, store_id)
        assert store is not None
        delete_store(db.session, store, actor="test")


# A store deleted while the file store answers a click: the link is gone (404), never a 500.


@pytest.mark.parametrize("resume", [False, True])
def test_a_click_racing_a_store_deletion_is_a_404_not_a_500(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch, resume: bool
) -> None:
    """The full path asks the file store with no transaction open (a copy stamped on the
    spot, a resumed download); the store and its grants are deleted meanwhile: the write
    that follows finds the grant gone, and the buyer gets the page of a link that is gone."""
    from connector.downloads.storage import LocalStore

    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf")
    [download] = paid_order(shop, 7801, _pdf_files())
    path = link_path(download)
    if resume:
        assert get(shop.client, path).status_code == 200
    real = LocalStore.delivery
    store_id = shop.store.store.id

    def store_deleted_meanwhile(self: LocalStore, key: str, filename: str, ttl: int) -> Any:
        _delete_store(app, store_id)
        return real(self, key, filename, ttl)

    monkeypatch.setattr(LocalStore, "delivery", store_deleted_meanwhile)
    headers = {"Range": "bytes=100-"} if resume else {}
    response = get(shop.client, path, headers=headers)
    assert (response.status_code, response.mimetype) == (404, "text/html")


# A store deleted while a copy is stamped on the spot: the copy does not stay in storage.


def test_a_copy_stamped_while_the_store_is_deleted_is_not_left_in_storage(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy is stamped and uploaded with no lock held; the store is deleted and its files
    job empties watermarked/<store>/ meanwhile. The upload that lands after is deleted
    again: the copy (the buyer's name and address inside) does not stay in storage."""
    import connector.downloads.service as service

    storage = Path(app.extensions["keygate.settings"].storage_dir)
    make_pdf(storage / "books/guide.pdf")
    [download] = paid_order(shop, 7803, _pdf_files())
    store_id = shop.store.store.id
    real_stamp = service.stamp_pdf

    def store_deleted_while_stamping(*args: Any) -> Any:
        _delete_store(app, store_id)
        run_pending(app)  # the files job empties the store's areas
        return real_stamp(*args)

    monkeypatch.setattr(service, "stamp_pdf", store_deleted_while_stamping)
    get(shop.client, link_path(download))
    left = list((storage / f"watermarked/{store_id}").rglob("*"))
    assert [p for p in left if p.is_file()] == []


# A link that ends while its copy is stamped is not served.


def test_a_link_that_expires_while_its_copy_is_stamped_is_not_served(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The click is counted at the time of its write: a link that ended while its copy was
    stamped is refused (410), not counted and served."""
    import connector.downloads.service as service

    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf")
    [download] = paid_order(shop, 7804, _pdf_files())
    with app.app_context(), transaction() as session:
        session.execute(update(DownloadGrant).values(expires_at=utcnow() + dt.timedelta(seconds=1)))
    real_stamp = service.stamp_pdf

    def slow_stamp(*args: Any) -> Any:
        import time

        time.sleep(1.5)  # a large PDF
        return real_stamp(*args)

    monkeypatch.setattr(service, "stamp_pdf", slow_stamp)
    response = get(shop.client, link_path(download))
    assert response.status_code == 410, [e.outcome for e in events(app)]


# Brevo: a removal already asking Brevo when the push lands does not count as waiting.


def test_a_removal_in_flight_when_the_push_lands_does_not_leave_the_buyer_in_the_list(
    brevo_app: Flask,
    brevo_shop: WebhookSender,  # noqa: F811
    brevo: FakeBrevo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two workers. The push has recorded its list and waits on Brevo; the buyer is erased
    (removal R queued) and another worker runs R, which finds nothing to remove (the contact
    is not there yet). Brevo then adds the contact: the push, seeing R already running (not
    waiting), queues another removal, and the erased buyer leaves the list."""
    from connector.mail import contacts

    real_push, real_remove = contacts.push_contact, contacts.remove_from_list
    waiting, go_add = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def push_held_up(*args: Any) -> None:
        waiting.set()
        assert go_add.wait(10)
        real_push(*args)

    monkeypatch.setattr(contacts, "push_contact", push_held_up)
    brevo_shop.deliver(wc_order(9801, "processing", [line_item(501)]))
    run_pending(brevo_app, kinds={"order.issued"})

    def push_worker() -> None:
        try:
            run_pending(brevo_app, kinds={"brevo.push_contact"})
        except BaseException as exc:
            errors.append(exc)

    pusher = threading.Thread(target=push_worker)
    pusher.start()
    assert waiting.wait(10)
    assert erase(brevo_shop)["brevo_removal"] == "queued"

    def removed_then_push_lands(*args: Any) -> Any:
        outcome = real_remove(*args)  # the contact is not in the list yet
        go_add.set()
        pusher.join(20)  # Brevo adds it, the push records itself
        return outcome

    monkeypatch.setattr(contacts, "remove_from_list", removed_then_push_lands)
    run_pending(brevo_app, kinds={"brevo.remove_contact"})
    pusher.join(20)
    assert errors == []
    monkeypatch.setattr(contacts, "remove_from_list", real_remove)
    with brevo_app.app_context(), transaction() as session:
        for job in session.scalars(select(Job).where(Job.status == "pending")):
            job.run_after = utcnow() - dt.timedelta(seconds=1)
    run_pending(brevo_app)
    remove = "/contacts/lists/7/contacts/remove"
    # The removal asked Brevo first, then the contact landed: the push asked once more.
    assert [r.path.rsplit("/v3", 1)[-1] for r in brevo.requests][-3:] == [
        remove,
        "/contacts",
        remove,
    ]
    assert not brevo.in_list(EMAIL, 7), "the erased buyer is still in the Brevo list"


# Mail: an erasure while the mail is written leaves no mail naming the buyer (PostgreSQL).


def test_an_erasure_while_the_mail_is_written_leaves_no_mail_naming_the_buyer(
    brevo_app: Flask,
    brevo_shop: WebhookSender,  # noqa: F811
    brevo: FakeBrevo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The mail is written under the order's lock, which an erasure takes too: an erasure
    that comes while the mail is written waits, then deletes it; no stored mail naming the
    buyer is left after it (PostgreSQL; on SQLite writers take turns anyway)."""
    import connector.mail.service as mail_service

    real_compose = mail_service.compose_order_mail
    erased: list[threading.Thread] = []

    def erased_meanwhile(*args: Any) -> Any:
        if not erased:
            thread = threading.Thread(target=lambda: erase(brevo_shop))
            thread.start()
            thread.join(3)  # SQLite: waits for the job's write lock
            erased.append(thread)
        return real_compose(*args)

    monkeypatch.setattr(mail_service, "compose_order_mail", erased_meanwhile)
    brevo_shop.deliver(wc_order(9802, "processing", [line_item(501)]))
    run_pending(brevo_app, kinds={"order.issued", "mail.order_issued"})
    erased[0].join(40)
    with brevo_app.app_context():
        left = [m.to_email for m in db.session.scalars(select(Mail))]
    assert EMAIL not in left


# A connection dropped while a click is counted: the click is not run (and counted) again.


def test_a_count_whose_answer_was_lost_is_not_counted_again(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the count is committed by its own statement: a connection that drops
    before its answer arrives must not have the whole GET run again (a second download
    counted for one click), as a dropped read would be."""
    from sqlalchemy.exc import OperationalError

    import connector.downloads.service as service

    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf")
    [download] = paid_order(shop, 7806, _pdf_files(), download_limit=3)
    real_count = service._count_and_log
    dropped: list[bool] = []

    def counted_then_dropped(*args: Any, **kwargs: Any) -> bool:
        counted = real_count(*args, **kwargs)
        if not dropped:  # on PostgreSQL the count is already committed
            dropped.append(True)
            raise OperationalError(
                "INSERT ...",
                {},
                Exception("server closed the connection unexpectedly"),
                connection_invalidated=True,
            )
        return counted

    monkeypatch.setattr(service, "_count_and_log", counted_then_dropped)
    # Not run again (the count may be made: PostgreSQL commits it with its statement): a
    # 503, and the buyer clicks again.
    assert get(shop.client, link_path(download)).status_code == 503
    assert shop.order(7806)["downloads"][0]["downloads_left"] >= 2


# Mail: an erasure while Brevo sends the mail does not fail the job.


def test_an_erasure_while_brevo_sends_the_mail_does_not_fail_the_job(
    brevo_app: Flask,
    brevo_shop: WebhookSender,  # noqa: F811
    brevo: FakeBrevo,
) -> None:
    """Brevo is asked with no transaction open; an erasure deletes the order's mails
    meanwhile. The job records the mail as sent where it still is and is done: it does not
    fail (an attempt spent, an error kept) for a mail that went."""
    done: list[bool] = []

    def erase_while_sending(path: str) -> None:
        if path == "/v3/smtp/email" and not done:
            done.append(True)
            erase(brevo_shop)

    brevo.on_request = erase_while_sending
    brevo_shop.deliver(wc_order(9803, "processing", [line_item(501)]))
    run_pending(brevo_app, kinds={"order.issued", "mail.order_issued"})
    assert len(brevo.sent()) == 1
    with brevo_app.app_context():
        job = db.session.scalars(select(Job).where(Job.kind == "mail.order_issued")).one()
        assert (job.status, job.last_error) == ("done", None)


# A file deleted from embedded storage between the click's choice and the send.


@pytest.mark.parametrize("fast", [True, False])
def test_a_file_deleted_as_it_is_sent_is_a_503_and_the_download_is_given_back(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> None:
    """The storage said the file was there; it is deleted (an erasure, a copy stamped anew)
    before it is opened: a 503 page saying to try again, never a 500, and the counted
    download is given back. The next click is served."""
    import connector.downloads.views as views
    from connector.downloads.storage import LocalStore

    original = put_file(app, "files/manual.bin", b"manual " * 100)
    [download] = paid_order(
        shop,
        7811,
        [{"object_key": "files/manual.bin", "filename": "manual.bin"}],
        download_limit=1,
    )
    real = LocalStore.delivery
    moved = original.with_name("aside")

    def deleted_after_the_choice(self: LocalStore, key: str, filename: str, ttl: int) -> Any:
        delivery = real(self, key, filename, ttl)
        original.rename(moved)
        return delivery

    monkeypatch.setattr(LocalStore, "delivery", deleted_after_the_choice)
    if not fast:
        monkeypatch.setattr(views, "start_download_fast", lambda *args, **kwargs: None)
    response = get(shop.client, link_path(download))
    assert (response.status_code, response.mimetype) == (503, "text/html")
    assert "try the link again" in response.get_data(as_text=True)
    assert shop.order(7811)["downloads"][0]["downloads_left"] == 1
    assert [event.outcome for event in events(app)] == ["served", "not_sent"]

    monkeypatch.setattr(LocalStore, "delivery", real)
    moved.rename(original)
    response = get(shop.client, link_path(download))
    assert response.status_code == 200
    assert response.get_data() == b"manual " * 100
    assert shop.order(7811)["downloads"][0]["downloads_left"] == 0
