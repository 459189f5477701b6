"""Small promises of the downloads pieces: presign limits, filenames, stamps, fingerprints."""

from __future__ import annotations

import dataclasses
import io
import re
import sys
import unicodedata
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

import pikepdf
import pytest
from flask import Flask
from pypdf import PdfReader
from sqlalchemy import select

from connector.db import db
from connector.downloads.leaks import identify_leak
from connector.downloads.storage import (
    LocalStore,
    SharedArea,
    in_another_stores_area,
    instance_r2_config,
    store_for,
)
from connector.downloads.watermark import (
    DEFAULT_TEMPLATE,
    FINGERPRINT_PATTERN,
    MARGIN,
    NOTO_SCRIPTS,
    SHAPED_SCRIPTS,
    STAMP_HEIGHT,
    STAMP_WIDTH,
    Stamp,
    WatermarkError,
    _drawable_line,
    arabic_font_path,
    bengali_font_path,
    main_font_path,
    read_fingerprints,
    render_stamp,
    script_font_path,
    stamp_pdf,
    stamp_pdf_open,
    stamp_zip,
    thai_font_path,
)
from connector.integrations.r2 import clamp_ttl, content_disposition
from connector.models import DownloadGrant, WatermarkCopy
from connector.stores import NewStore
from connector.tokens import fingerprint_token
from tests.factories import WebhookSender, line_item, wc_order
from tests.functional.test_downloads import make_pdf
from tests.functional.test_leak_lookup_bad_files import pdf_qpdf_gives_up_on


def stamp(**changes: str) -> Stamp:
    values = {
        "name": "Jürgen Ø 山田",
        "email": "j@example.org",
        "order": "42",
        "date": "2026-11-24",
        "fingerprint": "forged.fingerprint",
    }
    values.update(changes)
    return Stamp(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("asked", "given"), [(0, 1), (-5, 1), (1, 1), (300, 300), (604_800, 604_800), (10**7, 604_800)]
)
def test_presigned_lifetime_is_clamped_to_what_r2_accepts(asked: int, given: int) -> None:
    """R2 accepts 1 s to 7 days; anything else is brought within."""
    assert clamp_ttl(asked) == given


def test_content_disposition_keeps_unicode_and_has_an_ascii_fallback() -> None:
    """RFC 6266: a plain filename for old clients, filename* (UTF-8) for the real name."""
    value = content_disposition('Über "report"; 山.pdf')
    assert value.startswith('attachment; filename="')
    fallback = value.split('filename="')[1].split('"')[0]
    assert fallback.isascii() and ";" not in fallback
    assert unquote(value.split("filename*=UTF-8''")[1]) == 'Über "report"; 山.pdf'


def test_unknown_template_fields_fall_back_to_the_default_line() -> None:
    """A template with a typo still stamps the buyer, with the default wording."""
    assert stamp(template="{nmae}").text == DEFAULT_TEMPLATE.format(  # type: ignore[call-arg]
        name="Jürgen Ø 山田", email="j@example.org", order="42", date="2026-11-24"
    )


@pytest.mark.parametrize("template", ["Licensed to {name.first}", "Licensed to {name.upper()}"])
def test_a_template_with_a_lookup_the_values_do_not_have_falls_back_too(template: str) -> None:
    """An attribute lookup on the text values fails like a typo does: the default line, not
    an error that would fail every copy."""
    assert stamp(template=template).text == DEFAULT_TEMPLATE.format(
        name="Jürgen Ø 山田", email="j@example.org", order="42", date="2026-11-24"
    )


@pytest.mark.parametrize(
    ("template", "name"),
    [("", "Jürgen"), ("{name}", "\u200d"), ("{name}", "\u0600\u200b"), ("{name}", "")],
)
def test_a_line_with_nothing_to_draw_still_stamps_the_copy(template: str, name: str) -> None:
    """A template without words (the settings refuse a blank one; render_stamp is not
    theirs alone), or one of the name alone
    for a buyer whose name is only invisible characters: the strip draws no line, and the
    copy is stamped with its hidden fingerprint all the same, not a failed download."""
    strip = render_stamp(stamp(template=template, name=name))
    text = PdfReader(io.BytesIO(strip)).pages[0].extract_text()
    assert FINGERPRINT_PATTERN.findall(text) == ["forged.fingerprint"]


def test_broken_pdf_and_zip_raise_watermark_errors(tmp_path: Path) -> None:
    """Files that cannot be stamped say so; they never produce a half-stamped copy."""
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.7\n this is not a pdf")
    with pytest.raises(WatermarkError):
        stamp_pdf(broken, tmp_path / "out.pdf", stamp())
    with pytest.raises(WatermarkError):
        stamp_zip(broken, tmp_path / "out.zip", stamp())
    assert not (tmp_path / "out.zip").exists()


def test_a_pdf_qpdf_gives_up_on_is_a_watermark_error(tmp_path: Path) -> None:
    """qpdf's QpdfRuntimeError (no PdfError) says the file cannot be stamped, as a broken
    file does: the owner sees why, and no click or job fails with an internal error."""
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(pdf_qpdf_gives_up_on(tmp_path / "source.pdf"))
    with pytest.raises(WatermarkError, match="cannot be read"):
        stamp_pdf(broken, tmp_path / "out.pdf", stamp())


def test_zip_with_its_own_license_keeps_it(tmp_path: Path) -> None:
    """A ZIP that ships a LICENSE.txt keeps it; the buyer's license gets another name."""
    source = tmp_path / "in.zip"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("LICENSE.txt", "GPL")
    member = stamp_zip(source, tmp_path / "out.zip", stamp())
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert archive.read("LICENSE.txt") == b"GPL"
        assert "Jürgen" in archive.read(member).decode()
    assert read_fingerprints(tmp_path / "out.zip") == ["forged.fingerprint"]


