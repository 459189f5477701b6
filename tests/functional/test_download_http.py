"""What a buyer's link answers HTTP clients (browsers, download managers, link checkers)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select, update

from connector.db import db
from connector.jobs import run_pending
from connector.models import DownloadGrant, Product, WatermarkCopy
from tests.factories import WebhookSender
from tests.functional.test_downloads import (
    events,
    get,
    link_path,
    make_pdf,
    paid_order,
    put_file,
)


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


# What a download's answer says of its file, and HEAD must say the same.
FILE_HEADERS = ("Content-Type", "Content-Disposition", "Accept-Ranges", "Content-Length")


def test_head_answers_as_a_click_would_and_counts_nothing(app: Flask, shop: WebhookSender) -> None:
    """Download managers and browsers ask with HEAD before they download: the answer has
    the file's type, name, size and Accept-Ranges, as the download's has, and no body; it
    counts, logs and spends nothing of the link's limit."""
    content = b"%PDF-1.4 " + b"y" * 5000
    put_file(app, "files/guide.pdf", content)
    files = [{"object_key": "files/guide.pdf", "filename": "Führer 山.pdf"}]
    path = link_path(paid_order(shop, 8602, files, download_limit=1)[0])
    for _ in range(3):
        head = shop.client.head(path)
        assert head.status_code == 200
        assert head.data == b""
    assert events(app) == []
    assert shop.order(8602)["downloads"][0]["downloads_left"] == 1

    click = get(shop.client, path)
    assert (click.status_code, click.data) == (200, content)
    for name in FILE_HEADERS:
        assert head.headers[name] == click.headers[name], name
    assert head.headers["Content-Length"] == str(len(content))
    assert head.headers["Accept-Ranges"] == "bytes"
    assert head.mimetype == "application/pdf"
    assert head.headers["Cache-Control"] == "no-store"
    assert head.headers["Referrer-Policy"] == "no-referrer"
    assert head.headers["X-Robots-Tag"] == "noindex"

    spent = shop.client.head(path)  # the limit reached: what a click gets now
    assert (spent.status_code, spent.mimetype, spent.data) == (429, "text/html", b"")
    assert spent.headers["X-Robots-Tag"] == "noindex"
    assert get(shop.client, path).status_code == 429
    assert [e.outcome for e in events(app)] == ["served", "limit"]


def test_head_before_the_buyers_copy_is_stamped_stamps_nothing(
    app: Flask, shop: WebhookSender
) -> None:
    """A watermarked file whose copy is not made yet: HEAD answers 200 with its type and
    name, without a length (only the stamped copy has one), and stamps nothing; once the
    copy is made, HEAD gives its length."""
    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf")
    files = [{"object_key": "books/guide.pdf", "filename": "guide.pdf", "watermark": "pdf"}]
    path = link_path(paid_order(shop, 8603, files)[0])
    early = shop.client.head(path)
    assert early.status_code == 200
    assert early.mimetype == "application/pdf"
    assert early.headers["Accept-Ranges"] == "bytes"
    assert "Content-Length" not in early.headers
    with app.app_context():
        assert db.session.scalars(select(WatermarkCopy)).all() == []

    run_pending(app)  # the payment's job stamps the copy
    head = shop.client.head(path)
    click = get(shop.client, path)
    assert click.status_code == 200 and click.data.startswith(b"%PDF")
    for name in FILE_HEADERS:
        assert head.headers[name] == click.headers[name], name
    assert head.headers["Content-Length"] == str(len(click.data))
    assert early.headers["Content-Disposition"] == click.headers["Content-Disposition"]
    assert [e.outcome for e in events(app)] == ["served"]


@pytest.mark.parametrize("case", ["revoked", "expired", "missing"])
def test_head_on_a_link_a_click_would_be_refused_gets_the_same_status(
    app: Flask, shop: WebhookSender, case: str
) -> None:
    """An ended or withdrawn link answers HEAD as it answers a click (410), and a file the
    storage does not have as a click's 503 with its Retry-After; HEAD logs nothing."""
    if case != "missing":
        put_file(app, "files/a.zip", b"PK")
    path = link_path(
        paid_order(shop, 8604, [{"object_key": "files/a.zip", "filename": "a.zip"}])[0]
    )
    with app.app_context():
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        ended = {"revoked": {"revoked_at": past}, "expired": {"expires_at": past}}
        if case in ended:
            db.session.execute(update(DownloadGrant).values(**ended[case]))
            db.session.commit()
    head = shop.client.head(path)
    assert events(app) == []
    click = get(shop.client, path)
    assert head.status_code == click.status_code == (503 if case == "missing" else 410)
    assert (head.mimetype, head.data) == ("text/html", b"")
    assert head.headers.get("Retry-After") == click.headers.get("Retry-After")
    assert head.headers["Cache-Control"] == "no-store"
    assert len(events(app)) == (0 if case == "missing" else 1)  # the click's refusal only


