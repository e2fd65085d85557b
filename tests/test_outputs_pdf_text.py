"""Free text from the DICOM headers in the PDF report (issue 15): markup, non-Latin names and
2000-character values are escaped, shortened and wrapped; they never break the builder or the layout."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from lnmet.reporting.pdf_text import ELLIPSIS, markup, unicode_fonts
from lnmet.reporting.standin import results_from_study
from operators.pdf_report_builder import build_pdf, expected_page_count
from test_intake_support import copy_study, set_attr

MARKUP = "<b>&amp; </para>"
LONG = "Portal venous " + "x" * 1986  # 2000 characters, no spaces to break at


def _pages(pdf_bytes: bytes, tmp_path: Path, first: int, last: int) -> str:
    exe = shutil.which("pdftotext")
    if exe is None:
        pytest.skip("pdftotext (poppler-utils) is not installed")
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf_bytes)
    return subprocess.run([exe, "-f", str(first), "-l", str(last), str(path), "-"], capture_output=True,
                          text=True, check=True).stdout


def test_markup_helper() -> None:
    assert markup("<b>&amp;") == "&lt;b&gt;&amp;amp;"
    assert markup("a" * 300, 50) == "a" * 49 + ELLIPSIS
    assert markup(None) == "" and markup("two\r\nlines") == "two lines"


@pytest.mark.parametrize("name, description", [
    ("Müller=山田^太郎", MARKUP),
    (MARKUP + "A" * 2000, LONG),
])
def test_header_text_is_escaped_and_wrapped(tiny_study, tiny_study_dir: Path, tmp_path: Path, name: str,
                                            description: str) -> None:
    copy_study(tiny_study_dir / "dicom", tmp_path / "dicom",
               set_attr(PatientName=name, SpecificCharacterSet="ISO_IR 192", SeriesDescription=description))
    results = results_from_study(tiny_study, tmp_path)
    results = dataclasses.replace(results, venous=dataclasses.replace(
        results.venous, series=dataclasses.replace(results.venous.series, series_description=description)))
    pdf = build_pdf(results)  # raised "ValueError: paragraph text ..." before
    n_key = int(results.tumour.found) + len(results.positive_nodes)
    assert pdf.page_count == expected_page_count(n_key, len(results.lymph_nodes))  # nothing overflowed
    flat = " ".join(_pages(pdf.pdf_bytes, tmp_path, 1, 1).split())  # the header's name
    details = " ".join(_pages(pdf.pdf_bytes, tmp_path, pdf.page_count, pdf.page_count).split())  # series table
    if description == MARKUP:
        assert "<b>&amp; </para>" in details  # shown literally, not interpreted
        assert "MÜLLER" in flat
        if any(name == "LNMETDroidFallback" for name, _ in unicode_fonts()):
            assert "山田 太郎" in flat  # the ideographic name, set in the Unicode font
    else:
        assert "<B>&AMP; </PARA>AAAA" in flat  # the family name, upper case, escaped
        assert ELLIPSIS in details and "x" * 1986 not in details.replace(" ", "")  # shortened
