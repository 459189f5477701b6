"""The buyer portal: a private page with the order's keys and links, and a resend button."""

from __future__ import annotations

import re
import time

import pytest
from flask import Flask
from itsdangerous import TimestampSigner, URLSafeSerializer
from sqlalchemy import func, select

from connector.db import db
from connector.jobs import run_pending
from connector.models import Job, Mail, Order
from connector.tokens import PORTAL, portal_url
from tests.factories import WebhookSender, line_item, wc_order


def test_portal_shows_keys_and_links_and_resends(app: Flask, shop: WebhookSender) -> None:
    shop.configure(501)
    shop.deliver(wc_order(9400, "processing", [line_item(501)]))
    body = shop.order(9400)
    portal_path = body["portal_url"].removeprefix("http://keygate.test")
    page = shop.client.get(portal_path)
    assert page.status_code == 200
    assert page.headers["X-Robots-Tag"] == "noindex"
    html = page.get_data(as_text=True)
    assert body["licenses"][0]["key"] in html
    assert body["downloads"][0]["link"] in html

    run_pending(app)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert token
    assert shop.client.post(portal_path + "/resend").status_code == 400  # no CSRF token
    response = shop.client.post(portal_path + "/resend", data={"csrf_token": token.group(1)})
    assert response.status_code == 302
    run_pending(app)
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Mail)).scalar_one() == 2
    # At most 3 resends an hour (the CSRF-less try above was refused before it counted).
    resend = {"csrf_token": token.group(1)}
    for _ in range(2):
        assert shop.client.post(portal_path + "/resend", data=resend).status_code == 302
    limited = shop.client.post(portal_path + "/resend", data=resend)
    assert limited.status_code == 429
    assert "Retry-After" in limited.headers


def test_a_resend_budget_is_one_ipv6_networks_not_each_addresss(
    app: Flask, shop: WebhookSender
) -> None:
    """The 3 resends an hour a caller has count an IPv6 caller's /64, whose 2^64 addresses
    its holder can send from one after another (as the license API and sign-in count)."""
    shop.configure(501)
    shop.deliver(wc_order(9408, "processing", [line_item(501)]))
    path = shop.order(9408)["portal_url"].removeprefix("http://keygate.test")
    token = {"csrf_token": csrf(shop.client.get(path).get_data(as_text=True))}
    answers = [
        shop.client.post(
            path + "/resend", data=token, environ_base={"REMOTE_ADDR": f"2001:db8:5:6::{n:x}"}
        ).status_code
        for n in range(1, 5)
    ]
    assert answers == [302, 302, 302, 429]


def test_revoked_keys_are_not_shown(shop: WebhookSender) -> None:
    shop.configure(501)
    item = line_item(501, line_id=81)
    shop.deliver(wc_order(9401, "processing", [item], modified=1))
    body = shop.order(9401)
    shop.deliver(wc_order(9401, "refunded", [item], modified=2))
    html = shop.client.get(body["portal_url"].removeprefix("http://keygate.test")).get_data(
        as_text=True
    )
    assert body["licenses"][0]["key"] not in html
    assert "revoked" in html


def test_tampered_portal_token_is_a_friendly_404(shop: WebhookSender) -> None:
    shop.configure(501)
    shop.deliver(wc_order(9402, "processing", [line_item(501)]))
    path = shop.order(9402)["portal_url"].removeprefix("http://keygate.test")
    response = shop.client.get(path[:-2] + "xx")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "not valid" in response.get_data(as_text=True)


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


