"""Stamping buyers' copies: a visible line on every PDF page, LICENSE.txt in ZIPs, and a
hidden fingerprint in both that leak lookup reads back.

Pure file work (no database, no Flask): paths in, paths out, so the outbox job, the
on-the-spot path of a click and the benchmarks all run the same code.

PDF: the stamp is one small page drawn by fpdf2 with embedded subsets of Noto Sans (Latin,
Greek, Cyrillic, Devanagari) and, for what it lacks, the FALLBACK_FONTS: Noto Sans CJK,
Noto Sans Arabic, Arimo's Hebrew, Noto Sans Thai, Hind Siliguri's Bengali and the Noto Sans
of each of NOTO_SCRIPTS (Tamil to Ethiopic) (so "Łukasz Dvořák 山田", "محمد", "क्षितिज",
"สมชาย", "முருகன்" and "გიორგი" render; a line in a script that needs it is
shaped by HarfBuzz: see SHAPED_SCRIPTS), turned into one Form XObject and placed on every
page by pikepdf (libqpdf). Pages are touched one at a time and streams are copied, never
decoded, so memory stays flat as the file grows. The fingerprint is in the document info,
on the Form XObject, and as invisible text on every page.

ZIP: LICENSE.txt is appended (in the archive's one top folder, if it has one) and the archive
comment set; the other members' bytes are left as they are (no recompression).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import lzma
import re
import shutil
import string
import struct
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pikepdf

from connector.redact import keygate_logger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from fpdf import FPDF
    from fpdf.line_break import Fragment

log = keygate_logger(__name__)

FINGERPRINT_PREFIX = "keygate-fp:"
FINGERPRINT_KEY = "/KeygateFingerprint"
FINGERPRINT_PATTERN = re.compile(r"keygate-fp:([A-Za-z0-9_\-.]+)")
# Ours stand on a line of their own (the ZIP comment's last line, LICENSE.txt, the invisible
# text of a page), the stamp's line never holds one (see :func:`defused`).
FINGERPRINT_LINE = re.compile(r"^[ \t]*keygate-fp:([A-Za-z0-9_\-.]+)[ \t]*$", re.MULTILINE)
# What a fingerprint of ours can be: a signed token (URL-safe base64 and dots) no longer
# than the column that records it (WatermarkCopy.fingerprint). Anything else read from a
# found file names nobody, and is not looked up: PostgreSQL refuses a NUL in a query.
FINGERPRINT_FORMAT = re.compile(r"[A-Za-z0-9_\-.]{1,200}")
DEFAULT_TEMPLATE = "Licensed to {name} <{email}> · Order {order} · {date}"
TEMPLATE_FIELDS = ("name", "email", "order", "date")

STAMP_WIDTH = 595.0  # points: an A4 width; the strip is scaled to each page's width
STAMP_HEIGHT = 16.0


class WatermarkError(Exception):
    """The file cannot be stamped (encrypted, broken, not a PDF/ZIP). Retrying won't help."""


# What a copy stamped now is (WatermarkCopy.stamp_version). 2: a ZIP's LICENSE.txt holds no
# license key (copies are kept in storage, where nothing holds a key in the clear). 3: a ZIP
# of one folder (a WordPress plugin or theme) has its LICENSE.txt in that folder; a ZIP copy
# from before is stamped anew at its next click.
ZIP_LICENSE_IN_ITS_FOLDER = 3
STAMP_VERSION = ZIP_LICENSE_IN_ITS_FOLDER


@dataclass(frozen=True)
class Stamp:
    """What goes on a buyer's copy."""

    name: str
    email: str
    order: str
    date: str
    fingerprint: str
    product: str | None = None
    template: str = DEFAULT_TEMPLATE

    @property
    def text(self) -> str:
        values = {"name": self.name, "email": self.email, "order": self.order, "date": self.date}
        try:
            return defused(self.template.format_map(values))
        except (KeyError, IndexError, ValueError, AttributeError, TypeError):
            # A template that cannot be filled in ("{nmae}", "{name.first}") must not stop
            # deliveries: use the default. Settings refuse such a template at boot; this is
            # for a Stamp made with one all the same.
            return defused(DEFAULT_TEMPLATE.format_map(values))

    @property
    def marker(self) -> str:
        return FINGERPRINT_PREFIX + self.fingerprint


# What reorders the text after it where the text is shown (bidi embeddings, overrides and
# isolates): in a buyer's name, it could make LICENSE.txt show the buyer's own address
# backwards after another that reads right. Plain text in any script needs none of them.
BIDI_CONTROLS = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


