"""Buyers' stamped copies against what buyers can type and what owners upload: the stamp
shows who bought the copy, and leak lookup names that buyer and no one else."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pikepdf
import psycopg
import pytest
from flask import Flask
from pypdf import PdfReader
from sqlalchemy import select, update

import connector.downloads.service as service
import connector.orders.service as order_service
from connector.db import db
from connector.downloads.watermark import FINGERPRINT_KEY, STAMP_VERSION, read_fingerprints
from connector.models import DownloadGrant, Order, WatermarkCopy
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_downloads import get, link_path, make_pdf, put_file

PDF_FILES = [{"object_key": "books/guide.pdf", "filename": "guide.pdf", "watermark": "pdf"}]
ZIP_FILES = [{"object_key": "zips/plugin.zip", "filename": "plugin.zip", "watermark": "zip"}]


def buyers_copy(
    shop: WebhookSender, order_id: int, *, first_name: str, email: str, last_name: str = ""
) -> bytes:
    """The copy a buyer of product 501 gets from their link (the order paid now)."""
    order = wc_order(
        order_id,
        "processing",
        [line_item(501)],
        first_name=first_name,
        last_name=last_name,
        email=email,
    )
    assert shop.deliver(order).status_code == 200
    [download] = shop.order(order_id)["downloads"]
    response = get(shop.client, link_path(download))
    assert response.status_code == 200, response.get_data(as_text=True)
    data: bytes = response.data
    return data


def leak_lookup(shop: WebhookSender, data: bytes) -> dict[str, Any]:
    answer = shop.client.post(
        "/api/v1/admin/leak-lookup",
        data=data,
        headers={"Authorization": f"Bearer {shop.store.api_token}"},
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)
    found: dict[str, Any] = answer.get_json()
    return found


def fingerprint_of(data: bytes, tmp_path: Path, suffix: str) -> str:
    copy = tmp_path / f"copy{suffix}"
    copy.write_bytes(data)
    return read_fingerprints(copy)[0]


def without_metadata(data: bytes) -> bytes:
    """A PDF copy with the fingerprint kept in its metadata removed, as a leaker's tool can
    do: only the invisible text on the pages names the buyer then."""
    with pikepdf.open(io.BytesIO(data)) as pdf:
        del pdf.docinfo[FINGERPRINT_KEY]
        for page in pdf.pages:
            for _, xobject in page.resources.get("/XObject", pikepdf.Dictionary()).items():
                if FINGERPRINT_KEY in xobject:
                    del xobject[FINGERPRINT_KEY]
        out = io.BytesIO()
        pdf.save(out)
        return out.getvalue()


def test_a_name_holding_another_buyers_fingerprint_does_not_frame_them_in_a_zip(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """A pirate who read a victim's fingerprint in a leaked copy and buys under a name
    holding it leaks a copy that leak lookup still traces to the pirate."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as plugin:
        plugin.writestr("plugin/plugin.php", "<?php")
    put_file(app, "zips/plugin.zip", archive.getvalue())
    shop.configure(501, files=ZIP_FILES)
    victims = buyers_copy(shop, 8101, first_name="Vera", email="vera@example.org")
    victims_fingerprint = fingerprint_of(victims, tmp_path, ".zip")

    pirates = buyers_copy(
        shop, 8102, first_name=f"keygate-fp:{victims_fingerprint}", email="pirate@example.net"
    )
    found = leak_lookup(shop, pirates)
    assert found["order"]["id"] == "8102"
    assert found["buyer"]["email"] == "pirate@example.net"
    with zipfile.ZipFile(io.BytesIO(pirates)) as copy:
        # Stripped of its comment, the archive's LICENSE.txt still names the pirate.
        license_only = io.BytesIO()
        with zipfile.ZipFile(license_only, "w") as stripped:
            stripped.writestr("LICENSE.txt", copy.read("plugin/LICENSE.txt"))
    assert leak_lookup(shop, license_only.getvalue())["order"]["id"] == "8102"