@pytest.mark.parametrize("refunded", [False, True])
def test_an_expired_portal_link_shows_nothing_and_mails_a_fresh_one(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch, refunded: bool
) -> None:
    """Past KEYGATE_PORTAL_LINK_DAYS the page is 410 with no key or link on it, only a
    button that mails a fresh link to the order's own address; the fresh link works. It
    is mailed even when nothing of the order works any more: the page says what happened."""
    shop.configure(501)
    shop.deliver(wc_order(9403, "processing", [line_item(501)]))
    body = shop.order(9403)
    run_pending(app)  # the first mail
    if refunded:
        shop.deliver(wc_order(9403, "refunded", [line_item(501)], modified=60))
    days = app.extensions["keygate.settings"].portal_link_days
    now = time.time()
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(now) - days * 86400 - 60)
    with app.test_request_context():
        old_path = portal_url(_order_row_id(app, "9403"))
    monkeypatch.undo()
    old_path = old_path.removeprefix("http://keygate.test")

    page = shop.client.get(old_path)
    assert page.status_code == 410
    html = page.get_data(as_text=True)
    assert body["licenses"][0]["key"] not in html
    assert body["downloads"][0]["link"] not in html
    assert "Email me a fresh link" in html
    sent = shop.client.post(
        old_path + "/renew", data={"csrf_token": csrf(html)}, follow_redirects=True
    )
    assert sent.status_code == 200
    assert "Check your email" in sent.get_data(as_text=True)
    run_pending(app)
    with app.app_context():
        mails = db.session.scalars(select(Mail).order_by(Mail.id)).all()
        assert len(mails) == 2
        assert mails[-1].to_email == "jurgen@example.org"
        # Nothing of a refunded order is listed: the mail is about its page.
        subject = "The page of your order" if refunded else "Your licenses and downloads"
        assert mails[-1].subject.startswith(subject)
        fresh = re.search(r"http://keygate\.test(/my/[^\s\"<]+)", mails[-1].body_text)
    assert fresh is not None
    assert shop.client.get(fresh.group(1)).status_code == 200


def test_buttons_of_a_page_whose_link_expired_meanwhile_offer_a_fresh_link(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page opened before its link expired and used after: "mail me again" and
    "Deactivate" answer the expired page (its "Email me a fresh link" button), not a bare
    error."""
    shop.configure(501)
    shop.deliver(wc_order(9408, "processing", [line_item(501)]))
    days = app.extensions["keygate.settings"].portal_link_days
    now = time.time()
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(now) - days * 86400 - 60)
    with app.test_request_context():
        old_path = portal_url(_order_row_id(app, "9408")).removeprefix("http://keygate.test")
    monkeypatch.undo()
    token = csrf(shop.client.get(old_path).get_data(as_text=True))
    for button in ("/resend", "/activations/1/deactivate"):
        answer = shop.client.post(old_path + button, data={"csrf_token": token})
        assert answer.status_code == 410, button
        assert "Email me a fresh link" in answer.get_data(as_text=True), button


def test_a_link_from_before_portal_links_expired_counts_as_expired(
    app: Flask, shop: WebhookSender
) -> None:
    """An untimed link (made before links expired) shows nothing of the order; a fresh
    link can be asked for; a forged one stays a 404."""
    shop.configure(501)
    shop.deliver(wc_order(9404, "processing", [line_item(501)]))
    order_id = _order_row_id(app, "9404")
    with app.test_request_context():
        legacy = "/my/" + URLSafeSerializer(app.config["SECRET_KEY"], salt=PORTAL).dumps(
            {"o": order_id}
        )
    page = shop.client.get(legacy)
    assert page.status_code == 410
    assert (
        shop.client.post(
            legacy + "/renew", data={"csrf_token": csrf(page.get_data(as_text=True))}
        ).status_code
        == 303
    )
    forged = "/my/" + URLSafeSerializer("not the key", salt=PORTAL).dumps({"o": order_id})
    assert shop.client.get(forged).status_code == 404
    token = csrf(page.get_data(as_text=True))
    assert shop.client.post(forged + "/renew", data={"csrf_token": token}).status_code == 404


def _order_row_id(app: Flask, shop_order_id: str) -> int:
    with app.app_context():
        order_id: int = db.session.execute(
            select(Order.id).where(Order.shop_order_id == shop_order_id)
        ).scalar_one()
    return order_id


def test_an_erased_order_is_never_mailed_again(app: Flask, shop: WebhookSender) -> None:
    """After erasure, "email me again" queues nothing and says why, and keys issued later are
    not mailed either: the erased address is a placeholder, not the buyer's."""
    shop.configure(501)
    item = line_item(501, line_id=91)
    shop.deliver(wc_order(9403, "processing", [item], email="ada@example.org", modified=1))
    run_pending(app)
    portal_path = shop.order(9403)["portal_url"].removeprefix("http://keygate.test")
    token = re.search(
        r'name="csrf_token" type="hidden" value="([^"]+)"',
        shop.client.get(portal_path).get_data(as_text=True),
    )
    assert token
    assert shop.admin("DELETE", "/customers/ada@example.org").status_code == 200

    response = shop.client.post(
        portal_path + "/resend", data={"csrf_token": token.group(1)}, follow_redirects=True
    )
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "erased, so we no longer email it" in html
    assert "sending your keys" not in html and "Email me my keys" not in html
    # A second unit paid later is issued (and shown) but not mailed to the placeholder.
    more = dict(item, quantity=2)
    shop.deliver(wc_order(9403, "processing", [more], email="ada@example.org", modified=2))
    assert len(shop.order(9403)["licenses"]) == 2
    # Asking for a fresh portal link queues nothing either (and does not say it is erased).
    renewed = shop.client.post(
        portal_path + "/renew", data={"csrf_token": token.group(1)}, follow_redirects=True
    )
    assert renewed.status_code == 200
    assert "erased" not in renewed.get_data(as_text=True)
    run_pending(app)
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Mail)).scalar_one() == 0
        jobs = db.session.execute(select(Job)).scalars().all()
        assert not [job for job in jobs if job.payload.get("resend")]


