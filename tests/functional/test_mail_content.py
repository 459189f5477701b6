"""What Keygate mails a buyer, read as an attacker and as the buyer would: links point at
Keygate's configured address whatever a request's headers said, names from the shop or the
buyer cannot forge a header or turn a line around, and each mail says all that was bought
and until when it works (found by an adversarial audit of the mails)."""

from __future__ import annotations

import datetime as dt
import io
import re
import sys
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select, update
from werkzeug.security import generate_password_hash

from connector import create_app
from connector.db import db, transaction, utcnow
from connector.jobs import run_pending, stop_worker_thread
from connector.models import AdminUser, Job, Mail, Store
from connector.stores import create_store
from connector.vault.service import put_credentials
from tests.conftest import app_overrides
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_admin_pages import PASSWORD, sign_in
from tests.peers import FakeBrevo
from tests.wc_rest import FakeShop, connect_store, fake_shop

__all__ = ["fake_shop"]

BASE = "http://keygate.test"
BREVO = {
    "api_key": "xkeysib-test-key",
    "sender_email": "shop@example.org",
    "sender_name": "Bücher Shop",
}
# Bidirectional embeddings, overrides and isolates.
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def brevo_store(app: Flask, name: str, url: str, sender: dict[str, str]) -> WebhookSender:
    with app.app_context():
        created = create_store(db.session, name, url)
        db.session.commit()
    store = WebhookSender(app.test_client(), created)
    assert store.admin("PUT", "/credentials/brevo", {**BREVO, **sender}).status_code == 200
    return store


def stored_mails(app: Flask) -> list[Mail]:
    with app.app_context():
        mails = list(db.session.scalars(select(Mail).order_by(Mail.id)))
        db.session.expunge_all()
    return mails


def test_mailed_links_use_the_configured_address_whatever_the_request_said(
    tmp_path: Path, database_url: str
) -> None:
    """A webhook or a portal button posted with a forged Host and X-Forwarded-Host (behind a
    proxy Keygate trusts) mails links to KEYGATE_BASE_URL, never to the forged host."""
    (tmp_path / "instance" / "files").mkdir(parents=True)
    app = create_app(app_overrides(tmp_path, database_url, proxy_hops=1))
    forged = {
        "Host": "evil.example",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-For": "203.0.113.9",
    }
    try:
        with app.app_context():
            created = create_store(db.session, "Test Shop", "https://shop.example")
            db.session.commit()
        client = app.test_client()
        client.environ_base.update(
            {"HTTP_" + k.upper().replace("-", "_"): v for k, v in forged.items()}
        )
        shop = WebhookSender(client, created)
        shop.configure(501)
        assert shop.deliver(wc_order(9800, "processing", [line_item(501)])).status_code == 200
        order = shop.order(9800)
        assert order["portal_url"].startswith(BASE + "/my/")
        assert order["downloads"][0]["link"].startswith(BASE + "/d/")
        portal = order["portal_url"].removeprefix(BASE)
        page = client.get(portal)
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text)
        assert token is not None
        resent = client.post(
            portal + "/resend",
            data={"csrf_token": token.group(1)},
        )
        assert resent.status_code == 302, resent.text
        assert "evil" not in resent.headers["Location"]
        run_pending(app)
        mails = stored_mails(app)
        assert len(mails) == 2
        for mail in mails:
            for body in (mail.body_text, mail.body_html or ""):
                assert "evil" not in body
                urls = re.findall(r"https?://[^\s\"<)]+", body)
                assert urls and all(url.startswith(BASE + "/") for url in urls), urls
    finally:
        stop_worker_thread(app)
        app.extensions["keygate.db"].engine.dispose()


