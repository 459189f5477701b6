"""Every page a person reads, as a screen reader, a keyboard or a phone meets it (WCAG 2.1
AA, what the HTML can show): the admin pages, the buyer's order page, the download refusals
and the error pages, each with data and, where it has a form, refused. Each page says its
language, has one main part and one h1 with no level skipped, names every field and button,
ties a refused form's message to its field and announces it, scopes its table headers,
never names two different targets alike in one table or list, lets the keyboard reach
everything and skip the admin menu, and its colours read (4.5:1)."""

from __future__ import annotations

import itertools
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from flask import Flask
from flask.testing import FlaskClient
from itsdangerous import TimestampSigner
from sqlalchemy import select, update

from connector.db import db
from connector.models import DownloadGrant, License, Order
from connector.tokens import portal_url
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_admin_pages import PASSWORD, admin_client, csrf_token
from tests.functional.test_admin_phone_pages import SITE, admin_pages
from tests.licensing_helpers import call

__all__ = ["admin_client"]

BASE = "http://keygate.test"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    parent: Node | None = None
    children: list[Node | str] = field(default_factory=list)

    def walk(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.walk()

    def all(self, *tags: str) -> list[Node]:
        return [node for node in self.walk() if node.tag in tags]

    def text(self) -> str:
        parts = [c if isinstance(c, str) else c.text() for c in self.children]
        return re.sub(r"\s+", " ", "".join(parts)).strip()

    def ancestors(self) -> Iterator[Node]:
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def enclosing(self, tag: str) -> Node | None:
        return next((node for node in self.ancestors() if node.tag == tag), None)


class _Tree(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.root = Node("#document", {})
        self.open = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {name: value or "" for name, value in attrs}, self.open)
        self.open.children.append(node)
        if tag not in VOID:
            self.open = node

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.open
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:  # a stray end tag closes nothing
            self.open = node.parent

    def handle_data(self, data: str) -> None:
        self.open.children.append(data)


def parse(html: str) -> Node:
    tree = _Tree()
    tree.feed(html)
    return tree.root


def _csrf(html: str) -> str:
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert token, html
    return token.group(1)


@dataclass
class Pages:
    """Every page by name, and for each refused form the field names its message is about."""

    html: dict[str, str]
    refused: dict[str, tuple[str, ...]]


def _id_of(app: Flask, model: type[Order] | type[License], **where: object) -> int:
    with app.app_context():
        query = select(model.id).filter_by(**where) if where else select(model.id)
        return db.session.scalars(query.order_by(model.id)).first() or 0


def buyer_pages(app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The order page with a seat taken, its expired link and the fresh link sent, and a
    download refused as unknown, used up and withdrawn."""
    shop.configure(501, activation_limit=3)
    shop.deliver(wc_order(9705, "processing", [line_item(501, quantity=2)]))
    body = shop.order(9705)
    for site in (SITE, "https://second-site.example"):  # two seats of one key: two rows
        activated = call(shop.client, "activate", {"key": body["licenses"][0]["key"], "site": site})
        assert activated.status_code == 200
    for machine in ("machine-1", "machine-2"):  # two machines, no site, no label
        seat = {"key": body["licenses"][1]["key"], "fingerprint": machine}
        assert call(shop.client, "activate", seat).status_code == 200
    # A third seat on the first site, told apart from it by its machine alone.
    seat = {"key": body["licenses"][0]["key"], "site": SITE, "fingerprint": "machine-3"}
    assert call(shop.client, "activate", seat).status_code == 200
    portal = body["portal_url"].removeprefix(BASE)
    pages = {"order page": shop.client.get(portal).get_data(as_text=True)}
    assert "Where your licenses are activated" in pages["order page"]
    days = app.extensions["keygate.settings"].portal_link_days
    now = time.time()
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(now) - days * 86400 - 60)
    with app.test_request_context():
        old = portal_url(_id_of(app, Order, shop_order_id="9705")).removeprefix(BASE)
    monkeypatch.undo()
    expired = shop.client.get(old)
    assert expired.status_code == 410
    pages["expired order page"] = expired.get_data(as_text=True)
    sent = shop.client.post(
        old + "/renew",
        data={"csrf_token": _csrf(pages["expired order page"])},
        follow_redirects=True,
    )
    pages["fresh link sent"] = sent.get_data(as_text=True)
    assert "Check your email" in pages["fresh link sent"]

    shop.configure(503, download_limit=1)
    shop.deliver(wc_order(9703, "processing", [line_item(503)]))
    body = shop.order(9703)
    link = body["downloads"][0]["link"].removeprefix(BASE)
    with app.app_context():
        db.session.execute(update(DownloadGrant).values(download_count=1))
        db.session.commit()
    used_up = shop.client.get(link)
    assert used_up.status_code == 429
    pages["download used up"] = used_up.get_data(as_text=True)
    assert shop.admin("POST", f"/licenses/{body['licenses'][0]['key']}/revoke").status_code == 200
    withdrawn = shop.client.get(link)
    assert withdrawn.status_code == 410
    pages["download withdrawn"] = withdrawn.get_data(as_text=True)
    shop.configure(504, duration_days=365)  # a license to extend, for refused_forms
    shop.deliver(wc_order(9706, "processing", [line_item(504)]))
    unknown = shop.client.get("/d/not-a-token")
    assert unknown.status_code == 404
    pages["download unknown"] = unknown.get_data(as_text=True)
    return pages


def refused_forms(
    app: Flask, shop: WebhookSender, client: FlaskClient
) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """The order and license pages with several rows of buttons, then each admin form sent
    wrong, and the fields (by name) its message is about."""
    store_id = shop.store.store.id
    license_id = _id_of(app, License, order_id=_id_of(app, Order, shop_order_id="9706"))
    shop.deliver(wc_order(9704, "processing", [line_item(502)], email=""))
    no_email = _id_of(app, Order, shop_order_id="9704")
    token = csrf_token(client, "/admin/password")
    sent: dict[str, tuple[str, dict[str, str], tuple[str, ...]]] = {
        "password refused": (
            "/admin/password",
            {"current": "wrong", "new": "x" * 12, "repeat": "x" * 12},
            ("current",),
        ),
        "new password refused": (
            "/admin/password",
            {"current": PASSWORD, "new": "short", "repeat": "short"},
            ("new",),
        ),
        "customer lookup refused": ("/admin/customers", {"email": "nobody"}, ("email",)),
        "customer erase refused": (
            "/admin/customers/erase",
            {
                "store_id": str(store_id),
                "email": "jurgen@example.org",
                "confirm": "x",
            },
            ("confirm",),
        ),
        "order buyer erase refused": (
            f"/admin/orders/{no_email}/buyer/erase",
            {"confirm": "x"},
            ("confirm",),
        ),
        "license find refused": ("/admin/licenses/find", {"key": "NOPE"}, ("key",)),
        "license extend refused": (
            f"/admin/licenses/{license_id}/change",
            {"action": "extend", "days": "0"},
            ("days",),
        ),
        "store delete refused": (
            f"/admin/stores/{store_id}/delete",
            {"store_id": "wrong", "confirm": "y"},
            ("store_id",),
        ),
        "product refused": (
            f"/admin/products/{store_id}/502",
            {"name": "A product", "activation_limit": "many", "action": "save"},
            ("activation_limit",),
        ),
        "product file refused": (
            f"/admin/products/{store_id}/502",
            {
                "name": "A product",
                "action": "save",
                "files-0-object_key": "a.pdf",
                "files-1-object_key": "b.pdf",
                "files-1-filename": ".hidden",
            },
            ("files-1-filename",),
        ),
        "new product refused": (
            "/admin/products/new",
            {"store": str(store_id), "shop_product_id": "no/such", "name": "x", "action": "save"},
            ("shop_product_id",),
        ),
        "release refused": (
            f"/admin/products/{store_id}/502/releases",
            {"version": "1 0", "object_key": "a.zip", "sha256": "ab" * 32, "size": "1"},
            ("version",),
        ),
        "credentials refused": (
            f"/admin/stores/{store_id}/credentials",
            {"kind": "brevo", "api_key": "k", "sender_email": "nobody", "sender_name": "Shop"},
            ("sender_email",),
        ),
        "new store refused": (
            "/admin/stores/new",
            {"name": "Shop", "url": "nothing", "key_groups": "4", "key_group_length": "5"},
            ("url",),
        ),
        "new store key groups": ("/admin/stores/new", {"name": "Shop"}, ("key_groups",)),
        "new store unnamed": (
            "/admin/stores/new",
            {"name": "", "url": "https://new.example", "key_groups": "4", "key_group_length": "5"},
            ("name",),
        ),
        "new store key prefix": (
            "/admin/stores/new",
            {
                "name": "Shop",
                "url": "https://new.example",
                "key_prefix": "A-B",
                "key_groups": "4",
                "key_group_length": "5",
            },
            ("key_prefix",),
        ),
    }
    pages: dict[str, str] = {}
    two_keys = _id_of(app, Order, shop_order_id="9705")
    for name, path in {
        "order with two keys": f"/admin/orders/{two_keys}",
        "license with two seats": f"/admin/licenses/{_id_of(app, License, order_id=two_keys)}",
    }.items():
        answer = client.get(path)
        assert answer.status_code == 200, name
        pages[name] = answer.get_data(as_text=True)
    refused: dict[str, tuple[str, ...]] = {}
    for name, (path, data, fields) in sent.items():
        answer = client.post(path, data={"csrf_token": token, **data})
        assert answer.status_code in (400, 404, 409, 422), (name, answer.status_code)
        pages[name] = answer.get_data(as_text=True)
        refused[name] = fields
    leak = client.post("/admin/leaks", data={"csrf_token": token})
    assert leak.status_code == 422
    pages["leak lookup refused"], refused["leak lookup refused"] = (
        leak.get_data(as_text=True),
        ("file",),
    )
    stranger = app.test_client()
    wrong = stranger.post(
        "/admin/login",
        data={
            "csrf_token": csrf_token(stranger, "/admin/login"),
            "username": "owner",
            "password": "x",
        },
    )
    assert wrong.status_code == 401
    pages["sign-in refused"] = wrong.get_data(as_text=True)
    refused["sign-in refused"] = ("username", "password")
    return pages, refused


def error_pages(client: FlaskClient, shop: WebhookSender) -> dict[str, str]:
    pages = {}
    for name, (method, path, status) in {
        "admin page unknown": ("GET", "/admin/no-such-page", 404),
        "buyer page unknown": ("GET", "/my/not-a-token/nothing", 404),
        "method refused": ("GET", "/admin/logout", 405),
        "form open too long": ("POST", "/admin/password", 400),
    }.items():
        answer = client.open(path, method=method, data={"csrf_token": "stale"})
        assert answer.status_code == status, name
        pages[name] = answer.get_data(as_text=True)
    pages["store deleted"] = client.post(
        f"/admin/stores/{shop.store.store.id}/delete",
        data={
            "csrf_token": csrf_token(client, "/admin/"),
            "store_id": shop.store.store.public_id,
            "confirm": "y",
        },
    ).get_data(as_text=True)
    assert "<h1>Store deleted</h1>" in pages["store deleted"]
    return pages


@pytest.fixture
def pages(
    app: Flask,
    shop: WebhookSender,
    admin_client: FlaskClient,
    monkeypatch: pytest.MonkeyPatch,
) -> Pages:
    html = buyer_pages(app, shop, monkeypatch)  # first: the admin pages replace the API token
    html |= admin_pages(app, shop, admin_client)
    refused_html, refused = refused_forms(app, shop, admin_client)
    html |= refused_html
    html |= error_pages(admin_client, shop)
    return Pages(html, refused)


def _trees(pages: Pages) -> Iterator[tuple[str, Node]]:
    for name, html in pages.html.items():
        yield name, parse(html)


def _name(node: Node, root: Node) -> str:
    """A control's accessible name: aria-label, aria-labelledby, its label, or its text."""
    if node.attrs.get("aria-label", "").strip():
        return node.attrs["aria-label"].strip()
    if node.attrs.get("aria-labelledby"):
        ids = node.attrs["aria-labelledby"].split()
        return " ".join(n.text() for n in root.walk() if n.attrs.get("id") in ids)
    if node.tag in ("input", "select", "textarea"):
        wrapping = node.enclosing("label")
        if wrapping is not None:
            return wrapping.text()
        if node.attrs.get("id"):
            labels = [n for n in root.all("label") if n.attrs.get("for") == node.attrs["id"]]
            return " ".join(label.text() for label in labels)
        return ""
    return node.text()


def test_every_page_says_its_language_and_has_one_main_part(pages: Pages) -> None:
    """A screen reader reads the page in English and jumps straight to its main part."""
    assert len(pages.html) >= 45
    for name, root in _trees(pages):
        (html,) = root.all("html")
        assert html.attrs.get("lang") == "en", name
        assert len(root.all("main")) == 1, name


def test_every_page_has_one_h1_and_skips_no_heading_level(pages: Pages) -> None:
    """A page's outline starts at its one h1 and goes down one level at a time (an h3 is
    never under an h1 without an h2): a screen reader's list of headings is the page's plan."""
    for name, root in _trees(pages):
        headings = [int(h.tag[1]) for h in root.all("h1", "h2", "h3", "h4", "h5", "h6")]
        assert headings.count(1) == 1 and headings[0] == 1, (name, headings)
        for before, after in itertools.pairwise(headings):
            assert after <= before + 1, (name, headings)


def test_the_admin_menu_is_a_named_nav_that_a_keyboard_can_skip(pages: Pages) -> None:
    """On a page with the menu, the first thing the Tab key reaches is a link past it to
    the page's main part, and the menu is a nav landmark named as the admin's."""
    navs = 0
    for name, root in _trees(pages):
        if not root.all("nav"):
            continue
        navs += 1
        (main,) = root.all("main")
        first = next(n for n in root.all("a", "button", "input", "select", "textarea"))
        assert first.tag == "a" and first.attrs.get("href") == "#" + main.attrs.get("id", "?"), name
        assert first.text(), name
        assert [nav.attrs.get("aria-label") for nav in root.all("nav")] == ["Admin"], name
    assert navs >= 30


def test_every_field_and_button_has_a_name(pages: Pages) -> None:
    """Each field is named by its label (or an aria-label where a table's column names it);
    a placeholder is no name: it is gone once the owner types."""
    for name, root in _trees(pages):
        for control in root.all("input", "select", "textarea", "button"):
            if control.attrs.get("type") == "hidden":
                continue
            assert _name(control, root), (name, control.attrs)
        for link in root.all("a"):
            assert _name(link, root), (name, link.attrs)


def test_a_field_outside_a_table_has_a_label_one_can_see(pages: Pages) -> None:
    """A field is named by a label on the page (wrapping it, or ``for`` its id), not only by
    an aria-label or a placeholder a sighted owner stops seeing once they type; only a
    field in a table's cell may rely on the column's header and an aria-label."""
    unlabelled = []
    for name, root in _trees(pages):
        for control in root.all("input", "select", "textarea"):
            if control.attrs.get("type") in ("hidden", "submit") or control.enclosing("td"):
                continue
            wrapping = control.enclosing("label")
            labels = [wrapping] if wrapping is not None else []
            if control.attrs.get("id"):
                field_id = control.attrs["id"]
                labels += [n for n in root.all("label") if n.attrs.get("for") == field_id]
            if not any(label.text().strip() for label in labels):
                unlabelled.append((name, control.attrs.get("name")))
    assert not unlabelled, "; ".join(f"{page}: {field}" for page, field in unlabelled)


def test_a_refused_forms_message_is_announced_and_tied_to_its_field(pages: Pages) -> None:
    """The message of a refused form is announced when the page comes (role=alert), and the
    field it is about is marked invalid and described by it, wherever the field is."""
    assert len(pages.refused) >= 13
    for name, fields in pages.refused.items():
        root = parse(pages.html[name])
        alerts = [n for n in root.walk() if n.attrs.get("role") == "alert"]
        assert alerts and all(alert.text() for alert in alerts), name
        ids = {alert.attrs.get("id") for alert in alerts}
        for wanted in fields:
            found = [
                n
                for n in root.all("input", "select", "textarea")
                if n.attrs.get("name") == wanted and n.attrs.get("type") != "hidden"
            ]
            assert found, (name, wanted)
            for control in found:
                assert control.attrs.get("aria-invalid") == "true", (name, wanted)
                described = set(control.attrs.get("aria-describedby", "").split())
                assert described & ids, (name, wanted)
        marked = {
            n.attrs.get("name")
            for n in root.all("input", "select", "textarea")
            if n.attrs.get("aria-invalid") == "true"
        }
        assert marked <= set(fields), (name, marked)  # the field refused, not its neighbours
    for name in set(pages.html) - set(pages.refused):  # nothing is invalid on a page unrefused
        assert 'aria-invalid="true"' not in pages.html[name], name


def test_table_headers_are_scoped_and_named_and_each_table_has_a_heading(pages: Pages) -> None:
    """A header cell says whether it heads a column or a row, and says something (a column
    of buttons too); every table of data comes under a heading or has a caption. A table
    without header cells lays out a form."""
    tables = 0
    for name, root in _trees(pages):
        seen_heading = False
        for node in root.walk():
            if node.tag in ("h1", "h2", "h3", "h4"):
                seen_heading = True
            if node.tag != "table":
                continue
            headers = node.all("th")
            if not headers:
                assert node.all("input", "select", "textarea"), name
                continue
            tables += 1
            for th in headers:
                assert th.attrs.get("scope") in ("col", "row"), (name, th.text())
                assert th.text(), name
            assert seen_heading or node.all("caption"), name
            seen_heading = False
    assert tables >= 40


def _target(control: Node) -> str:
    if control.tag == "a":
        return control.attrs.get("href", "")
    form = control.enclosing("form")
    assert form is not None
    hidden = sorted(
        (n.attrs.get("name", ""), n.attrs.get("value", ""))
        for n in form.all("input")
        if n.attrs.get("type") == "hidden" and n.attrs.get("name") != "csrf_token"
    )
    return f"{form.attrs.get('action')} {hidden} {control.attrs.get('value', '')}"


def test_alike_links_and_buttons_in_one_table_or_list_lead_to_one_place(pages: Pages) -> None:
    """Several "credentials" links, "Revoke" or "Deactivate" buttons in one table (or "Look"
    in one list) each say which row they act on, for a screen reader listing them."""
    for name, root in _trees(pages):
        for group in root.all("table", "ul"):
            targets: dict[str, set[str]] = defaultdict(set)
            for control in group.all("a", "button"):
                targets[_name(control, root).lower()].add(_target(control))
            for said, where in targets.items():
                assert len(where) == 1, (name, said, where)


def _luminance(colour: str) -> float:
    hex_digits = colour.lstrip("#")
    if len(hex_digits) == 3:
        hex_digits = "".join(c * 2 for c in hex_digits)
    channels = [int(hex_digits[i : i + 2], 16) / 255 for i in (0, 2, 4)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(foreground: str, background: str) -> float:
    lighter, darker = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def test_contrast_is_computed_as_wcag_says() -> None:
    assert round(contrast("#000", "#fff"), 1) == 21.0
    assert round(contrast("#777", "#fff"), 2) == 4.48  # the grey that just fails


def test_text_reads_against_every_background_and_focus_stays_visible(pages: Pages) -> None:
    """Every text colour of the pages' style reads at 4.5:1 or more on white and on every
    background colour the style sets; no rule hides the focus ring."""
    sheets = {
        re.search(r"<style>(.*?)</style>", html, re.S).group(1) for html in pages.html.values()
    }  # type: ignore[union-attr]
    assert len(sheets) == 1
    (css,) = sheets
    texts = set(re.findall(r"(?<![-\w])color:\s*(#[0-9a-fA-F]{3,6})", css))
    backgrounds = set(re.findall(r"background(?:-color)?:\s*(#[0-9a-fA-F]{3,6})", css)) | {"#fff"}
    assert texts
    for text in texts | {"#00e", "#551a8b"}:  # and the browser's link colours
        for background in backgrounds:
            assert contrast(text, background) >= 4.5, (text, background)
    assert not re.search(r"outline(-style|-width)?:\s*(none|0)\b", css)
    assert "::before" not in css or "content: attr(data-label)" in css


def test_titles_are_unique_and_say_what_the_page_is(pages: Pages) -> None:
    """Each page's title is its own (a browser's tab list, a screen reader's first words)
    and says what the h1 says, not the title of another state of the page."""
    titles: dict[str, str] = {}
    for name, root in _trees(pages):
        (title,) = root.all("title")
        (h1,) = root.all("h1")
        assert title.text(), name
        titles[name] = title.text()
        if not root.all("nav") and not name.startswith("sign-in"):  # buyer's, error pages
            first_words = " ".join(h1.text().split()[:2])
            assert title.text().startswith(first_words), (name, title.text(), h1.text())
    admin = [
        titles[name]
        for name in (
            "dashboard",
            "orders",
            "order",
            "licenses",
            "license",
            "products",
            "product",
            "new product",
            "store",
            "credentials",
            "new store",
            "outbox",
            "mail",
            "audit",
            "customers",
            "leak lookup",
            "password",
            "store added",
            "token replaced",
            "customer erased",
        )
    ]
    assert len(set(admin)) == len(admin), admin
    assert titles["sign-in"] == titles["sign-in refused"] == "Sign in · Keygate"


def test_sign_in_fields_say_what_a_password_manager_fills_in(pages: Pages) -> None:
    root = parse(pages.html["sign-in"])
    fields = {n.attrs["name"]: n.attrs for n in root.all("input") if n.attrs.get("name")}
    assert fields["username"].get("autocomplete") == "username"
    assert fields["password"].get("autocomplete") == "current-password"
    assert fields["password"].get("type") == "password"
    root = parse(pages.html["password"])
    fields = {n.attrs["name"]: n.attrs for n in root.all("input") if n.attrs.get("name")}
    assert fields["current"].get("autocomplete") == "current-password"
    assert (
        fields["new"].get("autocomplete") == fields["repeat"].get("autocomplete") == "new-password"
    )


EMAIL_FIELDS = {"email", "sender_email"}
URL_FIELDS = {"url", "endpoint_url"}
NUMBER_FIELDS = {"days", "size", "key_groups", "key_group_length", "list_id", "template_id"}


def test_fields_ask_a_phone_for_the_keyboard_they_need(pages: Pages) -> None:
    """An email address gets the @ keyboard, a URL the URL keyboard, a number the digits."""
    checked = 0
    for name, root in _trees(pages):
        for control in root.all("input"):
            field_name = control.attrs.get("name", "")
            kind = control.attrs.get("type", "text")
            if kind == "hidden":
                continue
            wanted = (
                "email"
                if field_name in EMAIL_FIELDS
                else "url"
                if field_name in URL_FIELDS
                else "numeric"
                if field_name in NUMBER_FIELDS
                else None
            )
            if wanted is not None:
                checked += 1
                said = control.attrs.get("inputmode") or kind
                assert said in (wanted, "number" if wanted == "numeric" else wanted), (
                    name,
                    field_name,
                )
    assert checked >= 10


DESTRUCTIVE = re.compile(r"^(Delete|Erase|Revoke|Disconnect|Replace|Stop|Deactivate)\b")


def test_everything_is_reached_by_keyboard_in_page_order(pages: Pages) -> None:
    """No Tab order of its own (tabindex above 0), no control taken out of it, nothing that
    acts on a click only; every destructive action is a button of a form."""
    destructive = 0
    for name, root in _trees(pages):
        for node in root.walk():
            tabindex = node.attrs.get("tabindex")
            assert tabindex is None or int(tabindex) <= 0, name
            if node.tag in ("a", "button", "input", "select", "textarea"):
                assert tabindex != "-1", name
            assert not [a for a in node.attrs if a.startswith("on")], name
            assert "accesskey" not in node.attrs, name
        for link in root.all("a"):
            assert not DESTRUCTIVE.match(link.text()), (name, link.text())
            assert link.attrs.get("href"), name
        for button in root.all("button"):
            if DESTRUCTIVE.match(button.text()):
                destructive += 1
                assert button.enclosing("form") is not None, name
                assert button.attrs.get("type", "submit") == "submit", name
    assert destructive >= 8
