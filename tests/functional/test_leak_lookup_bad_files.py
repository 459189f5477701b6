"""Leak lookup of a malformed file: the lookup's own answers, never a 500.

A file found in the wild may be damaged, or made to trip the reader. Whatever it holds,
the API (raw body or multipart) and the admin page answer as for any file: the buyer when
a fingerprint of the store can still be read, else "no fingerprint found" (404).
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pikepdf
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.factories import WebhookSender
from tests.functional.test_admin_licenses_pages import upload
from tests.functional.test_admin_pages import admin_client, csrf_token, sign_in
from tests.functional.test_downloads import get, link_path, make_pdf, paid_order, put_file

__all__ = ["admin_client"]

BUYER_EMAIL = "jurgen@example.org"


def api_lookup(shop: WebhookSender, data: bytes, *, multipart: bool = False) -> TestResponse:
    headers = {"Authorization": f"Bearer {shop.store.api_token}"}
    if not multipart:
        return shop.client.post("/api/v1/admin/leak-lookup", data=data, headers=headers)
    return shop.client.post(
        "/api/v1/admin/leak-lookup",
        data={"file": (io.BytesIO(data), "found.bin")},
        headers=headers,
        content_type="multipart/form-data",
    )


def every_route(shop: WebhookSender, admin: FlaskClient, data: bytes) -> list[TestResponse]:
    """The answers of the API (raw body, then multipart) and of the admin page."""
    return [
        api_lookup(shop, data),
        api_lookup(shop, data, multipart=True),
        upload(admin, csrf_token(admin, "/admin/leaks"), data, filename="found.bin"),
    ]


def assert_nobody_found(answers: list[TestResponse]) -> None:
    for answer in answers:
        assert answer.status_code == 404, answer.get_data(as_text=True)
    raw, multipart, page = answers
    for answer in (raw, multipart):
        assert answer.mimetype == "application/problem+json"
        assert "No fingerprint" in answer.get_json()["detail"]
    assert "No fingerprint of your stores was found" in page.get_data(as_text=True)


def assert_buyer_found(answers: list[TestResponse]) -> None:
    for answer in answers:
        assert answer.status_code == 200, answer.get_data(as_text=True)
    raw, multipart, page = answers
    assert raw.get_json()["buyer"]["email"] == BUYER_EMAIL
    assert multipart.get_json()["buyer"]["email"] == BUYER_EMAIL
    assert BUYER_EMAIL in page.get_data(as_text=True)


def _xobjects_as_an_array(page: pikepdf.Page) -> None:
    page.Resources.XObject = pikepdf.Array([1, 2])


def _xobjects_as_a_number(page: pikepdf.Page) -> None:
    page.Resources.XObject = 7


def _an_xobject_that_is_a_number(page: pikepdf.Page) -> None:
    page.Resources.XObject = pikepdf.Dictionary(Kg0=3)


MALFORMED_PAGES = [_xobjects_as_an_array, _xobjects_as_a_number, _an_xobject_that_is_a_number]


def with_page_changed(data: bytes, change: Callable[[pikepdf.Page], None], number: int) -> bytes:
    with pikepdf.open(io.BytesIO(data)) as pdf:
        change(pdf.pages[number])
        out = io.BytesIO()
        pdf.save(out)
        return out.getvalue()


@pytest.mark.parametrize("change", MALFORMED_PAGES)
def test_a_pdf_with_malformed_xobjects_is_no_fingerprint_found(
    app: Flask,
    shop: WebhookSender,
    admin_client: FlaskClient,
    tmp_path: Path,
    change: Callable[[pikepdf.Page], None],
) -> None:
    """A page whose /XObject is an array or a number, or names a number, holds nothing of
    ours: a 404 from every route, not a 500."""
    found = with_page_changed(make_pdf(tmp_path / "found.pdf", pages=2).read_bytes(), change, 1)
    assert sign_in(admin_client) == 302
    assert_nobody_found(every_route(shop, admin_client, found))


@pytest.mark.parametrize("change", MALFORMED_PAGES)
def test_a_stamped_copy_with_a_malformed_page_still_names_its_buyer(
    app: Flask,
    shop: WebhookSender,
    admin_client: FlaskClient,
    change: Callable[[pikepdf.Page], None],
) -> None:
    """The fingerprint in the document info and on the other pages still counts when one
    page of the copy was mangled."""
    make_pdf(Path(app.extensions["keygate.settings"].storage_dir) / "books/guide.pdf")
    files = [{"object_key": "books/guide.pdf", "filename": "guide.pdf", "watermark": "pdf"}]
    downloads = paid_order(shop, 7101, files)
    copy = get(shop.client, link_path(downloads[0])).data
    found = with_page_changed(copy, change, 2)
    assert sign_in(admin_client) == 302
    assert_buyer_found(every_route(shop, admin_client, found))


def pdf_qpdf_gives_up_on(path: Path) -> bytes:
    """A page tree without /Count and a page object whose header is garbled: qpdf rebuilds
    the file and then gives up with a QpdfRuntimeError, which is no PdfError."""
    with pikepdf.open(make_pdf(path, pages=2)) as pdf:
        qdf = io.BytesIO()
        pdf.save(qdf, qdf=True, object_stream_mode=pikepdf.ObjectStreamMode.disable)
    page_two = re.search(rb"%% Page 2\n%% Original object ID: \d+ 0\n(\d+) 0 obj", qdf.getvalue())
    assert page_two is not None
    data = qdf.getvalue().replace(b"/Count 2", b"")
    data = data.replace(page_two.group(1) + b" 0 obj", page_two.group(1) + b" 0 #bj")
    with pytest.raises(pikepdf.QpdfRuntimeError):
        pikepdf.open(io.BytesIO(data))
    return data


def test_a_pdf_qpdf_cannot_repair_is_no_fingerprint_found(
    app: Flask, shop: WebhookSender, admin_client: FlaskClient, tmp_path: Path
) -> None:
    found = pdf_qpdf_gives_up_on(tmp_path / "found.pdf")
    assert sign_in(admin_client) == 302
    assert_nobody_found(every_route(shop, admin_client, found))


def test_a_pdf_whose_text_pypdf_cannot_decode_is_no_fingerprint_found(
    app: Flask, shop: WebhookSender, admin_client: FlaskClient, tmp_path: Path
) -> None:
    """With no fingerprint in its metadata, the page text is read for the invisible marker;
    a content stream in a filter pypdf does not know (NotImplementedError) shows none."""
    with pikepdf.open(make_pdf(tmp_path / "found.pdf", pages=1)) as pdf:
        pdf.pages[0].Contents = pdf.make_stream(b"x", Filter=pikepdf.Name("/KeygateNoSuchFilter"))
        out = io.BytesIO()
        pdf.save(out)
    assert sign_in(admin_client) == 302
    assert_nobody_found(every_route(shop, admin_client, out.getvalue()))


def test_a_fingerprint_with_a_nul_is_no_fingerprint_found(
    app: Flask, shop: WebhookSender, admin_client: FlaskClient, tmp_path: Path
) -> None:
    """PostgreSQL refuses a NUL in a query: such a fingerprint, which Keygate never makes,
    is not looked up, and the answer is "no fingerprint found" on both databases."""
    with pikepdf.open(make_pdf(tmp_path / "found.pdf", pages=1)) as pdf:
        pdf.docinfo["/KeygateFingerprint"] = pikepdf.String("a\x00b")
        out = io.BytesIO()
        pdf.save(out)
    assert sign_in(admin_client) == 302
    assert_nobody_found(every_route(shop, admin_client, out.getvalue()))


def zip_with_a_damaged_license() -> bytes:
    """A ZIP whose LICENSE.txt is deflated data that zlib refuses (a reserved block type)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("readme.txt", "Read me")
        archive.writestr("LICENSE.txt", "The author's license\n" * 50)
    data = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = archive.getinfo("LICENSE.txt")
    name_length = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_length = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    data[info.header_offset + 30 + name_length + extra_length] = 0xFF  # BTYPE 11: reserved
    return bytes(data)