def defused(text: str) -> str:
    """``text`` as a stamp shows it: one line, in the order it was typed, and never with a
    fingerprint marker in it.

    A buyer's name is theirs to type: one holding another buyer's marker (read from a copy
    that leaked) would put it on the stamp's line, ahead of the copy's own, and leak lookup
    would name that other buyer for this buyer's copy. A space before the colon keeps the
    text readable and reads as no marker. A line break (in a name stored before they were
    refused) would start a line of its own in LICENSE.txt ("Order: ..."): it is a space.
    """
    text = "".join(
        " " if unicodedata.category(char) == "Cc" else char
        for char in text.translate(BIDI_CONTROLS)
    )
    return text.replace(FINGERPRINT_PREFIX, FINGERPRINT_PREFIX[:-1] + " :")


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot be the stamp line, or None if it can.

    Its fields must be the plain names of TEMPLATE_FIELDS: the values are text, so an
    attribute or index lookup ("{name.first}") has nothing to find, and a format that text
    does not take ("{date:%Y}") fails; both are tried here on sample values.
    """
    if not template.strip():  # a strip with the hidden fingerprint alone tells the buyer nothing
        return (
            "is blank; leave it unset for the default line or give one, such as Licensed to {name}"
        )
    try:
        fields = [
            field for _, field, _, _ in string.Formatter().parse(template) if field is not None
        ]
    except ValueError as exc:
        return f"is not a valid template ({exc})"
    allowed = " ".join(f"{{{name}}}" for name in TEMPLATE_FIELDS)
    for field in fields:
        if field not in TEMPLATE_FIELDS:
            return f"has the field {{{field}}}; the fields are {allowed}"
    try:
        template.format_map(dict.fromkeys(TEMPLATE_FIELDS, "sample"))
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as exc:
        return f"cannot be filled in ({type(exc).__name__}: {exc}); the fields are {allowed}"
    return None


# Drawn in place of a character that no embedded font has (Syriac, Tibetan, emoji):
# the buyer sees that something stood there, and the rest of the line (email, order) and
# the hidden fingerprint still name them. Noto Sans has this glyph.
REPLACEMENT_CHARACTER = "\ufffd"

FONT_SIZE = 7.0
MIN_FONT_SIZE = 3.0  # a longer line is shrunk to this, then its name is cut short
BASELINE = STAMP_HEIGHT - 5  # points from the top of the strip
MARGIN = 12.0  # points left and right of the line
LINE_WIDTH = STAMP_WIDTH - 2 * MARGIN


@functools.lru_cache(maxsize=1)
def main_font_path() -> Path:
    """Noto Sans (Latin, Greek, Cyrillic), from PyPI's fontpkg-noto-sans: the stamp's font."""
    import fontpkg

    return fontpkg.path("Noto Sans")


@functools.lru_cache(maxsize=1)
def cjk_font_path() -> Path:
    """Noto Sans CJK JP, from PyPI: the fallback for what Noto Sans lacks (CJK, Hangul)."""
    import noto_cjk_sans_jp_regular

    folder = Path(noto_cjk_sans_jp_regular.__file__).parent
    fonts = sorted(folder.glob("*.otf"))
    if not fonts:  # pragma: no cover - a broken install
        raise RuntimeError("the noto-cjk-sans-jp-regular package has no font file")
    return fonts[0]


@functools.lru_cache(maxsize=1)
def arabic_font_path() -> Path:
    """Noto Sans Arabic, from PyPI's fontpkg-noto-sans-arabic: Arabic, Persian and Urdu."""
    import fontpkg

    return fontpkg.path("Noto Sans Arabic")


@functools.lru_cache(maxsize=1)
def hebrew_font_path() -> Path:
    """Arimo, from PyPI's fontpkg-arimo, for its Hebrew (letters and points): PyPI has no
    Noto Sans Hebrew package of its own, and of the fonts compared (Heebo, Assistant, Rubik,
    Open Sans) Arimo covers Hebrew the most fully."""
    import fontpkg

    return fontpkg.path("Arimo")


@functools.lru_cache(maxsize=1)
def thai_font_path() -> Path:
    """Noto Sans Thai, from PyPI's fontpkg-noto-sans-thai."""
    import fontpkg

    return fontpkg.path("Noto Sans Thai")


@functools.lru_cache(maxsize=1)
def bengali_font_path() -> Path:
    """Hind Siliguri (regular), from PyPI's fontpkg-hind-siliguri, for Bengali: PyPI has no
    Noto Sans Bengali package of its own, and Hind Siliguri is a sans serif with Bengali's
    conjuncts."""
    import fontpkg

    return fontpkg.path("Hind Siliguri")


# The scripts drawn in a Noto Sans font of their own from PyPI's manimgx-fonts (Noto as the
# Noto project publishes it, OFL, one 3.4 MB wheel; each file holds one script's letters
# and marks, no Latin): most spoken first, as the family's file names spell them. PyPI has
# no package of Noto Sans Kannada, Malayalam, Gujarati, Gurmukhi, Sinhala, Georgian or
# Armenian on its own, and one package for them all is one pin, not thirteen.
NOTO_SCRIPTS = (
    *("Tamil", "Telugu", "Kannada", "Malayalam", "Gujarati", "Gurmukhi", "Sinhala"),
    *("Khmer", "Lao", "Myanmar", "Georgian", "Armenian", "Ethiopic"),
)


@functools.cache
def script_font_path(script: str) -> Path:
    """Noto Sans ``script`` (one of NOTO_SCRIPTS: "Tamil" is Noto Sans Tamil), from PyPI's
    manimgx-fonts."""
    import manimgx_fonts

    family = f"NotoSans{script}"
    folder = Path(manimgx_fonts.__file__).parent
    # "NotoSansTamil[wght].ttf" (a variable font: fpdf2 draws its default, regular, instance)
    fonts = sorted(
        path for path in folder.glob("*.ttf") if re.fullmatch(rf"{family}(\[.*\])?\.ttf", path.name)
    )
    if not fonts:  # pragma: no cover - a broken install, or a release without the script
        raise RuntimeError(f"the manimgx-fonts package has no {family} font file")
    return fonts[0]


