"""The WooCommerce REST client and the wc-auth helpers, against REST v3 shaped answers."""

from __future__ import annotations

import base64
import datetime as dt
import json
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from plugin.shop import PayloadError
from plugin.woocommerce.connect import authorize_url, parse_callback
from plugin.woocommerce.rest import ShopRejected, ShopUnavailable, WooCommerceClient
from plugin.woocommerce.webhooks import parse_refund
from tests.wc_rest import API, CONSUMER_KEY, CONSUMER_SECRET


@pytest.fixture
def client() -> WooCommerceClient:
    return WooCommerceClient("https://shop.example", CONSUMER_KEY, CONSUMER_SECRET)


@responses.activate
def test_requests_use_basic_auth_over_https(client: WooCommerceClient) -> None:
    """Over HTTPS the key goes in an Authorization header, never in the URL."""
    responses.get(f"{API}/orders/5", json={"id": 5, "status": "processing"})
    assert client.get_order("5")["id"] == 5
    sent = responses.calls[0].request
    token = base64.b64encode(f"{CONSUMER_KEY}:{CONSUMER_SECRET}".encode()).decode()
    assert sent.headers["Authorization"] == f"Basic {token}"
    assert CONSUMER_KEY not in (sent.url or "")


@responses.activate
def test_orders_modified_after_asks_in_gmt_and_follows_total_pages(
    client: WooCommerceClient,
) -> None:
    """modified_after is sent as a GMT date; pages are read until X-WP-TotalPages."""
    for page in (1, 2):
        responses.get(
            f"{API}/orders",
            match=[
                responses.matchers.query_param_matcher(
                    {
                        "modified_after": "2026-11-20T11:00:00",
                        "dates_are_gmt": "true",
                        "orderby": "modified",
                        "order": "asc",
                        "page": str(page),
                        "per_page": "100",
                    }
                )
            ],
            json=[{"id": page * 10}],
            headers={"X-WP-Total": "2", "X-WP-TotalPages": "2"},
        )
    since = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert [o["id"] for o in client.orders_modified_after(since)] == [10, 20]


@responses.activate
def test_server_errors_and_timeouts_are_unavailable(client: WooCommerceClient) -> None:
    """5xx, 429 and network errors mean "later"; the message names no credential."""
    responses.get(f"{API}/orders/1", status=502, body="<html>Bad gateway</html>")
    responses.get(f"{API}/orders/2", status=429, json={"code": "too_many"})
    responses.get(f"{API}/orders/3", body=requests.ConnectTimeout(f"{API}?ck={CONSUMER_KEY}"))
    for order_id in ("1", "2", "3"):
        with pytest.raises(ShopUnavailable) as caught:
            client.get_order(order_id)
        assert CONSUMER_KEY not in str(caught.value)


@responses.activate
def test_client_errors_are_rejected_with_the_woocommerce_code(client: WooCommerceClient) -> None:
    """A 401 carries WooCommerce's error code and the status; deleting a gone webhook is ok."""
    responses.get(
        f"{API}/webhooks",
        status=401,
        json={"code": "woocommerce_rest_cannot_view", "message": "Sorry", "data": {"status": 401}},
    )
    responses.delete(
        f"{API}/webhooks/9",
        status=404,
        json={"code": "woocommerce_rest_webhook_invalid_id", "message": "Invalid ID."},
    )
    with pytest.raises(ShopRejected) as caught:
        client.list_webhooks()
    assert caught.value.status == 401
    assert "woocommerce_rest_cannot_view" in str(caught.value)
    client.delete_webhook("9")
    assert parse_qs(urlsplit(responses.calls[-1].request.url or "").query)["force"] == ["true"]


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@responses.activate
def test_a_redirect_is_never_followed(client: WooCommerceClient, status: int) -> None:
    """Whoever answers for the shop's address could send Keygate's server to an internal
    one (a metadata service, a database port): a redirect is refused, naming the fix."""
    internal = "http://169.254.169.254/latest/meta-data/iam/"
    responses.get(f"{API}/webhooks", status=status, headers={"Location": internal})
    responses.post(f"{API}/webhooks", status=status, headers={"Location": internal})
    fetched = responses.get(internal, json=[])
    posted = responses.post(internal, json={"id": 1})
    with pytest.raises(ShopRejected) as caught:
        client.list_webhooks()
    assert caught.value.status == status and "store's URL" in str(caught.value)
    with pytest.raises(ShopRejected):
        client.create_webhook(
            name="n", topic="order.updated", delivery_url="https://k.example/w", secret="s"
        )
    assert (fetched.call_count, posted.call_count) == (0, 0)