@pytest.mark.parametrize(
    ("shipped", "added"),
    [
        (["LICENSE.txt", "LICENSE-buyer.txt"], "LICENSE-buyer-2.txt"),
        (["LICENSE.txt", "license-buyer.txt", "LICENSE-buyer-2.txt"], "LICENSE-buyer-3.txt"),
        (["License.txt"], "LICENSE-buyer.txt"),
    ],
)
def test_the_buyers_license_never_takes_a_name_the_zip_has(
    tmp_path: Path, shipped: list[str], added: str
) -> None:
    """Each name once (a second member of one name is one file once unpacked, and zipfile
    warns), compared without case as Windows and macOS unpack; the archive's own files
    are kept, and the leak lookup reads the fingerprint from the buyer's license."""
    source = tmp_path / "in.zip"
    with zipfile.ZipFile(source, "w") as archive:
        for name in shipped:
            archive.writestr(name, f"the author's {name}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        member = stamp_zip(source, tmp_path / "out.zip", stamp())
    assert member == added
    with zipfile.ZipFile(tmp_path / "out.zip", "a") as archive:
        assert sorted(archive.namelist()) == sorted([*shipped, added])
        for name in shipped:
            assert archive.read(name) == f"the author's {name}".encode()
        assert "Jürgen" in archive.read(added).decode()
        archive.comment = b""  # as a copy repacked by another tool: the license alone
    assert read_fingerprints(tmp_path / "out.zip") == ["forged.fingerprint"]


@pytest.mark.parametrize(
    ("members", "added"),
    [
        # WordPress plugins and themes: one folder, with or without an entry of its own.
        (["plugin-pro/", "plugin-pro/plugin-pro.php", "plugin-pro/inc/a.php"], "plugin-pro/"),
        (["theme/style.css", "theme/license.txt"], "theme/"),
        # As macOS's Finder packs it (WordPress skips __MACOSX/ when it unpacks).
        (["plugin/plugin.php", "__MACOSX/plugin/._plugin.php"], "plugin/"),
        # Files at the top, or several folders: the license at the top.
        (["plugin.php", "readme.txt"], ""),
        (["a/x.txt", "b/y.txt"], ""),
        (["a/x.txt", "a.txt"], ""),
    ],
)
def test_a_zip_of_one_folder_gets_the_buyers_license_inside_it(
    tmp_path: Path, members: list[str], added: str
) -> None:
    """WordPress installs an uploaded plugin or theme from the ZIP's one top folder; with a
    file beside that folder it takes the whole archive as the plugin's folder and finds no
    plugin in it ("No valid plugins were found."), nor a theme (no style.css). The buyer's
    license goes inside the one folder, so the copy installs as the original does; the
    folder's own license.txt is kept, and the leak lookup reads the buyer's."""
    source = tmp_path / "in.zip"
    with zipfile.ZipFile(source, "w") as archive:
        for name in members:
            archive.writestr(name, "" if name.endswith("/") else f"the author's {name}")
    member = stamp_zip(source, tmp_path / "out.zip", stamp())
    taken = "license.txt" in " ".join(members).casefold()
    assert member == added + ("LICENSE-buyer.txt" if taken else "LICENSE.txt")
    with zipfile.ZipFile(tmp_path / "out.zip", "a") as archive:
        assert sorted(archive.namelist()) == sorted([*members, member])
        assert "Jürgen" in archive.read(member).decode()
        archive.comment = b""  # as a copy repacked by another tool: the license alone
    assert read_fingerprints(tmp_path / "out.zip") == ["forged.fingerprint"]


def test_forged_fingerprint_names_nobody(app: Flask, shop: WebhookSender, tmp_path: Path) -> None:
    """Only fingerprints signed by this Keygate lead to a grant: a forged one names nobody."""
    shop.configure(501)
    shop.deliver(wc_order(6001, "processing", [line_item(501)]))
    with app.app_context():
        grant_id = db.session.execute(select(DownloadGrant.id)).scalar_one()
        genuine = fingerprint_token(grant_id)
    payload = genuine.split(".")[0]
    source = tmp_path / "in.zip"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("a.txt", "a")
    stamp_zip(source, tmp_path / "forged.zip", stamp(fingerprint=payload + ".forgedsignature"))
    stamp_zip(source, tmp_path / "genuine.zip", stamp(fingerprint=genuine))
    with app.app_context():
        assert identify_leak(db.session, tmp_path / "forged.zip") is None
        match = identify_leak(db.session, tmp_path / "genuine.zip")
        assert match is not None
        assert (match.grant_id, match.shop_order_id) == (grant_id, "6001")


def test_without_r2_settings_stores_use_embedded_files(app: Flask, new_store: NewStore) -> None:
    """No KEYGATE_R2_* settings: files are served from <instance>/files."""
    with app.app_context():
        assert instance_r2_config() is None
        backend = store_for(new_store.store)
        assert isinstance(backend, SharedArea)
        assert backend.store_id == new_store.store.id
        assert isinstance(backend.backend, LocalStore)
        assert backend.backend.root == app.extensions["keygate.settings"].storage_dir


@pytest.mark.parametrize(
    ("key", "foreign"),
    [
        ("pro.zip", False),
        ("products/501/manual.pdf", False),
        ("stores/7/pro.zip", False),
        ("watermarked/7/1/2/pro.zip", False),
        ("storesx/8/pro.zip", False),
        ("stores/8/pro.zip", True),
        ("stores/07/pro.zip", True),
        ("stores//7/pro.zip", True),
        ("stores/x/pro.zip", True),
        ("watermarked/8/1/2/pro.zip", True),
        ("stores", True),
        ("Stores/8/pro.zip", True),
        ("WATERMARKED/8/1/2/pro.zip", True),
        ("Stores/7/pro.zip", False),
        # A store whose id starts with another's: store 7 never reaches store 70's area.
        ("stores/70/pro.zip", True),
        ("watermarked/71/1/2/pro.zip", True),
    ],
)
def test_a_stores_area_of_shared_storage_is_its_own(key: str, foreign: bool) -> None:
    """Only ``stores/<id>/`` and ``watermarked/<id>/`` of store 7 are its areas; every other
    spelling of those folders counts as another store's."""
    assert in_another_stores_area(7, key) is foreign


def test_shared_area_hides_other_stores_objects(tmp_path: Path) -> None:
    """To a store, another store's object does not exist: no read, no delivery, no write."""
    local = LocalStore(tmp_path / "files")
    (tmp_path / "files" / "stores" / "8").mkdir(parents=True)
    (tmp_path / "files" / "stores" / "8" / "pro.zip").write_bytes(b"store 8's")
    area = SharedArea(local, 7)
    assert local.exists("stores/8/pro.zip") and not area.exists("stores/8/pro.zip")
    # Not even whether it is there, or its size, or a version that changes when it does.
    assert local.version("stores/8/pro.zip") is not None and local.info("stores/8/pro.zip")
    assert area.version("stores/8/pro.zip") is None and area.info("stores/8/pro.zip") is None
    with pytest.raises(FileNotFoundError):
        area.delivery("stores/8/pro.zip", "pro.zip", 60)
    with pytest.raises(FileNotFoundError):
        area.download("stores/8/pro.zip", tmp_path / "copy")
    with pytest.raises(ValueError):
        area.delete("stores/8/pro.zip")
    with pytest.raises(ValueError):
        area.upload("stores/8/pro.zip", tmp_path / "files" / "stores" / "8" / "pro.zip")
    assert (tmp_path / "files" / "stores" / "8" / "pro.zip").read_bytes() == b"store 8's"
    assert SharedArea(local, 8).delivery("stores/8/pro.zip", "pro.zip", 60).path is not None


def test_local_store_refuses_keys_that_escape_its_folder(tmp_path: Path) -> None:
    """An object key cannot reach outside the storage folder."""
    store = LocalStore(tmp_path / "files")
    with pytest.raises(ValueError):
        store.path("../secret.key")
    assert store.exists("../secret.key") is False


def test_an_upload_that_fails_midway_leaves_no_partial_file(tmp_path: Path) -> None:
    """A stamped copy (a buyer's name inside) whose write fails halfway (the disk full: here
    the file-size limit the kernel enforces) leaves nothing behind: a partial file nobody
    records would never be deleted, by an erasure or the purge."""
    import resource
    import signal

    store = LocalStore(tmp_path / "files")
    source = tmp_path / "stamped.pdf"
    source.write_bytes(b"Jurgen Orsted, jurgen@example.org " * 200)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, hard))
    try:
        with pytest.raises(OSError):
            store.upload("watermarked/1/abc/book.pdf", source)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    folder = tmp_path / "files" / "watermarked" / "1" / "abc"
    assert sorted(path.name for path in folder.iterdir()) == []