@dataclass(frozen=True)
class FallbackFont:
    """A font for letters Noto Sans lacks."""

    name: str
    path: Callable[[], Path]


# In the order they are tried for a letter Noto Sans lacks. Each is read and embedded only
# in a stamp whose line needs it: subsetting a big font is most of a stamp's time.
FALLBACK_FONTS = (
    FallbackFont("stamp-cjk", cjk_font_path),
    FallbackFont("stamp-arabic", arabic_font_path),
    FallbackFont("stamp-hebrew", hebrew_font_path),
    FallbackFont("stamp-thai", thai_font_path),
    FallbackFont("stamp-bengali", bengali_font_path),
    *(
        FallbackFont(f"stamp-{script.lower()}", functools.partial(script_font_path, script))
        for script in NOTO_SCRIPTS
    ),
)


@functools.cache
def _letters_of(font: FallbackFont) -> frozenset[int]:
    """The code points fallback ``font`` draws; none when its file cannot be found or read
    (a font package missing, or a release without the file): that script's letters are then
    drawn as REPLACEMENT_CHARACTER, logged once per process, and the paid download that
    needs the stamp is still served."""
    try:
        return _characters_of(font.path())
    except Exception:  # ImportError, RuntimeError, OSError, fontTools' own: any of them
        log.warning("stamp font %s cannot be read: its letters are drawn as U+FFFD", font.name)
        return frozenset()


@functools.cache
def _can_shape() -> bool:
    """Whether HarfBuzz (uharfbuzz, which fpdf2 shapes with) can be imported. It is a
    dependency, but an update installed without it would otherwise fail every stamp with
    an Arabic or Devanagari name, and the paid downloads they are for: such a line is then
    drawn glyph for glyph (letters unjoined, marks beside their letter), logged once per
    process."""
    try:
        import uharfbuzz  # noqa: F401
    except ImportError:
        log.warning("uharfbuzz cannot be imported: stamp lines are drawn without shaping")
        return False
    return True


# The scripts (Unicode Script property, UAX #24, as ISO 15924 codes) whose text is not drawn
# one glyph per character from left to right: letters joined (Arabic), lines right to left
# (Arabic, Hebrew), conjuncts and vowel signs placed before, above or around their consonant
# (the Indic scripts: "क्षि" is two glyphs, the vowel sign first), marks stacked on letters
# (Thai, Lao, Tibetan). A stamp line that draws a character of one of them is shaped by
# HarfBuzz, whichever font draws it, Noto Sans (Devanagari) or a fallback; a line without
# (Latin, Greek, Cyrillic, CJK, Hangul, and U+FFFD for a script no font has) is drawn glyph
# for glyph, as it always was and at no extra cost. Characters of no script of their own
# (digits, punctuation: Common; combining marks, joiners: Inherited) decide nothing. The
# codes are those fontTools' script() gives a letter: Lao is "Laoo", not "Lao".
SHAPED_SCRIPTS = frozenset(
    {
        *("Arab", "Syrc", "Nkoo", "Hebr", "Thaa"),
        *("Deva", "Beng", "Guru", "Gujr", "Orya", "Taml", "Telu", "Knda", "Mlym", "Sinh"),
        *("Thai", "Laoo", "Khmr", "Mymr", "Tibt"),
    }
)


@functools.lru_cache(maxsize=len(FALLBACK_FONTS) + 1)
def _characters_of(font: Path) -> frozenset[int]:
    """The code points ``font`` has a glyph for, read once per process."""
    from fontTools.ttLib import TTFont

    with TTFont(font, lazy=True) as ttfont:
        return frozenset(ttfont.getBestCmap())


class DrawableLine(NamedTuple):
    """The stamp line as it is drawn, the fallback fonts it needs (in FALLBACK_FONTS order,
    which is the order fpdf2 tries them in), and whether it is shaped (see SHAPED_SCRIPTS)."""

    text: str
    fallbacks: tuple[FallbackFont, ...]
    shaped: bool


# Zero width non-joiner and joiner: between two letters of a script that joins them or
# makes conjuncts of them, they decide how the letters are drawn (Persian "نازنین‌زهرا":
# the ن before the ZWNJ ends a word's shape and the ز starts one; Hindi "क्‍ष" with a ZWJ:
# a half क, not the conjunct क्ष). Only there are they kept.
JOINERS = frozenset("\u200c\u200d")