@responses.activate
def test_order_note_is_posted_as_a_customer_note(client: WooCommerceClient) -> None:
    """POST /orders/<id>/notes with customer_note true (WooCommerce mails those)."""
    responses.post(
        f"{API}/orders/7/notes",
        json={"id": 281, "note": "Your keys", "customer_note": True, "author": "system"},
        status=201,
    )
    assert client.create_order_note("7", "Your keys")["id"] == 281
    assert json.loads(responses.calls[0].request.body or b"") == {
        "note": "Your keys",
        "customer_note": True,
    }


def test_refund_lines_map_to_the_refunded_order_items() -> None:
    """A refund from /orders/<id>/refunds: negative quantities, _refunded_item_id meta."""
    refund = parse_refund(
        {
            "id": 726,
            "amount": "98.00",
            "reason": "",
            "line_items": [
                {
                    "id": 314,
                    "quantity": -2,
                    "total": "-98.00",
                    "meta_data": [{"id": 3, "key": "_refunded_item_id", "value": "311"}],
                },
                {"id": 315, "quantity": 0, "total": "0.00", "meta_data": []},
            ],
        }
    )
    assert refund.line_quantities == {"311": 2}
    assert str(refund.total) == "98.00"


def test_authorize_url_carries_every_wc_auth_parameter() -> None:
    url = authorize_url(
        "https://shop.example/",
        app_name="Keygate",
        state="st.ate-1",
        return_url="https://k.example/done",
        callback_url="https://k.example/cb",
    )
    parts = urlsplit(url)
    assert parts.path == "/wc-auth/v1/authorize"
    assert {k: v[0] for k, v in parse_qs(parts.query).items()} == {
        "app_name": "Keygate",
        "scope": "read_write",
        "user_id": "st.ate-1",
        "return_url": "https://k.example/done",
        "callback_url": "https://k.example/cb",
    }


def test_callback_parsing_checks_every_field_and_hides_secrets() -> None:
    body = {
        "key_id": 1,
        "user_id": "state",
        "consumer_key": CONSUMER_KEY,
        "consumer_secret": CONSUMER_SECRET,
        "key_permissions": "read_write",
    }
    parsed = parse_callback(json.dumps(body).encode())
    assert (parsed.key_id, parsed.state, parsed.consumer_key) == ("1", "state", CONSUMER_KEY)
    assert CONSUMER_SECRET not in repr(parsed) and CONSUMER_KEY not in repr(parsed)
    for field, bad in [
        ("key_id", "x"),
        ("user_id", ""),
        ("consumer_key", "ck_short"),
        ("consumer_key", CONSUMER_KEY + "\n"),
        ("consumer_secret", None),
        ("consumer_secret", CONSUMER_SECRET + "\n"),
        ("key_permissions", "admin"),
    ]:
        with pytest.raises(PayloadError, match=field):
            parse_callback(json.dumps({**body, field: bad}).encode())
    with pytest.raises(PayloadError):
        parse_callback(b"\xff")


def test_plain_http_oauth_values_are_redacted_from_urllib3_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """urllib3 logs request lines at DEBUG; OAuth query values never reach the log."""
    import logging

    caplog.set_level(logging.DEBUG, logger="urllib3.connectionpool")
    logging.getLogger("urllib3.connectionpool").debug(
        '%s://%s:%s "%s %s %s" %s %s',
        "http",
        "shop.test",
        80,
        "GET",
        f"/wp-json/wc/v3/orders?oauth_consumer_key={CONSUMER_KEY}&oauth_signature=abc%3D&x=1",
        "HTTP/1.1",
        200,
        None,
    )
    assert CONSUMER_KEY not in caplog.text
    assert "abc%3D" not in caplog.text
    assert "oauth_consumer_key=<hidden>&oauth_signature=<hidden>&x=1" in caplog.text


