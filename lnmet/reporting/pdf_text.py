"""Text from DICOM headers made safe for the PDF report (reportlab paragraphs).

Header values are free text written by scanners, anonymisers and people: a SeriesDescription or
PatientName may hold markup (``<b>&amp;``), characters outside Latin-1 (``Müller=山田^太郎``) or
thousands of characters (LO allows 64, broken exports do not care). reportlab parses paragraph text
as XML and raises on unbalanced markup, and its standard fonts have Latin-1 glyphs only. So every
header value goes through :func:`markup` before it enters a paragraph:

- escaped (``&``, ``<``, ``>``): shown literally, never interpreted;
- shortened to ``max_chars`` with an ellipsis (the full value stays in results.json and the SR);
- characters outside Latin-1 are set in a Unicode TrueType font when one is installed
  (DejaVu Sans for Greek, Cyrillic, Arabic, Hebrew...; Droid Sans Fallback for Chinese, Japanese,
  Korean: Debian ``fonts-dejavu-core`` and ``fonts-droid-fallback``, installed by scripts/setup.sh),
  embedded as a subset; without such a font they show as missing glyphs, and nothing fails;
- long words are split by reportlab (``splitLongWords``) so that the text wraps inside its cell.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from xml.sax.saxutils import escape

log = logging.getLogger(__name__)

# (font name, candidate files) tried in order for characters outside Latin-1.
UNICODE_FONTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("LNMETDejaVuSans", ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",)),
    ("LNMETDroidFallback", ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
                            "/usr/share/fonts/truetype/droid/DroidSansFallback.ttf")),
)
ELLIPSIS = "\u2026"


@functools.lru_cache(maxsize=1)
def unicode_fonts() -> tuple[tuple[str, frozenset[int]], ...]:
    """The Unicode fonts found on this machine, registered with reportlab: (name, code points)."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    found = []
    for name, files in UNICODE_FONTS:
        path = next((f for f in files if Path(f).is_file()), None)
        if path is None:
            continue
        try:
            font = TTFont(name, path)
            pdfmetrics.registerFont(font)
            found.append((name, frozenset(font.face.charToGlyph)))
        except Exception as exc:  # noqa: BLE001 - a broken font file: fall back to the standard fonts
            log.warning("PDF font %s cannot be used: %s", path, exc)
    return tuple(found)


def _font_for(ch: str) -> str | None:
    code = ord(ch)
    for name, codes in unicode_fonts():
        if code in codes:
            return name
    return None


def markup(value: object, max_chars: int = 200) -> str:
    """``value`` as reportlab paragraph markup: escaped, shortened, non-Latin-1 runs in a Unicode font."""
    text = "" if value is None else str(value)
    text = " ".join(text.split())  # control characters and line breaks of LT/ST values: plain spaces
    if len(text) > max_chars:
        text = text[: max_chars - 1] + ELLIPSIS
    out: list[str] = []
    run_font: str | None = None
    run: list[str] = []

    def flush() -> None:
        if run:
            body = escape("".join(run))
            out.append(f'<font name="{run_font}">{body}</font>' if run_font else body)
            run.clear()

    for ch in text:
        font = None if ord(ch) < 256 or ch == ELLIPSIS else _font_for(ch)
        if font != run_font:
            flush()
            run_font = font
        run.append(ch)
    flush()
    return "".join(out)