def _drawable_line(text: str) -> DrawableLine:
    """The stamp line as it is drawn, the fonts it needs and whether it is shaped.

    Composed (NFC) so an accent typed as a separate mark sits on its letter; a control
    character (a tab or line break in a name) becomes a space, as the line is one line;
    invisible format characters (direction marks, zero width space) are left out, as they
    draw nothing, and so are JOINERS unless they stand between two letters of one of the
    SHAPED_SCRIPTS that a font draws; a character no font has becomes
    REPLACEMENT_CHARACTER rather than vanishing. No invisible character is left in or
    around a fingerprint marker (ASCII, no script of SHAPED_SCRIPTS): one typed in it to
    hide it is dropped, and the marker, whole again, is :func:`defused`.
    """
    from fontTools.unicodedata import script

    main = _characters_of(main_font_path())

    def font_for(char: str) -> FallbackFont | None:
        return next((font for font in FALLBACK_FONTS if ord(char) in _letters_of(font)), None)

    def joins(before: str | None, after: str) -> bool:
        """Does a joiner stand between letters of one shaped script (``before`` the script
        of the letter before it), the letter ``after`` it drawn by a font?"""
        return (
            before in SHAPED_SCRIPTS
            and script(after) == before
            and (ord(after) in main or font_for(after) is not None)
        )

    composed = unicodedata.normalize("NFC", text)
    drawn: list[str] = []
    needed: set[FallbackFont] = set()
    shaped = False
    letter_script: str | None = None  # of the last character drawn, marks and joiners aside
    for at, char in enumerate(composed):
        category = unicodedata.category(char)
        if category == "Cf":
            if char in JOINERS and joins(letter_script, composed[at + 1 : at + 2] or " "):
                drawn.append(char)  # Noto Sans and the shaped fallback fonts all have both
            continue
        if category == "Cc":
            char = " "
        if ord(char) not in main:
            font = font_for(char)
            if font is None:
                char = REPLACEMENT_CHARACTER
            else:
                needed.add(font)
        if char.isascii():  # Latin or Common: most lines are looked up no further
            letter_script = None
        else:
            char_script = script(char)
            shaped = shaped or char_script in SHAPED_SCRIPTS
            if char_script != "Zinh":
                letter_script = char_script
        drawn.append(char)
    # Again: a marker split by an invisible character ("keygate\u200b-fp:") is whole now.
    fonts = tuple(font for font in FALLBACK_FONTS if font in needed)
    return DrawableLine(defused("".join(drawn)), fonts, shaped)


def _paragraph_direction(stamp: Stamp) -> str | None:
    """The line's direction, "ltr" or "rtl": that of the first letter of the template's own
    words (the owner's language), or None when they have none ("{name} <{email}>"): then
    the line's first letter decides, as in any text (Unicode bidi, rules P2 and P3)."""
    blank = dataclasses.replace(stamp, name="", email="", order="", date="")
    for char in blank.text:
        direction = unicodedata.bidirectional(char)
        if direction == "L":
            return "ltr"
        if direction in ("R", "AL"):
            return "rtl"
    return None


@functools.cache
def _stamp_pdf_class() -> type[FPDF]:
    """fpdf2's FPDF, with a combining mark or joiner kept in the run of the letter before it.

    (A class made on first use: fpdf2 is imported only by what draws a stamp.)
    """
    from fpdf import FPDF

    class StampPDF(FPDF):
        # The runs a line is drawn (and measured) as: split by direction, font and script.
        def _preload_bidirectional_text(self, text: str, markdown: bool) -> Sequence[Fragment]:
            runs = super()._preload_bidirectional_text(text, markdown)
            return tuple(_marks_kept_with_their_letters(runs))

    return StampPDF


def _marks_kept_with_their_letters(runs: Iterable[Fragment]) -> Iterator[Fragment]:
    """Undo fpdf2's split of a run at each combining mark or joiner.

    fpdf2 starts a new run (shaped by HarfBuzz on its own) wherever the Unicode script
    changes, and counts the script of marks and joiners (Inherited) as a change: "مُحَمَّد"
    with its vowel marks became seven runs, no two letters joined, no mark placed on its
    letter. A joiner also gets a run of its own in the line's direction (its bidi class,
    BN, is given the paragraph's level), which put "زهرا" of "نازنین‌زهرا" to the right
    of "نازنین", and in Noto Sans, which has it, while the letters are in Noto Sans Arabic.
    As Unicode has it (UAX #24), a mark or joiner belongs to the letter before it: a run of
    them joins the run before (font, direction) when that run's font has them, and the run
    after them joins too when it has the same font, direction and script.
    """
    from fontTools.unicodedata import script
    from fpdf.fonts import TTFFont

    def scripts(run: Fragment) -> set[str]:
        return {script(char) for char in run.characters} - {"Zyyy", "Zinh"}

    merged: Fragment | None = None
    for run in runs:
        if merged is not None and type(run) is type(merged) and run.link == merged.link:
            font = merged.font
            marks_only = all(script(char) == "Zinh" for char in run.characters)
            drawable = isinstance(font, TTFFont) and all(
                ord(char) in font.cmap for char in run.characters
            )
            continues = (
                merged.characters
                and script(merged.characters[-1]) == "Zinh"
                and run.graphics_state == merged.graphics_state
                and scripts(run) == scripts(merged)
            )
            if (marks_only and drawable) or continues:
                merged = merged.clone(characters=merged.characters + run.characters)
                continue
        if merged is not None:
            yield merged
        merged = run
    if merged is not None:
        yield merged