def test_fingerprint_recorded_for_a_copy_still_names_it_after_a_key_change(
    app: Flask, shop: WebhookSender, tmp_path: Path
) -> None:
    """A copy made under an older secret key is still found by its recorded fingerprint."""
    shop.configure(501)
    shop.deliver(wc_order(6002, "processing", [line_item(501)]))
    with app.app_context():
        grant_id = db.session.execute(select(DownloadGrant.id)).scalar_one()
        db.session.add(
            WatermarkCopy(grant_id=grant_id, status="ready", kind="zip", fingerprint="old.key.fp")
        )
        db.session.commit()
    source = tmp_path / "in.zip"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("a.txt", "a")
    stamp_zip(source, tmp_path / "old.zip", stamp(fingerprint="old.key.fp"))
    with app.app_context():
        match = identify_leak(db.session, tmp_path / "old.zip")
        assert match is not None and match.grant_id == grant_id


def _on_screen(
    point: tuple[float, float], rotation: int, box: tuple[float, float]
) -> tuple[float, float]:
    """Where a point of the page's own space is shown once a viewer applies /Rotate
    (clockwise), origin at the bottom left of what the reader sees."""
    x, y = point
    width, height = box
    return {0: (x, y), 90: (y, width - x), 180: (width - x, height - y), 270: (height - y, x)}[
        rotation
    ]


@pytest.mark.parametrize("inherited", [False, True])
def test_the_stamp_reads_upright_along_the_foot_of_rotated_pages(
    tmp_path: Path, inherited: bool
) -> None:
    """On pages with /Rotate (set on the page or inherited from the page tree) the line runs
    left to right, upright, along the edge the reader sees at the bottom, at full size."""
    from reportlab.pdfgen import canvas

    source = tmp_path / "rotated.pdf"
    drawing = canvas.Canvas(str(source), pagesize=(595, 842))
    for _ in range(4):
        drawing.drawString(100, 700, "content")
        drawing.showPage()
    drawing.save()
    rotations = (0, 90, 180, 270)
    stamp = Stamp("Jürgen", "j@example.org", "7", "2026-11-24", "fp-rot")
    with pikepdf.open(source) as pdf:
        # The raw page tree: with ``inherited`` the second page says nothing and its tree
        # says 90; the other pages say their own. Stamped in memory, because saving first
        # would have qpdf copy the inherited /Rotate onto the page.
        if inherited:
            pdf.Root.Pages.Rotate = 90
        for kid, rotation in zip(pdf.Root.Pages.Kids, rotations, strict=True):
            if inherited and rotation == 90:
                del kid.Rotate
            else:
                kid.Rotate = rotation
        stamp_pdf_open(pdf, render_stamp(stamp), stamp.fingerprint)
        for page, rotation in zip(pdf.pages, rotations, strict=True):
            assert "/Rotate" in page.obj or (inherited and rotation == 90)
            placement = page.obj.Contents[-1].read_bytes().decode()
            a, b, c, d, e, f = (float(v) for v in placement.split("cm")[0].split()[-6:])
            corners = [(0.0, 0.0), (STAMP_WIDTH, 0.0), (0.0, STAMP_HEIGHT)]
            shown = [
                _on_screen((a * x + c * y + e, b * x + d * y + f), rotation, (595, 842))
                for x, y in corners
            ]
            origin, along, up = shown
            seen_width = 842 if rotation in (90, 270) else 595
            assert -0.5 <= origin[1] <= 1.0, (rotation, shown)  # at the foot
            assert along[0] - origin[0] >= STAMP_WIDTH - 0.5 and abs(along[1] - origin[1]) < 0.5
            assert up[1] - origin[1] >= STAMP_HEIGHT - 0.5 and abs(up[0] - origin[0]) < 0.5
            assert origin[0] >= 0 and along[0] <= seen_width + 0.5  # on the page


@pytest.mark.parametrize(
    ("media", "crop", "rotation"),
    [
        # A CropBox a bleed larger than the page (as some layout tools and scanners write).
        ((0, 0, 612, 792), (-9, -9, 621, 801), 0),
        # A page cut down by its MediaBox, its old CropBox left in place.
        ((0, 100, 612, 892), (0, 0, 612, 792), 0),
        ((36, 36, 576, 756), (0, 0, 612, 792), 90),
        ((0, 0, 500, 700), (-50, -50, 600, 800), 270),
    ],
)
def test_the_stamp_is_on_the_part_of_the_page_a_viewer_shows(
    tmp_path: Path,
    media: tuple[float, float, float, float],
    crop: tuple[float, float, float, float],
    rotation: int,
) -> None:
    """A viewer shows the part of the CropBox inside the MediaBox (PDF 32000-1, 14.11.2):
    where the CropBox reaches past the MediaBox, the stamp lies inside both, whole, not
    along the CropBox's edge, partly or wholly off what the buyer sees."""
    stamp = Stamp("Jürgen", "j@example.org", "7", "2026-11-24", "fp-box")
    with pikepdf.new() as pdf:
        pdf.add_blank_page(page_size=(595, 842))
        page = pdf.pages[0]
        page.obj.MediaBox = pikepdf.Array(media)
        page.obj.CropBox = pikepdf.Array(crop)
        page.obj.Rotate = rotation
        stamp_pdf_open(pdf, render_stamp(stamp), stamp.fingerprint)
        placement = page.obj.Contents[-1].read_bytes().decode()
    a, b, c, d, e, f = (float(v) for v in placement.split("cm")[0].split()[-6:])
    corners = [(0.0, 0.0), (STAMP_WIDTH, 0.0), (0.0, STAMP_HEIGHT), (STAMP_WIDTH, STAMP_HEIGHT)]
    placed = [(a * x + c * y + e, b * x + d * y + f) for x, y in corners]
    shown = (
        max(media[0], crop[0]),
        max(media[1], crop[1]),
        min(media[2], crop[2]),
        min(media[3], crop[3]),
    )
    for x, y in placed:
        assert shown[0] - 0.5 <= x <= shown[2] + 0.5, (placed, shown)
        assert shown[1] - 0.5 <= y <= shown[3] + 0.5, (placed, shown)


