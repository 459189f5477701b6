"""Helpers for license API tests: issue a license through the real webhook path, call the
API, and check every answer's signature with the client library."""

from __future__ import annotations

import itertools
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from connector.client import verify_response
from tests.factories import WebhookSender, line_item, wc_order

_orders = itertools.count(70000)


def issue_key(shop: WebhookSender, product_id: int = 501, **policy: Any) -> str:
    """Configure ``product_id`` with ``policy``, sell one unit, return its license key."""
    shop.configure(product_id, **policy)
    order_id = next(_orders)
    response = shop.deliver(wc_order(order_id, "processing", [line_item(product_id)]))
    assert response.status_code == 200, response.get_data(as_text=True)
    licenses = shop.order(order_id)["licenses"]
    assert len(licenses) == 1
    key: str = licenses[0]["key"]
    return key


def public_keys(client: FlaskClient) -> dict[str, str]:
    response = client.get("/api/v1/signing-keys")
    assert response.status_code == 200
    return {k["kid"]: k["public_key"] for k in response.get_json()["keys"]}


def call(
    client: FlaskClient,
    endpoint: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    check: bool = True,
    headers: dict[str, str] | None = None,
) -> TestResponse:
    """POST to /api/v1/licenses/<endpoint>; with ``check``, verify the signature."""
    path = f"/api/v1/licenses/{endpoint}"
    if raw is not None:
        response = client.post(path, data=raw, headers=headers or {})
    else:
        response = client.post(path, json=body, headers=headers or {})
    if check:
        verify_signed(client, "POST", path, response, nonce=(body or {}).get("nonce"))
    return response


def verify_signed(
    client: FlaskClient, method: str, path: str, response: TestResponse, nonce: str | None = None
) -> dict[str, Any]:
    return verify_response(
        method=method,
        url="http://localhost" + path,
        headers=dict(response.headers.items()),
        body=response.get_data(),
        public_keys=public_keys(client),
        nonce=nonce,
    )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_serving(port: int, timeout: float = 30.0) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/api/v1/signing-keys", timeout=2
            ) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