def test_links_that_no_longer_give_the_file_are_not_offered(
    app: Flask, shop: WebhookSender
) -> None:
    """An expired or used-up link is named with why, not offered as a link that answers 410;
    a mail sent again leaves it out."""
    import datetime as dt

    from sqlalchemy import update

    from connector.models import DownloadGrant

    shop.configure(501, download_limit=1)
    shop.deliver(wc_order(9410, "processing", [line_item(501, quantity=2)]))
    run_pending(app)
    expired_link, used_link = (d["link"] for d in shop.order(9410)["downloads"])
    with app.app_context():
        first, second = db.session.scalars(select(DownloadGrant).order_by(DownloadGrant.id))
        yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        db.session.execute(
            update(DownloadGrant).where(DownloadGrant.id == first.id).values(expires_at=yesterday)
        )
        db.session.execute(
            update(DownloadGrant).where(DownloadGrant.id == second.id).values(download_count=1)
        )
        db.session.commit()
    portal_path = shop.order(9410)["portal_url"].removeprefix("http://keygate.test")
    html = shop.client.get(portal_path).get_data(as_text=True)
    assert expired_link not in html and used_link not in html
    assert "no longer available" in html and "no downloads left" in html
    with app.app_context():
        order = db.session.execute(select(Order)).scalar_one()
        from connector.mail.service import mail_order_again

        mail_order_again(db.session, order, actor="test", action="mail.resent")
        db.session.commit()
    run_pending(app)
    with app.app_context():
        latest = db.session.scalars(select(Mail).order_by(Mail.id.desc())).first()
        assert latest is not None and "/d/" not in latest.body_text
        assert "Your downloads" not in latest.body_text