def test_a_file_that_is_no_pdf_is_read_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The leak lookup of something that is not a PDF finds nothing, without pypdf's
    complaints about headers and EOF markers in the log."""
    from connector.downloads.watermark import read_fingerprints

    junk = tmp_path / "leak.pdf"
    junk.write_bytes(b"this is not a pdf\n" * 50)
    with caplog.at_level("DEBUG"):
        assert read_fingerprints(junk) == []
    assert [r.name for r in caplog.records if r.name.startswith("pypdf")] == []


@pytest.mark.parametrize(
    "name",
    [
        "Łukasz Dvořák",
        "Şükrü Oğuz",
        "Ștefan Țurcanu",
        "Σωκράτης Παπαδόπουλος",
        "Олексій Їжак",
        "Jürgen Ørsted 山田",
    ],
)
def test_the_visible_stamp_keeps_every_letter_of_the_buyers_name(tmp_path: Path, name: str) -> None:
    """Latin of every European language, Greek, Cyrillic and CJK: the line on the page names
    the buyer as the order does, without a letter left out."""
    source = make_pdf(tmp_path / "in.pdf", pages=1)
    stamp_pdf(
        source,
        tmp_path / "out.pdf",
        Stamp(name=name, email="b@example.org", order="1", date="2026-11-20", fingerprint="fp"),
    )
    text = PdfReader(tmp_path / "out.pdf").pages[0].extract_text()
    assert f"Licensed to {name} <b@example.org>" in text


def test_every_shaped_script_is_named_by_the_code_a_letter_of_it_has() -> None:
    """SHAPED_SCRIPTS holds ISO 15924 codes, compared with the script of each letter drawn:
    a code misspelt ("Lao" for "Laoo") matches no letter, and a line in that script would
    be drawn unshaped (Lao's ຳ left whole, its marks unplaced)."""
    from fontTools.unicodedata import script, script_name

    assert {code for code in SHAPED_SCRIPTS if script_name(code, default=None) is None} == set()
    assert {script("ຄ"), script("ক"), script("ក"), script("ம")} <= SHAPED_SCRIPTS


def test_letters_no_stamp_font_has_are_marked_not_dropped() -> None:
    """Syriac and emoji (no embedded font draws them) show as U+FFFD, one for each letter:
    the buyer sees that their name stood there, and the email and order still name them."""
    text = PdfReader(io.BytesIO(render_stamp(stamp(name="ܫܠܡܐ Cohen 🎉")))).pages[0].extract_text()
    assert "Licensed to \ufffd\ufffd\ufffd\ufffd Cohen \ufffd <j@example.org> · Order 42" in text


def test_a_fallback_font_that_cannot_be_read_marks_its_letters_and_the_stamp_is_made(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A font package missing or without its file (a release that renamed it) must not fail
    the paid download the stamp is for: that script's letters show as U+FFFD, logged, and
    every other script still draws."""
    from connector.downloads import watermark

    def gone() -> Path:
        raise RuntimeError("the font package has no NotoSansTamil font file")

    broken = tuple(
        dataclasses.replace(font, path=gone) if font.name == "stamp-tamil" else font
        for font in watermark.FALLBACK_FONTS
    )
    monkeypatch.setattr(watermark, "FALLBACK_FONTS", broken)
    with caplog.at_level("WARNING", logger="connector.downloads.watermark"):
        strip = render_stamp(stamp(name="முருகன் محمد"))
    text = PdfReader(io.BytesIO(strip)).pages[0].extract_text()
    assert "\ufffd" * 6 in text and "محمد" in text and "j@example.org> · Order 42" in text
    assert "stamp font stamp-tamil cannot be read" in caplog.text


def test_a_stamp_is_made_unshaped_when_harfbuzz_cannot_be_imported(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """uharfbuzz missing (an update installed without its new dependencies): an Arabic or
    Devanagari name is drawn glyph for glyph, logged once, rather than fpdf2 refusing to
    shape and the buyer's paid download failing."""
    from connector.downloads import watermark

    monkeypatch.setitem(sys.modules, "uharfbuzz", None)  # import uharfbuzz: ImportError
    watermark._can_shape.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="connector.downloads.watermark"):
            strips = [render_stamp(stamp(name=name)) for name in ("محمد", "अनुष्का")]
    finally:
        watermark._can_shape.cache_clear()
    for strip, name in zip(strips, ("محمد", "अनुष्का"), strict=True):
        assert _drawn_in(_glyphs_drawn(strip), "Noto") != ""
        text = PdfReader(io.BytesIO(strip)).pages[0].extract_text()
        assert FINGERPRINT_PATTERN.findall(text) == ["forged.fingerprint"]
        assert "j@example.org> · Order 42" in text, name
    assert caplog.text.count("uharfbuzz cannot be imported") == 1


_BFCHAR = re.compile(r"<([0-9A-Fa-f]{4})>\s*<([0-9A-Fa-f]*)>")


def _glyphs_drawn(strip: bytes) -> list[tuple[str, str, float, float]]:
    """Each glyph of the strip's visible line in the order drawn (left to right), as (font
    name, the text its ToUnicode gives, start and end on the strip), read from the content
    stream, the fonts' ToUnicode maps and /W widths: what a viewer draws."""
    glyphs: list[tuple[str, str, float, float]] = []
    with pikepdf.open(io.BytesIO(strip)) as pdf:
        page = pdf.pages[0]
        fonts = {}
        for key, font in page.resources.Font.items():
            if font.Subtype != pikepdf.Name.Type0:
                continue  # the invisible marker's Helvetica
            texts = {
                int(code, 16): bytes.fromhex(uni).decode("utf-16-be")
                for code, uni in _BFCHAR.findall(font.ToUnicode.read_bytes().decode("latin-1"))
            }
            widths: dict[int, float] = {}
            entries = list(font.DescendantFonts[0].get("/W", pikepdf.Array()))
            while entries:
                first, following = int(entries[0]), entries[1]
                if isinstance(following, pikepdf.Array):
                    widths.update({first + i: float(w) for i, w in enumerate(following)})
                    entries = entries[2:]
                else:
                    widths.update({c: float(entries[2]) for c in range(first, int(following) + 1)})
                    entries = entries[3:]
            name = str(font.BaseFont).split("+")[-1]
            fonts[key] = (name, texts, widths, float(font.DescendantFonts[0].get("/DW", 1000)))
        x = line_x = size = 0.0
        current = None
        for operands, operator in pikepdf.parse_content_stream(page):
            if operator == pikepdf.Operator("Tf"):
                current, size = fonts.get(str(operands[0])), float(operands[1])
            elif operator == pikepdf.Operator("Td"):
                x = line_x = line_x + float(operands[0])
            elif operator == pikepdf.Operator("Tm"):
                x = line_x = float(operands[4])
            elif operator == pikepdf.Operator("Tj") and current is not None:
                name, texts, widths, default = current
                raw = bytes(operands[0])
                for at in range(0, len(raw), 2):
                    code = int.from_bytes(raw[at : at + 2], "big")
                    advance = widths.get(code, default) * size / 1000
                    glyphs.append((name, texts.get(code, "\ufffd"), x, x + advance))
                    x += advance
    return glyphs


def _drawn_in(glyphs: list[tuple[str, str, float, float]], font: str) -> str:
    return "".join(text for name, text, _, _ in glyphs if name.startswith(font))


def test_an_arabic_name_is_drawn_joined_and_right_to_left_in_noto_sans_arabic() -> None:
    """A buyer in Cairo sees their name, not a row of U+FFFD: its letters drawn in Noto Sans
    Arabic from right to left (the first letter rightmost), joined (the two meems of محمد
    are two forms: initial and medial), and the line reads back as typed."""
    strip = render_stamp(stamp(name="محمد"))
    glyphs = _glyphs_drawn(strip)
    assert "\ufffd" not in "".join(text for _, text, _, _ in glyphs)
    assert _drawn_in(glyphs, "NotoSansArabic") == "محمد"[::-1]
    meems = {(start, end) for name, text, start, end in glyphs if text == "م"}
    assert len(meems) == 2
    with pikepdf.open(io.BytesIO(strip)) as pdf:
        [arabic] = [f for f in pdf.pages[0].resources.Font.values() if "Arabic" in str(f.BaseFont)]
        to_unicode = arabic.ToUnicode.read_bytes().decode("latin-1")
    meem_glyphs = [code for code, uni in _BFCHAR.findall(to_unicode) if uni.upper() == "0645"]
    assert len(meem_glyphs) == 2  # not the isolated form twice
    text = PdfReader(io.BytesIO(strip)).pages[0].extract_text()
    assert "Licensed to محمد" in text


def test_an_arabic_letter_drawn_as_two_glyphs_reads_back_as_one() -> None:
    """Noto Sans Arabic draws a dotted letter (the beh of عبد) as its dotless form and a
    dot: the line reads back "عبد", with no stray character for the dot."""
    strip = render_stamp(stamp(name="عبد"))
    assert len(_glyphs_drawn(strip)) > len(stamp(name="عبد").text)  # the dot is a glyph
    [line, _marker] = PdfReader(io.BytesIO(strip)).pages[0].extract_text().splitlines()
    # (pypdf moves the space after a right-to-left run: "عبد< j@"; viewers draw "عبد <j@".)
    assert line.startswith("Licensed to عبد")
    assert all(char.isprintable() for char in line)


def test_a_hebrew_name_is_drawn_right_to_left_in_a_hebrew_font() -> None:
    """A buyer in Tel Aviv sees their name: each word's letters drawn from right to left,
    the first word rightmost, in Arimo's Hebrew, points (niqqud) too."""
    strip = render_stamp(stamp(name="שרה כהן"))
    glyphs = _glyphs_drawn(strip)
    assert "\ufffd" not in "".join(text for _, text, _, _ in glyphs)
    assert _drawn_in(glyphs, "Arimo") == "שרהכהן"[::-1]
    assert "כהן" in PdfReader(io.BytesIO(strip)).pages[0].extract_text()

    pointed = _glyphs_drawn(render_stamp(stamp(name="שָׂרָה")))
    assert sorted(_drawn_in(pointed, "Arimo")) == sorted(unicodedata.normalize("NFC", "שָׂרָה"))
    assert "\ufffd" not in "".join(text for _, text, _, _ in pointed)


def test_the_email_and_order_after_an_arabic_name_read_left_to_right() -> None:
    """In a line that also holds Latin text, only the name runs right to left: "Licensed
    to" before it, the email, order and date after it, in Noto Sans, in their order."""
    strip = render_stamp(stamp(name="محمد علي"))
    glyphs = _glyphs_drawn(strip)
    latin = "".join(text for name, text, _, _ in glyphs if name == "NotoSans")
    assert latin.startswith("Licensed to ")
    assert "<j@example.org> · Order 42 · 2026-11-24" in latin
    texts = [text for _, text, _, _ in glyphs]
    arabic = [i for i, (name, *_) in enumerate(glyphs) if name == "NotoSansArabic"]
    assert "".join(texts[: min(arabic)]) == "Licensed to "
    assert max(arabic) < texts.index("<")
    text = PdfReader(io.BytesIO(strip)).pages[0].extract_text()
    assert "j@example.org> · Order 42 · 2026-11-24" in text


def test_a_template_in_english_reads_left_to_right_when_the_name_comes_first() -> None:
    """The owner's words set the line's direction: "{name} · Order {order}" with an Arabic
    name draws the name first (leftmost), then "· Order 42", not the other way round."""
    glyphs = _glyphs_drawn(render_stamp(stamp(name="محمد", template="{name} · Order {order}")))
    line = "".join(text for _, text, _, _ in glyphs)
    assert line.startswith("محمد"[::-1])
    assert line.endswith(" · Order 42")


def _harfbuzz_glyph_widths(text: str, font: Path) -> list[int]:
    """The glyphs HarfBuzz shapes ``text`` into with ``font``, in the order drawn, each as
    its advance in thousandths of the type size (its /W width in a PDF)."""
    import uharfbuzz
    from fontTools.ttLib import TTFont

    face = uharfbuzz.Face(uharfbuzz.Blob.from_file_path(str(font)))
    buffer = uharfbuzz.Buffer()
    buffer.add_str(text)
    buffer.guess_segment_properties()
    uharfbuzz.shape(uharfbuzz.Font(face), buffer, {})
    with TTFont(font, lazy=True) as ttfont:
        advance = {name: width for name, (width, _) in ttfont["hmtx"].metrics.items()}
        return [
            round(advance[ttfont.getGlyphName(info.codepoint)] * 1000 / face.upem)
            for info in buffer.glyph_infos
        ]


def _name_glyphs(strip: bytes) -> list[tuple[str, str, float, float]]:
    """The glyphs drawn between "Licensed to " and " <" on a left-to-right stamp line."""
    glyphs = _glyphs_drawn(strip)
    texts = [text for _, text, _, _ in glyphs]
    assert "".join(texts[:12]) == "Licensed to "
    return glyphs[12 : texts.index(" ", texts.index("<") - 1)]


@pytest.mark.parametrize("name", ["क्षितिज शर्मा", "प्रिया", "श्रेया"])
def test_a_devanagari_name_is_drawn_with_its_conjuncts_and_vowel_signs_in_place(
    name: str,
) -> None:
    """A buyer in Pune or Kathmandu sees their name as they write it: क्ष, प्र and श्र
    each one conjunct glyph, not a letter, a virama and a letter, and the vowel sign ि
    drawn before the consonant it follows in typing: the glyphs HarfBuzz shapes the name
    into with Noto Sans, not one per character. The line reads back as typed."""
    strip = render_stamp(stamp(name=name))
    drawn = _name_glyphs(strip)
    assert {font for font, *_ in drawn} == {"NotoSans"}
    widths = [round((end - start) * 1000 / 7) for _, _, start, end in drawn]
    assert widths == _harfbuzz_glyph_widths(name, main_font_path())
    assert len(drawn) < len(name)  # unshaped, it was one glyph per character
    text = PdfReader(io.BytesIO(strip)).pages[0].extract_text()
    assert f"Licensed to {name} <j@example.org>" in text


def test_the_vowel_sign_i_is_drawn_before_its_consonant_and_reads_after_it() -> None:
    """In "ति" the sign ि is drawn first (leftmost) and the consonant त after it; the
    sign's glyph reads back as the whole syllable and the consonant's as nothing, so text
    copied from the stamp is "ति", in the order typed."""
    drawn = _name_glyphs(render_stamp(stamp(name="ति")))
    assert [text for _, text, _, _ in drawn] == ["ति", ""]
    [sign_width, consonant_width] = [end - start for _, _, start, end in drawn]
    alone = _name_glyphs(render_stamp(stamp(name="त")))
    assert [text for _, text, _, _ in alone] == ["त"]
    assert consonant_width == pytest.approx(alone[0][3] - alone[0][2])
    assert sign_width < consonant_width


def test_an_arabic_name_typed_with_its_vowel_marks_is_drawn_joined() -> None:
    """A name typed with its vowel marks ("مُحَمَّد": damma, fatha, shadda) is drawn as
    HarfBuzz shapes it in Noto Sans Arabic, the letters joined and each mark with its
    letter, not each letter alone in its isolated form, and reads back as typed."""
    name = unicodedata.normalize("NFC", "مُحَمَّد")
    strip = render_stamp(stamp(name=name))
    drawn = [glyph for glyph in _glyphs_drawn(strip) if glyph[0] == "NotoSansArabic"]
    widths = [round((end - start) * 1000 / 7) for _, _, start, end in drawn]
    assert widths == _harfbuzz_glyph_widths(name, arabic_font_path())
    assert f"Licensed to {name}" in PdfReader(io.BytesIO(strip)).pages[0].extract_text()


@pytest.mark.parametrize(
    ("name", "font", "font_path"),
    [
        ("สมชาย ใจดี", "NotoSansThai", thai_font_path),
        ("น้ำฝน", "NotoSansThai", thai_font_path),
        ("সৌমিত্র দাস", "HindSiliguri", bengali_font_path),
    ],
)
def test_a_thai_or_bengali_name_is_drawn_shaped_in_a_font_that_has_it(
    name: str, font: str, font_path: Callable[[], Path]
) -> None:
    """Buyers in Bangkok and Dhaka see their name, not a row of U+FFFD: in Noto Sans Thai or
    Hind Siliguri, each word the glyphs HarfBuzz shapes it into (น้ำ: the ring of ำ drawn
    apart, before the tone mark, so the mark stands above it; সৌ: the vowel drawn on both
    sides of স; ত্র one conjunct), and the line reads back as typed."""
    strip = render_stamp(stamp(name=name))
    drawn = _name_glyphs(strip)
    assert "\ufffd" not in "".join(text for _, text, _, _ in drawn)
    widths = [round((end - start) * 1000 / 7) for name_, _, start, end in drawn if name_ == font]
    assert widths == [
        width for word in name.split() for width in _harfbuzz_glyph_widths(word, font_path())
    ]
    assert (
        f"Licensed to {name} <j@example.org>"
        in PdfReader(io.BytesIO(strip)).pages[0].extract_text()
    )


def test_a_persian_name_typed_with_a_zwnj_is_drawn_apart_there_and_in_order() -> None:
    """ "نازنین‌زهرا" holds a zero width non-joiner: the ن before it ends the first part's
    shape (final, not joined to the ز) and the ز starts the second's, as HarfBuzz shapes
    the name, and the whole name reads right to left ("زهرا" leftmost), one run with the
    joiner in it. The line reads back as typed."""
    name = "نازنین\u200cزهرا"  # noqa: RUF001 (Arabic letters, not look-alikes of o and l)
    strip = render_stamp(stamp(name=name))
    glyphs = _glyphs_drawn(strip)
    assert _drawn_in(glyphs, "NotoSansArabic") == name[::-1]
    drawn = [glyph for glyph in glyphs if glyph[0] == "NotoSansArabic"]
    widths = [round((end - start) * 1000 / 7) for _, _, start, end in drawn]
    assert widths == _harfbuzz_glyph_widths(name, arabic_font_path())
    assert widths != _harfbuzz_glyph_widths(name.replace("\u200c", ""), arabic_font_path())
    assert f"Licensed to {name}" in PdfReader(io.BytesIO(strip)).pages[0].extract_text()


@pytest.mark.parametrize("name", ["क्\u200dष", "क्\u200cष"])
def test_a_joiner_in_a_devanagari_name_chooses_the_form_of_its_conjunct(name: str) -> None:
    """Typed after a virama, a ZWJ asks for a half letter (क्‍ष) and a ZWNJ for the virama
    shown (क्‌ष), not the conjunct क्ष: drawn as HarfBuzz shapes each, and read back."""
    strip = render_stamp(stamp(name=name))
    widths = [round((end - start) * 1000 / 7) for _, _, start, end in _name_glyphs(strip)]
    assert widths == _harfbuzz_glyph_widths(name, main_font_path())
    assert widths != _harfbuzz_glyph_widths("क्ष", main_font_path())
    # pypdf reads a space after a virama that is shown ("क् \u200cष"), where none is drawn.
    text = PdfReader(io.BytesIO(strip)).pages[0].extract_text()
    assert f"Licensed to {name} <" in text.replace("् \u200c", "्\u200c")


@pytest.mark.parametrize(
    "name",
    [
        "keygate\u200c-fp:victim",
        "keygate-fp\u200d:victim",
        "ن\u200ckeygate-fp:victim",
        "keygate-fp:\u200dن victim",
        "क्\u200dkeygate\u200c-fp:victim",
    ],
)
def test_joiners_are_kept_only_between_letters_never_in_a_fingerprint_marker(name: str) -> None:
    """Joiners are drawn only between two letters of a script that needs them: typed in or
    beside a marker they are left out, so no reader that skips them (or shows them) finds
    another buyer's fingerprint on the stamp's line; only the copy's own hidden one."""
    text = PdfReader(io.BytesIO(render_stamp(stamp(name=name)))).pages[0].extract_text()
    [line, _marker] = text.splitlines()
    assert "\u200c" not in line and "\u200d" not in line
    assert "keygate-fp :" in line
    assert FINGERPRINT_PATTERN.findall(text) == ["forged.fingerprint"]


# A buyer's name in each script drawn in a Noto Sans font of its own (NOTO_SCRIPTS), most
# spoken first; each shaped one has a conjunct, a vowel sign drawn before or around its
# consonant, or a vowel split into a mark and a letter (Lao ຳ), so HarfBuzz's glyphs are
# not one per character.
NAMES_IN_NOTO_SCRIPTS = {
    "Tamil": "கோபால் முருகன்",
    "Telugu": "లక్ష్మి ప్రసాద్",
    "Kannada": "ಶ್ರೀನಿವಾಸ",
    "Malayalam": "ലക്ഷ്മി മേനോൻ",
    "Gujarati": "પ્રિયંકા પટેલ",
    "Gurmukhi": "ਗੁਰਪ੍ਰੀਤ ਸਿੰਘ",
    "Sinhala": "සුනිල් පෙරේරා",
    "Khmer": "ស្រីមុំ",
    "Lao": "ບຸນຄຳ ສີສະຫວາດ",
    "Myanmar": "အောင် ကျော်",
    "Georgian": "გიორგი ბერიძე",
    "Armenian": "Արամ Հովհաննիսյան",
    "Ethiopic": "አበበ በቀለ",
}
# Drawn one glyph per character, left to right: no shaping needed.
UNSHAPED_NOTO_SCRIPTS = {"Georgian", "Armenian", "Ethiopic"}
# pypdf reads a space into these lines where a mark stands above or below a letter (its
# layout guess, not a character in the stamp): their letters are compared without spaces.
READ_WITH_SPACES_BY_PYPDF = {"Sinhala", "Lao"}


def test_every_noto_script_has_a_name_to_test() -> None:
    assert set(NAMES_IN_NOTO_SCRIPTS) == set(NOTO_SCRIPTS)


@pytest.mark.parametrize("script", list(NAMES_IN_NOTO_SCRIPTS))
def test_a_name_in_a_script_of_its_own_noto_font_is_drawn_in_it_shaped_where_needed(
    script: str,
) -> None:
    """Buyers in Chennai, Hyderabad, Bengaluru, Kochi, Ahmedabad, Amritsar, Colombo, Phnom
    Penh, Vientiane, Yangon, Tbilisi, Yerevan and Addis Ababa see their name, not a row of
    U+FFFD: in Noto Sans Tamil, Telugu, ..., each word the glyphs HarfBuzz shapes it into
    with that font (the Indic scripts, Sinhala, Khmer, Lao and Myanmar shaped; Georgian,
    Armenian and Ethiopic one glyph per letter, the line not shaped), and the line reads
    back as typed."""
    name = NAMES_IN_NOTO_SCRIPTS[script]
    font = f"NotoSans{script}"
    strip = render_stamp(stamp(name=name))
    drawn = _name_glyphs(strip)
    assert "\ufffd" not in "".join(text for _, text, _, _ in drawn)
    assert {name_ for name_, text, _, _ in drawn if text != " "} == {font}
    widths = [round((end - start) * 1000 / 7) for name_, _, start, end in drawn if name_ == font]
    shaped = [
        width
        for word in name.split()
        for width in _harfbuzz_glyph_widths(word, script_font_path(script))
    ]
    assert widths == shaped
    letters = name.replace(" ", "")
    if script in UNSHAPED_NOTO_SCRIPTS:
        assert len(widths) == len(letters)
        assert not _drawable_line(stamp(name=name).text).shaped
    else:
        assert _drawable_line(stamp(name=name).text).shaped
    text = PdfReader(io.BytesIO(strip)).pages[0].extract_text()
    line = f"Licensed to {name} <j@example.org>"
    if script in READ_WITH_SPACES_BY_PYPDF:
        assert re.sub(r"\s", "", line) in re.sub(r"\s", "", text)
    else:
        assert line in text


def test_a_name_in_a_noto_script_embeds_that_font_alone() -> None:
    """Each of those fonts is read and embedded only in a stamp whose line needs it: a
    Tamil name embeds Noto Sans and Noto Sans Tamil, a Latin one Noto Sans alone."""

    def fonts(name: str) -> set[str]:
        with pikepdf.open(io.BytesIO(render_stamp(stamp(name=name)))) as pdf:
            resources = pdf.pages[0].resources.Font.values()
            return {str(f.BaseFont).split("+")[-1] for f in resources if f.Subtype == "/Type0"}

    assert fonts("முருகன் Cohen") == {"NotoSans", "NotoSansTamil"}
    assert fonts("Łukasz Dvořák") == {"NotoSans"}


def test_a_long_arabic_name_is_cut_short_to_leave_the_address_on_the_strip() -> None:
    """Shaped text is measured as drawn: a name of hundreds of Arabic letters is cut short
    ("…") so the joined letters, the address and the order fit between the margins."""
    strip = render_stamp(stamp(name="محمد " * 80))
    glyphs = _glyphs_drawn(strip)
    start = min(start for *_, start, _ in glyphs)
    end = max(end for *_, end in glyphs)
    assert start == pytest.approx(MARGIN) and end <= STAMP_WIDTH - MARGIN + 0.5
    line = "".join(text for _, text, _, _ in glyphs)
    assert "…" in line and line.endswith("<j@example.org> · Order 42 · 2026-11-24")
    assert "\ufffd" not in line
    assert set(_drawn_in(glyphs, "NotoSansArabic")) == set("محمد")


def test_a_name_typed_with_a_line_break_or_a_separate_accent_reads_as_one_line() -> None:
    """A line break or tab in a name is a space on the one-line stamp; an accent typed as its
    own mark (e + U+0301) is drawn on its letter, as "é"."""
    name = "Ana\nMaria\tJose\u0301"
    text = PdfReader(io.BytesIO(render_stamp(stamp(name=name)))).pages[0].extract_text()
    assert "Licensed to Ana Maria José <j@example.org>" in text


def _drawn_line_extent(strip: bytes) -> tuple[float, float, float]:
    """(start, end, font size) of the stamp line, read from the strip's content stream and
    its fonts' own /W widths: what a viewer draws, not what fpdf2 meant to."""
    with pikepdf.open(io.BytesIO(strip)) as pdf:
        page = pdf.pages[0]
        widths: dict[str, tuple[dict[int, float], float]] = {}
        for font_name, font in page.resources.Font.items():
            if font.Subtype != pikepdf.Name.Type0:
                continue  # the invisible marker's Helvetica
            cid_font = font.DescendantFonts[0]
            table: dict[int, float] = {}
            entries = list(cid_font.get("/W", pikepdf.Array()))
            while entries:
                first, following = int(entries[0]), entries[1]
                if isinstance(following, pikepdf.Array):
                    table.update({first + i: float(w) for i, w in enumerate(following)})
                    entries = entries[2:]
                else:
                    table.update({c: float(entries[2]) for c in range(first, int(following) + 1)})
                    entries = entries[3:]
            widths[font_name] = (table, float(cid_font.get("/DW", 1000)))
        start = advance = size = 0.0
        current: tuple[dict[int, float], float] | None = None
        for operands, operator in pikepdf.parse_content_stream(page):
            if operator == pikepdf.Operator("Tf"):
                current, size = widths.get(str(operands[0])), float(operands[1])
            elif operator == pikepdf.Operator("Td") and current is not None:
                start = float(operands[0])
            elif operator == pikepdf.Operator("Tj") and current is not None:
                table, default = current
                raw = bytes(operands[0])
                codes = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
                advance += sum(table.get(code, default) for code in codes) * size / 1000
        return start, start + advance, size


def test_a_long_name_in_several_scripts_shrinks_to_fit_the_strip() -> None:
    """The type gets smaller until the whole line fits between the strip's margins, with
    each letter measured in the font that draws it, and no letter is left out."""
    name = " ".join(["Łukasz Σωκράτης Олексій 山田太郎"] * 4)
    strip = render_stamp(stamp(name=name))
    start, end, size = _drawn_line_extent(strip)
    assert size < 7
    assert start == pytest.approx(MARGIN) and end <= STAMP_WIDTH - MARGIN + 0.5
    assert end >= STAMP_WIDTH - MARGIN - 5  # shrunk to fit, not far below
    text = PdfReader(io.BytesIO(strip)).pages[0].extract_text()
    assert f"Licensed to {name} <j@example.org>" in text


@pytest.mark.parametrize("fingerprint", ["a\x00b", "a" * 201, "keygaté.fp", "a b"])
def test_only_what_a_fingerprint_of_ours_can_be_is_read_back(
    tmp_path: Path, fingerprint: str
) -> None:
    """URL-safe base64 and dots, as long as the column that records them: anything else
    found in a file was not made by Keygate and is never looked up."""
    source = make_pdf(tmp_path / "found.pdf", pages=1)
    with pikepdf.open(source, allow_overwriting_input=True) as pdf:
        pdf.docinfo["/KeygateFingerprint"] = pikepdf.String(fingerprint)
        pdf.save(source)
    assert read_fingerprints(source) == []


def test_junk_in_the_metadata_does_not_hide_the_marker_on_the_pages(tmp_path: Path) -> None:
    """A copy whose document info fingerprint was replaced with something Keygate never
    makes, and whose XObject keys were lost, is still read by its invisible text."""
    stamped = tmp_path / "stamped.pdf"
    stamp_pdf(make_pdf(tmp_path / "in.pdf", pages=1), stamped, stamp(fingerprint="fp.abc"))
    with pikepdf.open(stamped, allow_overwriting_input=True) as pdf:
        pdf.docinfo["/KeygateFingerprint"] = pikepdf.String("a\x00b")
        for xobject in pdf.pages[0].Resources.XObject.values():
            del xobject["/KeygateFingerprint"]
        pdf.save(stamped)
    assert read_fingerprints(stamped) == ["fp.abc"]


class _FoundLeak:
    def __init__(self, body: dict[str, object]) -> None:
        self.body = body

    def as_json(self) -> dict[str, object]:
        return self.body


@pytest.mark.parametrize(
    ("number", "name", "email", "order_line", "buyer_line"),
    [
        ("1043", "Ada L", "ada@example.org", "43 (number 1043)", "Ada L <ada@example.org>"),
        (None, "Ada L", "ada@example.org", "43", "Ada L <ada@example.org>"),
        ("43", None, "erased-2b2f@erased.invalid", "43", "<erased-2b2f@erased.invalid>"),
        (None, "Ada L", None, "43", "Ada L"),
        (None, None, None, "43", "(no name or address kept)"),
    ],
)
def test_leak_lookup_prints_no_python_none(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    number: str | None,
    name: str | None,
    email: str | None,
    order_line: str,
    buyer_line: str,
) -> None:
    """`keygate leak-lookup FILE` names the order and buyer it knows; an order the shop gave
    no number, or a buyer erased or given no address, is said so, never "None"."""
    import contextlib
    from types import SimpleNamespace

    from click.testing import CliRunner

    import connector.cli
    import connector.db
    import connector.downloads.leaks
    from connector.downloads.commands import leak_lookup

    body = {
        "grant_id": 2,
        "store_id": "0dfdc145b8943e3f",
        "order": {"id": "43", "number": number},
        "buyer": {"name": name, "email": email},
        "filename": "book.pdf",
        "license_id": 2,
    }
    # The lookup itself is tested end to end in tests/functional/test_downloads.py; here
    # only what the command prints of its match.
    app = SimpleNamespace(app_context=contextlib.nullcontext)
    engine = SimpleNamespace(dispose=lambda: None)
    fake_db = SimpleNamespace(
        session=SimpleNamespace(close=lambda: None), get_engine=lambda: engine
    )
    monkeypatch.setattr(connector.cli, "make_app", lambda: app)
    monkeypatch.setattr(connector.db, "db", fake_db)
    monkeypatch.setattr(connector.downloads.leaks, "identify_leak", lambda *_: _FoundLeak(body))
    leaked = tmp_path / "leaked.pdf"
    leaked.write_bytes(b"%PDF-1.4")
    result = CliRunner().invoke(leak_lookup, [str(leaked)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "store:  0dfdc145b8943e3f",
        f"order:  {order_line}",
        f"buyer:  {buyer_line}",
        "grant:  2 (book.pdf)",
    ]


def test_a_pdf_with_an_owner_password_only_is_not_stamped(tmp_path: Path) -> None:
    """A PDF that opens without a password but is encrypted (an owner password restricting
    printing or copying) is refused: saved stamped, it would lose the owner's protection."""
    source = tmp_path / "restricted.pdf"
    with pikepdf.open(make_pdf(tmp_path / "plain.pdf")) as pdf:
        restrict = pikepdf.Permissions(extract=False, print_highres=False)
        pdf.save(source, encryption=pikepdf.Encryption(user="", owner="pw", allow=restrict))
    with pikepdf.open(source) as check:  # opens without a password: the case at hand
        assert check.is_encrypted
    with pytest.raises(WatermarkError, match="encrypted"):
        stamp_pdf(source, tmp_path / "out.pdf", stamp())
    assert not (tmp_path / "out.pdf").exists()


def _matrix_product(
    m: tuple[float, ...], n: tuple[float, ...]
) -> tuple[float, float, float, float, float, float]:
    """``m`` then ``n``, as PDF's cm operator composes them (m x n)."""
    a, b, c, d, e, f = m
    p, q, r, s, t, u = n
    return (
        a * p + b * r,
        a * q + b * s,
        c * p + d * r,
        c * q + d * s,
        e * p + f * r + t,
        e * q + f * s + u,
    )


def test_a_page_that_leaves_its_graphics_state_changed_cannot_move_the_stamp(
    tmp_path: Path,
) -> None:
    """A page whose content ends with a transformation still in force (a ``cm`` never undone:
    viewers accept it) gets the stamp where it would be on any page: the page's own content
    is drawn in a saved graphics state, so it cannot scale the stamp off the page."""
    with pikepdf.new() as pdf:
        pdf.add_blank_page(page_size=(595, 842))
        page = pdf.pages[0]
        page.obj.Contents = pdf.make_stream(b"4 0 0 4 300 500 cm 0 0 10 10 re f")
        stamp_pdf_open(pdf, render_stamp(stamp()), "fp-state")
        placement = page.obj.Contents[-1].read_bytes().decode()
        placed = tuple(float(v) for v in placement.split("cm")[0].split()[-6:])
        stack: list[tuple[float, ...]] = []
        ctm: tuple[float, ...] = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
        drawn_at: list[tuple[float, ...]] = []
        for operands, operator in pikepdf.parse_content_stream(page):
            if str(operator) == "q":
                stack.append(ctm)
            elif str(operator) == "Q":
                ctm = stack.pop()
            elif str(operator) == "cm":
                ctm = _matrix_product(tuple(float(v) for v in operands), ctm)
            elif str(operator) == "Do" and str(operands[0]).startswith("/Kg"):
                drawn_at.append(ctm)
    assert drawn_at == [pytest.approx(placed)]


def test_a_zip_copy_stripped_of_its_license_is_traced_by_its_comment(tmp_path: Path) -> None:
    """The archive comment ends with the fingerprint on a line of its own: a copy repacked
    without the buyer's LICENSE.txt (the comment kept, as zip tools keep it) still names
    them."""
    source = tmp_path / "plugin.zip"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("plugin/plugin.php", "<?php")
    stamped = tmp_path / "stamped.zip"
    member = stamp_zip(source, stamped, stamp(fingerprint="fp.comment"))
    stripped = tmp_path / "stripped.zip"
    with zipfile.ZipFile(stamped) as copy, zipfile.ZipFile(stripped, "w") as out:
        for info in copy.infolist():
            if info.filename != member:
                out.writestr(info, copy.read(info))
        out.comment = copy.comment
    assert read_fingerprints(stripped) == ["fp.comment"]


@pytest.mark.parametrize("where", ["docinfo", "xobject"])
def test_either_hidden_mark_alone_names_the_copy(tmp_path: Path, where: str) -> None:
    """The document info and the stamp's Form XObject each hold the fingerprint: a copy
    that kept only one of them (its pages redrawn by another tool, the invisible text
    lost) is still traced by it."""
    found = tmp_path / "found.pdf"
    with pikepdf.new() as pdf:
        pdf.add_blank_page(page_size=(595, 842))
        if where == "docinfo":
            pdf.docinfo["/KeygateFingerprint"] = pikepdf.String("fp.alone")
        else:
            form = pdf.make_stream(b"")
            form.Type, form.Subtype = pikepdf.Name.XObject, pikepdf.Name.Form
            form.BBox = pikepdf.Array([0, 0, 1, 1])
            form["/KeygateFingerprint"] = pikepdf.String("fp.alone")
            pdf.pages[0].add_resource(form, pikepdf.Name.XObject, prefix="Kg")
        pdf.save(found)
    assert read_fingerprints(found) == ["fp.alone"]
