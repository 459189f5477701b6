"""Admin store pages: add a store (secrets shown once), the store page (connection, connect,
disconnect, a new API token) and a WooCommerce key entered by hand on the credentials page."""

from __future__ import annotations

import datetime as dt
import json
import re
from html import unescape
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from werkzeug.test import TestResponse

from connector.db import db, utcnow
from connector.jobs import run_pending
from connector.models import AuditEvent, Store, WebhookDelivery
from connector.stores import NewStore, create_store
from tests.factories import WebhookSender, wc_order
from tests.functional.test_admin_pages import (
    admin_client,
    csrf_token,
    sign_in,
    store_admin,
)
from tests.functional.test_cli import keygate
from tests.wc_rest import CONSUMER_KEY, CONSUMER_SECRET, FakeShop, connect_store, fake_shop

__all__ = ["admin_client", "fake_shop"]
TOPICS = {"order.created", "order.updated", "order.deleted", "order.restored"}
NEW_STORE = {
    "name": "Bücher <Shop>",
    "url": "https://buecher.example/",
    "key_prefix": "acme",
    "key_groups": "5",
    "key_group_length": "4",
}


@pytest.fixture
def owner(admin_client: FlaskClient) -> FlaskClient:
    """A signed-in admin of every store."""
    assert sign_in(admin_client) == 302
    return admin_client


def confirmed(client: FlaskClient, page: str) -> dict[str, str]:
    """A form that cannot be undone, with its box ticked."""
    return {"csrf_token": csrf_token(client, page), "confirm": "y"}


def _shown(response: TestResponse) -> dict[str, str]:
    """The name/value rows of a page that shows a store's setup values."""
    html = response.get_data(as_text=True)
    return {
        name: unescape(value)
        for name, value in re.findall(
            r'<tr><th scope="row">(\w+)</th><td><code>([^<]*)</code></td></tr>', html
        )
    }


def _audit(app: Flask, action: str) -> list[tuple[str, str | None]]:
    with app.app_context():
        return [
            (e.actor, e.subject)
            for e in db.session.scalars(select(AuditEvent).where(AuditEvent.action == action))
        ]


def _add_store(client: FlaskClient, **form: str) -> TestResponse:
    token = csrf_token(client, "/admin/stores/new")
    return client.post("/admin/stores/new", data={**NEW_STORE, **form, "csrf_token": token})


def test_an_owner_adds_a_store_and_sees_its_secrets_once(app: Flask, owner: FlaskClient) -> None:
    """The answer to the form shows what `keygate store add` prints, uncached and not via a
    redirect; the token works, the secret signs webhooks, and neither is shown again."""
    response = _add_store(owner)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    assert "Location" not in response.headers
    html = response.get_data(as_text=True)
    assert "shown once" in html
    assert "Bücher &lt;Shop&gt;" in html and "<Shop>" not in html
    info = _shown(response)
    assert set(info) == {"store_id", "webhook_url", "webhook_secret", "api_token", "storage_area"}
    assert info["webhook_url"] == f"http://keygate.test/webhooks/woocommerce/{info['store_id']}"
    with app.app_context():
        store = db.session.execute(
            select(Store).where(Store.public_id == info["store_id"])
        ).scalar_one()
        assert (store.name, store.url) == ("Bücher <Shop>", "https://buecher.example")
        assert (store.key_prefix, store.key_groups, store.key_group_length) == ("ACME", 5, 4)
        assert store.webhook_secret == info["webhook_secret"]
        assert info["storage_area"] == f"stores/{store.id}/"
        store_id = store.id
    assert _audit(app, "store.created") == [("admin:owner", info["store_id"])]

    # The token is the store's admin API token; the secret signs its webhooks.
    sender = WebhookSender(
        app.test_client(), NewStore(store, info["api_token"], info["webhook_secret"])
    )
    assert sender.admin("GET", "/connection").status_code == 200
    assert sender.deliver(wc_order(9800)).status_code == 200
    assert sender.deliver(wc_order(9801), secret="wrong").status_code == 401

    # Never again: not in the store page, the dashboard, nor the session cookie.
    cookie = owner.get_cookie("session")
    assert cookie is not None
    session_state = str(app.session_interface.get_signing_serializer(app).loads(cookie.value))  # type: ignore[attr-defined]
    for page in ("/admin/", f"/admin/stores/{store_id}", f"/admin/stores/{store_id}/credentials"):
        shown = owner.get(page).get_data(as_text=True)
        for secret in (info["api_token"], info["webhook_secret"]):
            assert secret not in shown, page
            assert secret not in session_state


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "   ", "a store needs a name"),
        ("name", "N" * 201, "a store name is at most 200 characters"),
        ("name", "Bücher\nShop", "a store name is at most 200 characters, on one line"),
        ("name", "Bücher\tShop", "no tabs or control characters"),
        ("url", "shop", "http(s) URL"),
        ("url", "ftp://shop.example", "http(s) URL"),
        ("url", "http://[::1", "http(s) URL"),
        ("url", "https://shop example", "http(s) URL"),
        ("url", "https://shop.example:99999", "http(s) URL"),
        ("url", "https://shop.example:port", "http(s) URL"),
        ("url", "https://shop.example/" + "x" * 500, "longer than 500"),
        ("url", "https://owner:pw@shop.example", "user name or password"),
        ("url", "https://shop.example/?lang=de", "without ? or #"),
        ("url", "https://shop.example/#top", "without ? or #"),
        ("key_groups", "9", "2-8 groups"),
        ("key_groups", "four", "Key groups must be a whole number, 2 to 8"),
        ("key_groups", "", "Key groups must be a whole number, 2 to 8"),
        ("key_group_length", "2", "3-10 characters"),
        ("key_group_length", "²", "Characters per group must be a whole number, 3 to 10"),
        ("key_prefix", "ac-me", "letters and digits only"),
        ("key_prefix", "A" * 17, "at most 16 characters"),
    ],
)
def test_bad_store_input_shows_the_form_again_with_why(
    app: Flask, owner: FlaskClient, field: str, value: str, message: str
) -> None:
    """What `keygate store add` refuses is a 422 form saying why, with the input kept."""
    response = _add_store(owner, **{field: value})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert message in unescape(html)
    kept = 'name="url" value="https://buecher.example/"'
    if field != "name":
        kept = 'name="name" value="Bücher &lt;Shop&gt;"'
    assert kept in html  # what was typed is kept
    assert "api_token" not in html
    with app.app_context():
        assert db.session.scalars(select(Store)).all() == []
    assert _audit(app, "store.created") == []


