"""WooCommerce REST v3 through the ``woocommerce`` package: what Keygate asks the shop.

Webhook registration, order re-reads (by id, or listed by ``modified_after``), refunds with
their line quantities, order notes, and product meta. Errors become two of ours:
:class:`ShopUnavailable` (network, timeouts, 429 and 5xx: try again later) and
:class:`ShopRejected` (any other 4xx: retrying will not help). Neither message ever carries
the consumer key or secret.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import requests
from woocommerce import API

PER_PAGE = 100
DEFAULT_TIMEOUT = 20
NO_REST_API = (
    "no WordPress REST API at the store's URL + /wp-json/ (the store URL must be WordPress's"
    " own address, with its folder if WordPress is in one, and the shop's permalinks must not"
    " be set to Plain: WooCommerce's REST API needs pretty permalinks)"
)
_OAUTH_VALUE = re.compile(r"(oauth_(?:consumer_key|signature)=)[^&\s\"']+")


class RedactOAuth(logging.Filter):
    """Plain-HTTP shops (local setups) get OAuth 1.0a values in the query string, which
    urllib3 logs at DEBUG: keep the consumer key and signature out of those lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        record.msg = _OAUTH_VALUE.sub(r"\1<hidden>", str(record.msg))
        return True


logging.getLogger("urllib3.connectionpool").addFilter(RedactOAuth())


class ShopError(Exception):
    """The shop did not do what was asked."""


class ShopUnavailable(ShopError):
    """Network error, timeout, 429 or 5xx: the same request may work later."""


