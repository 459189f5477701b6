"""Admin pages: sign-in with CSRF, escaped output, the outbox and the audit log."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from flask import Flask, session
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner
from sqlalchemy import func, select, update
from werkzeug.security import generate_password_hash

from connector.audit import record_audit
from connector.db import db
from connector.jobs import run_pending
from connector.models import AdminUser, AuditEvent, Job, License, Mail, Order
from connector.stores import create_store
from tests.factories import WebhookSender, line_item, shifted, wc_order

PASSWORD = "correct horse battery staple"


@pytest.fixture
def admin_client(app: Flask) -> FlaskClient:
    with app.app_context():
        db.session.add(AdminUser(username="owner", password_hash=generate_password_hash(PASSWORD)))
        db.session.commit()
    return app.test_client()


def signed_in_owner(app: Flask) -> FlaskClient:
    """A signed-in admin of every store (``keygate init``'s), named owner."""
    with app.app_context():
        db.session.add(AdminUser(username="owner", password_hash=generate_password_hash(PASSWORD)))
        db.session.commit()
    client = app.test_client()
    assert sign_in(client) == 302
    return client


def csrf_token(client: FlaskClient, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def sign_in(client: FlaskClient, password: str = PASSWORD) -> int:
    token = csrf_token(client, "/admin/login")
    response = client.post(
        "/admin/login", data={"username": "owner", "password": password, "csrf_token": token}
    )
    return response.status_code


def store_admin(app: Flask, store_id: int, username: str = "ana") -> FlaskClient:
    """A signed-in admin of one store only (``keygate admin add --store``), named ana."""
    with app.app_context():
        db.session.add(
            AdminUser(
                username=username, password_hash=generate_password_hash(PASSWORD), store_id=store_id
            )
        )
        db.session.commit()
    client = app.test_client()
    token = csrf_token(client, "/admin/login")
    signed_in = client.post(
        "/admin/login", data={"username": username, "password": PASSWORD, "csrf_token": token}
    )
    assert signed_in.status_code == 302
    return client


def test_pages_need_a_signed_in_admin(admin_client: FlaskClient) -> None:
    response = admin_client.get("/admin/orders")
    assert response.status_code == 302
    assert "/admin/login" in response.headers["Location"]


def test_wrong_password_is_refused(admin_client: FlaskClient) -> None:
    assert sign_in(admin_client, "wrong") == 401
    assert admin_client.get("/admin/").status_code == 302


def test_login_without_csrf_token_is_refused(admin_client: FlaskClient) -> None:
    response = admin_client.post("/admin/login", data={"username": "owner", "password": PASSWORD})
    assert response.status_code == 400
    assert "open too long" in response.get_data(as_text=True)
    assert admin_client.get("/admin/").status_code == 302


def test_signed_in_admin_sees_orders_escaped_and_the_outbox(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    shop.configure(501)
    shop.deliver(
        wc_order(9300, "processing", [line_item(501)], first_name="<script>alert(1)</script>")
    )
    run_pending(app)
    assert sign_in(admin_client) == 302
    orders = admin_client.get("/admin/orders").get_data(as_text=True)
    assert "<script>alert(1)</script>" not in orders
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in orders
    outbox = admin_client.get("/admin/outbox").get_data(as_text=True)
    assert "mail.order_issued" in outbox
    assert "jurgen@example.org" in outbox  # decrypted for the owner
    audit = admin_client.get("/admin/audit").get_data(as_text=True)
    assert "order.fulfilled" in audit


def _outbox_ids(client: FlaskClient, path: str, row: str, older: str) -> list[int]:
    """The ids of one outbox list (``row``: the pattern of a row's id), following its
    ``older`` link to the end."""
    ids: list[int] = []
    while path:
        page = client.get(path)
        assert page.status_code == 200, path
        html = page.get_data(as_text=True)
        ids += [int(i) for i in re.findall(row, html)]
        link = re.search(rf'<a href="([^"]+)">{older}</a>', html)
        path = link.group(1).replace("&amp;", "&") if link else ""
    return ids


def test_the_outbox_pages_back_and_finds_the_jobs_given_up_on(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More jobs and mails than a page: the older ones are a page away, each list on its
    own; a job given up on long ago, under pages of newer ones, is found by its status and
    can be retried."""
    monkeypatch.setattr("connector.admin.views.PAGE", 3)
    shop.configure(501)
    for order_id in range(9500, 9505):
        shop.deliver(wc_order(order_id, "processing", [line_item(501)]))
    run_pending(app)
    with app.app_context():
        job_ids = sorted(db.session.scalars(select(Job.id)), reverse=True)
        mail_ids = sorted(db.session.scalars(select(Mail.id)), reverse=True)
        oldest = db.session.get(Job, job_ids[-1])
        assert oldest is not None
        oldest.status = "dead"
        db.session.commit()
    assert len(job_ids) > 6 and len(mail_ids) == 5
    assert sign_in(admin_client) == 302
    retry = f"/admin/outbox/jobs/{job_ids[-1]}/retry"
    assert retry not in admin_client.get("/admin/outbox").get_data(as_text=True)

    jobs = _outbox_ids(
        admin_client, "/admin/outbox", r"<tr><td>(\d+)</td><td data-label=\"Kind\">", "Older jobs"
    )
    assert jobs == job_ids
    mails = _outbox_ids(admin_client, "/admin/outbox", r"\(mail (\d+)\)", "Older mails")
    assert mails == mail_ids
    dead = admin_client.get("/admin/outbox?status=dead").get_data(as_text=True)
    assert retry in dead
    assert dead.count('data-label="Kind"') == 1
    assert "No running jobs." in admin_client.get("/admin/outbox?status=running").get_data(
        as_text=True
    )
    assert admin_client.get("/admin/outbox?status=zzz&before=x").status_code == 200
    # Retried from the filtered list, the owner is back on it, not on the whole outbox.
    action = re.search(rf'action="({re.escape(retry)}[^"]*)"', dead)
    assert action is not None
    retried = admin_client.post(
        action.group(1).replace("&amp;", "&"),
        data={"csrf_token": csrf_token(admin_client, "/admin/outbox?status=dead")},
    )
    assert retried.status_code == 302
    assert retried.headers["Location"] == "/admin/outbox?status=dead"


def _older(html: str, label: str) -> str:
    link = re.search(rf'<a href="([^"]+)">{label}</a>', html)
    assert link, html
    return link.group(1).replace("&amp;", "&")


def test_paging_one_outbox_list_keeps_the_filter_and_the_other_lists_page(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Older mails under a status filter, with the jobs on their second page: the jobs stay
    filtered and on that page; Older jobs then keeps the mails' page and the filter."""
    monkeypatch.setattr("connector.admin.views.PAGE", 3)
    shop.configure(502)
    for order_id in range(9600, 9605):
        shop.deliver(wc_order(order_id, "processing", [line_item(502)]))
    run_pending(app)
    with app.app_context():
        job_ids = sorted(db.session.scalars(select(Job.id)), reverse=True)
        mail_ids = sorted(db.session.scalars(select(Mail.id)), reverse=True)
        db.session.execute(update(Job).where(Job.id.in_(job_ids[1::2])).values(status="dead"))
        db.session.commit()
    dead_ids = job_ids[1::2]
    assert len(dead_ids) > 6 and len(mail_ids) == 5
    assert sign_in(admin_client) == 302
    job_row = r"<tr><td>(\d+)</td><td data-label=\"Kind\">"
    mail_row = r"\(mail (\d+)\)"

    first = admin_client.get("/admin/outbox?status=dead").get_data(as_text=True)
    second_jobs = admin_client.get(_older(first, "Older jobs")).get_data(as_text=True)
    assert [int(i) for i in re.findall(job_row, second_jobs)] == dead_ids[3:6]
    both_second = admin_client.get(_older(second_jobs, "Older mails")).get_data(as_text=True)
    assert [int(i) for i in re.findall(job_row, both_second)] == dead_ids[3:6]
    assert [int(i) for i in re.findall(mail_row, both_second)] == mail_ids[3:]
    third_jobs = admin_client.get(_older(both_second, "Older jobs")).get_data(as_text=True)
    assert [int(i) for i in re.findall(job_row, third_jobs)] == dead_ids[6:9]
    assert [int(i) for i in re.findall(mail_row, third_jobs)] == mail_ids[3:]
    assert "<option selected>dead</option>" in third_jobs


def test_logout_needs_the_csrf_token(admin_client: FlaskClient) -> None:
    assert sign_in(admin_client) == 302
    assert admin_client.post("/admin/logout").status_code == 400
    assert admin_client.get("/admin/").status_code == 200
    token = csrf_token(admin_client, "/admin/")
    assert admin_client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert admin_client.get("/admin/").status_code == 302


def test_signing_out_ends_every_copy_of_the_session(app: Flask, admin_client: FlaskClient) -> None:
    """A copy of the session cookie taken before signing out is refused after it."""
    assert sign_in(admin_client) == 302
    cookie = admin_client.get_cookie("session")
    assert cookie is not None
    token = csrf_token(admin_client, "/admin/")
    assert admin_client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    copy = app.test_client()
    copy.set_cookie("session", cookie.value)
    assert copy.get("/admin/").status_code == 302
    assert sign_in(admin_client) == 302  # signing in again is a new, working session
    assert admin_client.get("/admin/").status_code == 200


def test_a_session_is_honoured_for_twelve_hours(
    app: Flask, admin_client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session cookie signed 13 hours ago is refused; one signed 11 hours ago works."""
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    with app.app_context():
        user = db.session.execute(select(AdminUser)).scalar_one()
        state = {
            "admin_user_id": user.id,
            "admin_username": user.username,
            "generation": user.session_generation,
        }
    now = int(time.time())
    for hours, status in [(13, 302), (11, 200)]:
        monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self, h=hours: now - h * 3600)
        cookie = serializer.dumps(state)
        monkeypatch.undo()
        client = app.test_client()
        client.set_cookie("session", cookie)
        assert client.get("/admin/").status_code == status, hours


def test_guesses_from_many_addresses_stop_at_the_account_limit(admin_client: FlaskClient) -> None:
    """20 failed sign-ins an hour per account, from whatever addresses; then the account
    waits (429), even with the right password. Other accounts are not affected."""
    token = csrf_token(admin_client, "/admin/login")

    def attempt(username: str, password: str, address: str) -> int:
        form = {"username": username, "password": password, "csrf_token": token}
        response = admin_client.post(
            "/admin/login", data=form, environ_base={"REMOTE_ADDR": address}
        )
        return response.status_code

    statuses = [attempt("owner", "wrong", f"198.51.100.{n}") for n in range(20)]
    assert statuses == [401] * 20
    assert attempt("owner", PASSWORD, "203.0.113.7") == 429
    assert attempt("someone-else", "wrong", "203.0.113.8") == 401


def test_an_admin_changes_their_password_and_other_sessions_end(
    app: Flask, admin_client: FlaskClient
) -> None:
    """/admin/password needs the current password and a new one twice (12+ characters);
    afterwards the new one signs in, the old one does not, and other sessions are ended
    while this browser stays signed in."""
    other = app.test_client()
    assert sign_in(other) == 302
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, "/admin/password")
    new = "a much longer new passphrase"
    refused = [
        {"current": "wrong", "new": new, "repeat": new},
        {"current": PASSWORD, "new": "short", "repeat": "short"},
        {"current": PASSWORD, "new": new, "repeat": new + "!"},
    ]
    for form in refused:
        answer = admin_client.post("/admin/password", data={**form, "csrf_token": token})
        assert answer.status_code == 400, form
    changed = admin_client.post(
        "/admin/password",
        data={"current": PASSWORD, "new": new, "repeat": new, "csrf_token": token},
    )
    assert changed.status_code == 302
    confirmation = admin_client.get(changed.headers["Location"]).get_data(as_text=True)
    assert "Your password was changed" in confirmation
    assert admin_client.get("/admin/").status_code == 200  # this browser stays signed in
    assert other.get("/admin/").status_code == 302  # the other session has ended
    fresh = app.test_client()
    assert sign_in(fresh, PASSWORD) == 401
    assert sign_in(fresh, new) == 302


def test_next_is_never_an_open_redirect(admin_client: FlaskClient) -> None:
    token = csrf_token(admin_client, "/admin/login")
    response = admin_client.post(
        "/admin/login?next=//evil.example/admin",
        data={"username": "owner", "password": PASSWORD, "csrf_token": token},
    )
    assert response.status_code == 302
    assert "evil.example" not in response.headers["Location"]


def test_admin_revokes_and_reinstates_a_license_from_the_order_page(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    shop.configure(501)
    paid = wc_order(9310, "processing", [line_item(501)])
    shop.deliver(paid)
    assert sign_in(admin_client) == 302
    with app.app_context():
        order = db.session.execute(select(Order)).scalar_one()
        license_ = db.session.execute(select(License)).scalar_one()
    page = f"/admin/orders/{order.id}"
    token = csrf_token(admin_client, page)
    assert admin_client.post(f"/admin/licenses/{license_.id}/revoke").status_code == 400
    response = admin_client.post(
        f"/admin/licenses/{license_.id}/revoke", data={"csrf_token": token}
    )
    assert response.status_code == 302
    assert [lic["status"] for lic in shop.order(9310)["licenses"]] == ["revoked"]
    # A redelivery of the paid order does not undo the owner's revocation.
    shop.deliver(paid)
    assert "Reinstate" in admin_client.get(page).get_data(as_text=True)
    admin_client.post(f"/admin/licenses/{license_.id}/reinstate", data={"csrf_token": token})
    assert [lic["status"] for lic in shop.order(9310)["licenses"]] == ["active"]
    actions = shop.admin("GET", "/audit").get_json()["events"]
    assert {"license.revoke", "license.reinstate"} <= {e["action"] for e in actions}
    # An admin of every store, to the store's token: an admin, not the name they sign in with.
    assert any(e["actor"] == "admin" for e in actions)
    assert not any("owner" in e["actor"] for e in actions)


def test_a_key_its_order_revoked_is_not_reinstated_by_hand(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """Cancelled in the shop: a reinstate would give away an unpaid key that the order's next
    update revokes again (its links stayed shut meanwhile). Refused with why, on the page
    and in the API; paying the order again brings the key back."""
    shop.configure(501)
    item = line_item(501, line_id=94)
    shop.deliver(wc_order(9313, "processing", [item], modified=1))
    shop.deliver(wc_order(9313, "cancelled", [item], modified=2))
    [lic] = shop.order(9313)["licenses"]
    api = shop.admin("POST", f"/licenses/{lic['key']}/reinstate")
    assert api.status_code == 409 and "paid again in the shop" in api.get_json()["detail"]
    assert sign_in(admin_client) == 302
    with app.app_context():
        order_id = db.session.execute(select(Order.id)).scalar_one()
        license_id = db.session.execute(select(License.id)).scalar_one()
    page = f"/admin/orders/{order_id}"
    html = admin_client.get(page).get_data(as_text=True)
    assert "Reinstate</button>" not in html
    assert "comes back when the order is paid again in the shop" in html
    assert f'href="/admin/licenses/{license_id}"' in html  # the key opens its license page
    refused = admin_client.post(
        f"/admin/licenses/{license_id}/reinstate",
        data={"csrf_token": csrf_token(admin_client, page)},
    )
    assert refused.status_code == 409
    assert "the order is cancelled" in refused.get_data(as_text=True)
    assert "Reinstate</button>" not in admin_client.get(f"/admin/licenses/{license_id}").get_data(
        as_text=True
    )
    assert [x["status"] for x in shop.order(9313)["licenses"]] == ["revoked"]
    shop.deliver(wc_order(9313, "processing", [item], modified=3))
    assert [x["status"] for x in shop.order(9313)["licenses"]] == ["active"]


def test_a_key_the_owner_paused_is_not_reinstated_while_its_order_is_unpaid(
    shop: WebhookSender,
) -> None:
    """Suspended by the owner, then the order cancelled (the owner's reason stays), or
    revoked by the owner after the order revoked it: either way the order pays for nothing
    now, so no reinstate; once paid again, the owner's pause can be lifted."""
    shop.configure(501)
    item = line_item(501, line_id=96)
    shop.deliver(wc_order(9315, "processing", [item], modified=1))
    [lic] = shop.order(9315)["licenses"]
    assert shop.admin("POST", f"/licenses/{lic['key']}/suspend").status_code == 200
    shop.deliver(wc_order(9315, "cancelled", [item], modified=2))
    refused = shop.admin("POST", f"/licenses/{lic['key']}/reinstate")
    assert refused.status_code == 409 and "the order is cancelled" in refused.get_json()["detail"]
    assert shop.admin("POST", f"/licenses/{lic['key']}/revoke").status_code == 200
    assert shop.admin("POST", f"/licenses/{lic['key']}/reinstate").status_code == 409
    shop.deliver(wc_order(9315, "processing", [item], modified=3))
    assert [x["status"] for x in shop.order(9315)["licenses"]] == ["revoked"]  # the owner's
    assert shop.admin("POST", f"/licenses/{lic['key']}/reinstate").status_code == 200
    assert [x["status"] for x in shop.order(9315)["licenses"]] == ["active"]
    # On hold (a bank transfer checked), the keys stay: the owner's pause can be lifted.
    assert shop.admin("POST", f"/licenses/{lic['key']}/suspend").status_code == 200
    shop.deliver(wc_order(9315, "on-hold", [item], modified=4))
    assert shop.admin("POST", f"/licenses/{lic['key']}/reinstate").status_code == 200


def test_the_pages_offer_no_reinstate_the_order_would_refuse(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """Paused by the owner, then the order cancelled: neither page offers Reinstate."""
    shop.configure(501)
    item = line_item(501, line_id=97)
    shop.deliver(wc_order(9317, "processing", [item], modified=1))
    [lic] = shop.order(9317)["licenses"]
    shop.admin("POST", f"/licenses/{lic['key']}/suspend")
    shop.deliver(wc_order(9317, "cancelled", [item], modified=2))
    assert sign_in(admin_client) == 302
    with app.app_context():
        order_id = db.session.execute(select(Order.id)).scalar_one()
        license_id = db.session.execute(select(License.id)).scalar_one()
    for page in (f"/admin/orders/{order_id}", f"/admin/licenses/{license_id}"):
        html = admin_client.get(page).get_data(as_text=True)
        assert "Reinstate</button>" not in html, page
        assert "the order is cancelled" in html, page


def test_admin_mails_the_buyer_again_from_the_order_page(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    shop.configure(501)
    shop.deliver(wc_order(9311, "processing", [line_item(501)]))
    run_pending(app)
    assert sign_in(admin_client) == 302
    with app.app_context():
        order_id = db.session.execute(select(Order.id)).scalar_one()
    page = f"/admin/orders/{order_id}"
    assert "Mail the buyer their keys and links again" in admin_client.get(page).get_data(
        as_text=True
    )
    assert admin_client.post(f"{page}/resend").status_code == 400  # no CSRF token
    token = csrf_token(admin_client, page)
    response = admin_client.post(f"{page}/resend", data={"csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"].endswith("?resent=1")
    assert "on their way again" in admin_client.get(f"{page}?resent=1").get_data(as_text=True)
    run_pending(app)
    [license_] = shop.order(9311)["licenses"]
    with app.app_context():
        mails = db.session.execute(select(Mail).order_by(Mail.id)).scalars().all()
        assert len(mails) == 2 and all(m.sent_at is not None for m in mails)
        assert license_["key"] in mails[1].body_text
        actors = [
            e.actor
            for e in db.session.scalars(
                select(AuditEvent).where(AuditEvent.action == "mail.resent")
            )
        ]
    assert actors == ["admin:owner"]


def test_a_resend_of_an_order_with_nothing_left_is_refused_with_why(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """Cancelled, the order's keys and links are gone: a resend would mail an empty "thank
    you". The page and the API say why nothing was sent instead."""
    shop.configure(501)
    item = line_item(501, line_id=93)
    shop.deliver(wc_order(9312, "processing", [item], modified=1))
    shop.deliver(wc_order(9312, "cancelled", [item], modified=2))
    run_pending(app)
    assert sign_in(admin_client) == 302
    with app.app_context():
        order_id = db.session.execute(select(Order.id)).scalar_one()
    page = f"/admin/orders/{order_id}"
    refused = admin_client.post(
        f"{page}/resend", data={"csrf_token": csrf_token(admin_client, page)}
    )
    assert refused.status_code == 409
    assert "Nothing of this order can be used any more" in refused.get_data(as_text=True)
    api = shop.admin("POST", "/orders/9312/resend")
    assert api.status_code == 409 and "no key and no link" in api.get_json()["detail"]
    shop.deliver(wc_order(9316, "on-hold", [line_item(501)]))
    waiting = shop.admin("POST", "/orders/9316/resend")
    assert waiting.status_code == 409 and "payment is not confirmed" in waiting.get_json()["detail"]
    run_pending(app)
    with app.app_context():  # cancelled before its first mail went: none did
        assert db.session.execute(select(func.count()).select_from(Mail)).scalar_one() == 0


def test_credentials_page_keeps_secrets_write_only(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    assert sign_in(admin_client) == 302
    page = f"/admin/stores/{shop.store.store.id}/credentials"
    token = csrf_token(admin_client, page)
    form = {
        "csrf_token": token,
        "kind": "brevo",
        "api_key": "xkeysib-very-secret-key-9876",
        "sender_email": "shop@example.org",
        "sender_name": "Shop",
        "list_id": "7",
    }
    assert admin_client.post(page, data=form).status_code == 200
    html = admin_client.get(page).get_data(as_text=True)
    assert "xkeysib-very-secret-key-9876" not in html
    assert "****9876" in html
    # Saving again with the secret left blank keeps it.
    assert (
        admin_client.post(page, data={**form, "api_key": "", "sender_name": "Shop 2"}).status_code
        == 200
    )
    stored = shop.admin("GET", "/credentials/brevo").get_json()["credentials"]
    assert stored["sender_name"] == "Shop 2"
    assert stored["api_key"] == "****9876"
    for address in ("not-an-email", "@", "a@", "a@b@c.org", "<script>@x.org", "shop@local"):
        bad = admin_client.post(page, data={**form, "sender_email": address})
        assert bad.status_code == 422, address
        assert "sender_email" in bad.get_data(as_text=True)


def test_an_owner_revocation_also_stops_the_licenses_downloads(shop: WebhookSender) -> None:
    """Revoke/suspend block the license's links; reinstate opens exactly those again."""
    shop.configure(501)
    shop.deliver(wc_order(9320, "processing", [line_item(501)]))
    key = shop.order(9320)["licenses"][0]["key"]
    assert shop.admin("POST", f"/licenses/{key}/suspend").status_code == 200
    assert [d["revoked"] for d in shop.order(9320)["downloads"]] == [True]
    link = shop.order(9320)["downloads"][0]["link"].removeprefix("http://keygate.test")
    assert shop.client.get(link).status_code == 410
    assert shop.admin("POST", f"/licenses/{key}/reinstate").status_code == 200
    assert [d["revoked"] for d in shop.order(9320)["downloads"]] == [False]


def test_sign_in_attempts_are_rate_limited(admin_client: FlaskClient) -> None:
    """Flask-Limiter's decorator limit (10 POSTs a minute) holds on the login form."""
    statuses = [sign_in(admin_client, "wrong") for _ in range(10)]
    assert statuses == [401] * 10
    token = csrf_token(admin_client, "/admin/login")  # GETs are not limited
    response = admin_client.post(
        "/admin/login", data={"username": "owner", "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) >= 1
    assert "text/html" in response.content_type
    assert "downloads" not in response.get_data(as_text=True)  # that advice is for buyers
    assert admin_client.get("/admin/").status_code == 302  # the right password did not count


@pytest.mark.parametrize(
    ("path", "null"),
    [
        ("/api/v1/licenses/validate", True),
        ("/webhooks/woocommerce/1", True),
        ("/admin/login", False),
        ("/my/some-token", False),
    ],
)
def test_only_pages_open_the_cookie_session(app: Flask, path: str, null: bool) -> None:
    """Machine endpoints get Flask's null session (never read, never saved); pages a real one."""
    with app.test_request_context(path):
        assert app.session_interface.is_null_session(session) is null


def test_rate_limit_headers_only_where_a_limit_was_checked(admin_client: FlaskClient) -> None:
    token = csrf_token(admin_client, "/admin/login")
    form = {"username": "owner", "password": "wrong", "csrf_token": token}
    limited = admin_client.post("/admin/login", data=form)
    assert (limited.headers["X-RateLimit-Limit"], limited.headers["X-RateLimit-Remaining"]) == (
        "10",
        "9",
    )
    assert "X-RateLimit-Limit" not in admin_client.get("/admin/login").headers  # GET: no limit


def test_a_store_admin_sees_only_their_store(app: Flask, shop: WebhookSender) -> None:
    """Admins added for one store: its orders, licenses, mails, audit, credentials and jobs
    only (a job given up on may be retried); the other store's are 404 or not shown."""
    shop.configure(501)
    shop.deliver(wc_order(9700, "processing", [line_item(501)], email="mine@example.org"))
    with app.app_context():
        other = create_store(db.session, "Other shop", "https://other.example")
        db.session.commit()
    other_shop = WebhookSender(app.test_client(), other)
    other_shop.configure(601)
    other_shop.deliver(wc_order(9701, "processing", [line_item(601)], email="theirs@example.org"))
    run_pending(app)
    with app.app_context():
        mine, theirs = (
            db.session.execute(select(Order).where(Order.shop_order_id == str(i))).scalar_one()
            for i in (9700, 9701)
        )
        their_license = db.session.execute(
            select(License).where(License.order_id == theirs.id)
        ).scalar_one()
        their_mail = db.session.execute(select(Mail).where(Mail.order_id == theirs.id)).scalar_one()
        my_job, their_job = (
            db.session.get(Job, mail.job_id)
            for mail in db.session.scalars(select(Mail).order_by(Mail.order_id))
        )
        assert my_job is not None and their_job is not None
        my_job.status = their_job.status = "dead"
        my_job_id, their_job_id = my_job.id, their_job.id
        db.session.add(
            AdminUser(
                username="ana",
                password_hash=generate_password_hash(PASSWORD),
                store_id=mine.store_id,
            )
        )
        db.session.commit()
        mine_id, theirs_id, their_store = mine.id, theirs.id, theirs.store_id
        their_license_id, their_mail_id = their_license.id, their_mail.id
    client = app.test_client()
    token = csrf_token(client, "/admin/login")
    signed_in = client.post(
        "/admin/login", data={"username": "ana", "password": PASSWORD, "csrf_token": token}
    )
    assert signed_in.status_code == 302

    listing = client.get("/admin/orders").get_data(as_text=True)
    assert "mine@example.org" in listing and "theirs@example.org" not in listing
    assert client.get(f"/admin/orders/{mine_id}").status_code == 200
    assert client.get(f"/admin/orders/{theirs_id}").status_code == 404
    assert client.get(f"/admin/outbox/mails/{their_mail_id}").status_code == 404
    assert client.get(f"/admin/stores/{their_store}/credentials").status_code == 404
    outbox = client.get("/admin/outbox").get_data(as_text=True)
    assert "theirs@example.org" not in outbox
    assert f"/admin/outbox/jobs/{my_job_id}/retry" in outbox
    assert f"/admin/outbox/jobs/{their_job_id}/retry" not in outbox
    assert "Other shop" not in client.get("/admin/").get_data(as_text=True)
    form = {"csrf_token": csrf_token(client, f"/admin/orders/{mine_id}")}
    assert client.post(f"/admin/licenses/{their_license_id}/revoke", data=form).status_code == 404
    assert client.post(f"/admin/outbox/jobs/{their_job_id}/retry", data=form).status_code == 404
    assert client.post(f"/admin/outbox/jobs/{my_job_id}/retry", data=form).status_code == 302
    assert client.post(f"/admin/orders/{theirs_id}/resend", data=form).status_code == 404
    with app.app_context():
        assert db.session.get(License, their_license_id).status == "active"  # type: ignore[union-attr]
        statuses = {j.id: j.status for j in db.session.scalars(select(Job))}
        assert (statuses[my_job_id], statuses[their_job_id]) == ("pending", "dead")
        subjects = {e.subject for e in db.session.scalars(select(AuditEvent))}
    assert {"order:9700", "order:9701"} <= subjects  # both stores have audit entries
    audit_page = client.get("/admin/audit").get_data(as_text=True)
    assert "order:9700" in audit_page and "order:9701" not in audit_page
    assert f"job:{my_job_id}" in audit_page  # the retry, in the store's own log


def test_the_bare_address_leads_to_the_admin_sign_in(admin_client: FlaskClient) -> None:
    response = admin_client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/"
    assert admin_client.get("/", follow_redirects=True).request.path == "/admin/login"


@pytest.mark.parametrize(
    ("username", "password"), [("", PASSWORD), ("owner", ""), ("o" * 101, PASSWORD)]
)
def test_a_sign_in_with_an_empty_or_overlong_field_says_it_failed(
    admin_client: FlaskClient, username: str, password: str
) -> None:
    token = csrf_token(admin_client, "/admin/login")
    response = admin_client.post(
        "/admin/login", data={"username": username, "password": password, "csrf_token": token}
    )
    assert response.status_code == 401
    assert "Wrong user or password." in response.get_data(as_text=True)


def test_orders_and_the_audit_log_page_back_to_the_oldest(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list stopped at its page size, with no way to older orders but by email."""
    monkeypatch.setattr("connector.admin.views.PAGE", 2)
    for order_id in (9401, 9402, 9403):
        shop.deliver(wc_order(order_id, "processing", [line_item(777)]))
    assert sign_in(admin_client) == 302
    shown: list[str] = []
    page = "/admin/orders"
    while page:
        html = admin_client.get(page).get_data(as_text=True)
        shown += re.findall(r">(94\d\d)</a>", html)
        older = re.search(r'href="([^"]+)">Older</a>', html)
        page = older.group(1).replace("&amp;", "&") if older else ""
    assert shown == ["9403", "9402", "9401"]
    with app.app_context():
        for n in range(9):
            record_audit(db.session, store_id=None, actor="test", action=f"test.{n}")
        db.session.commit()
    audit = admin_client.get("/admin/audit").get_data(as_text=True)
    assert (
        audit.count('<td data-label="What">test.') == 8
    )  # 4 pages of orders make one of the audit log
    assert (
        '<td data-label="What">test.8</td>' in audit
        and '<td data-label="What">test.0</td>' not in audit
    )
    older = re.search(r'href="([^"]+)">Older</a>', audit)
    assert older is not None
    assert '<td data-label="What">test.0</td>' in admin_client.get(older.group(1)).get_data(
        as_text=True
    )


def test_the_order_page_shows_what_the_buyer_cannot_tell_the_owner(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """A copy that failed to stamp (each click refused) and refunds Keygate could not apply
    (no REST key) are on the order page, not only in the audit log."""
    from pathlib import Path

    from tests.functional.test_downloads import make_pdf

    storage = Path(app.extensions["keygate.settings"].storage_dir)
    make_pdf(storage / "books/guide.pdf", password="pw")
    files = [{"object_key": "books/guide.pdf", "filename": "guide.pdf", "watermark": "pdf"}]
    shop.configure(501, files=files)
    order = wc_order(9314, "processing", [line_item(501, quantity=2, line_id=95)])
    shop.deliver(order, "order.created")
    run_pending(app)  # the watermark job fails: the PDF is encrypted
    order["refunds"] = [{"id": 5003, "reason": "", "total": "-49.00"}]
    order["date_modified_gmt"] = order["date_modified"] = shifted("2026-11-20T12:05:00")
    shop.deliver(order)
    run_pending(app)
    assert sign_in(admin_client) == 302
    with app.app_context():
        order_id = db.session.execute(select(Order.id)).scalar_one()
    html = admin_client.get(f"/admin/orders/{order_id}").get_data(as_text=True)
    assert "Refunds of this order could not be applied" in html
    assert "revoke the refunded keys below by hand" in html
    assert html.count("watermark failed:") == 2 and "encrypted" in html
    order["status"] = "refunded"  # refunded whole later: every key revoked, nothing to warn
    order["date_modified_gmt"] = order["date_modified"] = shifted("2026-11-20T12:10:00")
    shop.deliver(order)
    html = admin_client.get(f"/admin/orders/{order_id}").get_data(as_text=True)
    assert "could not be applied" not in html


def test_orders_are_found_by_number_or_email_without_the_email_in_a_url(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    shop.configure(501)
    for order_id, email in ((9320, "ada@example.org"), (9321, "bob@example.org")):
        shop.deliver(wc_order(order_id, "processing", [line_item(501)], email=email))
    assert sign_in(admin_client) == 302
    token = csrf_token(admin_client, "/admin/orders")

    def found(wanted: str) -> str:
        answer = admin_client.post("/admin/orders", data={"csrf_token": token, "q": wanted})
        assert answer.status_code == 200
        return answer.get_data(as_text=True)

    by_email = found(" Ada@Example.org ")
    assert "ada@example.org" in by_email and "bob@example.org" not in by_email
    by_number = found("#9321")
    assert "bob@example.org" in by_number and "ada@example.org" not in by_number
    assert "No orders." in found("9399")
    assert "@" not in "".join(re.findall(r'href="([^"]*)"', by_email))  # no address in a link
    assert admin_client.post("/admin/orders", data={"q": "9321"}).status_code == 400  # CSRF


def test_a_removed_admins_session_never_becomes_another_admins(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """A removed admin's old session must not sign its browser in as the next admin made
    (SQLite gave that one the removed id before migration 0018)."""
    ana = store_admin(app, shop.store.store.id)
    assert ana.get("/admin/").status_code == 200
    with app.app_context():
        removed = db.session.execute(
            select(AdminUser).where(AdminUser.username == "ana")
        ).scalar_one()
        removed_id = removed.id
        db.session.delete(removed)
        db.session.commit()
        db.session.add(AdminUser(username="bo", password_hash=generate_password_hash(PASSWORD)))
        db.session.commit()
        bo_id = db.session.execute(
            select(AdminUser.id).where(AdminUser.username == "bo")
        ).scalar_one()
    assert bo_id != removed_id  # never given again, on either backend
    answer = ana.get("/admin/")
    assert answer.status_code == 302 and "/admin/login" in answer.headers["Location"]


def test_the_owners_pages_give_ends_as_the_api_does_with_the_zone_said(
    app: Flask, admin_client: FlaskClient, shop: WebhookSender
) -> None:
    """A key paid at 03:00 UTC ends at 03:00 UTC: the order page, the license list and the
    license's page show that moment, hour and zone said, as the admin API's ``expires_at``
    and the buyer's mail do (a bare date reads as a day the owner's buyer west of UTC does
    not get); times of day elsewhere say UTC too."""
    shop.configure(501, duration_days=365, download_days=30)
    order = wc_order(9320, "processing", [line_item(501)])
    order["date_paid_gmt"] = shifted("2026-11-20T03:00:00")
    shop.deliver(order)
    body = shop.order(9320)
    assert body["licenses"][0]["expires_at"] == shifted("2027-11-20T03:00:00Z")
    assert body["downloads"][0]["expires_at"] == shifted("2026-12-20T03:00:00Z")
    assert sign_in(admin_client) == 302
    with app.app_context():
        order_id = db.session.execute(select(Order.id)).scalar_one()
        license_id = db.session.execute(select(License.id)).scalar_one()
    order_page = admin_client.get(f"/admin/orders/{order_id}").get_data(as_text=True)
    assert shifted('<td data-label="Expires">2027-11-20 03:00 UTC</td>') in order_page
    assert shifted('<td data-label="Expires">2026-12-20 03:00 UTC</td>') in order_page
    listed = admin_client.get("/admin/licenses").get_data(as_text=True)
    assert shifted('<td data-label="Expires">2027-11-20 03:00 UTC</td>') in listed
    license_page = admin_client.get(f"/admin/licenses/{license_id}").get_data(as_text=True)
    assert shifted('<td data-label="Expires">2026-12-20 03:00 UTC</td>') in license_page
    audit = admin_client.get("/admin/audit").get_data(as_text=True)
    assert re.search(r"<tr><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</td>", audit)


def test_retrying_a_dead_job_a_worker_took_meanwhile_leaves_it_to_that_worker(
    app: Flask, admin_client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two clicks of "retry" at once (or two admins): the first's job is claimed by a worker
    before the second commits. The second no longer puts it back to pending (attempt 0)
    under that worker, for a second worker to run it again beside it; it is audited once."""
    from connector import jobs
    from connector.admin import views
    from connector.db import transaction, utcnow

    if app.extensions["keygate.db"].engine.dialect.name != "postgresql":
        pytest.skip("SQLite serializes the two requests (BEGIN IMMEDIATE)")
    with app.app_context(), transaction() as session:
        dead = Job(kind="test.unknown", payload={}, status="dead", attempts=20)
        dead.run_after = dead.created_at = utcnow()
        session.add(dead)
        session.flush()
        job_id = dead.id
    assert sign_in(admin_client) == 302
    form = {"csrf_token": csrf_token(admin_client, "/admin/outbox")}
    path = f"/admin/outbox/jobs/{job_id}/retry"
    read = views.store_of

    def the_first_click_lands_and_a_worker_claims(session: Any, payload: Any) -> Any:
        found = read(session, payload)
        with app.app_context(), transaction() as other:
            other.execute(update(Job).where(Job.id == job_id).values(status="pending", attempts=0))
        with app.app_context():
            assert jobs._claim_one({"test.unknown"}) is not None
        return found

    monkeypatch.setattr(views, "store_of", the_first_click_lands_and_a_worker_claims)
    assert admin_client.post(path, data=form).status_code == 302
    with app.app_context():
        job = db.session.get(Job, job_id)
        assert job is not None and (job.status, job.attempts) == ("running", 1)
        assert (
            db.session.scalar(select(func.count()).where(AuditEvent.action == "job.retried")) == 0
        )