@responses.activate
@pytest.mark.parametrize("typed", ["Https://shop.example", "HTTPS://shop.example/"])
def test_a_capitalised_https_scheme_still_sends_the_key_in_a_header(typed: str) -> None:
    """An owner who typed ``Https://`` (a phone capitalises it) has an HTTPS shop: the key
    goes in the Authorization header, not as OAuth 1.0a values in the URL (which the shop
    refuses over HTTPS, and which URL logs keep)."""
    responses.get(f"{API}/orders/5", json={"id": 5, "status": "processing"})
    client = WooCommerceClient(typed, CONSUMER_KEY, CONSUMER_SECRET)
    assert client.get_order("5")["id"] == 5
    sent = responses.calls[0].request
    assert sent.headers["Authorization"].startswith("Basic ")
    assert "oauth_" not in (sent.url or "")


@pytest.mark.parametrize(
    ("typed", "kept"),
    [
        ("Https://shop.example/", "https://shop.example"),
        ("HTTP://shop.example/Shop", "http://shop.example/Shop"),
        ("https://shop.example/", "https://shop.example"),
    ],
)
def test_a_store_url_keeps_its_scheme_lower_case(typed: str, kept: str) -> None:
    from connector.stores import normalize_store_url

    assert normalize_store_url(typed) == kept