def test_a_reload_of_the_new_store_answer_adds_no_second_store(
    app: Flask, owner: FlaskClient, tmp_path: Path
) -> None:
    """The page showing a new store's secrets is the form's answer: a reload sends the form
    again. The shop's URL is a store already, so it is said, and no twin store (with its own
    webhook secret and keys) is made; `keygate store add` refuses it the same way."""
    token = csrf_token(owner, "/admin/stores/new")
    form = {**NEW_STORE, "csrf_token": token}
    assert owner.post("/admin/stores/new", data=form).status_code == 200
    again = owner.post("/admin/stores/new", data=form)  # F5
    assert again.status_code == 422
    assert "is a store already" in unescape(again.get_data(as_text=True))
    assert "api_token" not in again.get_data(as_text=True)
    with app.app_context():
        assert len(db.session.scalars(select(Store)).all()) == 1
    assert keygate(tmp_path, "init").returncode == 0
    added = ["store", "add", "--name", "Shop", "--url", "https://s.example"]
    assert keygate(tmp_path, *added).returncode == 0
    twice = keygate(tmp_path, *added[:-1], "https://S.example/")
    assert twice.returncode != 0
    assert "https://s.example is a store already" in twice.stderr
    assert "Traceback" not in twice.stderr


def test_too_few_random_characters_are_refused(owner: FlaskClient) -> None:
    response = _add_store(owner, key_groups="2", key_group_length="3")
    assert response.status_code == 422
    assert "at least 16 random characters" in response.get_data(as_text=True)


def test_adding_a_store_needs_the_csrf_token(app: Flask, owner: FlaskClient) -> None:
    assert owner.post("/admin/stores/new", data=NEW_STORE).status_code == 400
    with app.app_context():
        assert db.session.scalars(select(Store)).all() == []


def test_the_cli_refuses_a_key_format_out_of_range_cleanly(tmp_path: Path) -> None:
    """`keygate store add` shares the form's checks: a clear message, no traceback."""
    assert keygate(tmp_path, "init").returncode == 0
    for option, value, message in (
        ("--key-groups", "9", "2-8 groups"),
        ("--key-prefix", "A" * 17, "at most 16 characters"),
    ):
        result = keygate(
            tmp_path, "store", "add", "--name", "Shop", "--url", "https://s.example", option, value
        )
        assert result.returncode != 0
        assert message in result.stderr and "Traceback" not in result.stderr


def test_the_dashboard_links_each_store_to_its_page(
    owner: FlaskClient, shop: WebhookSender
) -> None:
    html = owner.get("/admin/").get_data(as_text=True)
    assert f'href="/admin/stores/{shop.store.store.id}">Test Shop</a>' in html
    assert 'href="/admin/stores/new"' in html