def test_a_zip_whose_license_cannot_be_inflated_is_no_fingerprint_found(
    app: Flask, shop: WebhookSender, admin_client: FlaskClient
) -> None:
    found = zip_with_a_damaged_license()
    with zipfile.ZipFile(io.BytesIO(found)) as archive, pytest.raises(zlib.error):
        archive.read("LICENSE.txt")
    assert sign_in(admin_client) == 302
    assert_nobody_found(every_route(shop, admin_client, found))


def test_a_stamped_zip_with_a_damaged_license_of_its_own_still_names_its_buyer(
    app: Flask, shop: WebhookSender, admin_client: FlaskClient
) -> None:
    """The author's LICENSE.txt cannot be read; the buyer's LICENSE-buyer.txt still can, and
    names them even once the archive comment is gone."""
    put_file(app, "zips/plugin.zip", zip_with_a_damaged_license())
    files = [{"object_key": "zips/plugin.zip", "filename": "plugin.zip", "watermark": "zip"}]
    downloads = paid_order(shop, 7102, files)
    copy = io.BytesIO(get(shop.client, link_path(downloads[0])).data)
    with zipfile.ZipFile(copy, "a") as archive:
        assert "LICENSE-buyer.txt" in archive.namelist()
        archive.comment = b""
    assert sign_in(admin_client) == 302
    assert_buyer_found(every_route(shop, admin_client, copy.getvalue()))