def test_a_name_holding_another_buyers_fingerprint_does_not_frame_them_in_a_pdf(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """The same in a PDF whose metadata the pirate removed, also when the name hides the
    marker behind an invisible character (the stamp's line leaves those out)."""
    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf", pages=2)
    shop.configure(501, files=PDF_FILES)
    victims = buyers_copy(shop, 8201, first_name="Vera", email="vera@example.org")
    victims_fingerprint = fingerprint_of(victims, tmp_path, ".pdf")

    for order_id, name in (
        (8202, f"keygate-fp:{victims_fingerprint}"),
        (8203, f"keygate\u200b-fp:{victims_fingerprint}"),
        # A joiner is drawn between two Arabic letters, never between a letter and a marker.
        (8204, f"نن\u200ckeygate\u200d-fp:{victims_fingerprint}"),
    ):
        pirates = buyers_copy(shop, order_id, first_name=name, email=f"p{order_id}@example.net")
        found = leak_lookup(shop, without_metadata(pirates))
        assert found["order"]["id"] == str(order_id)
        assert found["buyer"]["email"] == f"p{order_id}@example.net"


def test_a_copy_stamped_before_names_were_defused_still_names_its_own_buyer(
    tmp_path: Path,
) -> None:
    """Copies already in storage keep the name as it was stamped: the marker on a line of
    its own (ours) is read before one inside the stamp's line."""
    copy = tmp_path / "old.zip"
    with zipfile.ZipFile(copy, "w") as archive:
        archive.writestr(
            "LICENSE.txt", "Licensed to: keygate-fp:VICTIM <p@example.net>\n\nkeygate-fp:PIRATE\n"
        )
        archive.comment = b"Licensed to keygate-fp:VICTIM <p@example.net>\nkeygate-fp:PIRATE"
    assert read_fingerprints(copy) == ["PIRATE", "VICTIM"]


def _widths(font: pikepdf.Dictionary) -> tuple[dict[int, float], float]:
    """A Type0 font's glyph widths by CID (thousandths of the size), and its default."""
    descendant = font.DescendantFonts[0]
    widths: dict[int, float] = {}
    entries = list(descendant.get("/W", pikepdf.Array()))
    index = 0
    while index < len(entries):
        first = int(entries[index])
        if isinstance(entries[index + 1], pikepdf.Array):
            for offset, width in enumerate(entries[index + 1]):
                widths[first + offset] = float(width)
            index += 2
        else:
            for cid in range(first, int(entries[index + 1]) + 1):
                widths[cid] = float(entries[index + 2])
            index += 3
    return widths, float(descendant.get("/DW", 1000))


def stamp_line_width(data: bytes) -> float:
    """How wide the visible line of the stamp on the first page is drawn, in points of the
    strip, from the widths the PDF gives its glyphs (what a viewer draws with)."""
    with pikepdf.open(io.BytesIO(data)) as pdf:
        [strip] = [
            xobject
            for _, xobject in pdf.pages[0].resources.XObject.items()
            if FINGERPRINT_KEY in xobject
        ]
        fonts = strip.Resources.Font
        width, size, font = 0.0, 0.0, None
        for operands, operator in pikepdf.parse_content_stream(strip):
            if operator == pikepdf.Operator("Tf"):
                font, size = fonts[operands[0]], float(operands[1])
            elif operator == pikepdf.Operator("Tj") and font is not None:
                if font.Subtype != pikepdf.Name.Type0:
                    continue  # the invisible marker, in Helvetica
                glyphs, default = _widths(font)
                raw = bytes(operands[0])
                for at in range(0, len(raw), 2):
                    cid = int.from_bytes(raw[at : at + 2], "big")
                    width += glyphs.get(cid, default) * size / 1000
        return width


def test_a_very_long_name_leaves_the_address_and_order_on_the_stamp(
    app: Flask, shop: WebhookSender
) -> None:
    """A name of hundreds of letters (Latin or CJK) is cut short on the stamp, so the line
    fits its strip: the buyer's address and the order stay visible on every page."""
    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf", pages=1)
    shop.configure(501, files=PDF_FILES)
    strip_room = 595 - 2 * 12
    for order_id, first, last in (
        (8301, "W" * 150, "Ł" * 150),
        (8302, "山" * 150, "田" * 150),
    ):
        email = f"long{order_id}@example.org"
        copy = buyers_copy(shop, order_id, first_name=first, last_name=last, email=email)
        assert stamp_line_width(copy) <= strip_room
        line = read_stamp_line(copy)
        assert line.startswith(f"Licensed to {first[:5]}")
        assert f"… <{email}> · Order {order_id} · " in line
        assert leak_lookup(shop, copy)["order"]["id"] == str(order_id)


def test_a_buyer_named_in_a_script_that_needs_shaping_sees_it_on_their_copy(
    app: Flask, shop: WebhookSender
) -> None:
    """Buyers in Cairo, Tel Aviv, Pune, Bangkok, Dhaka, Chennai, Hyderabad, Phnom Penh and
    Yangon get a copy whose stamp has their name (no U+FFFD, read back as typed) in a font
    that draws it, their address and order after it, and leak lookup still names them from
    the pages alone."""
    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf", pages=2)
    shop.configure(501, files=PDF_FILES)
    for order_id, first, last, font in (
        (8401, "محمد", "", "NotoSansArabic"),
        (8402, "שרה", "Cohen", "Arimo"),
        (8403, "क्षितिज", "शर्मा", "NotoSans"),
        (8404, "สมชาย", "ใจดี", "NotoSansThai"),
        (8405, "সৌমিত্র", "দাস", "HindSiliguri"),
        (8406, "கோபால்", "முருகன்", "NotoSansTamil"),
        (8407, "లక్ష్మి", "ప్రసాద్", "NotoSansTelugu"),
        (8408, "ស្រីមុំ", "", "NotoSansKhmer"),
        (8409, "အောင်", "ကျော်", "NotoSansMyanmar"),
    ):
        email = f"buyer{order_id}@example.org"
        copy = buyers_copy(shop, order_id, first_name=first, last_name=last, email=email)
        line = read_stamp_line(copy)
        assert "\ufffd" not in line
        assert first in line
        assert f"{email}> · Order {order_id} · " in line
        with pikepdf.open(io.BytesIO(copy)) as pdf:
            [strip] = [x for _, x in pdf.pages[0].resources.XObject.items() if FINGERPRINT_KEY in x]
            fonts = [str(f.BaseFont) for f in strip.Resources.Font.values()]
        assert any(name.endswith(f"+{font}") for name in fonts), fonts
        assert leak_lookup(shop, without_metadata(copy))["order"]["id"] == str(order_id)


def read_stamp_line(data: bytes) -> str:
    text = PdfReader(io.BytesIO(data)).pages[0].extract_text()
    [line] = [line for line in text.splitlines() if line.startswith("Licensed to")]
    return line


def _waiting_on_a_lock(app: Flask) -> bool:
    """Is a connection to the test's PostgreSQL database waiting for a row lock now?"""
    with app.app_context():
        database = db.engine.url.database
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as pg:
        row = pg.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (database,),
        ).fetchone()
    return row is not None and row[0] > 0