def test_every_product_key_and_link_of_a_large_order_is_mailed_once(
    brevo_app: Flask, brevo: FakeBrevo
) -> None:
    """An order of three lines, two of them several units: one mail, through Brevo, with
    every key and every link in both parts; a redelivery and the order's completion mail
    nothing more."""
    shop = brevo_store(brevo_app, "Bücher Shop", "https://shop.example", {})
    brevo.requests.clear()
    for product_id in (501, 502, 503):
        shop.configure(product_id, duration_days=365)
    items = [
        line_item(501, quantity=3, line_id=1),
        line_item(502, quantity=1, line_id=2),
        line_item(503, quantity=2, line_id=3),
    ]
    shop.deliver(wc_order(9801, "processing", items), "order.created")
    shop.deliver(wc_order(9801, "processing", items))
    run_pending(brevo_app)
    shop.deliver(wc_order(9801, "completed", items, modified=60))
    run_pending(brevo_app)
    (sent,) = brevo.sent()
    order = shop.order(9801)
    assert len(order["licenses"]) == 6 and len(order["downloads"]) == 6
    text, html = sent.body["textContent"], sent.body["htmlContent"]
    for lic in order["licenses"]:
        assert f"Product {lic['product_id']}: {lic['key']} (valid until" in text
        assert lic["key"] in html
    for download in order["downloads"]:
        assert text.count(download["link"]) == 1
        assert html.count(f'href="{download["link"]}"') == 1
    assert "Product 501 (copy 3), manual.pdf: " in text
    assert "Product 503 (copy 2), manual.pdf: " in text
    assert sent.body["subject"] == "Your licenses and downloads for order 9801"


def test_each_store_mails_under_its_own_name_and_sender(brevo_app: Flask, brevo: FakeBrevo) -> None:
    """Two shops on one Keygate: each buyer's mail names the shop they bought from and comes
    from that shop's Brevo sender (replies go to it), never the other's."""
    books = brevo_store(brevo_app, "Bücher Shop", "https://books.example", {})
    tools = brevo_store(
        brevo_app,
        "Tool Shop",
        "https://tools.example",
        {"sender_email": "help@tools.example", "sender_name": "Tool Shop Support"},
    )
    brevo.requests.clear()
    books.configure(501)
    tools.configure(501)
    books.deliver(wc_order(1, "processing", [line_item(501)], email="a@example.org"))
    tools.deliver(wc_order(1, "processing", [line_item(501)], email="b@example.org"))
    run_pending(brevo_app)
    sent = {mail.body["to"][0]["email"]: mail.body for mail in brevo.sent()}
    assert sent["a@example.org"]["sender"] == {"email": "shop@example.org", "name": "Bücher Shop"}
    assert sent["b@example.org"]["sender"] == {
        "email": "help@tools.example",
        "name": "Tool Shop Support",
    }
    assert "at Bücher Shop." in sent["a@example.org"]["textContent"]
    assert "Tool Shop" not in sent["a@example.org"]["textContent"]
    assert "at Tool Shop." in sent["b@example.org"]["textContent"]
    assert books.order(1)["licenses"][0]["key"] in sent["a@example.org"]["textContent"]
    assert books.order(1)["licenses"][0]["key"] not in sent["b@example.org"]["textContent"]


def test_markup_in_names_is_shown_as_text_in_the_mail_and_the_admin_viewer(
    app: Flask, shop: WebhookSender
) -> None:
    """A buyer's name and a product's name with markup are text in the HTML part and on the
    admin's mail page, never markup."""
    shop.admin(
        "PUT",
        "/products/501",
        {
            "name": 'Plugin <script>alert(1)</script> & "Pro"',
            "policy": {},
            "files": [{"object_key": "f/m.pdf", "filename": "m<img src=x>.pdf"}],
        },
    )
    shop.deliver(
        wc_order(9802, "processing", [line_item(501)], first_name="<b>Eve</b>", last_name="O'Hara")
    )
    run_pending(app)
    (mail,) = stored_mails(app)
    assert mail.body_html is not None
    assert "<script>" not in mail.body_html and "<b>Eve" not in mail.body_html
    assert "<img" not in mail.body_html
    assert "Plugin &lt;script&gt;alert(1)&lt;/script&gt; &amp; &#34;Pro&#34;" in mail.body_html
    assert "Hello <b>Eve</b> O'Hara," in mail.body_text  # the text part is text: as typed
    admin = app.test_client()
    with app.app_context():
        db.session.add(AdminUser(username="owner", password_hash=generate_password_hash(PASSWORD)))
        db.session.commit()
    assert sign_in(admin) == 302
    page = admin.get(f"/admin/outbox/mails/{mail.id}").get_data(as_text=True)
    assert "<script>" not in page and "<b>Eve</b>" not in page
    assert "&lt;b&gt;Eve&lt;/b&gt;" in page


def shown(iso: str) -> str:
    """An API time ("2027-11-20T03:00:00Z") as mails show it: "2027-11-20 03:00 UTC"."""
    return f"{iso[:10]} {iso[11:16]} UTC"


