#!/usr/bin/env python3
"""Benchmark: stamping a 500-page PDF with pikepdf vs ``qpdf --overlay``, and peak memory.

Run from the repository root:  .venv/bin/python bench/watermark.py

1. Time: the same 500-page PDF and the same stamp strip (one page rendered once with the
   embedded Unicode fonts) are stamped by Keygate's pikepdf code and by the qpdf command line
   (``qpdf --overlay``), both copying streams as they are. Median of several runs; the
   ratio pikepdf / qpdf is printed (target <= 1.0). The full job (strip rendering with the
   fonts included) is printed too, for a name with CJK letters (Noto Sans and Noto Sans CJK
   embedded), for a Latin-only one (Noto Sans alone), for an Arabic one (Noto Sans and
   Noto Sans Arabic, shaped by HarfBuzz) and for a Devanagari one (Noto Sans alone, shaped).
2. Memory: peak RSS of a fresh process stamping a ~5 MB and a ~200 MB PDF (target: flat).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pikepdf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from connector.downloads.watermark import (
    Stamp,
    render_stamp,
    stamp_pdf,
    stamp_pdf_open,
)

STAMP = Stamp(
    name="Jürgen Ø 山田",
    email="jurgen@example.org",
    order="10042",
    date="2026-11-24",
    fingerprint="bench-fingerprint",
)
# Most buyers: a name Noto Sans draws alone, so the CJK font is not embedded at all.
LATIN_STAMP = dataclasses.replace(STAMP, name="Łukasz Dvořák")
# A name Noto Sans lacks and that needs shaping: Noto Sans Arabic embedded, the line shaped.
ARABIC_STAMP = dataclasses.replace(STAMP, name="محمد عبد الله")
# A name Noto Sans has that needs shaping: no other font embedded, the line shaped.
DEVANAGARI_STAMP = dataclasses.replace(STAMP, name="क्षितिज शर्मा")


def text_pdf(path: Path, pages: int) -> Path:
    """A text-only PDF (one small content stream per page)."""
    pdf = pikepdf.new()
    font = pdf.make_indirect(
        pikepdf.Dictionary(
            Type=pikepdf.Name.Font, Subtype=pikepdf.Name.Type1, BaseFont=pikepdf.Name.Helvetica
        )
    )
    for number in range(pages):
        pdf.add_blank_page(page_size=(595, 842))
        page = pdf.pages[-1]
        page.Resources = pikepdf.Dictionary(Font=pikepdf.Dictionary(F1=font))
        lines = b"".join(b"(Line %d of page %d) Tj 0 -14 Td " % (i, number) for i in range(40))
        page.Contents = pdf.make_stream(b"BT /F1 11 Tf 72 780 Td " + lines + b"ET")
    pdf.save(path)
    return path


def image_pdf(path: Path, pages: int, image_bytes: int) -> Path:
    """A PDF whose size comes from incompressible images (like scanned books)."""
    side = int(image_bytes**0.5)
    pdf = pikepdf.new()
    for _ in range(pages):
        pdf.add_blank_page(page_size=(595, 842))
        page = pdf.pages[-1]
        image = pdf.make_stream(
            os.urandom(side * side),
            Type=pikepdf.Name.XObject,
            Subtype=pikepdf.Name.Image,
            Width=side,
            Height=side,
            ColorSpace=pikepdf.Name.DeviceGray,
            BitsPerComponent=8,
        )
        page.Resources = pikepdf.Dictionary(XObject=pikepdf.Dictionary(Im0=image))
        page.Contents = pdf.make_stream(b"q 500 0 0 500 47 170 cm /Im0 Do Q")
    pdf.save(path, compress_streams=False)
    return path


def pikepdf_stamp(source: Path, target: Path, strip: bytes) -> None:
    with pikepdf.open(source) as pdf:
        stamp_pdf_open(pdf, strip, STAMP.fingerprint)
        pdf.save(target, compress_streams=False, stream_decode_level=pikepdf.StreamDecodeLevel.none)


def qpdf_overlay(source: Path, target: Path, strip_path: Path) -> None:
    subprocess.run(
        [
            "qpdf",
            "--compress-streams=n",
            "--decode-level=none",
            str(source),
            "--overlay",
            str(strip_path),
            "--repeat=1",
            "--",
            str(target),
        ],
        check=True,
    )


def timed(fn: object, runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def peak_rss_child(path: Path, strip_path: Path | None) -> None:
    """Child process: stamp ``path`` (end to end, or with a ready strip), print peak MiB."""
    with tempfile.TemporaryDirectory() as folder:
        if strip_path is None:
            stamp_pdf(path, Path(folder) / "out.pdf", STAMP)
        else:
            pikepdf_stamp(path, Path(folder) / "out.pdf", strip_path.read_bytes())
    # VmHWM is this process image's own peak; ru_maxrss would carry the parent's peak
    # across fork and exec on Linux.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]) / 1024)
            return
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def measure_rss(path: Path, strip_path: Path | None = None) -> float:
    extra = ["--strip", str(strip_path)] if strip_path is not None else []
    output = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(path), *extra],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1] if __doc__ else None)
    parser.add_argument("--pages", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--strip", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        peak_rss_child(args.rss_child, args.strip)
        return
    if shutil.which("qpdf") is None:
        sys.exit("qpdf is not installed (Debian package qpdf: apt-get install -y qpdf)")

    with tempfile.TemporaryDirectory(prefix="keygate-bench-") as folder:
        root = Path(folder)
        source = text_pdf(root / "book.pdf", args.pages)
        strip = render_stamp(STAMP)
        strip_path = root / "strip.pdf"
        strip_path.write_bytes(strip)

        ours = timed(lambda: pikepdf_stamp(source, root / "a.pdf", strip), args.runs)
        theirs = timed(lambda: qpdf_overlay(source, root / "b.pdf", strip_path), args.runs)
        full = timed(lambda: stamp_pdf(source, root / "c.pdf", STAMP), args.runs)
        latin = timed(lambda: stamp_pdf(source, root / "d.pdf", LATIN_STAMP), args.runs)
        arabic = timed(lambda: stamp_pdf(source, root / "e.pdf", ARABIC_STAMP), args.runs)
        devanagari = timed(lambda: stamp_pdf(source, root / "f.pdf", DEVANAGARI_STAMP), args.runs)
        for produced in ("a.pdf", "b.pdf", "c.pdf", "d.pdf", "e.pdf", "f.pdf"):
            subprocess.run(
                ["qpdf", "--check", str(root / produced)], check=True, capture_output=True
            )
        print(
            f"{args.pages}-page PDF ({source.stat().st_size / 1e6:.1f} MB), median of "
            f"{args.runs} runs"
        )
        print(f"  pikepdf stamping (same strip):   {ours * 1000:8.1f} ms")
        print(f"  qpdf --overlay (same strip):     {theirs * 1000:8.1f} ms")
        print(f"  ratio pikepdf / qpdf:            {ours / theirs:8.2f}  (target <= 1.0)")
        print(f"  full job incl. font + strip:     {full * 1000:8.1f} ms  ({STAMP.name})")
        print(f"  the same, a Latin-only name:     {latin * 1000:8.1f} ms  ({LATIN_STAMP.name})")
        print(f"  the same, an Arabic name:        {arabic * 1000:8.1f} ms  ({ARABIC_STAMP.name})")
        print(
            f"  the same, a Devanagari name:     {devanagari * 1000:8.1f} ms  "
            f"({DEVANAGARI_STAMP.name})"
        )

        small = image_pdf(root / "small.pdf", 25, 200_000)
        big = image_pdf(root / "big.pdf", 500, args.big_mb * 1_000_000 // 500)
        grown = (big.stat().st_size - small.stat().st_size) / 1e6
        cases = (("end to end: font, strip, pages", None), ("pages only: strip ready", strip_path))
        for label, strip_arg in cases:
            small_rss, big_rss = measure_rss(small, strip_arg), measure_rss(big, strip_arg)
            print(f"Peak RSS of a process stamping, {label}:")
            print(f"  {small.stat().st_size / 1e6:6.1f} MB PDF: {small_rss:7.1f} MiB")
            print(f"  {big.stat().st_size / 1e6:6.1f} MB PDF: {big_rss:7.1f} MiB")
            print(f"  growth: {big_rss - small_rss:+.1f} MiB for {grown:.0f} MB more input")


if __name__ == "__main__":
    main()