def test_the_store_page_shows_where_things_are_and_how_to_connect(
    owner: FlaskClient, shop: WebhookSender
) -> None:
    """Name, URL, ids, webhook URL, storage area, the connection and the wc-auth link the
    admin API gives, a disconnect button only when there is something to disconnect."""
    store = shop.store.store
    response = owner.get(f"/admin/stores/{store.id}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    for shown in (
        "Test Shop",
        "https://shop.example",
        store.public_id,
        f"http://keygate.test/webhooks/woocommerce/{store.public_id}",
        f"stores/{store.id}/",
        "disconnected",
        "KEYGATE_BASE_URL",  # the test app is on http: the wc-auth callback cannot work
        f'href="/admin/stores/{store.id}/credentials"',
        "the embedded folder on this server",
        "printed on the server's console only: buyers receive nothing",
        "<em>Order restored</em>",  # how to add the webhooks by hand
    ):
        assert shown in html, shown
    assert "Disconnect</button>" not in html
    link = re.search(r'<a href="([^"]+)"[^>]*>Connect WooCommerce</a>', html)
    assert link is not None
    ours, api = (
        urlsplit(url)
        for url in (
            unescape(link.group(1)),
            shop.admin("GET", "/connection").get_json()["connect_url"],
        )
    )
    assert (
        (ours.netloc, ours.path)
        == (api.netloc, api.path)
        == ("shop.example", "/wc-auth/v1/authorize")
    )
    ours_query, api_query = parse_qs(ours.query), parse_qs(api.query)
    for name in ("app_name", "scope", "callback_url", "return_url"):
        assert ours_query[name] == api_query[name], name