def test_a_mail_says_until_when_each_key_and_link_works(app: Flask, shop: WebhookSender) -> None:
    """The buyer reads in the mail when each key ends (or that it does not), when each
    download link stops working and how many downloads it has left, and until when the
    link to their page works: not first from a page that answers "expired"."""
    shop.configure(501, duration_days=365, download_days=7, download_limit=3)
    shop.configure(502)  # a lifetime key, whose links last while it does
    before = dt.datetime.now(dt.UTC).date()
    order = wc_order(9803, "processing", [line_item(501, line_id=1), line_item(502, line_id=2)])
    order["date_paid_gmt"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    shop.deliver(order)
    run_pending(app)
    after = dt.datetime.now(dt.UTC).date()
    (mail,) = stored_mails(app)
    issued = shop.order(9803)
    lifetime, yearly = sorted(issued["licenses"], key=lambda lic: lic["expires_at"] or "")
    windowed, lasting = issued["downloads"]
    assert windowed["expires_at"] is not None and lasting["expires_at"] is None
    link_end = shown(windowed["expires_at"])
    lines = mail.body_text.splitlines()
    assert f"  Product 501: {yearly['key']} (valid until {shown(yearly['expires_at'])})" in lines
    assert f"  Product 502: {lifetime['key']} (lifetime)" in lines
    assert (
        f"  Product 501, manual.pdf: {windowed['link']}"
        f" (3 downloads left, available until {link_end})"
    ) in lines
    lasts = "available while your license lasts"
    assert f"  Product 502, manual.pdf: {lasting['link']} ({lasts})" in lines
    # KEYGATE_PORTAL_LINK_DAYS (30) from when the mail was written.
    portal_ends = {str(day + dt.timedelta(days=30)) for day in (before, after)}
    last = lines[-1]
    assert last.startswith("Manage your licenses and activations: http://keygate.test/my/")
    match = re.search(r"/my/\S+ \(this link works until ((\d{4}-\d\d-\d\d) \d\d:\d\d UTC)\)$", last)
    assert match is not None and match.group(2) in portal_ends, last
    html = mail.body_html or ""
    assert f"(3 downloads left, available until {link_end})" in html
    assert "(lifetime)" in html and "(available while your license lasts)" in html
    assert f"this link works until {match.group(1)}" in html


def test_names_can_neither_forge_a_header_nor_turn_a_line_around(
    brevo_app: Flask, brevo: FakeBrevo
) -> None:
    """A sender name with a line break is refused when saved, and one saved before that
    check is sent on one line. Bidirectional overrides in a buyer's name, an order number or
    a product name are dropped from the subject, the display names and both parts: one left
    open turned the rest of its line around, so a key after a product name read backwards."""
    shop = brevo_store(brevo_app, "Bücher Shop", "https://shop.example", {})
    forged = "Bücher Shop\r\nBcc: everyone@example.org"
    refused = shop.admin("PUT", "/credentials/brevo", {**BREVO, "sender_name": forged})
    assert refused.status_code == 422
    assert refused.get_json()["field"] == "sender_name"
    assert "everyone" not in refused.get_data(as_text=True)
    with brevo_app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None
        saved_before = {**BREVO, "sender_name": forged + "\u202e"}
        put_credentials(db.session, store, "brevo", saved_before, actor="test")
        db.session.commit()
    brevo.requests.clear()
    shop.admin(
        "PUT",
        "/products/501",
        {
            "name": "Plugin \u202eorP",
            "policy": {},
            "files": [{"object_key": "f/m.pdf", "filename": "manual\u202efdp.exe"}],
        },
    )
    order = wc_order(9804, "processing", [line_item(501)], first_name="Eve\u202e", last_name="X")
    order["number"] = "98\u202e04"
    shop.deliver(order)
    run_pending(brevo_app)
    (sent,) = brevo.sent()
    key = shop.order(9804)["licenses"][0]["key"]
    body = sent.body
    assert body["sender"]["name"] == "Bücher Shop Bcc: everyone@example.org"
    assert body["to"][0]["name"] == "Eve X"
    assert body["subject"] == "Your licenses and downloads for order 9804"
    fields = [body["sender"]["name"], body["to"][0]["name"], body["subject"]]
    for value in [*fields, body["textContent"], body["htmlContent"]]:
        assert not set(value) & set(BIDI_CONTROLS + "\r"), ascii(value)
    assert f"  Plugin orP: {key} (lifetime)" in body["textContent"].splitlines()
    assert f"Plugin orP: <code>{key}</code>" in body["htmlContent"]
    assert "manualfdp.exe" in body["textContent"]
    (mail,) = stored_mails(brevo_app)  # the owner's copy is what was sent
    assert (mail.subject, mail.body_text) == (body["subject"], body["textContent"])


def test_console_mail_reaches_an_output_that_is_not_utf8(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose standard output is not UTF-8 (a latin-1 or ASCII locale, a Windows
    code page) still prints the console mail, what it cannot encode escaped, and the mail
    counts as sent: a buyer named 山田 made the job fail on every attempt until it died."""
    (tmp_path / "instance" / "files").mkdir(parents=True)
    app = create_app(app_overrides(tmp_path, database_url, mail_echo=True))
    output = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(output, encoding="ascii", newline="\n"))
    try:
        with app.app_context():
            created = create_store(db.session, "Bücher Shop", "https://shop.example")
            db.session.commit()
        shop = WebhookSender(app.test_client(), created)
        shop.configure(501)
        shop.deliver(wc_order(9805, "processing", [line_item(501)], last_name="山田 🎉"))
        run_pending(app)
        sys.stdout.flush()
        (mail,) = stored_mails(app)
        assert mail.sent_at is not None and mail.backend == "console"
        printed = output.getvalue().decode("ascii")
        assert shop.order(9805)["licenses"][0]["key"] in printed
        assert "Hello J\\xfcrgen \\u5c71\\u7530 \\U0001f389," in printed
        with app.app_context():
            mail_job = db.session.scalars(select(Job).where(Job.kind == "mail.order_issued")).one()
            assert (mail_job.status, mail_job.attempts) == ("done", 1)
    finally:
        stop_worker_thread(app)
        app.extensions["keygate.db"].engine.dispose()


def test_console_mail_with_its_output_gone_is_kept_in_the_outbox(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closed standard output (a broken pipe: the program reading it ended) does not fail
    the mail for ever: it is kept in the outbox, sent, as any console mail."""
    (tmp_path / "instance" / "files").mkdir(parents=True)
    app = create_app(app_overrides(tmp_path, database_url, mail_echo=True))
    gone = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    gone.close()
    monkeypatch.setattr(sys, "stdout", gone)
    try:
        with app.app_context():
            created = create_store(db.session, "Test Shop", "https://shop.example")
            db.session.commit()
        shop = WebhookSender(app.test_client(), created)
        shop.configure(501)
        shop.deliver(wc_order(9806, "processing", [line_item(501)]))
        run_pending(app)
        (mail,) = stored_mails(app)
        assert mail.sent_at is not None
        assert shop.order(9806)["licenses"][0]["key"] in mail.body_text
    finally:
        stop_worker_thread(app)
        app.extensions["keygate.db"].engine.dispose()


def test_the_shops_customer_note_tells_links_apart_and_offers_only_working_ones(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """WooCommerce mails the customer note Keygate writes back: like Keygate's own mail,
    each link names its product and copy and says until when it works, each key its end,
    and a link whose download period had already ended (an order licensed late) is not
    offered as a link that answers 410. A bidirectional override in a name is dropped, as
    from Keygate's mail."""
    connect_store(app, shop, fake_shop)
    shop.configure(501, duration_days=365)
    files = [{"object_key": "products/502/manual.pdf", "filename": "manual.pdf"}]
    named = {"name": "Product \u202e502", "policy": {}, "files": files}
    assert shop.admin("PUT", "/products/502", named).status_code == 200
    shop.configure(503, download_days=7)  # paid 12 days before it is licensed (wc_time)
    items = [
        line_item(501, quantity=2, line_id=1),
        line_item(502, line_id=2),
        line_item(503, line_id=3),
    ]
    order = wc_order(9807, "processing", items)
    fake_shop.orders[9807] = order
    fake_shop.deliver(shop.client, "order.created", order)
    run_pending(app)
    (note,) = fake_shop.notes[9807]
    lines = note["note"].splitlines()
    issued = shop.order(9807)
    first, second, lifetime, late = issued["licenses"]
    for lic in (first, second):
        assert f"Product 501: {lic['key']} (valid until {shown(lic['expires_at'])})" in lines
    assert f"Product 502: {lifetime['key']} (lifetime)" in lines
    links = [d["link"] for d in issued["downloads"]]
    lasts = "available until " + shown(first["expires_at"])
    assert f"Product 501, manual.pdf: {links[0]} ({lasts})" in lines
    assert f"Product 501 (copy 2), manual.pdf: {links[1]} ({lasts})" in lines
    assert f"Product 502, manual.pdf: {links[2]} (available while your license lasts)" in lines
    assert shop.client.get(links[3].removeprefix(BASE)).status_code == 410
    assert links[3] not in note["note"]
    assert late["key"] in note["note"]
    assert "\u202e" not in note["note"]


def test_a_resent_mail_says_what_it_leaves_out_because_it_no_longer_works(
    app: Flask, shop: WebhookSender
) -> None:
    """A mail lists only keys and links that still work; when some of the order's no longer
    do (a line removed from the order here), the mail says how many it leaves out, so the
    buyer does not take a missing key or link for a mistake. The first mail, with
    everything working, says nothing of the kind."""
    shop.configure(501)
    shop.configure(502)
    items = [line_item(501, line_id=1), line_item(502, line_id=2)]
    shop.deliver(wc_order(9804, "processing", items))
    run_pending(app)
    shop.deliver(wc_order(9804, "processing", [line_item(501, line_id=1)], modified=5))
    run_pending(app)
    assert shop.admin("POST", "/orders/9804/resend").status_code == 202
    run_pending(app)
    first, resent = stored_mails(app)
    said = "of this order can no longer be used"
    assert said not in first.body_text and said not in (first.body_html or "")
    kept = next(lic for lic in shop.order(9804)["licenses"] if lic["status"] == "active")
    assert f"  Product 501: {kept['key']} (lifetime)" in resent.body_text.splitlines()
    assert "Product 502" not in resent.body_text
    sentence = (
        "1 license key and 1 download link of this order can no longer be used (refunded,"
        " revoked, suspended, expired or used up) and are not listed here; the page linked"
        " below shows the order as it is now."
    )
    assert sentence in resent.body_text.splitlines()
    assert f"<p>{sentence}</p>" in (resent.body_html or "")


@pytest.mark.parametrize("given", ["", "jurgen at example.org"])
def test_an_order_issued_with_no_address_is_mailed_once_the_shop_gives_one(
    app: Flask, shop: WebhookSender, given: str
) -> None:
    """Issued with no address (none given, or not a plain mailbox): nothing could be
    mailed. The shop corrects it: the buyer gets their keys and links at the new address,
    once (a replay of that delivery mails nothing more), without the owner's resend."""
    shop.configure(501)
    items = [line_item(501)]
    shop.deliver(wc_order(9811, "processing", items, email=given))
    run_pending(app)
    assert stored_mails(app) == []
    corrected = wc_order(9811, "processing", items, modified=5)
    for _ in range(2):
        assert shop.deliver(corrected).status_code == 200
        run_pending(app)
    (mail,) = stored_mails(app)
    [key] = [lic["key"] for lic in shop.order(9811)["licenses"]]
    assert mail.to_email == "jurgen@example.org" and key in mail.body_text
    # A later correction of an address already mailed is the owner's resend, as before.
    shop.deliver(wc_order(9811, "processing", items, modified=9, email="j@example.org"))
    run_pending(app)
    assert len(stored_mails(app)) == 1


def test_an_order_given_its_address_while_its_mail_waits_is_mailed_once(
    app: Flask, shop: WebhookSender
) -> None:
    """The address comes before the issued order's mail went: that mail reads it, and no
    second one is queued."""
    shop.configure(501)
    items = [line_item(501)]
    shop.deliver(wc_order(9812, "processing", items, email=""))
    shop.deliver(wc_order(9812, "processing", items, modified=5))
    run_pending(app)
    (mail,) = stored_mails(app)
    assert mail.to_email == "jurgen@example.org"


def test_a_product_name_on_several_lines_keeps_each_key_and_link_on_its_line(
    app: Flask, shop: WebhookSender
) -> None:
    """A product name with line breaks (the owner API and the shop's product names take
    them) is one line in the plain-text mail: broken, its key and link started a line of
    their own after a line reading like another product's ("Pro: <key>")."""
    files = [{"object_key": "products/501/manual.pdf", "filename": "manual.pdf"}]
    named = {"name": "Plugin\r\nPro\n\nEdition", "policy": {}, "files": files}
    assert shop.admin("PUT", "/products/501", named).status_code == 200
    shop.deliver(wc_order(9813, "processing", [line_item(501)]))
    run_pending(app)
    (mail,) = stored_mails(app)
    issued = shop.order(9813)
    key, link = issued["licenses"][0]["key"], issued["downloads"][0]["link"]
    lines = mail.body_text.splitlines()
    assert f"  Plugin Pro Edition: {key} (lifetime)" in lines, mail.body_text
    assert f"  Plugin Pro Edition, manual.pdf: {link} (available while your license lasts)" in (
        lines
    )


def test_the_shops_customer_note_keeps_a_product_name_on_several_lines_on_its_key_and_link(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """WooCommerce mails the note Keygate writes back: a product name with line breaks is one
    line there too, each key and link on the line of its product."""
    connect_store(app, shop, fake_shop)
    files = [{"object_key": "products/501/manual.pdf", "filename": "manual.pdf"}]
    named = {"name": "Plugin\r\nPro\n\nEdition", "policy": {}, "files": files}
    assert shop.admin("PUT", "/products/501", named).status_code == 200
    order = wc_order(9814, "processing", [line_item(501)])
    fake_shop.orders[9814] = order
    fake_shop.deliver(shop.client, "order.created", order)
    run_pending(app)
    (note,) = fake_shop.notes[9814]
    lines = note["note"].splitlines()
    issued = shop.order(9814)
    key, link = issued["licenses"][0]["key"], issued["downloads"][0]["link"]
    assert f"Plugin Pro Edition: {key} (lifetime)" in lines, note["note"]
    assert f"Plugin Pro Edition, manual.pdf: {link} (available while your license lasts)" in lines


def test_a_resent_mail_leaves_out_a_key_the_owner_suspended(
    app: Flask, shop: WebhookSender
) -> None:
    """Only a key that works (active) is mailed: one the owner suspended is left out of a
    resent mail, which says so, while the order's other key is listed."""
    shop.configure(501)
    shop.configure(502)
    items = [line_item(501, line_id=1), line_item(502, line_id=2)]
    shop.deliver(wc_order(9806, "processing", items))
    run_pending(app)
    suspended, kept = (lic["key"] for lic in shop.order(9806)["licenses"])
    assert shop.admin("POST", f"/licenses/{suspended}/suspend").status_code == 200
    assert shop.admin("POST", "/orders/9806/resend").status_code == 202
    run_pending(app)
    resent = stored_mails(app)[-1]
    assert suspended not in resent.body_text and suspended not in (resent.body_html or "")
    assert kept in resent.body_text
    said = " ".join(resent.body_text.split())
    assert "1 license key" in said and "can no longer be used" in said


def test_a_renewal_mail_gives_the_renewed_licenses_download_link(
    app: Flask, shop: WebhookSender
) -> None:
    """A renewal order issues nothing of its own: its mail is the buyer's way back to the
    download the renewal extended, so it lists that link."""
    shop.configure(501, duration_days=30)
    shop.deliver(wc_order(9807, "completed", [line_item(501)]))
    run_pending(app)
    key = shop.order(9807)["licenses"][0]["key"]
    renewal = line_item(501, line_id=306)
    renewal["meta_data"] = [{"id": 1, "key": "_keygate_renew_license", "value": key}]
    shop.deliver(wc_order(9808, "processing", [renewal], modified=5))
    run_pending(app)
    renewed = stored_mails(app)[-1]
    assert renewed.subject == "Your license renewal for order 9808"
    assert "Your downloads" in renewed.body_text
    assert len(re.findall(r"/d/\S+", renewed.body_text)) == 1


def test_a_mail_job_run_again_after_its_mail_went_sends_nothing(
    app: Flask, shop: WebhookSender
) -> None:
    """A worker stopped after the mail went but before its job was marked done runs the job
    again: the buyer gets no second mail (the stored one keeps when it was sent)."""
    shop.configure(501)
    shop.deliver(wc_order(9809, "processing", [line_item(501)]))
    run_pending(app)
    [mail] = stored_mails(app)
    with app.app_context(), transaction() as session:
        session.execute(
            update(Job)
            .where(Job.kind == "mail.order_issued")
            .values(status="pending", run_after=utcnow() - dt.timedelta(seconds=1))
        )
    run_pending(app)
    [again] = stored_mails(app)
    assert again.sent_at == mail.sent_at and again.body_text == mail.body_text