@responses.activate
def test_an_empty_page_before_the_last_is_no_end_of_the_orders(client: WooCommerceClient) -> None:
    """A caching or security plugin answering ``[]`` for one page while X-WP-TotalPages
    says more follow: the orders of that page are not skipped (the run would then move its
    watermark past them), the listing is refused as incomplete."""
    start = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
    orders = [
        {"id": n + 1, "date_modified_gmt": (start + dt.timedelta(seconds=n + 1)).isoformat()[:19]}
        for n in range(250)
    ]
    answers = iter(range(100))

    def listing(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        query = {k: v[-1] for k, v in parse_qs(urlsplit(request.url or "").query).items()}
        after = query["modified_after"]
        matching = [o for o in orders if o["date_modified_gmt"] > after]
        page = int(query["page"])
        chunk = matching[(page - 1) * 100 : page * 100]
        if next(answers) == 1:
            chunk = []  # the plugin's answer to this one request
        pages = str(max(1, -(-len(matching) // 100)))
        headers = {"X-WP-Total": str(len(matching)), "X-WP-TotalPages": pages}
        return 200, headers, json.dumps(chunk)

    responses.add_callback(responses.GET, f"{API}/orders", callback=listing)
    with pytest.raises(ShopUnavailable, match="empty page"):
        list(client.orders_modified_after(start))


@responses.activate
def test_a_404_page_that_is_no_rest_answer_says_what_to_check(client: WooCommerceClient) -> None:
    """A shop URL without WordPress's folder, or a shop on Plain permalinks, answers the
    theme's 404 page for /wp-json/: the owner is told what to check, not only "HTTP 404"."""
    responses.get(f"{API}/webhooks", status=404, body="<html>Page not found</html>")
    with pytest.raises(ShopRejected) as caught:
        client.list_webhooks()
    assert caught.value.status == 404
    assert caught.value.code == ""
    assert "permalinks" in str(caught.value) and "folder" in str(caught.value)


@responses.activate
def test_a_byte_order_mark_a_wordpress_file_prints_before_the_json_is_read_past(
    client: WooCommerceClient,
) -> None:
    """A functions.php saved with a UTF-8 BOM makes WordPress send it before every REST
    answer (as application/json; charset=UTF-8): the orders and errors are read all the
    same, not taken for a shop answering no JSON on every run."""
    bom = b"\xef\xbb\xbf"
    headers = {"Content-Type": "application/json; charset=UTF-8"}
    responses.get(
        f"{API}/orders/5",
        body=bom + json.dumps({"id": 5, "status": "processing", "billing": {}}).encode(),
        headers=headers,
    )
    responses.get(
        f"{API}/orders",
        body=bom + json.dumps([{"id": 6, "date_modified_gmt": "2026-11-20T12:00:01"}]).encode(),
        headers={**headers, "X-WP-TotalPages": "1"},
    )
    responses.get(
        f"{API}/orders/7",
        status=404,
        body=bom + json.dumps({"code": "woocommerce_rest_shop_order_invalid_id"}).encode(),
        headers=headers,
    )
    assert client.get_order("5")["id"] == 5
    assert [
        o["id"] for o in client.orders_modified_after(dt.datetime(2026, 11, 20, tzinfo=dt.UTC))
    ] == [6]
    with pytest.raises(ShopRejected) as caught:
        client.get_order("7")
    assert caught.value.code == "woocommerce_rest_shop_order_invalid_id"


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
@responses.activate
def test_every_busy_or_broken_shop_answer_is_unavailable(
    client: WooCommerceClient, status: int
) -> None:
    """Rate limits and every 5xx (a plain 500, a 503 during maintenance) are "try again
    later": taken for a refusal, an order note or a refund read would never be retried."""
    responses.get(f"{API}/orders/1", status=status, json={"code": "busy"})
    with pytest.raises(ShopUnavailable):
        client.get_order("1")


@pytest.mark.parametrize("status", [400, 401, 403, 409, 410, 499])
@responses.activate
def test_every_other_client_error_is_rejected(client: WooCommerceClient, status: int) -> None:
    """The 4xx other than 429 are the shop's answer, the same on every attempt: a refusal,
    with its status and code, not an outage to retry for ever."""
    responses.get(f"{API}/orders/1", status=status, json={"code": "woocommerce_rest_no"})
    with pytest.raises(ShopRejected) as caught:
        client.get_order("1")
    assert (caught.value.status, caught.value.code) == (status, "woocommerce_rest_no")


@responses.activate
def test_full_pages_without_total_pages_are_read_on(
    client: WooCommerceClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy or plugin that drops X-WP-TotalPages: a full page is no sign of the end (only
    a short one is), so the orders past the first page are still read."""
    monkeypatch.setattr("plugin.woocommerce.rest.PER_PAGE", 2)
    start = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
    orders = [
        {"id": n, "date_modified_gmt": (start + dt.timedelta(seconds=n)).isoformat()[:19]}
        for n in range(1, 6)
    ]

    def listing(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        query = {k: v[-1] for k, v in parse_qs(urlsplit(request.url or "").query).items()}
        matching = [o for o in orders if o["date_modified_gmt"] > query["modified_after"]]
        page = int(query["page"])
        return 200, {}, json.dumps(matching[(page - 1) * 2 : page * 2])

    responses.add_callback(responses.GET, f"{API}/orders", callback=listing)
    assert [o["id"] for o in client.orders_modified_after(start)] == [1, 2, 3, 4, 5]


@responses.activate
def test_an_order_changed_again_during_the_listing_is_listed_again(
    client: WooCommerceClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An order read on one page and changed before a later one is read (refunded, say) is
    listed again with its new date: each change once, not each order once, or that change
    would wait for another run."""
    monkeypatch.setattr("plugin.woocommerce.rest.PER_PAGE", 2)
    start = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)

    def at(seconds: int) -> str:
        return (start + dt.timedelta(seconds=seconds)).isoformat()[:19]

    orders = {n: {"id": n, "date_modified_gmt": at(n)} for n in range(1, 5)}
    requests_seen = iter(range(100))

    def listing(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        if next(requests_seen) == 1:  # order 1 changes after the first page was read
            orders[1] = {"id": 1, "date_modified_gmt": at(30), "status": "refunded"}
        query = {k: v[-1] for k, v in parse_qs(urlsplit(request.url or "").query).items()}
        matching = sorted(
            (o for o in orders.values() if o["date_modified_gmt"] > query["modified_after"]),
            key=lambda o: o["date_modified_gmt"],
        )
        page = int(query["page"])
        pages = str(max(1, -(-len(matching) // 2)))
        return 200, {"X-WP-TotalPages": pages}, json.dumps(matching[(page - 1) * 2 : page * 2])

    responses.add_callback(responses.GET, f"{API}/orders", callback=listing)
    listed = [(o["id"], o.get("status")) for o in client.orders_modified_after(start)]
    assert listed == [(1, None), (2, None), (3, None), (4, None), (1, "refunded")]