def test_the_store_page_shows_the_registered_webhooks_and_disconnects(
    app: Flask, owner: FlaskClient, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """Disconnect posts with the CSRF token and does what DELETE /connection does."""
    connection = connect_store(app, shop, fake_shop)
    page = f"/admin/stores/{shop.store.store.id}"
    html = owner.get(page).get_data(as_text=True)
    assert "<strong>connected</strong>" in html
    for webhook in connection["webhooks"]:
        assert (
            f'<td>{webhook["topic"]}</td><td data-label="Shop\'s id">{webhook["id"]}</td>'
            '<td data-label="Status">active</td>'
        ) in html
    assert "Disconnect</button>" in html

    assert owner.post(f"{page}/disconnect").status_code == 400
    assert shop.admin("GET", "/connection").get_json()["status"] == "connected"
    response = owner.post(f"{page}/disconnect", data=confirmed(owner, page))
    assert response.status_code == 302
    assert fake_shop.webhooks == {}
    after = shop.admin("GET", "/connection").get_json()
    assert (after["status"], after["webhooks"]) == ("disconnected", [])
    assert shop.admin("GET", "/credentials/woocommerce").status_code == 404
    assert "is disconnected" in owner.get(response.headers["Location"]).get_data(as_text=True)
    assert [actor for actor, _ in _audit(app, "shop.disconnected")] == ["admin:owner"]


def test_disconnecting_while_the_shop_is_down_says_so_and_changes_nothing(
    app: Flask, owner: FlaskClient, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    connect_store(app, shop, fake_shop)
    fake_shop.down = True
    page = f"/admin/stores/{shop.store.store.id}"
    response = owner.post(f"{page}/disconnect", data=confirmed(owner, page))
    assert response.status_code == 503
    assert "could not be reached" in response.get_data(as_text=True)
    assert shop.admin("GET", "/connection").get_json()["status"] == "connected"
    assert len(fake_shop.webhooks) == 4
    assert _audit(app, "shop.disconnected") == []
    # Gone for good (it never answers again): the page offers to forget the key anyway.
    html = unescape(response.get_data(as_text=True))
    assert "Forget the shop's key anyway" in html
    gone = owner.post(f"{page}/disconnect", data={**confirmed(owner, page), "shop_gone": "1"})
    assert gone.status_code == 302
    shown = unescape(owner.get(gone.headers["Location"]).get_data(as_text=True))
    assert "Keygate could not delete its webhooks in the shop" in shown
    assert "Forget the shop's key anyway" not in shown
    assert shop.admin("GET", "/connection").get_json()["status"] == "disconnected"
    assert [actor for actor, _ in _audit(app, "shop.disconnected")] == ["admin:owner"]


def test_a_failing_webhook_registration_shows_on_the_store_page(
    app: Flask, owner: FlaskClient, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    fake_shop.down = True
    connect_store(app, shop, fake_shop)
    html = owner.get(f"/admin/stores/{shop.store.store.id}").get_data(as_text=True)
    assert "Registering the webhooks failed 1 time" in html and "503" in html


def test_replacing_the_api_token_shows_the_new_one_once(
    app: Flask, owner: FlaskClient, shop: WebhookSender
) -> None:
    page = f"/admin/stores/{shop.store.store.id}"
    assert owner.post(f"{page}/token").status_code == 400
    assert shop.admin("GET", "/connection").status_code == 200  # unchanged without CSRF
    response = owner.post(f"{page}/token", data=confirmed(owner, page))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert "shown once" in response.get_data(as_text=True)
    token = _shown(response)["api_token"]
    assert token.startswith("kg_")
    assert shop.admin("GET", "/connection").status_code == 401  # the old token stopped
    new = shop.client.get("/api/v1/admin/connection", headers={"Authorization": f"Bearer {token}"})
    assert new.status_code == 200
    assert token not in owner.get(page).get_data(as_text=True)
    assert _audit(app, "store.api_token_replaced") == [("admin:owner", shop.store.store.public_id)]


def test_a_store_admin_sees_their_store_page_only_and_adds_no_store(
    app: Flask, shop: WebhookSender
) -> None:
    with app.app_context():
        other = create_store(db.session, "Other shop", "https://other.example")
        db.session.commit()
        other_id = other.store.id
    mine = shop.store.store.id
    client = store_admin(app, mine)
    assert client.get(f"/admin/stores/{mine}").status_code == 200
    assert "/admin/stores/new" not in client.get("/admin/").get_data(as_text=True)
    token = csrf_token(client, f"/admin/stores/{mine}")
    assert client.get("/admin/stores/new").status_code == 404
    added = client.post("/admin/stores/new", data={**NEW_STORE, "csrf_token": token})
    assert added.status_code == 404
    assert client.get(f"/admin/stores/{other_id}").status_code == 404
    for action in ("disconnect", "token"):
        answer = client.post(
            f"/admin/stores/{other_id}/{action}", data={"csrf_token": token, "confirm": "y"}
        )
        assert answer.status_code == 404, action
    assert client.get("/admin/stores/999999").status_code == 404
    with app.app_context():
        assert len(db.session.scalars(select(Store)).all()) == 2
    assert _audit(app, "store.api_token_replaced") == []
    # Their own store's token they may replace.
    own = client.post(f"/admin/stores/{mine}/token", data={"csrf_token": token, "confirm": "y"})
    assert own.status_code == 200
    assert _audit(app, "store.api_token_replaced") == [("admin:ana", shop.store.store.public_id)]


def test_a_woocommerce_key_entered_by_hand_connects_the_store(
    app: Flask, owner: FlaskClient, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """As PUT /credentials/woocommerce: stored write-only, the store connected, webhooks
    registered; the same key again (or left blank) registers nothing new."""
    page = f"/admin/stores/{shop.store.store.id}/credentials"
    html = owner.get(page).get_data(as_text=True)
    assert 'id="woocommerce-consumer_secret" name="consumer_secret" type="password"' in html
    form = {
        "csrf_token": csrf_token(owner, page),
        "kind": "woocommerce",
        "consumer_key": CONSUMER_KEY,
        "consumer_secret": CONSUMER_SECRET,
    }
    response = owner.post(page, data=form)
    assert response.status_code == 200, response.get_data(as_text=True)
    html = response.get_data(as_text=True)
    assert "Saved the WooCommerce key" in html
    assert CONSUMER_KEY not in html and CONSUMER_SECRET not in html
    assert "****" + CONSUMER_SECRET[-4:] in html
    run_pending(app)
    assert {w["topic"] for w in fake_shop.webhooks.values()} == TOPICS
    assert shop.admin("GET", "/connection").get_json()["status"] == "connected"
    stored = shop.admin("GET", "/credentials/woocommerce").get_json()["credentials"]
    assert stored == {
        "consumer_key": "****" + CONSUMER_KEY[-4:],
        "consumer_secret": "****" + CONSUMER_SECRET[-4:],
    }
    assert _audit(app, "shop.connected") == [("admin:owner", f"store:{shop.store.store.public_id}")]
    before = dict(fake_shop.webhooks)
    for again in (form, {**form, "consumer_key": "", "consumer_secret": ""}):
        assert owner.post(page, data=again).status_code == 200
        run_pending(app)
        assert fake_shop.webhooks == before, "the same key again re-registers nothing"
    # The registered webhooks deliver orders.
    shop.configure(501)
    assert fake_shop.deliver(shop.client, "order.created", wc_order(9801)).status_code == 200


@pytest.mark.parametrize(
    "credentials",
    [
        {"consumer_key": "short", "consumer_secret": CONSUMER_SECRET},
        {"consumer_key": CONSUMER_KEY, "consumer_secret": "x"},
        {"consumer_key": CONSUMER_SECRET, "consumer_secret": CONSUMER_KEY},
        {"consumer_key": CONSUMER_KEY, "consumer_secret": ""},
    ],
)
def test_a_woocommerce_key_by_hand_must_look_like_woocommerces(
    app: Flask, owner: FlaskClient, shop: WebhookSender, credentials: dict[str, str]
) -> None:
    """The JSON API's checks: 422 naming the field, never echoing a value, nothing stored."""
    page = f"/admin/stores/{shop.store.store.id}/credentials"
    form = {"csrf_token": csrf_token(owner, page), "kind": "woocommerce", **credentials}
    response = owner.post(page, data=form)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert re.search(
        r'<p class="error" id="refusal" role="alert">consumer_(key|secret) (must be|is required)',
        html,
    )
    assert not any(len(value) > 4 and value in html for value in credentials.values())
    assert shop.admin("GET", "/connection").get_json()["status"] == "disconnected"
    assert shop.admin("GET", "/credentials/woocommerce").status_code == 404
    assert _audit(app, "shop.connected") == []


def test_the_json_api_still_records_a_key_by_hand_as_the_apis(
    app: Flask, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """Both paths share one service verb; each names its own actor."""
    response = shop.admin(
        "PUT",
        "/credentials/woocommerce",
        {"consumer_key": CONSUMER_KEY, "consumer_secret": CONSUMER_SECRET},
    )
    assert response.status_code == 200
    assert [actor for actor, _ in _audit(app, "shop.connected")] == ["api"]


def test_disconnecting_and_replacing_the_token_need_the_box_ticked(
    app: Flask, owner: FlaskClient, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """No page runs a script (CSP script-src 'none'), so no confirm() prompt: the box is
    required in the page and checked by the server; without it nothing changes."""
    connect_store(app, shop, fake_shop)
    page = f"/admin/stores/{shop.store.store.id}"
    html = owner.get(page).get_data(as_text=True)
    assert html.count('name="confirm" value="y" required') == 4
    assert "onsubmit" not in html
    for action in ("disconnect", "token", "webhook-secret", "delete"):
        answer = owner.post(f"{page}/{action}", data={"csrf_token": csrf_token(owner, page)})
        assert answer.status_code == 400, action
        # Said in words, not werkzeug's "The browser (or proxy) sent a request…".
        said = answer.get_data(as_text=True)
        assert "Nothing was changed" in said and "browser (or proxy)" not in said, action
    assert shop.admin("GET", "/connection").get_json()["status"] == "connected"
    assert _audit(app, "shop.disconnected") == []
    assert _audit(app, "store.api_token_replaced") == []
    assert _audit(app, "store.webhook_secret_replaced") == []


def test_disconnecting_a_shop_that_refuses_the_key_tells_the_owner_what_is_left(
    app: Flask, owner: FlaskClient, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """The owner revoked Keygate's key in WooCommerce: the page disconnects all the same
    and says the webhooks are still in the shop, to delete there."""
    connect_store(app, shop, fake_shop)
    fake_shop.consumer_secret = "cs_" + "0" * 40
    page = f"/admin/stores/{shop.store.store.id}"
    response = owner.post(f"{page}/disconnect", data=confirmed(owner, page))
    assert response.status_code == 302
    html = owner.get(response.headers["Location"]).get_data(as_text=True)
    assert "Keygate's webhooks are still in it" in html
    assert shop.admin("GET", "/connection").get_json()["status"] == "disconnected"


@pytest.mark.parametrize("app_settings", [{"allow_private_endpoints": True}])  # R2 on 127.0.0.1
def test_the_store_page_says_where_files_and_mail_go_once_credentials_are_saved(
    owner: FlaskClient, shop: WebhookSender
) -> None:
    from tests.functional.test_vault_credentials import BREVO, R2

    assert shop.admin("PUT", "/credentials/r2", R2).status_code == 200
    assert shop.admin("PUT", "/credentials/brevo", BREVO).status_code == 200
    html = owner.get(f"/admin/stores/{shop.store.store.id}").get_data(as_text=True)
    assert "its own R2 bucket downloads" in html
    assert "sent through Brevo" in html and "buyers receive nothing" not in html
    for secret in (R2["secret_access_key"], R2["access_key_id"], BREVO["api_key"]):
        assert secret not in html


def test_the_store_page_says_when_deliveries_are_refused_for_their_signature(
    app: Flask, owner: FlaskClient, shop: WebhookSender
) -> None:
    from tests.factories import wc_order

    page = f"/admin/stores/{shop.store.store.id}"
    assert "was refused" not in owner.get(page).get_data(as_text=True)
    assert shop.deliver(wc_order(9050), secret="pasted-wrong").status_code == 401
    html = owner.get(page).get_data(as_text=True)
    assert "was refused: its signature does not match this store" in html
    assert "bad_signature" in owner.get("/admin/").get_data(as_text=True)
    shop.configure(501)
    assert shop.deliver(wc_order(9051)).status_code == 200  # fixed: the warning goes
    assert "was refused" not in owner.get(page).get_data(as_text=True)
    with app.app_context():  # a minute later, someone posts garbage to the URL
        db.session.execute(
            update(WebhookDelivery).values(received_at=utcnow() - dt.timedelta(minutes=2))
        )
        db.session.commit()
    assert shop.deliver(wc_order(9052), secret="someone-else").status_code == 401
    html = owner.get(page).get_data(as_text=True)
    assert "was refused" in html and "someone else is posting to the webhook URL" in html


def test_the_store_page_and_dashboard_say_when_a_delivery_was_over_the_size_limit(
    app: Flask, owner: FlaskClient, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """An order too large for KEYGATE_MAX_BODY_BYTES is refused unread: the owner is told
    to raise it, and whether the order still comes (a REST key reads it) or needs them."""
    from tests.functional.test_order_webhooks import deliver_huge

    page = f"/admin/stores/{shop.store.store.id}"
    assert deliver_huge(shop).status_code == 413
    html = unescape(owner.get(page).get_data(as_text=True))
    assert "was refused unread: its body is over KEYGATE_MAX_BODY_BYTES" in html
    assert "has no WooCommerce REST key, so the order was not applied" in html
    dashboard = unescape(owner.get("/admin/").get_data(as_text=True))
    assert "too_large" in dashboard
    assert "no REST key to read the order instead" in dashboard
    shop.configure(501)
    assert shop.deliver(wc_order(9053)).status_code == 200  # the limit raised: the notice goes
    assert "refused unread" not in owner.get(page).get_data(as_text=True)
    assert "refused unread" not in owner.get("/admin/").get_data(as_text=True)
    connect_store(app, shop, fake_shop)
    with app.app_context():  # a minute later, another
        db.session.execute(
            update(WebhookDelivery).values(received_at=utcnow() - dt.timedelta(minutes=2))
        )
        db.session.commit()
    assert deliver_huge(shop).status_code == 413
    html = unescape(owner.get(page).get_data(as_text=True))
    assert "the shop's REST key reads such an order" in html
    dashboard = unescape(owner.get("/admin/").get_data(as_text=True))
    assert "REST key reads the order meanwhile" in dashboard


def test_a_hand_wired_stores_webhook_secret_is_replaced_and_shown_once(
    owner: FlaskClient, shop: WebhookSender
) -> None:
    from tests.factories import wc_order

    page = f"/admin/stores/{shop.store.store.id}"
    form_url = f"{page}/webhook-secret"
    assert owner.post(form_url, data={"csrf_token": csrf_token(owner, page)}).status_code == 400
    answer = owner.post(form_url, data=confirmed(owner, page))
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    match = re.search(
        r'<th scope="row">webhook_secret</th><td><code>([A-Za-z0-9]{40})</code>',
        answer.get_data(as_text=True),
    )
    assert match is not None
    new_secret = match.group(1)
    assert new_secret not in owner.get(page).get_data(as_text=True)  # shown once
    shop.configure(501)
    assert shop.deliver(wc_order(9060)).status_code == 401  # the old secret: refused
    assert shop.deliver(wc_order(9060), secret=new_secret).status_code == 200
    events = shop.admin("GET", "/audit").get_json()["events"]
    assert "store.webhook_secret_replaced" in {e["action"] for e in events}


def test_a_connected_stores_webhooks_are_registered_again_with_a_new_secret(
    app: Flask, owner: FlaskClient, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    from tests.factories import line_item, wc_order

    connect_store(app, shop, fake_shop)
    old_ids = set(fake_shop.webhooks)
    old_secrets = set(fake_shop.webhook_secrets.values())
    page = f"/admin/stores/{shop.store.store.id}"
    answer = owner.post(f"{page}/webhook-secret", data=confirmed(owner, page))
    assert answer.status_code == 302 and "reregistering=1" in answer.headers["Location"]
    run_pending(app)
    assert len(fake_shop.webhooks) == 4 and not old_ids & set(fake_shop.webhooks)
    assert not old_secrets & set(fake_shop.webhook_secrets.values())
    shop.configure(501)
    order = wc_order(9061, "processing", [line_item(501)])
    assert fake_shop.deliver(shop.client, "order.created", order).status_code == 200


def test_a_new_webhook_secret_is_not_made_when_the_shop_refuses_keygates_key(
    app: Flask, owner: FlaskClient, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """Keygate's key revoked in WooCommerce: registering again would make a secret the
    shop's working webhooks do not have. Nothing changes, and the page says what to do."""
    from tests.factories import line_item, wc_order

    connect_store(app, shop, fake_shop)
    fake_shop.consumer_secret = "cs_" + "0" * 40
    page = f"/admin/stores/{shop.store.store.id}"
    answer = owner.post(f"{page}/webhook-secret", data=confirmed(owner, page))
    assert answer.status_code == 503
    assert "nothing was changed" in answer.get_data(as_text=True)
    run_pending(app)
    assert _audit(app, "store.webhook_secret_replaced") == []
    shop.configure(501)
    order = wc_order(9062, "processing", [line_item(501)])
    assert fake_shop.deliver(shop.client, "order.created", order).status_code == 200


def _delete_store(owner: FlaskClient, shop: WebhookSender) -> TestResponse:
    page = f"/admin/stores/{shop.store.store.id}"
    return owner.post(
        f"{page}/delete", data={**confirmed(owner, page), "store_id": shop.store.store.public_id}
    )


def test_deleting_a_connected_store_deletes_its_webhooks_in_the_shop(
    app: Flask, owner: FlaskClient, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    connect_store(app, shop, fake_shop)
    assert len(fake_shop.webhooks) == 4
    response = _delete_store(owner, shop)
    assert response.status_code == 200
    assert fake_shop.webhooks == {}
    assert "delete Keygate's webhooks" not in response.get_data(as_text=True)


def test_deleting_a_store_whose_shop_is_down_names_the_webhooks_left(
    app: Flask, owner: FlaskClient, shop: WebhookSender, fake_shop: FakeShop
) -> None:
    """The store is deleted all the same: its webhooks are refused from now on, and the
    owner is told to delete them in WooCommerce."""
    connect_store(app, shop, fake_shop)
    fake_shop.down = True
    response = _delete_store(owner, shop)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "The shop did not answer: delete Keygate&#39;s webhooks in WooCommerce" in html
    assert len(fake_shop.webhooks) == 4
    assert shop.deliver({"id": 1}).status_code == 404


def store_at_www(app: Flask, name: str) -> WebhookSender:
    """A store added for https://www.shop.example (the shop itself answers without www.)."""
    with app.app_context():
        created = create_store(db.session, name, "https://www.shop.example")
        db.session.commit()
    return WebhookSender(app.test_client(), created)


def test_a_shop_url_with_a_typo_is_corrected_and_the_webhooks_then_registered(
    app: Flask, owner: FlaskClient
) -> None:
    """Added as https://www.shop.example, a shop answering at https://shop.example redirects
    Keygate's registration, which is refused ("the store's URL must be the address the shop
    answers at"). The owner corrects the URL on the store page: the registration runs again
    at once, at the new address; the store keeps its id, secret and token."""
    typo = store_at_www(app, "Typo Shop")
    created = typo.store
    page = f"/admin/stores/{created.store.id}"
    shop_api = FakeShop()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        shop_api.install(mock)
        for method in ("GET", "POST", "PUT", "DELETE"):
            mock.add(
                method,
                re.compile(r"https://www\.shop\.example/.*"),
                status=301,
                headers={"Location": "https://shop.example/wp-json/wc/v3/webhooks"},
            )
        connect_store(app, typo, shop_api)
        html = unescape(owner.get(page).get_data(as_text=True))
        assert "Registering the webhooks failed 1 time" in html
        assert "the store's URL must be the address the shop answers at" in html
        assert 'value="https://www.shop.example"' in html  # the form to correct it

        form = {"csrf_token": csrf_token(owner, page), "name": "Typo Shop"}
        assert (
            owner.post(f"{page}/change", data={**form, "url": "https://shop.example/"}).status_code
            == 302
        )
        run_pending(app)
        webhook_url = typo.admin("GET", "/connection").get_json()["webhook_url"]
        assert set(shop_api.active_webhooks(webhook_url)) == TOPICS
        html = unescape(owner.get(f"{page}?changed=1").get_data(as_text=True))
    assert "Saved the store's name and shop URL." in html
    assert "Registering the webhooks failed" not in html
    with app.app_context():
        store = db.session.get(Store, created.store.id)
        assert store is not None
        assert (store.url, store.public_id) == ("https://shop.example", created.store.public_id)
        events = db.session.scalars(
            select(AuditEvent).where(AuditEvent.action == "store.changed")
        ).all()
        assert [(e.actor, e.detail) for e in events] == [
            ("admin:owner", {"url": ["https://www.shop.example", "https://shop.example"]})
        ]
    assert typo.admin("GET", "/connection").status_code == 200  # the token still works


def test_a_connected_shop_is_not_moved_to_another_host(app: Flask, owner: FlaskClient) -> None:
    """Keygate sends the shop's key with every request to the store's URL: while connected,
    the URL may change only as the same shop's (www. or not, a path, http to https); a
    typo'd domain, another port or a step down to http is refused, saying to disconnect,
    change, connect again. Disconnected, the store moves anywhere."""
    shop = store_at_www(app, "Moving Shop")
    created = shop.store
    page = f"/admin/stores/{created.store.id}"
    shop_api = FakeShop()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        shop_api.install(mock)
        connect_store(app, shop, shop_api)
    token = csrf_token(owner, page)

    def change(url: str) -> int:
        sent = {"name": "Moving Shop", "url": url, "csrf_token": token}
        status: int = owner.post(f"{page}/change", data=sent).status_code
        return status

    for elsewhere in (
        "https://shop.exarnple",
        "https://shop.example.evil.test",
        "https://shop.example:8443",
        "http://shop.example",
    ):
        assert change(elsewhere) == 409, elsewhere
    refused = owner.post(
        f"{page}/change",
        data={"name": "Moving Shop", "url": "https://shop.exarnple", "csrf_token": token},
    )
    assert "disconnect the shop, change the URL, then connect again" in unescape(
        refused.get_data(as_text=True)
    )
    for same_shop in ("https://shop.example", "https://SHOP.example/store", "https://shop.example"):
        assert change(same_shop) == 302, same_shop
    with app.app_context():
        store = db.session.get(Store, created.store.id)
        assert store is not None and store.url == "https://shop.example"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        shop_api.install(mock)
        assert shop.admin("DELETE", "/connection").status_code == 200
    assert change("https://new-domain.example") == 302


def test_a_refused_store_change_keeps_what_was_typed_and_says_why(
    app: Flask, owner: FlaskClient, shop: WebhookSender
) -> None:
    """A blank name, a URL that is not one, another store's shop: nothing changes, the form
    shows what was typed, marked; a store admin changes their own store only."""
    with app.app_context():
        other = create_store(db.session, "Other shop", "https://other.example")
        db.session.commit()
    page = f"/admin/stores/{shop.store.store.id}"
    token = csrf_token(owner, page)
    for sent, status, said in (
        ({"name": " ", "url": "https://typed.example"}, 422, "Not changed: a store needs a name."),
        ({"name": "Renamed", "url": "shop dot example"}, 422, "must be an http(s) URL"),
        ({"name": "Renamed", "url": "https://OTHER.example"}, 409, "is another store already"),
    ):
        refused = owner.post(f"{page}/change", data={**sent, "csrf_token": token})
        assert refused.status_code == status, sent
        html = unescape(refused.get_data(as_text=True))
        assert said in html, sent
        assert f'value="{sent["url"]}"' in html and 'aria-invalid="true"' in html
    renamed = owner.post(
        f"{page}/change",
        data={"name": "Renamed", "url": "https://shop.example", "csrf_token": token},
    )
    assert renamed.status_code == 302
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None and (store.name, store.url) == ("Renamed", "https://shop.example")
    outsider = store_admin(app, other.store.id)
    theirs = {
        "name": "Mine",
        "url": "https://mine.example",
        "csrf_token": csrf_token(outsider, "/admin/"),
    }
    assert outsider.post(f"{page}/change", data=theirs).status_code == 404
    assert (
        owner.post(f"{page}/change", data={"name": "X", "url": "https://x.example"}).status_code
        == 400
    )


def test_the_cli_corrects_a_stores_name_and_url(tmp_path: Path) -> None:
    assert keygate(tmp_path, "init").returncode == 0
    added = keygate(
        tmp_path, "store", "add", "--name", "Shpo", "--url", "http://shop.example", "--json"
    )
    assert added.returncode == 0, added.stderr
    store_id = json.loads(added.stdout)["store_id"]
    assert keygate(tmp_path, "store", "change", store_id).returncode != 0
    bad = keygate(tmp_path, "store", "change", store_id, "--url", "ftp://shop.example")
    assert bad.returncode != 0 and "http(s) URL" in bad.stderr and "Traceback" not in bad.stderr
    changed = keygate(
        tmp_path, "store", "change", store_id, "--name", "Shop", "--url", "https://shop.example/"
    )
    assert changed.returncode == 0, changed.stderr
    assert changed.stdout.strip() == f"{store_id}  Shop  https://shop.example"
    listed = keygate(tmp_path, "store", "list").stdout
    assert f"{store_id}  Shop  https://shop.example" in listed


def test_an_admin_of_one_store_renames_it_but_does_not_move_its_url(
    app: Flask, shop: WebhookSender
) -> None:
    """The shop URL is where Keygate's server sends the shop's key and its requests: an
    admin of one store may not point it elsewhere (an internal address), only rename."""
    client = store_admin(app, shop.store.store.id)
    page = f"/admin/stores/{shop.store.store.id}"
    html = unescape(client.get(page).get_data(as_text=True))
    assert 'name="url"' not in html and "changed by an admin of every store" in html
    sent = {
        "name": "Renamed",
        "url": "http://169.254.169.254",
        "csrf_token": csrf_token(client, page),
    }
    assert client.post(f"{page}/change", data=sent).status_code == 302
    with app.app_context():
        store = db.session.get(Store, shop.store.store.id)
        assert store is not None and (store.name, store.url) == ("Renamed", "https://shop.example")