def test_mails_one_order_page_asks_for_are_limited_whoever_asks(
    app: Flask, shop: WebhookSender
) -> None:
    """The portal link is the only credential, and an expired one still asks for a fresh
    link: someone holding a forwarded or leaked link, asking from many addresses, must not
    fill the buyer's inbox (nor spend the shop's mail quota). "Mail me again" and "mail me
    a fresh link" share a budget per order, whichever addresses ask."""
    shop.configure(501)
    shop.deliver(wc_order(9409, "processing", [line_item(501)]))
    run_pending(app)  # the first mail
    path = shop.order(9409)["portal_url"].removeprefix("http://keygate.test")
    token = {"csrf_token": csrf(shop.client.get(path).get_data(as_text=True))}
    answers = [
        shop.client.post(
            path + button, data=token, environ_base={"REMOTE_ADDR": f"198.51.100.{n}"}
        ).status_code
        for n in range(8)
        for button in ("/resend", "/renew")
    ]
    run_pending(app)
    with app.app_context():
        mails = db.session.execute(select(func.count()).select_from(Mail)).scalar_one()
    assert answers[:6] == [302, 303] * 3
    assert set(answers[6:]) == {429}
    assert mails == 1 + 6
    # Another order's page is not held back by this one's budget.
    shop.deliver(wc_order(9410, "processing", [line_item(501)]))
    other = shop.order(9410)["portal_url"].removeprefix("http://keygate.test")
    answer = shop.client.post(
        other + "/resend", data=token, environ_base={"REMOTE_ADDR": "198.51.100.99"}
    )
    assert answer.status_code == 302


def _expired_path(app: Flask, monkeypatch: pytest.MonkeyPatch, shop_order_id: str) -> str:
    days = app.extensions["keygate.settings"].portal_link_days
    now = time.time()
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(now) - days * 86400 - 60)
    with app.test_request_context():
        path = portal_url(_order_row_id(app, shop_order_id)).removeprefix("http://keygate.test")
    monkeypatch.undo()
    return path


def test_a_fresh_link_asked_for_is_said_on_a_page_a_reload_does_not_post_again(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "Email me a fresh link" answers a redirect to its "Check your email" page: reloading
    that page (or opening it again later) shows it again and mails nothing more, and its
    address holds nothing but the link's own token."""
    shop.configure(501)
    shop.deliver(wc_order(9411, "processing", [line_item(501)]))
    run_pending(app)  # the first mail
    old = _expired_path(app, monkeypatch, "9411")
    token = csrf(shop.client.get(old).get_data(as_text=True))

    sent = shop.client.post(old + "/renew", data={"csrf_token": token})

    assert sent.status_code == 303
    assert sent.headers["Location"] == old + "/renew?sent=1"
    for _ in range(2):  # the page, then a reload of it
        page = shop.client.get(sent.headers["Location"])
        assert page.status_code == 200
        assert page.headers["Cache-Control"] == "private, no-store"
        assert page.headers["X-Robots-Tag"] == "noindex"
        assert page.headers["Referrer-Policy"] == "same-origin"
        assert "Check your email" in page.get_data(as_text=True)
    run_pending(app)
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Mail)).scalar_one() == 2
    forged = "/my/" + URLSafeSerializer("not the key", salt=PORTAL).dumps({"o": 1})
    assert shop.client.get(forged + "/renew?sent=1").status_code == 404


def test_a_buttons_address_opened_leads_to_the_page_of_the_link(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A button's address opened in the browser (a bookmark, the address bar, a history
    entry) leads to the order page, or to the expired page when the link has expired, not
    to a bare "Method Not Allowed"."""
    shop.configure(501)
    shop.deliver(wc_order(9412, "processing", [line_item(501)]))
    path = shop.order(9412)["portal_url"].removeprefix("http://keygate.test")
    old = _expired_path(app, monkeypatch, "9412")
    for page, status in ((path, 200), (old, 410)):
        for button in ("/resend", "/renew", "/activations/1/deactivate"):
            answer = shop.client.get(page + button)
            assert answer.status_code == 302, button
            assert answer.headers["Location"] == page, button
            assert shop.client.get(answer.headers["Location"]).status_code == status
    run_pending(app)
    with app.app_context():
        assert db.session.execute(select(func.count()).select_from(Mail)).scalar_one() == 1
