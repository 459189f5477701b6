"""What a buyer's link answers HTTP clients (browsers, download managers, link checkers)."""

from __future__ import annotations

import pytest
from flask import Flask

from tests.factories import WebhookSender
from tests.functional.test_downloads import events, get, link_path, paid_order, put_file


@pytest.mark.parametrize("validator", ["If-None-Match", "If-Modified-Since", "If-Match"])
def test_a_conditional_click_gets_the_file_not_an_empty_answer(
    app: Flask, shop: WebhookSender, validator: str
) -> None:
    """A client that asks with a validator (a download manager's If-None-Match, curl -z) is
    counted like any click: it gets the file, never a 304 (or 412) that uses a download up
    and delivers nothing."""
    content = b"%PDF-1.4 " + b"x" * 4000
    put_file(app, "files/manual.pdf", content)
    downloads = paid_order(
        shop, 8601, [{"object_key": "files/manual.pdf", "filename": "manual.pdf"}], download_limit=2
    )
    first = get(shop.client, link_path(downloads[0]))
    assert first.status_code == 200
    value = {
        "If-None-Match": first.headers["ETag"],
        "If-Modified-Since": first.headers["Last-Modified"],
        "If-Match": '"another-version"',
    }[validator]
    second = get(shop.client, link_path(downloads[0]), headers={validator: value})
    assert second.status_code == 200
    assert second.data == content
    assert [e.outcome for e in events(app)] == ["served", "served"]
    # Resumes still work: Range (and If-Range) are answered as before.
    ranged = get(
        shop.client,
        link_path(downloads[0]),
        headers={"Range": "bytes=10-19", "If-Range": first.headers["ETag"]},
    )
    assert ranged.status_code == 206
    assert ranged.data == content[10:20]