def render_stamp(stamp: Stamp) -> bytes:
    """A one-page PDF strip with the buyer's line and the invisible fingerprint marker."""
    from fpdf.enums import TextMode

    pdf = _stamp_pdf_class()(unit="pt", format=(STAMP_WIDTH, STAMP_HEIGHT))
    pdf.set_auto_page_break(False)
    pdf.set_margin(0)
    pdf.c_margin = 0
    pdf.add_page()
    text, fallbacks, shaped = _drawable_line(stamp.text)
    pdf.add_font("stamp", "", str(main_font_path()))
    # Only the fonts the line needs: reading and subsetting the 16 MB CJK font is most of a
    # stamp's time.
    for font in fallbacks:
        pdf.add_font(font.name, "", str(font.path()))
    if fallbacks:
        pdf.set_fallback_fonts([font.name for font in fallbacks])
    if shaped and _can_shape():
        # HarfBuzz joins Arabic letters, forms Devanagari conjuncts and places marks; fpdf2
        # splits the line into runs by the Unicode bidi algorithm, each shaped in its own
        # direction, and orders the runs (an Arabic name reads right to left, the email
        # after it left to right). Widths below are the shaped ones. Lines without those
        # scripts (SHAPED_SCRIPTS) are drawn as before.
        pdf.set_text_shaping(True, direction=_paragraph_direction(stamp))
    pdf.set_font("stamp", size=FONT_SIZE)
    pdf.set_text_color(110, 110, 110)
    # Long names must stay on the strip: shrink the type rather than cut the text. The
    # width counts each character in the font it is drawn with.
    width = pdf.get_string_width(text)
    if width > LINE_WIDTH:
        pdf.set_font_size(max(MIN_FONT_SIZE, FONT_SIZE * LINE_WIDTH / width))
        if width * MIN_FONT_SIZE / FONT_SIZE > LINE_WIDTH:
            text = _shortened_line(pdf, stamp)
    # cell(), not text(): only cell() and write() switch to the fallback font. fpdf2 sets
    # a cell's baseline 0.5 h + 0.3 size below its top; with h = size that is 0.8 size.
    pdf.set_xy(MARGIN, BASELINE - 0.8 * pdf.font_size)
    if text:  # fpdf2 refuses an empty cell: a template without words, a name of joiners
        pdf.cell(h=pdf.font_size, text=text)
    pdf.set_text_shaping(False)  # the marker: plain text in a core font
    pdf.set_font("helvetica", size=1)
    pdf.text_mode = TextMode.INVISIBLE
    pdf.text(1, 1, stamp.marker)
    strip = _with_identity_encoding(bytes(pdf.output()))
    return _with_unmapped_glyphs_read_as_nothing(strip) if shaped else strip


def _shortened_line(pdf: FPDF, stamp: Stamp) -> str:
    """The stamp's line with the buyer's name cut short (and "…" after it) as far as the
    line must be to fit the strip at ``pdf``'s font size.

    Without this, text past the strip's end is cut off where it is drawn: a name of a few
    hundred letters (a buyer may type one on purpose) pushed their address, the order and
    the date off every page. The fingerprint names them all the same.
    """

    def line(length: int) -> str:
        name = stamp.name if length == len(stamp.name) else stamp.name[:length].rstrip() + "…"
        return _drawable_line(dataclasses.replace(stamp, name=name).text).text

    shortest, longest = 0, len(stamp.name)
    while shortest < longest:  # the longest name whose line fits (0: "…" alone)
        middle = (shortest + longest + 1) // 2
        if pdf.get_string_width(line(middle)) <= LINE_WIDTH:
            shortest = middle
        else:
            longest = middle - 1
    return line(shortest)


_CIDCHAR = re.compile(rb"<([0-9A-Fa-f]{4})>\s+(\d+)")
_BFCHAR = re.compile(rb"<([0-9A-Fa-f]{4})>\s+<([0-9A-Fa-f]+)>")


def _with_identity_encoding(strip_bytes: bytes) -> bytes:
    """Re-encode the strip's CJK font to Identity-H (codes = CIDs).

    fpdf2 gives CFF fonts an embedded code-to-CID CMap that several text extractors
    (pypdf among them) read as one-byte codes; with Identity-H every reader gets the text.
    The strip's text objects name their font (Tf) before each run, Noto Sans and the CJK
    font in turn, and are shown with Tj: that is all this reads.
    """
    import io

    with pikepdf.open(io.BytesIO(strip_bytes)) as pdf:
        page = pdf.pages[0]
        fonts = page.resources.get("/Font") or pikepdf.Dictionary()
        code_to_cid: dict[str, dict[int, int]] = {}
        for font_name, font in fonts.items():
            encoding = font.get("/Encoding")
            if not isinstance(encoding, pikepdf.Stream):
                continue
            mapping = {
                int(code, 16): int(cid) for code, cid in _CIDCHAR.findall(encoding.read_bytes())
            }
            code_to_cid[font_name] = mapping
            to_unicode = font.get("/ToUnicode")
            if isinstance(to_unicode, pikepdf.Stream):
                pairs = _BFCHAR.findall(to_unicode.read_bytes())
                lines = [
                    b"<%04X> <%s>" % (mapping.get(int(code, 16), int(code, 16)), uni)
                    for code, uni in pairs
                ]
                to_unicode.write(_to_unicode_cmap(lines))
            font.Encoding = pikepdf.Name("/Identity-H")
        if not code_to_cid:
            return strip_bytes
        current: dict[int, int] | None = None
        instructions: list[pikepdf.ContentStreamInstruction | pikepdf.ContentStreamInlineImage] = []
        for instruction in pikepdf.parse_content_stream(page):
            if isinstance(instruction, pikepdf.ContentStreamInlineImage):
                instructions.append(instruction)
                continue
            operands, operator = list(instruction.operands), instruction.operator
            if operator == pikepdf.Operator("Tf"):
                current = code_to_cid.get(str(operands[0]))
            elif operator == pikepdf.Operator("Tj") and current is not None:
                raw = bytes(operands[0])
                codes = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
                operands = [
                    pikepdf.String(b"".join(current.get(c, c).to_bytes(2, "big") for c in codes))
                ]
            instructions.append(pikepdf.ContentStreamInstruction(operands, operator))
        page.Contents = pdf.make_stream(pikepdf.unparse_content_stream(instructions))
        out = io.BytesIO()
        pdf.save(out)
        return out.getvalue()