def _hold_until(app: Flask, done: threading.Event) -> None:
    """Go on once ``done`` is set or (PostgreSQL) another connection waits for a lock this
    one holds. SQLite's writers take turns: nothing can wait there, so go on at once."""
    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            return
    deadline = time.monotonic() + 15
    while not done.is_set() and not _waiting_on_a_lock(app) and time.monotonic() < deadline:
        time.sleep(0.05)


def _click(app: Flask, path: str, answers: list[Any], done: threading.Event) -> None:
    try:
        answers.append(get(app.test_client(), path))
    finally:
        done.set()


def test_two_first_clicks_at_once_are_both_served(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two first clicks of one link at once (no copy made yet) both get the buyer's copy:
    the second records the same copy while the first counts its click, and neither waits
    for the other (PostgreSQL broke that deadlock with a 503 for one of them)."""
    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf", pages=2)
    shop.configure(501, files=PDF_FILES)
    order = wc_order(8401, "processing", [line_item(501)], email="twice@example.org")
    assert shop.deliver(order).status_code == 200
    [download] = shop.order(8401)["downloads"]

    # Both stamp; the first records its copy and goes on to count its click, the second
    # records once the first's count has begun (or is done).
    stamped = threading.Barrier(2)
    first_done, second_done = threading.Event(), threading.Event()
    recorders: list[str] = []
    record = service._record_copy

    def record_in_turn(*args: Any, **kwargs: Any) -> Any:
        recorders.append(threading.current_thread().name)
        if len(recorders) == 2:
            _hold_until(app, first_done if recorders[0] == "first" else second_done)
        return record(*args, **kwargs)

    make = service.make_watermarked_copy

    def make_together(*args: Any, **kwargs: Any) -> Any:
        stamped.wait(timeout=30)
        return make(*args, **kwargs)

    monkeypatch.setattr(service, "_record_copy", record_in_turn)
    monkeypatch.setattr(service, "make_watermarked_copy", make_together)
    answers: list[Any] = []
    path = link_path(download)
    threads = [
        threading.Thread(target=_click, args=(app, path, answers, first_done), name="first"),
        threading.Thread(target=_click, args=(app, path, answers, second_done), name="second"),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [200, 200]
    for answer in answers:
        assert "twice@example.org" in PdfReader(io.BytesIO(answer.data)).pages[0].extract_text()
    with app.app_context():
        copy = db.session.execute(select(WatermarkCopy)).scalar_one()
        assert copy.status == "ready"
        assert db.session.execute(select(DownloadGrant.download_count)).scalar_one() == 2


def test_a_click_while_the_order_is_being_refunded_is_answered(
    app: Flask, shop: WebhookSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A click counted while the refund's delivery holds the order (and is about to
    withdraw the link) is served, and the refund is applied: neither waits for the other
    (PostgreSQL broke that deadlock with a 503 for one of them)."""
    put_file(app, "files/a.zip", b"PK plain file")
    shop.configure(501, files=[{"object_key": "files/a.zip", "filename": "a.zip"}])
    assert shop.deliver(wc_order(8501, "processing", [line_item(501)])).status_code == 200
    [download] = shop.order(8501)["downloads"]

    locked, clicked = threading.Event(), threading.Event()
    lock_order = order_service._lock_order

    def lock_then_hold(*args: Any, **kwargs: Any) -> Any:
        order = lock_order(*args, **kwargs)
        locked.set()
        _hold_until(app, clicked)
        return order

    monkeypatch.setattr(order_service, "_lock_order", lock_then_hold)
    answers: list[Any] = []

    def click_once_locked() -> None:
        locked.wait(timeout=30)
        _click(app, link_path(download), answers, clicked)

    clicker = threading.Thread(target=click_once_locked)
    clicker.start()
    refund = shop.deliver(wc_order(8501, "refunded", [line_item(501)], modified=5))
    clicker.join()
    assert refund.status_code == 200, refund.get_data(as_text=True)
    assert [a.status_code for a in answers] in ([200], [410])
    assert get(shop.client, link_path(download)).status_code == 410


def test_a_name_cannot_reorder_or_add_lines_to_the_license_in_a_zip(
    app: Flask, shop: WebhookSender
) -> None:
    """A name with a right-to-left override shows the buyer's address as typed in the
    ZIP's LICENSE.txt and comment, not backwards; a name stored with a line break (before
    they were refused) adds no line of its own ("Order: ...") to LICENSE.txt."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as plugin:
        plugin.writestr("plugin/plugin.php", "<?php")
    put_file(app, "zips/plugin.zip", archive.getvalue())
    shop.configure(501, files=ZIP_FILES)
    name = "\u202emoc.elpmaxe@mit"  # reads "tim@example.com" where the override works
    copy = buyers_copy(shop, 8801, first_name=name, email="pirate@example.net")
    with zipfile.ZipFile(io.BytesIO(copy)) as stamped:
        license_txt = stamped.read("plugin/LICENSE.txt").decode()
        comment = stamped.comment.decode()
    assert "Licensed to: moc.elpmaxe@mit <pirate@example.net>" in license_txt
    assert comment.startswith("Licensed to moc.elpmaxe@mit <pirate@example.net>")
    for text in (license_txt, comment):
        assert not any(char in text for char in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2069")

    order = wc_order(8802, "processing", [line_item(501)], email="lines@example.net")
    assert shop.deliver(order).status_code == 200
    with app.app_context():
        db.session.execute(
            update(Order).where(Order.shop_order_id == "8802").values(name="Ann\nOrder: 1")
        )
        db.session.commit()
    [download] = shop.order(8802)["downloads"]
    answer = get(shop.client, link_path(download))
    assert answer.status_code == 200
    with zipfile.ZipFile(io.BytesIO(answer.data)) as stamped:
        lines = stamped.read("plugin/LICENSE.txt").decode().splitlines()
    assert [line for line in lines if line.startswith("Order:")] == ["Order: 8802"]
    assert "Licensed to: Ann Order: 1 <lines@example.net>" in lines


def test_a_zip_copy_from_before_its_license_went_into_its_folder_is_stamped_anew(
    app: Flask, shop: WebhookSender
) -> None:
    """A plugin's copy stamped with LICENSE.txt beside its folder (WordPress found no plugin
    in it) is not served again: the buyer's next click gets one with it inside the folder."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as plugin:
        plugin.writestr("plugin/plugin.php", "<?php")
    put_file(app, "zips/plugin.zip", archive.getvalue())
    shop.configure(501, files=ZIP_FILES)
    first = buyers_copy(shop, 8901, first_name="Ann", email="ann@example.net")
    old_layout = io.BytesIO()  # the copy as stamped before: LICENSE.txt beside the folder
    with zipfile.ZipFile(io.BytesIO(first)) as copy, zipfile.ZipFile(old_layout, "w") as old:
        for name in copy.namelist():
            old.writestr(name.removeprefix("plugin/") if "LICENSE" in name else name, b"x")
    with app.app_context():
        made = db.session.execute(select(WatermarkCopy)).scalar_one()
        assert made.object_key is not None
        put_file(app, made.object_key, old_layout.getvalue())
        made.stamp_version = 2
        db.session.commit()
    [download] = shop.order(8901)["downloads"]
    again = get(shop.client, link_path(download))
    assert again.status_code == 200
    with zipfile.ZipFile(io.BytesIO(again.data)) as stamped:
        assert "plugin/LICENSE.txt" in stamped.namelist()
    with app.app_context():
        copy = db.session.execute(select(WatermarkCopy)).scalar_one()
        assert copy.stamp_version == STAMP_VERSION