class ShopRejected(ShopError):
    """A 4xx answer (bad credentials, unknown id): the same request will fail again."""

    def __init__(self, message: str, status: int, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code  # WooCommerce's error code, e.g. woocommerce_rest_shop_order_invalid_id


def _isoformat_gmt(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds")


class WooCommerceClient:
    """A store's WooCommerce REST v3 API, authenticated with its consumer key and secret."""

    def __init__(
        self,
        store_url: str,
        consumer_key: str,
        consumer_secret: str,
        *,
        timeout: int = DEFAULT_TIMEOUT,
    ) -> None:
        # The package takes HTTPS only as a lower-case "https" (an owner may type "Https://",
        # as a phone's keyboard capitalises it): otherwise it signs with OAuth 1.0a in the
        # query string, which the shop refuses over HTTPS and which puts the key in URLs.
        scheme, sep, rest = store_url.partition("://")
        self._api = API(
            url=scheme.lower() + sep + rest if sep else store_url,
            consumer_key=consumer_key,
            consumer_secret=consumer_secret,
            version="wc/v3",
            timeout=timeout,
        )

    def __repr__(self) -> str:  # never show the credentials
        return f"WooCommerceClient({self._api.url!r})"

    # --- plumbing ---------------------------------------------------------------------

    def _call(self, method: str, endpoint: str, data: Any = None, **params: Any) -> Any:
        response = self._response(method, endpoint, data, **params)
        try:
            return _json(response)
        except ValueError:
            raise ShopUnavailable(f"{method} {endpoint}: the shop answered no JSON") from None

    def _object(
        self, method: str, endpoint: str, data: Any = None, **params: Any
    ) -> dict[str, Any]:
        """A call answered by one JSON object (an order, a product, a webhook, a note); a
        caching or security plugin's ``[]``, ``null`` or text is the shop not answering."""
        answer = self._call(method, endpoint, data, **params)
        if not isinstance(answer, dict):
            raise ShopUnavailable(f"{method} {endpoint}: the shop answered no JSON object")
        return answer

    def _response(
        self, method: str, endpoint: str, data: Any = None, **params: Any
    ) -> requests.Response:
        # Redirects are never followed: whoever answers for the shop's address could point
        # Keygate's server at an internal one (a cloud metadata service, a database port).
        try:
            if method in {"POST", "PUT"}:
                response = getattr(self._api, method.lower())(
                    endpoint, data, params=params, allow_redirects=False
                )
            else:
                response = getattr(self._api, method.lower())(
                    endpoint, params=params, allow_redirects=False
                )
        except requests.RequestException as exc:
            # The exception text may hold the URL, and plain-HTTP shops put OAuth values in
            # it: name the type only.
            raise ShopUnavailable(f"{method} {endpoint}: {type(exc).__name__}") from None
        status = response.status_code
        if 300 <= status < 400:
            raise ShopRejected(
                f"{method} {endpoint}: HTTP {status}, a redirect (the store's URL must be the"
                " address the shop answers at)",
                status,
                "redirect",
            )
        if status == 429 or status >= 500:
            raise ShopUnavailable(f"{method} {endpoint}: HTTP {status}")
        if status >= 400:
            code = _error_code(response)
            if status == 404 and not code:
                # WordPress's REST API names what it cannot find: a plain 404 page is no REST
                # API at all at <store URL>/wp-json/.
                raise ShopRejected(f"{method} {endpoint}: HTTP 404, {NO_REST_API}", status)
            raise ShopRejected(f"{method} {endpoint}: HTTP {status} {code}".rstrip(), status, code)
        return response

    def _pages(self, endpoint: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a paged list (WooCommerce: ``page``/``per_page``, X-WP-TotalPages)."""
        page = 1
        while True:
            response = self._response("GET", endpoint, page=page, per_page=PER_PAGE, **params)
            items = _whole_page(response, endpoint, page)
            yield from items
            if _last_page(response, page, len(items)):
                return
            page += 1

    # --- webhooks ---------------------------------------------------------------------

    def list_webhooks(self) -> list[dict[str, Any]]:
        return list(self._pages("webhooks"))

    def create_webhook(
        self, *, name: str, topic: str, delivery_url: str, secret: str
    ) -> dict[str, Any]:
        created = self._object(
            "POST",
            "webhooks",
            {
                "name": name,
                "topic": topic,
                "delivery_url": delivery_url,
                "secret": secret,
                "status": "active",
            },
        )
        if created.get("id") is None:
            raise ShopUnavailable("POST webhooks: the shop's answer names no webhook id")
        return created

    def update_webhook(self, webhook_id: str, **fields: Any) -> dict[str, Any]:
        return self._object("PUT", f"webhooks/{webhook_id}", fields)

    def delete_webhook(self, webhook_id: str) -> None:
        """Delete for good (webhooks have no trash); an already deleted one is fine."""
        try:
            self._call("DELETE", f"webhooks/{webhook_id}", force="true")
        except ShopRejected as exc:
            if exc.status != 404:
                raise

    # --- orders -----------------------------------------------------------------------

    def get_order(self, order_id: str) -> dict[str, Any]:
        return self._object("GET", f"orders/{order_id}")

    def orders_modified_after(
        self, since: dt.datetime, *, status: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """Orders changed after ``since`` (UTC), oldest change first, each change once.

        Paged by a moving cursor, not by page number: page numbers over a list ordered by
        modification shift when an order changes during the read (it moves to the end and
        every later one a place forward, so one is never read). Each request asks for what
        changed after the newest date read so far, less a second (WooCommerce dates have
        one-second resolution and ``modified_after`` is strict: an order of that second may
        be on the next page); orders already read with the same date are dropped. Page
        numbers are used only while a whole page shares one second.

        WooCommerce's default (``any``) leaves trashed orders out; ask with ``status="trash"``.
        """
        query = {"dates_are_gmt": "true", "orderby": "modified", "order": "asc"}
        if status is not None:
            query["status"] = status
        after = since
        newest: dt.datetime | None = None
        read: set[tuple[Any, Any]] = set()
        page = 1
        while True:
            response = self._response(
                "GET",
                "orders",
                page=page,
                per_page=PER_PAGE,
                modified_after=_isoformat_gmt(after),
                **query,
            )
            items = _whole_page(response, "orders", page)
            moved = False
            for item in items:
                modified = _gmt_date(item.get("date_modified_gmt"))
                if modified is not None and (newest is None or modified > newest):
                    newest, moved = modified, True
                change = (item.get("id"), item.get("date_modified_gmt"))
                if change in read:
                    continue
                read.add(change)
                yield item
            if _last_page(response, page, len(items)):
                return
            if moved and newest is not None and newest - dt.timedelta(seconds=1) > after:
                after, page = newest - dt.timedelta(seconds=1), 1
            else:
                page += 1

    def list_refunds(self, order_id: str) -> list[dict[str, Any]]:
        return list(self._pages(f"orders/{order_id}/refunds"))

    def list_order_notes(self, order_id: str) -> list[dict[str, Any]]:
        """Every note of the order (WooCommerce does not page them).

        Raises:
            ShopUnavailable: also for an answer that is no list (a caching or security
                plugin's ``{}``, ``null`` or text): taken for "no notes", a crashed note
                job's re-run would post its note a second time.
        """
        notes = self._call("GET", f"orders/{order_id}/notes", type="any")
        if not isinstance(notes, list):
            raise ShopUnavailable(f"GET orders/{order_id}/notes: expected a list")
        return [n for n in notes if isinstance(n, dict)]

    def create_order_note(
        self, order_id: str, note: str, *, customer_note: bool = True
    ) -> dict[str, Any]:
        return self._object(
            "POST", f"orders/{order_id}/notes", {"note": note, "customer_note": customer_note}
        )

    # --- products ---------------------------------------------------------------------

    def list_products(self) -> list[dict[str, Any]]:
        """Every product (trashed ones are not listed), checked to be complete.

        Raises:
            ShopUnavailable: also when the listing is not whole (see :meth:`_complete`).
        """
        return self._complete("products")

    def list_variations(self, product_id: str) -> list[dict[str, Any]]:
        return self._complete(f"products/{product_id}/variations")

    def get_product(self, product_id: str) -> dict[str, Any]:
        """One product or variation by id (WooCommerce answers both at products/<id>)."""
        return self._object("GET", f"products/{product_id}")

    def _complete(self, endpoint: str) -> list[dict[str, Any]]:
        """A paged list read to the end and checked against X-WP-Total when the shop sends
        it: a product trashed or added while the pages are read shifts them (one item is
        never read), and the totals then disagree. Such a listing is refused, not used.
        """
        items: list[dict[str, Any]] = []
        totals: set[int] = set()
        page = 1
        while True:
            response = self._response("GET", endpoint, page=page, per_page=PER_PAGE)
            chunk = _list_of_objects(response, endpoint)
            items.extend(chunk)
            total = _int_header(response, "X-WP-Total")
            if total is not None:
                totals.add(total)
            if _last_page(response, page, len(chunk)):
                break
            page += 1
        if len(totals) > 1 or (totals and len(items) != totals.pop()):
            raise ShopUnavailable(f"GET {endpoint}: the list changed while it was read")
        return items


def _json(response: requests.Response) -> Any:
    """The body as JSON, read as UTF-8 past a byte order mark: a theme or plugin file saved
    with one makes WordPress print it before every REST answer (WooCommerce's webhooks,
    built inside PHP, still arrive clean), and ``requests`` then finds no JSON at all.

    Raises:
        ValueError: the body is no JSON.
    """
    text = response.content.decode("utf-8-sig", "replace")
    try:
        return json.loads(text)
    except RecursionError:  # absurdly nested: no answer Keygate reads
        raise ValueError("the body is nested too deeply") from None


def _list_of_objects(response: requests.Response, endpoint: str) -> list[dict[str, Any]]:
    try:
        items = _json(response)
    except ValueError:
        raise ShopUnavailable(f"GET {endpoint}: the shop answered no JSON") from None
    if not isinstance(items, list):
        raise ShopUnavailable(f"GET {endpoint}: expected a list")
    return [item for item in items if isinstance(item, dict)]


def _whole_page(response: requests.Response, endpoint: str, page: int) -> list[dict[str, Any]]:
    """A page's items; an empty page that X-WP-TotalPages says is not the last (a caching
    or security plugin's ``[]``) is the shop not answering: read on, the items that page
    holds would never be read (and a reconciliation would move past them)."""
    items = _list_of_objects(response, endpoint)
    if not items and not _last_page(response, page, 0):
        raise ShopUnavailable(f"GET {endpoint}: an empty page {page} before the last")
    return items


def _last_page(response: requests.Response, page: int, count: int) -> bool:
    """X-WP-TotalPages says so, or (without it) the page was not full."""
    total_pages = _int_header(response, "X-WP-TotalPages")
    if total_pages is not None:
        return page >= total_pages
    return count < PER_PAGE


def _gmt_date(value: Any) -> dt.datetime | None:
    """A REST ``*_gmt`` date (no offset: UTC), or None when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def _int_header(response: requests.Response, name: str) -> int | None:
    try:
        return int(response.headers[name])
    except (KeyError, ValueError):
        return None


def _error_code(response: requests.Response) -> str:
    """WooCommerce's error ``code`` (e.g. woocommerce_rest_cannot_view), never the body."""
    try:
        body = _json(response)
    except ValueError:
        return ""
    code = body.get("code") if isinstance(body, dict) else None
    return str(code)[:80] if isinstance(code, str) else ""
