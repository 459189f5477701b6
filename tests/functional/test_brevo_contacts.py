"""Buyers in the store's Brevo list: pushed only with consent when the store asks for it,
and taken out again when erased or when they withdraw consent.

The real sib-api-v3-sdk talks to a local server that speaks Brevo's API (tests/peers.py).
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, text, update

from connector.db import db, transaction
from connector.jobs import run_pending
from connector.models import AuditEvent, BrevoRemoval, Job, Order
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_admin_licenses_pages import look_up
from tests.functional.test_admin_pages import signed_in_owner
from tests.functional.test_brevo_mail import BREVO, brevo_shop, make_due
from tests.peers import FakeBrevo

__all__ = ["brevo_shop"]

EMAIL = "jurgen@example.org"
CONSENT_KEY = "_keygate_newsletter"
REMOVE_PATH = "/v3/contacts/lists/7/contacts/remove"


def with_meta(payload: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    payload["meta_data"].append({"id": 90, "key": key, "value": value})
    return payload


def ask_for_consent(shop: WebhookSender) -> None:
    answer = shop.admin("PUT", "/credentials/brevo", {**BREVO, "consent_meta_key": CONSENT_KEY})
    assert answer.status_code == 200


def contact_pushes(brevo: FakeBrevo) -> list[str]:
    return [r.body["email"] for r in brevo.requests if r.path == "/v3/contacts"]


def removals(brevo: FakeBrevo) -> list[Any]:
    return [r.body for r in brevo.requests if r.path.endswith("/contacts/remove")]


def audit(shop: WebhookSender, action: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = shop.admin("GET", f"/audit?action={action}").get_json()["events"]
    return events


@pytest.mark.parametrize("ticked", ["yes", "YES", "1", "true", "on", True, 1])
def test_with_a_consent_key_only_buyers_who_consented_are_pushed(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo, ticked: Any
) -> None:
    """The store names the order meta of the buyer's consent: a buyer whose order does not
    have it ticked is mailed but never pushed to the list; one whose order has it is."""
    ask_for_consent(brevo_shop)
    silent = wc_order(9700, "processing", [line_item(501)], email="no-meta@example.org")
    declined = with_meta(
        wc_order(9701, "processing", [line_item(501)], email="declined@example.org"),
        CONSENT_KEY,
        "no",
    )
    consented = with_meta(wc_order(9702, "processing", [line_item(501)]), CONSENT_KEY, ticked)
    for payload in (silent, declined, consented):
        assert brevo_shop.deliver(payload).status_code == 200
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [EMAIL]
    assert brevo.in_list(EMAIL, 7)
    assert len(brevo.sent()) == 3  # every buyer still gets their keys
    with brevo_app.app_context():
        statuses = set(db.session.execute(select(Job.status)).scalars())
        pushed = dict(db.session.execute(select(Order.shop_order_id, Order.brevo_list_id)).all())
    assert statuses == {"done"}
    assert pushed == {"9700": None, "9701": None, "9702": 7}


def test_without_a_consent_key_every_buyer_is_pushed(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """No consent key: the list is one the owner may use without consent, every buyer is
    pushed (whatever the order's meta says), as before."""
    payload = with_meta(wc_order(9703, "processing", [line_item(501)]), CONSENT_KEY, "no")
    brevo_shop.deliver(payload)
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [EMAIL]
    assert brevo.in_list(EMAIL, 7)


def test_a_buyer_who_withdraws_consent_is_not_pushed_again_and_leaves_the_list(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """A later delivery of the order with the consent no longer ticked (and a unit more
    issued): no second push, and the buyer is taken out of the list."""
    ask_for_consent(brevo_shop)
    brevo_shop.deliver(
        with_meta(wc_order(9704, "processing", [line_item(501, line_id=41)]), CONSENT_KEY, "yes")
    )
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [EMAIL] and brevo.in_list(EMAIL, 7)

    later = wc_order(9704, "completed", [line_item(501, quantity=2, line_id=41)], modified=5)
    brevo_shop.deliver(with_meta(later, CONSENT_KEY, "no"))
    assert len(brevo_shop.order(9704)["licenses"]) == 2
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [EMAIL]  # not pushed again
    assert removals(brevo) == [{"emails": [EMAIL]}]
    assert not brevo.in_list(EMAIL, 7)
    [event] = audit(brevo_shop, "customer.consent_withdrawn_in_brevo")
    assert event["subject"] == "order:9704"
    assert event["detail"] == {"list_id": 7, "outcome": "removed"}
    # Another delivery without the consent asks nothing more of Brevo.
    brevo_shop.deliver(
        with_meta(
            wc_order(9704, "completed", [line_item(501, quantity=2, line_id=41)], modified=9),
            CONSENT_KEY,
            "no",
        )
    )
    run_pending(brevo_app)
    assert len(removals(brevo)) == 1


def test_consent_withdrawn_before_the_push_ran_stops_it(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """The push waits in the outbox (a Brevo outage, a busy worker) and the next delivery
    no longer carries the consent: the buyer is not added to the list."""
    ask_for_consent(brevo_shop)
    item = line_item(501, line_id=43)
    brevo_shop.deliver(with_meta(wc_order(9711, "processing", [item]), CONSENT_KEY, "yes"))
    later = wc_order(9711, "completed", [item], modified=5)
    brevo_shop.deliver(with_meta(later, CONSENT_KEY, "no"))
    run_pending(brevo_app)
    assert contact_pushes(brevo) == []
    assert not brevo.in_list(EMAIL, 7)


def test_consent_withdrawn_while_the_push_ran_is_undone(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The withdrawal lands between Brevo's answer and the push recording itself: the push
    did not see it, so it takes the buyer out again."""
    from connector.mail import contacts

    ask_for_consent(brevo_shop)
    item = line_item(501, line_id=44)
    real_record = contacts._record_push

    def withdraw_meanwhile(*args: Any, **kwargs: Any) -> None:
        later = wc_order(9712, "completed", [item], modified=5)
        brevo_shop.deliver(with_meta(later, CONSENT_KEY, "no"))
        real_record(*args, **kwargs)

    monkeypatch.setattr(contacts, "_record_push", withdraw_meanwhile)
    brevo_shop.deliver(with_meta(wc_order(9712, "processing", [item]), CONSENT_KEY, "yes"))
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [EMAIL]
    assert removals(brevo) == [{"emails": [EMAIL]}]
    assert not brevo.in_list(EMAIL, 7)


def test_an_order_marked_by_migration_0011_takes_no_consenting_buyer_out(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """0011 marks every order of a store with Brevo credentials as pushed (it cannot tell),
    consent or not: a later delivery of such an order without consent is no withdrawal, so
    a buyer who consented on their next order stays in the list (an erasure still takes
    them out)."""
    ask_for_consent(brevo_shop)
    brevo_shop.deliver(wc_order(9750, "processing", [line_item(501, line_id=51)]))
    run_pending(brevo_app)
    with brevo_app.app_context(), transaction() as session:
        session.execute(update(Order).where(Order.shop_order_id == "9750").values(brevo_list_id=0))
    consented = wc_order(9751, "processing", [line_item(501, line_id=52)])
    brevo_shop.deliver(with_meta(consented, CONSENT_KEY, "yes"))
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [EMAIL]
    assert brevo.in_list(EMAIL, 7)
    brevo_shop.deliver(wc_order(9750, "completed", [line_item(501, line_id=51)], modified=5))
    run_pending(brevo_app)
    assert removals(brevo) == []
    assert brevo.in_list(EMAIL, 7)
    assert erase(brevo_shop)["brevo_removal"] == "queued"


def erase(shop: WebhookSender) -> dict[str, Any]:
    answer = shop.admin("DELETE", f"/customers/{EMAIL}")
    assert answer.status_code == 200
    body: dict[str, Any] = answer.get_json()
    return body


def test_erasure_takes_the_customer_out_of_the_brevo_list(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Erasing a customer Keygate pushed asks Brevo to take them out of the list, through
    the outbox; nothing at rest holds their address in clear meanwhile."""
    brevo_shop.deliver(wc_order(9705, "processing", [line_item(501)]))
    brevo_shop.deliver(wc_order(9706, "processing", [line_item(501)]))
    run_pending(brevo_app)
    assert brevo.in_list(EMAIL, 7)

    assert erase(brevo_shop) == {"erased_orders": 2, "brevo_removal": "queued"}
    with brevo_app.app_context():
        [job] = db.session.execute(select(Job).where(Job.kind == "brevo.remove_contact")).scalars()
        assert job.status == "pending"
        at_rest = " ".join(
            repr(db.session.execute(text(f"SELECT * FROM {table}")).all())  # noqa: S608
            for table in ("jobs", "brevo_removals", "orders", "audit_events")
        )
    assert EMAIL not in at_rest
    assert removals(brevo) == []  # not in the request: in the outbox

    run_pending(brevo_app)
    assert removals(brevo) == [{"emails": [EMAIL]}]  # once, for both orders
    assert not brevo.in_list(EMAIL, 7)
    [event] = audit(brevo_shop, "customer.erased_in_brevo")
    assert event["detail"] == {"list_id": 7, "outcome": "removed"}
    assert event["subject"].startswith("erased-") and EMAIL not in repr(event)
    [erased] = audit(brevo_shop, "customer.erased")
    assert erased["subject"] == event["subject"]
    with brevo_app.app_context():
        assert db.session.execute(select(BrevoRemoval)).first() is None  # address forgotten
        assert set(db.session.execute(select(Job.status)).scalars()) == {"done"}


def test_a_brevo_outage_only_delays_the_removal(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    brevo_shop.deliver(wc_order(9707, "processing", [line_item(501)]))
    run_pending(brevo_app)
    brevo.failures.extend([503, 429])
    assert erase(brevo_shop)["brevo_removal"] == "queued"
    run_pending(brevo_app)
    with brevo_app.app_context():
        job = db.session.execute(select(Job).where(Job.kind == "brevo.remove_contact")).scalar_one()
        assert job.status == "pending" and "Brevo answered 503" in (job.last_error or "")
    assert brevo.in_list(EMAIL, 7)
    # The owner who looks the customer up sees the erasure done here and waiting on Brevo.
    owner = signed_in_owner(brevo_app)
    page = look_up(owner, EMAIL).get_data(as_text=True)
    assert "This customer was erased" in page
    assert "Waiting to leave Brevo" in page and '<td>7</td><td data-label="Why">erased' in page
    for _ in range(2):
        make_due(brevo_app)
        run_pending(brevo_app)
    assert not brevo.in_list(EMAIL, 7)
    assert "Waiting to leave Brevo" not in look_up(owner, EMAIL).get_data(as_text=True)
    with brevo_app.app_context():
        job = db.session.execute(select(Job).where(Job.kind == "brevo.remove_contact")).scalar_one()
        assert (job.status, job.attempts) == ("done", 3)


def test_a_list_gone_from_brevo_counts_as_done(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Brevo answers 404 (the owner deleted the list): the contact is in no such list."""
    brevo_shop.deliver(wc_order(9708, "processing", [line_item(501)]))
    run_pending(brevo_app)
    brevo.lists.clear()
    erase(brevo_shop)
    run_pending(brevo_app)
    assert len(removals(brevo)) == 1
    [event] = audit(brevo_shop, "customer.erased_in_brevo")
    assert event["detail"] == {"list_id": 7, "outcome": "gone"}
    with brevo_app.app_context():
        assert set(db.session.execute(select(Job.status)).scalars()) == {"done"}


def test_a_store_without_a_list_queues_nothing(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    no_list = {k: v for k, v in BREVO.items() if k != "list_id"}
    assert brevo_shop.admin("PUT", "/credentials/brevo", no_list).status_code == 200
    brevo_shop.deliver(wc_order(9709, "processing", [line_item(501)]))
    run_pending(brevo_app)
    assert erase(brevo_shop) == {"erased_orders": 1, "brevo_removal": None}
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [] and removals(brevo) == []
    with brevo_app.app_context():
        kinds = set(db.session.execute(select(Job.kind)).scalars())
    assert "brevo.remove_contact" not in kinds


def test_a_buyer_pushed_before_lists_were_recorded_leaves_the_stores_list(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Orders pushed before Keygate recorded the list (migration 0011 marks them 0) are
    taken out of the store's list."""
    brevo_shop.deliver(wc_order(9710, "processing", [line_item(501)]))
    run_pending(brevo_app)
    with brevo_app.app_context(), transaction() as session:
        session.execute(select(Order)).scalar_one().brevo_list_id = 0
    assert erase(brevo_shop)["brevo_removal"] == "queued"
    run_pending(brevo_app)
    assert removals(brevo) == [{"emails": [EMAIL]}]
    assert not brevo.in_list(EMAIL, 7)


def test_erasure_waits_for_brevo_credentials_and_says_so(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """The store dropped its Brevo credentials after Keygate pushed the customer: the owner
    is told the removal could not be queued (they remove the contact by hand)."""
    brevo_shop.deliver(wc_order(9711, "processing", [line_item(501)]))
    run_pending(brevo_app)
    assert brevo_shop.admin("DELETE", "/credentials/brevo").status_code in (200, 204)
    assert erase(brevo_shop)["brevo_removal"] == "no_brevo_credentials"
    [erased] = audit(brevo_shop, "customer.erased")
    assert erased["detail"] == {"orders": 1, "brevo_removal": "no_brevo_credentials"}
    with brevo_app.app_context():
        assert db.session.execute(select(Order.brevo_list_id)).scalar_one() is None
        assert db.session.execute(select(BrevoRemoval)).first() is None


def test_the_export_says_which_list_the_buyer_was_pushed_into(
    brevo_app: Flask, brevo_shop: WebhookSender
) -> None:
    brevo_shop.deliver(wc_order(9712, "processing", [line_item(501)]))
    run_pending(brevo_app)
    [order] = brevo_shop.admin("GET", f"/customers/{EMAIL}/export").get_json()["orders"]
    assert order["brevo_list"] == 7


def test_the_export_lists_an_address_still_to_be_taken_out_of_the_brevo_list(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Until Brevo has taken the customer out (an erasure, a withdrawn consent), Keygate
    keeps the address to remove: the export shows it, then no longer once it is done."""
    ask_for_consent(brevo_shop)
    consented = wc_order(9714, "processing", [line_item(501, line_id=42)])
    brevo_shop.deliver(with_meta(consented, CONSENT_KEY, "yes"))
    run_pending(brevo_app)
    assert brevo_shop.admin("GET", f"/customers/{EMAIL}/export").get_json()["brevo_removals"] == []
    withdrawn = wc_order(9714, "processing", [line_item(501, line_id=42)], modified=5)
    brevo_shop.deliver(with_meta(withdrawn, CONSENT_KEY, "no"))
    [waiting] = brevo_shop.admin("GET", f"/customers/{EMAIL}/export").get_json()["brevo_removals"]
    assert (waiting["list"], waiting["address"], waiting["reason"]) == (7, EMAIL, "withdrawal")
    assert waiting["since"].endswith("Z")
    run_pending(brevo_app)
    assert not brevo.in_list(EMAIL, 7)
    assert brevo_shop.admin("GET", f"/customers/{EMAIL}/export").get_json()["brevo_removals"] == []
    # An erasure's removal is found by the pseudonym, the order no longer naming the buyer.
    again = wc_order(9715, "processing", [line_item(501, line_id=43)])
    brevo_shop.deliver(with_meta(again, CONSENT_KEY, "yes"))
    run_pending(brevo_app)
    assert brevo.in_list(EMAIL, 7)
    erase(brevo_shop)
    exported = brevo_shop.admin("GET", f"/customers/{EMAIL}/export").get_json()
    assert exported["erased"] is True
    assert [(r["address"], r["reason"]) for r in exported["brevo_removals"]] == [(EMAIL, "erasure")]


def test_removal_rows_hold_the_address_encrypted(
    brevo_app: Flask, brevo_shop: WebhookSender
) -> None:
    """Until Brevo has it done, the address to remove is stored like every other address:
    encrypted (and so re-encrypted by key rotation)."""
    brevo_shop.deliver(wc_order(9713, "processing", [line_item(501)]))
    run_pending(brevo_app)
    erase(brevo_shop)
    with brevo_app.app_context():
        removal = db.session.execute(select(BrevoRemoval)).scalar_one()
        assert removal.email == EMAIL
        raw = db.session.execute(text("SELECT email FROM brevo_removals")).scalar_one()
        assert raw.startswith("gAAAA") and EMAIL not in raw
        audit_rows = db.session.execute(select(AuditEvent.detail)).scalars().all()
    assert EMAIL not in repr(audit_rows)


def test_an_erasure_while_the_push_runs_still_reaches_brevo(
    brevo_app: Flask,
    brevo_shop: WebhookSender,
    brevo: FakeBrevo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The customer is erased while Brevo takes the push: the push recorded its list before
    it asked Brevo, so the erasure queues the removal, and the push, finding it waiting,
    queues no second one."""
    from connector.mail import contacts
    from connector.models import Store
    from connector.privacy.service import erase_customer

    real_push = contacts.push_contact

    def push_then_erase(*args: Any) -> None:
        real_push(*args)
        session = db.session
        store = session.get(Store, brevo_shop.store.store.id)
        assert store is not None
        assert erase_customer(session, store, EMAIL, actor="api").brevo_removal == "queued"

    monkeypatch.setattr(contacts, "push_contact", push_then_erase)
    brevo_shop.deliver(wc_order(9714, "processing", [line_item(501)]))
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [EMAIL]
    assert removals(brevo) == [{"emails": [EMAIL]}]
    assert not brevo.in_list(EMAIL, 7)
    [event] = audit(brevo_shop, "customer.erased_in_brevo")
    assert event["subject"].startswith("erased-")
    with brevo_app.app_context():
        assert db.session.execute(select(Order.brevo_list_id)).scalar_one() is None


def test_an_address_brevo_says_is_not_in_the_list_counts_as_done(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """The owner took the buyer out by hand; Brevo then refuses the removal (400
    invalid_parameter) instead of listing it as failed: nothing to remove, not retried for
    hours, the address forgotten."""
    brevo_shop.deliver(wc_order(9709, "processing", [line_item(501)]))
    run_pending(brevo_app)
    brevo.contacts[EMAIL]["listIds"].remove(7)
    brevo.refuses_non_members = True
    erase(brevo_shop)
    run_pending(brevo_app)
    [event] = audit(brevo_shop, "customer.erased_in_brevo")
    assert event["detail"] == {"list_id": 7, "outcome": "not_in_list"}
    with brevo_app.app_context():
        assert db.session.execute(select(BrevoRemoval)).first() is None
        assert set(db.session.execute(select(Job.status)).scalars()) == {"done"}


def test_an_address_waiting_long_after_its_job_gave_up_is_forgotten(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """A removal that never went through (credentials removed, Brevo refusing) is not a
    reason to keep the erased customer's address for ever: the daily purge forgets it and
    tells the owner to take them out by hand."""
    import datetime as dt

    from connector.privacy.service import purge_expired_records

    brevo_shop.deliver(wc_order(9710, "processing", [line_item(501)]))
    run_pending(brevo_app)
    erase(brevo_shop)
    with brevo_app.app_context():
        db.session.execute(
            update(BrevoRemoval).values(created_at=dt.datetime.now(dt.UTC) - dt.timedelta(days=60))
        )
        removed = purge_expired_records(db.session)
        db.session.commit()
        assert removed["brevo_removals"] == 1
        assert db.session.execute(select(BrevoRemoval)).first() is None
    [event] = audit(brevo_shop, "customer.brevo_removal_given_up")
    assert event["subject"].startswith("erased-") and EMAIL not in repr(event)
    run_pending(brevo_app)  # the waiting job finds nothing left to do
    assert removals(brevo) == []


@pytest.mark.parametrize("then", ["erasure", "withdrawal"])
def test_a_push_brevo_took_whose_answer_was_lost_is_undone_later(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo, then: str
) -> None:
    """Brevo adds the buyer but its answer never arrives (retried later). The push recorded
    its list before it asked, so an erasure or a withdrawal that comes before the retry
    still takes the buyer out; the retry then adds nobody."""
    ask_for_consent(brevo_shop)
    item = line_item(501, line_id=45)
    brevo_shop.deliver(with_meta(wc_order(9715, "processing", [item]), CONSENT_KEY, "yes"))
    brevo.lost_answers = 1
    run_pending(brevo_app, kinds={"order.issued", "brevo.push_contact"})
    assert brevo.in_list(EMAIL, 7)
    with brevo_app.app_context():
        push = db.session.execute(select(Job).where(Job.kind == "brevo.push_contact")).scalar_one()
        assert push.status == "pending"
    if then == "erasure":
        assert erase(brevo_shop)["brevo_removal"] == "queued"
    else:
        later = wc_order(9715, "completed", [item], modified=5)
        brevo_shop.deliver(with_meta(later, CONSENT_KEY, "no"))
    make_due(brevo_app)
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [EMAIL]
    assert removals(brevo) == [{"emails": [EMAIL]}]
    assert not brevo.in_list(EMAIL, 7)


def test_a_removal_that_ran_before_the_push_landed_is_asked_again(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker takes the erased customer out while Brevo is still adding them (the
    removal finds nothing to remove): the push, seeing the erasure and no removal waiting,
    queues another."""
    from connector.mail import contacts

    real_push = contacts.push_contact

    def erased_and_removed_meanwhile(*args: Any) -> None:
        erase(brevo_shop)
        run_pending(brevo_app, kinds={"brevo.remove_contact"})
        real_push(*args)

    monkeypatch.setattr(contacts, "push_contact", erased_and_removed_meanwhile)
    brevo_shop.deliver(wc_order(9716, "processing", [line_item(501)]))
    run_pending(brevo_app, kinds={"order.issued", "brevo.push_contact"})
    assert brevo.in_list(EMAIL, 7)
    run_pending(brevo_app)
    assert len(removals(brevo)) == 2
    assert not brevo.in_list(EMAIL, 7)
    outcomes = [e["detail"]["outcome"] for e in audit(brevo_shop, "customer.erased_in_brevo")]
    assert sorted(outcomes) == ["not_in_list", "removed"]


def test_consent_ticked_after_the_order_was_issued_pushes_the_buyer_once(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """The buyer agrees later (the owner ticks it on their word): the next delivery pushes
    them, once; deliveries after it, still ticked, push nobody again."""
    ask_for_consent(brevo_shop)
    item = line_item(501, line_id=45)
    brevo_shop.deliver(with_meta(wc_order(9730, "processing", [item]), CONSENT_KEY, "no"))
    run_pending(brevo_app)
    assert contact_pushes(brevo) == []
    for modified in (5, 9):
        later = wc_order(9730, "completed", [item], modified=modified)
        brevo_shop.deliver(with_meta(later, CONSENT_KEY, "yes"))
        run_pending(brevo_app)
    assert contact_pushes(brevo) == [EMAIL]
    assert brevo.in_list(EMAIL, 7)


def test_consent_given_with_the_payment_pushes_the_buyer_once(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Unticked while the order waited for payment, ticked when it was paid: one push (the
    issuance's), and none for an order never paid."""
    ask_for_consent(brevo_shop)
    item = line_item(501, line_id=46)
    brevo_shop.deliver(with_meta(wc_order(9731, "pending", [item]), CONSENT_KEY, "no"))
    brevo_shop.deliver(with_meta(wc_order(9732, "pending", [item]), CONSENT_KEY, "no"))
    later = wc_order(9731, "processing", [item], modified=5)
    brevo_shop.deliver(with_meta(later, CONSENT_KEY, "yes"))
    unpaid = wc_order(9732, "pending", [item], email="unpaid@example.org", modified=5)
    brevo_shop.deliver(with_meta(unpaid, CONSENT_KEY, "yes"))
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [EMAIL]


def test_consent_withdrawn_and_given_again_before_the_push_ran_pushes_once(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Withdrawn and given again while the first push still waits: that push, which reads
    the consent when it runs, is the only one."""
    ask_for_consent(brevo_shop)
    item = line_item(501, line_id=47)
    brevo_shop.deliver(with_meta(wc_order(9733, "processing", [item]), CONSENT_KEY, "yes"))
    for modified, ticked in ((5, "no"), (9, "yes")):
        later = wc_order(9733, "completed", [item], modified=modified)
        brevo_shop.deliver(with_meta(later, CONSENT_KEY, ticked))
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [EMAIL]
    assert brevo.in_list(EMAIL, 7)


OLD = "old@example.org"


def pushed_address(app: Flask, shop_order_id: str) -> tuple[int | None, str | None]:
    """The list and the address Keygate recorded it pushed the order's buyer into."""
    with app.app_context():
        order = db.session.execute(
            select(Order).where(Order.shop_order_id == shop_order_id)
        ).scalar_one()
        return order.brevo_list_id, order.brevo_email


def test_erasure_takes_the_pushed_address_out_after_the_shop_corrected_it(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """A customer Keygate pushed into a Brevo list is taken out of that list, even when the
    shop corrected the order's address since: the address Keygate pushed (with the buyer's
    name) does not stay in the list, and nothing of it is kept after (erasing it is a 404)."""
    brevo_shop.deliver(wc_order(9810, "processing", [line_item(501, line_id=60)], email=OLD))
    run_pending(brevo_app)
    assert brevo.in_list(OLD, 7)
    brevo_shop.deliver(
        wc_order(9810, "processing", [line_item(501, line_id=60)], email=EMAIL, modified=5)
    )
    run_pending(brevo_app)
    assert erase(brevo_shop)["brevo_removal"] == "queued"
    run_pending(brevo_app)
    assert not brevo.in_list(OLD, 7)
    assert not brevo.in_list(EMAIL, 7)
    assert brevo_shop.admin("DELETE", f"/customers/{OLD}").status_code == 404
    assert pushed_address(brevo_app, "9810") == (None, None)


def test_a_withdrawal_with_a_corrected_address_takes_the_pushed_address_out(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """A delivery with the consent no longer ticked takes the buyer out of the list: when
    it also corrects the order's address, the address Keygate pushed is the one taken out,
    and the new one is not pushed."""
    ask_for_consent(brevo_shop)
    first = wc_order(9811, "processing", [line_item(501, line_id=51)], email=OLD)
    brevo_shop.deliver(with_meta(first, CONSENT_KEY, "yes"))
    run_pending(brevo_app)
    assert brevo.in_list(OLD, 7)
    later = wc_order(9811, "processing", [line_item(501, line_id=51)], email=EMAIL, modified=5)
    brevo_shop.deliver(with_meta(later, CONSENT_KEY, "no"))
    run_pending(brevo_app)
    assert removals(brevo) == [{"emails": [OLD]}]
    assert contact_pushes(brevo) == [OLD]
    assert not brevo.in_list(OLD, 7)
    assert len(audit(brevo_shop, "customer.consent_withdrawn_in_brevo")) == 1
    assert pushed_address(brevo_app, "9811") == (None, None)


@pytest.mark.parametrize("consent", [False, True])
def test_a_corrected_address_takes_the_pushed_one_out_and_pushes_the_new_one(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo, consent: bool
) -> None:
    """The shop corrects the address of an order whose buyer Keygate pushed (consent still
    ticked, or none asked for): the list follows the order. The address pushed (perhaps a
    typo, someone else's) is taken out, audited under the order, never the address; the
    corrected one is pushed, once."""
    item = line_item(501, line_id=52)
    first = wc_order(9812, "processing", [item], email=OLD)
    later = wc_order(9812, "completed", [item], email=EMAIL, modified=5)
    if consent:
        ask_for_consent(brevo_shop)
        first, later = (with_meta(p, CONSENT_KEY, "yes") for p in (first, later))
    brevo_shop.deliver(first)
    run_pending(brevo_app)
    brevo_shop.deliver(later)
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [OLD, EMAIL]
    assert removals(brevo) == [{"emails": [OLD]}]
    assert not brevo.in_list(OLD, 7) and brevo.in_list(EMAIL, 7)
    [event] = audit(brevo_shop, "customer.address_corrected_in_brevo")
    assert event["subject"] == "order:9812"
    assert event["detail"] == {"list_id": 7, "outcome": "removed"}
    assert pushed_address(brevo_app, "9812") == (7, EMAIL)
    brevo_shop.deliver(wc_order(9812, "completed", [item], email=EMAIL, modified=9))
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [OLD, EMAIL]  # a later delivery pushes nobody again


def test_an_address_corrected_away_is_in_its_own_export_while_it_waits_to_leave_the_list(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Until Brevo has taken out the address the shop corrected away from (perhaps a typo,
    someone else's), Keygate keeps it: the export of that address shows it, though no order
    names it any more, and the export of the corrected address does not (it is not theirs).
    Once Brevo has taken it out, Keygate keeps nothing of it."""
    item = line_item(501, line_id=53)
    brevo_shop.deliver(wc_order(9816, "processing", [item], email=OLD))
    run_pending(brevo_app)
    brevo_shop.deliver(wc_order(9816, "processing", [item], email=EMAIL, modified=5))
    corrected = brevo_shop.admin("GET", f"/customers/{EMAIL}/export").get_json()
    assert [order["order"] for order in corrected["orders"]] == ["9816"]
    assert corrected["brevo_removals"] == []
    answer = brevo_shop.admin("GET", f"/customers/{OLD}/export")
    assert answer.status_code == 200
    exported = answer.get_json()
    assert (exported["email"], exported["orders"], exported["erased"]) == (OLD, [], False)
    assert [(r["address"], r["reason"]) for r in exported["brevo_removals"]] == [
        (OLD, "correction")
    ]
    # The Customers page finds it as the export does: waiting to leave the list, nothing
    # to erase (an erasure would have nothing of theirs to reach).
    owner = signed_in_owner(brevo_app)
    page = look_up(owner, OLD).get_data(as_text=True)
    assert "Waiting to leave Brevo" in page and "address corrected on the order" in page
    assert "No order names this address any more" in page
    assert "Keygate keeps no data about this customer" not in page
    assert 'action="/admin/customers/erase"' not in page
    assert "9816" not in page  # the order is the corrected address's, not theirs
    assert "Waiting to leave Brevo" not in look_up(owner, EMAIL).get_data(as_text=True)
    run_pending(brevo_app)
    assert not brevo.in_list(OLD, 7)
    assert brevo_shop.admin("GET", f"/customers/{OLD}/export").status_code == 404
    page = look_up(owner, OLD).get_data(as_text=True)
    assert "Keygate keeps no data about this customer" in page
    assert "Waiting to leave Brevo" not in page


def test_a_refunded_order_corrected_takes_the_pushed_address_out_and_pushes_nobody(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """An order no longer standing (refunded) whose address is corrected: the address
    pushed leaves the list, and its buyer, no customer any more, is not pushed again."""
    brevo_shop.deliver(wc_order(9813, "processing", [line_item(501, line_id=60)], email=OLD))
    run_pending(brevo_app)
    brevo_shop.deliver(
        wc_order(9813, "refunded", [line_item(501, line_id=60)], email=EMAIL, modified=5)
    )
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [OLD]
    assert not brevo.in_list(OLD, 7)
    assert pushed_address(brevo_app, "9813") == (None, None)


def test_an_address_corrected_while_the_push_ran_is_taken_out_again(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The correction lands while Brevo adds the address it replaces: that address is taken
    out again (even when the removal ran before Brevo added it), the corrected one pushed,
    and the order records the corrected one."""
    from connector.mail import contacts

    real_push = contacts.push_contact

    def corrected_and_removed_meanwhile(*args: Any) -> None:
        monkeypatch.setattr(contacts, "push_contact", real_push)  # once
        later = wc_order(9814, "completed", [line_item(501, line_id=60)], email=EMAIL, modified=5)
        brevo_shop.deliver(later)
        run_pending(brevo_app, kinds={"brevo.remove_contact"})
        real_push(*args)

    monkeypatch.setattr(contacts, "push_contact", corrected_and_removed_meanwhile)
    brevo_shop.deliver(wc_order(9814, "processing", [line_item(501, line_id=60)], email=OLD))
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [OLD, EMAIL]
    assert not brevo.in_list(OLD, 7) and brevo.in_list(EMAIL, 7)
    assert pushed_address(brevo_app, "9814") == (7, EMAIL)


def test_an_order_pushed_before_addresses_were_recorded_leaves_with_its_old_address(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Orders pushed before migration 0020 have no address recorded: the order's address
    is taken as the one pushed until the shop corrects it, so the correction takes that one
    out."""
    brevo_shop.deliver(wc_order(9815, "processing", [line_item(501, line_id=60)], email=OLD))
    run_pending(brevo_app)
    with brevo_app.app_context(), transaction() as session:
        session.execute(update(Order).values(brevo_email=None))
    brevo_shop.deliver(
        wc_order(9815, "completed", [line_item(501, line_id=60)], email=EMAIL, modified=5)
    )
    run_pending(brevo_app)
    assert removals(brevo) == [{"emails": [OLD]}]
    assert not brevo.in_list(OLD, 7) and brevo.in_list(EMAIL, 7)


def test_a_corrected_order_marked_by_migration_0011_takes_its_old_address_out(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """An order 0011 marked as pushed (into the store's list, before lists were recorded)
    whose address the shop corrects: the old address is taken out of the store's list and
    kept nowhere (on an order that no longer names it, its owner could neither export nor
    erase it), and the corrected one is pushed."""
    brevo_shop.deliver(wc_order(9816, "processing", [line_item(501, line_id=60)], email=OLD))
    run_pending(brevo_app)
    with brevo_app.app_context(), transaction() as session:
        session.execute(update(Order).values(brevo_list_id=0, brevo_email=None))
    brevo_shop.deliver(
        wc_order(9816, "completed", [line_item(501, line_id=60)], email=EMAIL, modified=5)
    )
    run_pending(brevo_app)
    assert removals(brevo) == [{"emails": [OLD]}] and not brevo.in_list(OLD, 7)
    assert contact_pushes(brevo) == [OLD, EMAIL] and brevo.in_list(EMAIL, 7)
    assert pushed_address(brevo_app, "9816") == (7, EMAIL)
    [exported] = brevo_shop.admin("GET", f"/customers/{EMAIL}/export").get_json()["orders"]
    assert exported["brevo_address"] == EMAIL
    assert brevo_shop.admin("GET", f"/customers/{OLD}/export").status_code == 404


def test_consent_given_again_while_the_withdrawals_removal_waits_keeps_the_buyer_listed(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Consent withdrawn (its removal held up by a Brevo outage), then given again and the
    buyer pushed: the withdrawal's removal, run at last, leaves them in the list (audited
    as kept), since the order has them there by the consent given since."""
    ask_for_consent(brevo_shop)
    item = line_item(501, line_id=41)
    brevo_shop.deliver(with_meta(wc_order(9760, "processing", [item]), CONSENT_KEY, "yes"))
    run_pending(brevo_app)
    brevo.failures.append(503)  # the withdrawal's removal meets an outage: retried later
    later = wc_order(9760, "completed", [item], modified=5)
    brevo_shop.deliver(with_meta(later, CONSENT_KEY, "no"))
    run_pending(brevo_app)
    again = wc_order(9760, "completed", [item], modified=9)
    brevo_shop.deliver(with_meta(again, CONSENT_KEY, "yes"))
    run_pending(brevo_app)  # the push runs (the removal is not due yet)
    make_due(brevo_app)
    run_pending(brevo_app)  # the withdrawal's removal runs
    assert pushed_address(brevo_app, "9760") == (7, EMAIL)
    assert brevo.in_list(EMAIL, 7)
    [event] = audit(brevo_shop, "customer.consent_withdrawn_in_brevo")
    assert event["detail"] == {"list_id": 7, "outcome": "kept"}


def test_a_withdrawal_leaves_a_buyer_another_order_of_theirs_consented_for(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Two orders of one buyer, each with the consent: withdrawing it on one leaves them in
    the list by the other's."""
    ask_for_consent(brevo_shop)
    first, second = line_item(501, line_id=42), line_item(501, line_id=43)
    brevo_shop.deliver(with_meta(wc_order(9762, "processing", [first]), CONSENT_KEY, "yes"))
    brevo_shop.deliver(with_meta(wc_order(9763, "processing", [second]), CONSENT_KEY, "yes"))
    run_pending(brevo_app)
    later = wc_order(9762, "completed", [first], modified=5)
    brevo_shop.deliver(with_meta(later, CONSENT_KEY, "no"))
    run_pending(brevo_app)
    assert removals(brevo) == [] and brevo.in_list(EMAIL, 7)
    assert pushed_address(brevo_app, "9762") == (None, None)
    assert pushed_address(brevo_app, "9763") == (7, EMAIL)


def test_the_pushed_address_is_kept_encrypted_exported_and_erased(
    brevo_app: Flask, brevo_shop: WebhookSender
) -> None:
    """The address Keygate pushed is kept like every other stored address: encrypted (so
    key rotation re-encrypts it), in the customer's export, and gone with the erasure."""
    from connector.vault.rotation import encrypted_tables

    brevo_shop.deliver(wc_order(9817, "processing", [line_item(501, line_id=60)]))
    run_pending(brevo_app)
    [order] = brevo_shop.admin("GET", f"/customers/{EMAIL}/export").get_json()["orders"]
    assert (order["brevo_list"], order["brevo_address"]) == (7, EMAIL)
    with brevo_app.app_context():
        raw = db.session.execute(text("SELECT brevo_email FROM orders")).scalar_one()
        rotated = {(t.table.name, c.name) for t in encrypted_tables() for c in t.columns}
    assert raw.startswith("gAAAA") and EMAIL not in raw
    assert ("orders", "brevo_email") in rotated
    erase(brevo_shop)
    with brevo_app.app_context():
        assert db.session.execute(text("SELECT brevo_email FROM orders")).scalar_one() is None


def test_cancelled_before_the_push_ran_then_paid_again_pushes_the_buyer(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """The issuance's push runs while the order is cancelled (a fraud check in the same
    minute) and skips it; paid again (keys reinstated, nothing issued), the buyer, who
    consented, is pushed."""
    ask_for_consent(brevo_shop)
    item = line_item(501, line_id=70)
    for status, modified in (("processing", 0), ("cancelled", 5)):
        order = wc_order(9900, status, [item], modified=modified)
        brevo_shop.deliver(with_meta(order, CONSENT_KEY, "yes"))
    run_pending(brevo_app)  # the push finds the order cancelled
    again = wc_order(9900, "processing", [item], modified=9)
    brevo_shop.deliver(with_meta(again, CONSENT_KEY, "yes"))
    run_pending(brevo_app)
    assert brevo_shop.order(9900)["licenses"][0]["status"] == "active"
    assert contact_pushes(brevo) == [EMAIL] and brevo.in_list(EMAIL, 7)


def test_consent_given_while_refunded_is_passed_on_when_paid_again(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Issued without the consent; ticked while the order is refunded (no push: no customer
    then); paid again with it still ticked: the buyer is pushed, once."""
    ask_for_consent(brevo_shop)
    item = line_item(501, line_id=71)
    for status, modified, ticked in (("processing", 0, "no"), ("refunded", 5, "yes")):
        order = wc_order(9901, status, [item], modified=modified)
        brevo_shop.deliver(with_meta(order, CONSENT_KEY, ticked))
        run_pending(brevo_app)
    assert contact_pushes(brevo) == []
    for modified in (9, 12):
        again = wc_order(9901, "processing", [item], modified=modified)
        brevo_shop.deliver(with_meta(again, CONSENT_KEY, "yes"))
        run_pending(brevo_app)
    assert contact_pushes(brevo) == [EMAIL] and brevo.in_list(EMAIL, 7)


def test_consent_ticked_while_a_push_without_it_waits_pushes_the_buyer(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """Issued unticked, its push (carrying no consent) waiting: the consent ticked meanwhile
    is passed on by a push of its own (the waiting one pushes nobody)."""
    ask_for_consent(brevo_shop)
    item = line_item(501, line_id=73)
    brevo_shop.deliver(with_meta(wc_order(9903, "processing", [item]), CONSENT_KEY, "no"))
    run_pending(brevo_app, kinds={"order.issued"})  # the push (no consent) now waits
    later = wc_order(9903, "completed", [item], modified=5)
    brevo_shop.deliver(with_meta(later, CONSENT_KEY, "yes"))
    run_pending(brevo_app)
    assert contact_pushes(brevo) == [EMAIL] and brevo.in_list(EMAIL, 7)


def test_a_push_into_the_stores_new_list_takes_the_buyer_out_of_the_old_one(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """The owner moves the store to list 8; an order pushed into 7 issues another unit: its
    buyer leaves list 7 (audited) as they join 8, so the order records the one list they
    are in, and the erasure then takes them out of every list Keygate put them in."""
    brevo.lists = {7, 8}
    brevo_shop.deliver(wc_order(9904, "processing", [line_item(501, line_id=74)]))
    run_pending(brevo_app)
    assert brevo.in_list(EMAIL, 7)
    answer = brevo_shop.admin("PUT", "/credentials/brevo", {**BREVO, "list_id": 8})
    assert answer.status_code == 200
    more = wc_order(9904, "completed", [line_item(501, quantity=2, line_id=74)], modified=5)
    brevo_shop.deliver(more)
    run_pending(brevo_app)
    assert len(brevo_shop.order(9904)["licenses"]) == 2
    assert brevo.in_list(EMAIL, 8) and not brevo.in_list(EMAIL, 7)
    assert pushed_address(brevo_app, "9904") == (8, EMAIL)
    [event] = audit(brevo_shop, "customer.moved_to_another_brevo_list")
    assert event["detail"] == {"list_id": 7, "outcome": "removed"}
    assert erase(brevo_shop)["brevo_removal"] == "queued"
    run_pending(brevo_app)
    assert not brevo.in_list(EMAIL, 8) and not brevo.in_list(EMAIL, 7)


def test_a_correction_leaves_a_buyer_an_order_marked_by_0011_still_holds(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """A store without a consent key (every buyer in the list): order A was pushed before
    lists were recorded (0011's mark), order B of the same buyer since. B's address is
    corrected: the buyer stays in the store's list, which A still holds them in."""
    brevo_shop.deliver(wc_order(9905, "processing", [line_item(501, line_id=75)]))
    run_pending(brevo_app)
    with brevo_app.app_context(), transaction() as session:
        session.execute(
            update(Order)
            .where(Order.shop_order_id == "9905")
            .values(brevo_list_id=0, brevo_email=None)
        )
    brevo_shop.deliver(wc_order(9906, "processing", [line_item(501, line_id=76)]))
    run_pending(brevo_app)
    corrected = wc_order(9906, "completed", [line_item(501, line_id=76)], email=OLD, modified=5)
    brevo_shop.deliver(corrected)
    run_pending(brevo_app)
    assert brevo.in_list(OLD, 7) and brevo.in_list(EMAIL, 7)


def test_an_address_left_out_then_given_back_pushes_the_buyer_again(
    brevo_app: Flask, brevo_shop: WebhookSender, brevo: FakeBrevo
) -> None:
    """An edit in the shop leaves the order without a usable address (the buyer is taken
    out, as for a correction), then gives it back, the consent ticked all along: the buyer
    is pushed again."""
    ask_for_consent(brevo_shop)
    item = line_item(501, line_id=72)
    brevo_shop.deliver(with_meta(wc_order(9902, "processing", [item]), CONSENT_KEY, "yes"))
    run_pending(brevo_app)
    cleared = wc_order(9902, "completed", [item], email="not an address", modified=5)
    brevo_shop.deliver(with_meta(cleared, CONSENT_KEY, "yes"))
    run_pending(brevo_app)
    assert not brevo.in_list(EMAIL, 7)
    back = wc_order(9902, "completed", [item], modified=9)
    brevo_shop.deliver(with_meta(back, CONSENT_KEY, "yes"))
    run_pending(brevo_app)
    assert brevo.in_list(EMAIL, 7) and pushed_address(brevo_app, "9902") == (7, EMAIL)


def test_a_push_undone_by_a_removal_at_brevo_that_instant_is_made_again(
    brevo_app: Flask,
    brevo_shop: WebhookSender,
    brevo: FakeBrevo,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The withdrawal's removal is at Brevo when the consent is given again and that push
    lands first: the removal takes the buyer out, finds an order that has them in the list
    now, and pushes them again."""
    from connector.mail import contacts

    ask_for_consent(brevo_shop)
    item = line_item(501, line_id=77)
    brevo_shop.deliver(with_meta(wc_order(9907, "processing", [item]), CONSENT_KEY, "yes"))
    run_pending(brevo_app)
    remove = contacts.remove_from_list

    def consent_again_meanwhile(*args: Any) -> str:
        monkeypatch.setattr(contacts, "remove_from_list", remove)  # once
        again = wc_order(9907, "completed", [item], modified=9)
        brevo_shop.deliver(with_meta(again, CONSENT_KEY, "yes"))
        run_pending(brevo_app, kinds={"brevo.push_contact"})
        return remove(*args)

    monkeypatch.setattr(contacts, "remove_from_list", consent_again_meanwhile)
    withdrawn = wc_order(9907, "completed", [item], modified=5)
    brevo_shop.deliver(with_meta(withdrawn, CONSENT_KEY, "no"))
    run_pending(brevo_app)
    assert pushed_address(brevo_app, "9907") == (7, EMAIL)
    assert brevo.in_list(EMAIL, 7)