def test_each_buyer_keeps_a_copy_of_their_own_when_another_buyer_clicks(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """Buyers of one file each have their own stamped copy in storage: a second buyer's
    first click (which stamps theirs) never replaces the first buyer's, whose next download
    still names them, and leak lookup traces it to their order, not the other's."""
    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf", pages=2)
    shop.configure(501, files=PDF_FILES)
    anns = buyers_copy(shop, 8301, first_name="Ann", email="ann@example.org")
    bens = buyers_copy(shop, 8302, first_name="Ben", email="ben@example.org")
    assert fingerprint_of(bens, tmp_path, ".pdf") != fingerprint_of(anns, tmp_path, ".pdf")
    [download] = shop.order(8301)["downloads"]
    again = get(shop.client, link_path(download))
    assert again.status_code == 200, again.get_data(as_text=True)
    assert fingerprint_of(again.data, tmp_path, ".pdf") == fingerprint_of(anns, tmp_path, ".pdf")
    found = leak_lookup(shop, again.data)
    assert found["order"]["id"] == "8301"
    assert found["buyer"]["email"] == "ann@example.org"


def test_leak_lookup_names_the_buyer_when_orders_and_downloads_are_numbered_apart(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """The fingerprint names the buyer's download (grant), not their order: after an order
    of two files, order and download numbers differ, and a later buyer's leaked copy is
    still traced to that buyer, never to the first order's."""
    storage = Path(app.extensions["keygate.settings"].storage_dir)
    make_pdf(storage / "books/guide.pdf", pages=2)
    make_pdf(storage / "books/extra.pdf", pages=1)
    shop.configure(501, files=PDF_FILES)
    extra = [{"object_key": "books/extra.pdf", "filename": "extra.pdf", "watermark": "pdf"}]
    shop.configure(502, files=extra)
    both = wc_order(
        8401,
        "processing",
        [line_item(501, line_id=1), line_item(502, line_id=2)],
        first_name="Ann",
        email="ann@example.org",
    )
    assert shop.deliver(both).status_code == 200
    bens = buyers_copy(shop, 8402, first_name="Ben", email="ben@example.org")
    found = leak_lookup(shop, bens)
    assert found["order"]["id"] == "8402"
    assert found["buyer"]["email"] == "ben@example.org"