@pytest.mark.parametrize(("fallback", "status"), [("refuse", 409), ("original", 503)])
def test_head_before_a_copy_that_cannot_be_stamped_gets_what_the_click_gets(
    app: Flask, shop: WebhookSender, fallback: str, status: int
) -> None:
    """A watermarked file whose original is missing from storage: the click cannot stamp
    the buyer's copy and gets what the product's fallback gives (a refusal, or the missing
    original's 503), each time. HEAD says the same before and after, not a 200 for a file
    no click gets, and stamps nothing."""
    files = [{"object_key": "books/gone.pdf", "filename": "gone.pdf", "watermark": "pdf"}]
    path = link_path(paid_order(shop, 8605, files)[0])
    with app.app_context():
        db.session.execute(update(Product).values(watermark_fallback=fallback))
        db.session.commit()
    before = shop.client.head(path)
    with app.app_context():
        assert db.session.scalars(select(WatermarkCopy)).all() == []
    click = get(shop.client, path)
    after = shop.client.head(path)
    assert before.status_code == click.status_code == after.status_code == status
    assert before.headers.get("Retry-After") == click.headers.get("Retry-After")
    assert "Content-Disposition" not in before.headers
    assert len(events(app)) == (1 if fallback == "refuse" else 0)  # the click's refusal only


@pytest.mark.parametrize(
    "asked",
    ["bytes=abc", "items=0-5", "bytes=0-0,-1", "bytes=99999-"],
    ids=["malformed", "another-unit", "several-ranges", "past-the-end"],
)
def test_a_counted_click_with_a_range_it_cannot_answer_gets_the_whole_file(
    app: Flask, shop: WebhookSender, asked: str
) -> None:
    """A click that is counted gets the file, whatever its Range says: a Range that cannot
    be parsed, in another unit, in several parts or past the file's end (a download
    manager's stale state, from an address not served before) is ignored, as HTTP allows,
    rather than answered 416 with nothing after a download was spent on it."""
    content = b"%PDF-1.4 " + b"r" * 4000
    put_file(app, "files/range.pdf", content)
    files = [{"object_key": "files/range.pdf", "filename": "range.pdf"}]
    path = link_path(paid_order(shop, 8610, files, download_limit=2)[0])
    click = get(shop.client, path, headers={"Range": asked})
    assert (click.status_code, click.data) == (200, content)
    assert [e.outcome for e in events(app)] == ["served"]
    assert shop.order(8610)["downloads"][0]["downloads_left"] == 1


def test_a_suffix_range_after_a_download_is_a_free_resume(app: Flask, shop: WebhookSender) -> None:
    """A Range for the file's last bytes (``bytes=-N``) does not start at byte 0: from the
    address served within the hour it continues that download for free, as ``bytes=N-``
    does, instead of spending another download (the last one: a 429)."""
    content = bytes(range(256)) * 20
    put_file(app, "files/tail.bin", content)
    files = [{"object_key": "files/tail.bin", "filename": "tail.bin"}]
    path = link_path(paid_order(shop, 8611, files, download_limit=1)[0])
    buyer = {"REMOTE_ADDR": "203.0.113.70"}
    assert get(shop.client, path, environ_base=buyer).status_code == 200
    tail = get(shop.client, path, headers={"Range": "bytes=-100"}, environ_base=buyer)
    assert (tail.status_code, tail.data) == (206, content[-100:])
    assert [e.outcome for e in events(app)] == ["served", "resumed"]


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("Sec-Purpose", "prefetch;prerender"),  # Chrome: a bookmark hovered, the address bar
        ("Sec-Purpose", "prefetch"),
        ("Purpose", "prefetch"),  # Chrome's <link rel=prefetch>
        ("X-Purpose", "preview"),  # Safari
        ("X-Moz", "prefetch"),  # older Firefox
    ],
)
def test_a_browser_fetching_ahead_of_a_click_spends_no_download(
    app: Flask, shop: WebhookSender, header: str, value: str
) -> None:
    """Browsers fetch a link before the buyer opens it (Chrome prerenders a bookmark under
    the pointer, or an address it expects to be typed): such a request is not the buyer's
    click. It gets no file and a non-2xx answer (the browser then loads the link for real
    when it is opened) and counts and logs nothing; the click that follows is served."""
    content = b"%PDF-1.4 " + b"p" * 2000
    put_file(app, "files/ahead.pdf", content)
    files = [{"object_key": "files/ahead.pdf", "filename": "ahead.pdf"}]
    path = link_path(paid_order(shop, 8612, files, download_limit=1)[0])
    ahead = get(shop.client, path, headers={header: value})
    assert not 200 <= ahead.status_code < 300
    assert ahead.status_code != 302 and "Content-Disposition" not in ahead.headers
    assert ahead.headers["Cache-Control"] == "no-store"
    assert events(app) == []
    click = get(shop.client, path)
    assert (click.status_code, click.data) == (200, content)
    assert [e.outcome for e in events(app)] == ["served"]
    if header == "Sec-Purpose":
        # Should a person ever see that answer, it leads to the download, not to the shop.
        page = ahead.get_data(as_text=True)
        assert f'href="{path}"' in page and "contact" not in page
