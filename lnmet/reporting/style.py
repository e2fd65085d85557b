"""Colours of the segments, shared by the SEG (recommended display colours) and the PDF overlays,
so that a structure has the same colour in a viewer and in the report."""

from __future__ import annotations

from lnmet.labels import ORGAN_CLASSES

# RGB 0-255. Organs: muted colours (shown faint in the PDF); findings: saturated ones.
ORGAN_RGB: dict[str, tuple[int, int, int]] = {
    "spleen": (157, 108, 162),
    "esophagus": (211, 171, 143),
    "stomach": (216, 132, 105),
    "aorta": (224, 97, 76),
    "pancreas": (249, 180, 111),
    "duodenum": (255, 253, 229),
    "sma": (204, 68, 68),
    "tc_sa": (187, 72, 120),
    "lga": (230, 120, 150),
    "cha_pha": (160, 60, 90),
}
PDAC_RGB = (255, 215, 0)  # gold
LN_POSITIVE_RGB = (255, 0, 200)  # magenta
LN_NEGATIVE_RGB = (0, 200, 255)  # cyan

if set(ORGAN_RGB) != {c.key for c in ORGAN_CLASSES}:
    raise RuntimeError("lnmet.reporting.style.ORGAN_RGB must have one colour per lnmet.labels.ORGAN_CLASSES key")


def rgb01(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    """0-255 RGB to matplotlib's 0-1 floats."""
    return (rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0)