def _with_unmapped_glyphs_read_as_nothing(strip_bytes: bytes) -> bytes:
    """Give each glyph drawn without a ToUnicode entry an empty one.

    Shaping can draw one letter as two glyphs (Noto Sans Arabic draws "ب" as its dotless
    form and a dot): fpdf2 maps the letter to the first and nothing to the second, and text
    extractors then read that glyph's code as a character of its own (pypdf gives "\x07").
    Mapped to nothing, the name is read as typed.
    """
    import io

    with pikepdf.open(io.BytesIO(strip_bytes)) as pdf:
        page = pdf.pages[0]
        fonts = page.resources.get("/Font") or pikepdf.Dictionary()
        drawn: dict[str, set[int]] = {}
        current: set[int] | None = None
        for instruction in pikepdf.parse_content_stream(page):
            if isinstance(instruction, pikepdf.ContentStreamInlineImage):
                continue
            operands, operator = instruction.operands, instruction.operator
            if operator == pikepdf.Operator("Tf"):
                font = fonts.get(str(operands[0]))
                is_type0 = font is not None and font.get("/Subtype") == pikepdf.Name.Type0
                current = drawn.setdefault(str(operands[0]), set()) if is_type0 else None
            elif operator == pikepdf.Operator("Tj") and current is not None:
                raw = bytes(operands[0])
                current.update(int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2))
        for font_name, codes in drawn.items():
            to_unicode = fonts[font_name].get("/ToUnicode")
            if not isinstance(to_unicode, pikepdf.Stream):
                continue
            pairs = _BFCHAR.findall(to_unicode.read_bytes())
            mapped = {int(code, 16) for code, _ in pairs}
            if codes <= mapped:
                continue
            lines = [b"<%s> <%s>" % (code, uni) for code, uni in pairs]
            lines += [b"<%04X> <>" % code for code in sorted(codes - mapped)]
            to_unicode.write(_to_unicode_cmap(lines))
        out = io.BytesIO()
        pdf.save(out)
        return out.getvalue()


def _to_unicode_cmap(lines: list[bytes]) -> bytes:
    body = b"\n".join(lines)
    return (
        b"/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n"
        b"/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n"
        b"/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n"
        b"1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n"
        + b"%d beginbfchar\n" % len(lines)
        + body
        + b"\nendbfchar\nendcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n"
    )


def stamp_pdf(source: Path, target: Path, stamp: Stamp) -> None:
    """Write ``source`` to ``target`` with the stamp on every page and the fingerprint hidden.

    Raises:
        WatermarkError: the PDF is encrypted or cannot be read.
    """
    try:
        pdf = pikepdf.open(source)
    except pikepdf.PasswordError:
        raise WatermarkError("the PDF is encrypted (it needs a password to open)") from None
    except (pikepdf.PikepdfError, OSError, ValueError) as exc:  # PdfError, QpdfRuntimeError
        raise WatermarkError(f"the PDF cannot be read ({type(exc).__name__})") from None
    with pdf:
        if pdf.is_encrypted:
            raise WatermarkError("the PDF is encrypted; stamping would drop its protection")
        stamp_pdf_open(pdf, render_stamp(stamp), stamp.fingerprint)
        try:
            # Copy the original streams as they are: no decoding, no recompression.
            pdf.save(
                target,
                compress_streams=False,
                stream_decode_level=pikepdf.StreamDecodeLevel.none,
            )
        except (pikepdf.PikepdfError, OSError, ValueError) as exc:
            raise WatermarkError(f"the PDF cannot be rewritten ({type(exc).__name__})") from None


def stamp_pdf_open(pdf: pikepdf.Pdf, stamp_pdf_bytes: bytes, fingerprint: str) -> None:
    """Place the stamp strip (a one-page PDF) at the foot of every page of ``pdf``."""
    import io

    with pikepdf.open(io.BytesIO(stamp_pdf_bytes)) as strip:
        form = pdf.copy_foreign(strip.pages[0].as_form_xobject())
    form[FINGERPRINT_KEY] = pikepdf.String(fingerprint)
    for page in pdf.pages:
        try:
            # pikepdf reads /Rotate as set on the page or inherited from its page tree.
            rect = _foot_strip(_shown_box(page), page.rotation)
            name = page.add_resource(form, pikepdf.Name.XObject, prefix="Kg")
            # qpdf turns the strip against the page's /Rotate, so it reads upright.
            placement = page.calc_form_xobject_placement(
                form, name, rect, invert_transformations=True
            )
            # Wrap the page's own content in q/Q so its graphics state cannot move the
            # stamp; add streams instead of rewriting (coalescing) the page's content. A
            # content list naming an object the file lacks (read as null) is refused here.
            page.contents_add(pikepdf.Stream(pdf, b"q\n"), prepend=True)
            page.contents_add(pikepdf.Stream(pdf, b"Q\n" + placement), prepend=False)
        except (pikepdf.PikepdfError, ValueError, TypeError, KeyError) as exc:
            raise WatermarkError(f"a page cannot be stamped ({type(exc).__name__})") from None
    pdf.docinfo[FINGERPRINT_KEY] = pikepdf.String(fingerprint)


def _shown_box(page: pikepdf.Page) -> tuple[float, float, float, float]:
    """The part of the page a viewer shows, as its lower left and upper right corners: the
    CropBox within the MediaBox (PDF 32000-1, 14.11.2: a CropBox reaching past the MediaBox
    counts as the two's intersection; one with nothing in common, as the MediaBox). Along
    the CropBox's own edge the stamp would be off the page, in part or whole, where the
    CropBox is larger (a bleed) or the MediaBox was cut down and the CropBox left as it was.
    """
    crop = _corners(page.cropbox)
    if page.mediabox is None:  # none on the page or its tree: the CropBox alone
        return crop
    media = _corners(page.mediabox)
    llx, lly = max(crop[0], media[0]), max(crop[1], media[1])
    urx, ury = min(crop[2], media[2]), min(crop[3], media[3])
    return (llx, lly, urx, ury) if llx < urx and lly < ury else media


def _corners(box: pikepdf.Array) -> tuple[float, float, float, float]:
    """A rectangle's lower left and upper right corners, whichever corners it names."""
    llx, lly, urx, ury = (float(v) for v in box)
    return min(llx, urx), min(lly, ury), max(llx, urx), max(lly, ury)


def _foot_strip(box: tuple[float, float, float, float], rotation: int) -> pikepdf.Rectangle:
    """The strip, in the page's own coordinates, along the edge a reader sees at the foot
    of the page (``box``, :func:`_shown_box`) once the viewer has applied /Rotate
    (clockwise; an angle that is not a quarter turn counts as none)."""
    llx, lly, urx, ury = box
    # The strip is shrunk to fit a narrow page but never enlarged: as deep as it is drawn.
    if rotation in (90, 270):  # the page's height is the width a reader sees
        depth = min(ury - lly, STAMP_WIDTH) * STAMP_HEIGHT / STAMP_WIDTH
        if rotation == 90:  # the right edge is shown at the foot
            return pikepdf.Rectangle(urx - depth, lly, urx, ury)
        return pikepdf.Rectangle(llx, lly, llx + depth, ury)
    depth = min(urx - llx, STAMP_WIDTH) * STAMP_HEIGHT / STAMP_WIDTH
    if rotation == 180:  # the top edge is shown at the foot
        return pikepdf.Rectangle(llx, ury - depth, urx, ury)
    return pikepdf.Rectangle(llx, lly, urx, lly + depth)


def license_text(stamp: Stamp) -> str:
    lines = [
        "License",
        "=======",
        "",
        defused(f"Licensed to: {stamp.name} <{stamp.email}>"),
        defused(f"Order: {stamp.order}"),
        defused(f"Date: {stamp.date}"),
    ]
    if stamp.product:
        lines.append(defused(f"Product: {stamp.product}"))
    # Not the license key: the copy is kept in storage, where nothing holds a key in the
    # clear (the buyer has it in their mail and on their portal page).
    lines += ["", "This copy is for the buyer named above only.", "", stamp.marker, ""]
    return "\n".join(lines)


def stamp_zip(source: Path, target: Path, stamp: Stamp) -> str:
    """Copy the ZIP with LICENSE.txt added (in its one top folder, if it has one) and the
    comment set; returns the member's name.

    Existing members are copied byte for byte (append mode rewrites only the directory).

    Raises:
        WatermarkError: ``source`` is not a readable ZIP.
    """
    if not zipfile.is_zipfile(source):
        raise WatermarkError("the file is not a ZIP archive")
    shutil.copyfile(source, target)
    try:
        with zipfile.ZipFile(target, "a") as archive:
            names = archive.namelist()
            folder = _one_top_folder(names)
            inside = [name.removeprefix(folder) for name in names if name.startswith(folder)]
            member = folder + _unused_license_name(inside)
            archive.writestr(member, license_text(stamp), compress_type=zipfile.ZIP_DEFLATED)
            comment = f"{stamp.text}\n{stamp.marker}".encode()
            archive.comment = comment[:65535]
    # NotImplementedError: a member needing a version of the format zipfile does not know;
    # struct.error: a central directory whose offsets cannot be written back (it says it
    # starts past the end of the archive). Both are damaged archives, as BadZipFile is.
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, struct.error) as exc:
        target.unlink(missing_ok=True)
        raise WatermarkError(f"the ZIP cannot be rewritten ({type(exc).__name__})") from None
    return member


# What macOS's Finder adds beside the folder it packs; WordPress skips it when it unpacks.
MACOS_FOLDER = "__MACOSX/"


def _one_top_folder(names: list[str]) -> str:
    """The one folder ("plugin/") every member of the archive is in, or "" when there is
    none (files at the top, or several folders).

    The buyer's license goes in it: WordPress installs an uploaded plugin or theme from the
    archive's one top folder, and with a file beside that folder it takes the whole archive
    as the plugin's folder and finds no plugin in it ("No valid plugins were found.").
    """
    tops = {
        name.partition("/")[0] + "/" if "/" in name else name
        for name in names
        if not name.startswith(MACOS_FOLDER)
    }
    if len(tops) != 1:
        return ""
    (top,) = tops
    return top if top.endswith("/") and top != "/" else ""


def _unused_license_name(names: list[str]) -> str:
    """LICENSE.txt, else the first of LICENSE-buyer.txt, LICENSE-buyer-2.txt, ... that the
    archive does not have. Compared without case: unpacked on Windows or macOS, License.txt
    and LICENSE.txt are one file, and a name twice in one archive is one file anywhere
    (unzip tools keep either). The leak lookup reads every member named LICENSE*, at the
    top or in a top folder (:func:`_one_top_folder`)."""
    taken = {name.casefold() for name in names}
    candidates = itertools.chain(
        ["LICENSE.txt", "LICENSE-buyer.txt"],
        (f"LICENSE-buyer-{number}.txt" for number in itertools.count(2)),
    )
    return next(name for name in candidates if name.casefold() not in taken)


def read_fingerprints(path: Path) -> list[str]:
    """Every fingerprint found in a PDF or ZIP (metadata first, then the hidden markers),
    of those that have FINGERPRINT_FORMAT."""
    found = _zip_fingerprints(path) if zipfile.is_zipfile(path) else _pdf_fingerprints(path)
    return [fingerprint for fingerprint in found if FINGERPRINT_FORMAT.fullmatch(fingerprint)]


# What a damaged archive or member raises while it is read: zipfile's own error, its
# decompressors' (zlib, lzma; bz2's is an OSError), data cut short (EOFError), a method
# zipfile lacks (NotImplementedError), a member that needs a password (RuntimeError), a
# name that is not UTF-8 (UnicodeDecodeError, a ValueError).
_UNREADABLE_ZIP = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    NotImplementedError,
    RuntimeError,
    OSError,
    ValueError,
)


def _markers_in(texts: list[str]) -> list[str]:
    """The markers in ``texts``, those on a line of their own first: ours are. A copy
    stamped before names were :func:`defused` may hold another on its stamp's line."""
    alone = [found for text in texts for found in FINGERPRINT_LINE.findall(text)]
    anywhere = [found for text in texts for found in FINGERPRINT_PATTERN.findall(text)]
    return list(dict.fromkeys(alone + anywhere))


def _zip_fingerprints(path: Path) -> list[str]:
    texts: list[str] = []
    try:
        with zipfile.ZipFile(path) as archive:
            texts.append(archive.comment.decode("utf-8", "replace"))
            for info in archive.infolist():
                folder, _, name = info.filename.rpartition("/")
                ours = name.startswith("LICENSE") and "/" not in folder
                if ours and info.file_size < 1_000_000:
                    try:
                        texts.append(archive.read(info).decode("utf-8", "replace"))
                    except _UNREADABLE_ZIP:
                        continue  # this member is damaged; the comment or another may tell
    except _UNREADABLE_ZIP:
        pass
    return _markers_in(texts)


def _pdf_fingerprints(path: Path, max_pages: int = 20) -> list[str]:
    found: list[str] = []
    opened = False
    try:
        with pikepdf.open(path) as pdf:
            opened = True
            value = pdf.docinfo.get(FINGERPRINT_KEY)
            if value is not None:
                found.append(str(value))
            for page in list(pdf.pages)[:max_pages]:
                xobjects = page.resources.get("/XObject")
                # Ours is a dictionary of streams; a found file may hold anything there (an
                # array, a number), which holds no stamp of ours.
                if not isinstance(xobjects, pikepdf.Dictionary):
                    continue
                for _, xobject in xobjects.items():
                    if not isinstance(xobject, pikepdf.Stream):
                        continue
                    mark = xobject.get(FINGERPRINT_KEY)
                    if mark is not None:
                        found.append(str(mark))
    except (pikepdf.PikepdfError, OSError, ValueError):  # PdfError, QpdfRuntimeError, ...
        pass
    # Junk where the metadata should be (a NUL, a dictionary) must not hide the markers.
    found = [fingerprint for fingerprint in found if FINGERPRINT_FORMAT.fullmatch(fingerprint)]
    if not found and opened:
        # Metadata and XObject keys can be lost when a copy is rewritten by other tools;
        # the invisible text on the pages usually survives. (A file qpdf cannot open at all
        # is no PDF: pypdf would only log its complaints about it.)
        found += _pdf_text_markers(path, max_pages)
    return list(dict.fromkeys(found))


def _pdf_text_markers(path: Path, max_pages: int) -> list[str]:
    from pypdf import PdfReader

    texts: list[str] = []
    try:
        reader = PdfReader(path)
        for page in reader.pages[:max_pages]:
            texts.append(page.extract_text() or "")
    except Exception:
        # Not only PyPdfError: pypdf parses in Python, and what it raises on a malformed
        # file is no closed list (KeyError, NotImplementedError for an unknown filter,
        # AssertionError, ...). Whatever it is, the pages read before still tell.
        return _markers_in(texts)
    return _markers_in(texts)
