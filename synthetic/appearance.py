"""CT appearance of each tissue in the arterial (pancreatic) and portal-venous phases.

Mean HU per tissue and phase follow typical contrast-enhanced abdominal CT: in the arterial phase
the arteries are bright and the pancreas enhances most; in the portal-venous phase the veins, liver
and spleen are bright and the arteries less so. PDAC is hypo-enhancing against the pancreas in both.
Tissue texture is a smooth random field; the scanner adds blur (partial volume) and noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lnmet.labels import ANATOMY_LABELS as L
from synthetic.grid import Grid

# label name -> ((arterial mean, texture amplitude), (venous mean, texture amplitude))
TISSUE_HU: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "background_air": ((-1000, 0), (-1000, 0)),
    "subcutaneous_fat": ((-105, 8), (-105, 8)),
    "body_fat": ((-95, 14), (-95, 14)),
    "muscle_wall": ((52, 6), (58, 6)),
    "paraspinal_muscle": ((50, 6), (56, 6)),
    "bone_cortical": ((900, 60), (900, 60)),
    "bone_cancellous": ((230, 40), (230, 40)),
    "spinal_canal": ((25, 4), (28, 4)),
    "liver": ((72, 7), (118, 7)),
    "gallbladder": ((8, 2), (8, 2)),
    "kidney_left": ((185, 30), (168, 10)),
    "kidney_right": ((185, 30), (168, 10)),
    "spleen": ((128, 28), (122, 6)),
    "pancreas": ((132, 9), (104, 8)),
    "pdac": ((62, 10), (72, 10)),
    "stomach": ((86, 6), (98, 6)),
    "stomach_lumen": ((12, 4), (12, 4)),
    "stomach_gas": ((-920, 20), (-920, 20)),
    "duodenum": ((84, 6), (96, 6)),
    "duodenum_lumen": ((16, 4), (16, 4)),
    "bowel": ((72, 6), (92, 6)),
    "bowel_lumen": ((10, 5), (10, 5)),
    "esophagus": ((48, 5), (62, 5)),
    "aorta": ((330, 8), (165, 6)),
    "sma": ((310, 8), (162, 6)),
    "tc_sa": ((310, 8), (162, 6)),
    "lga": ((300, 8), (160, 6)),
    "cha_pha": ((305, 8), (160, 6)),
    "ivc": ((75, 15), (140, 8)),
    "portal_splenic_vein": ((115, 10), (182, 8)),
    "lymph_node": ((55, 4), (72, 4)),
    "ln_necrosis": ((20, 4), (24, 4)),
    "distractor_nodule": ((55, 4), (72, 4)),
}

PHASES = ("arterial", "venous")


def lookup_tables(phase: str) -> tuple[np.ndarray, np.ndarray]:
    """(mean HU, texture amplitude) indexed by anatomy label."""
    k = PHASES.index(phase)
    mean = np.zeros(256, np.float32)
    amp = np.zeros(256, np.float32)
    for name, value in L.items():
        m, a = TISSUE_HU.get(name, ((0, 0), (0, 0)))[k]
        mean[value], amp[value] = m, a
    return mean, amp


def texture_field(grid: Grid, rng: np.random.Generator, coarse_mm: float = 2.0) -> np.ndarray:
    """A smooth zero-mean, unit-variance random field on ``grid``, generated on a coarse grid so that
    the same seed gives the same texture whatever the voxel size."""
    # fixed coarse lattice in physical space covering the grid
    lo = np.array(grid.origin)
    hi = lo + (np.array(grid.size_xyz) - 1) * np.array(grid.spacing)
    start = np.floor(lo / coarse_mm) * coarse_mm - 2 * coarse_mm
    n = (np.ceil((hi - start) / coarse_mm) + 3).astype(int)
    noise = rng.standard_normal(tuple(n[::-1])).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, 1.0)
    noise /= noise.std() + 1e-6
    coords = [(grid.axis(a) - start[a]) / coarse_mm for a in (2, 1, 0)]
    # separable linear interpolation onto the fine grid
    out = noise
    for axis, c in enumerate(coords):
        i0 = np.clip(np.floor(c).astype(int), 0, out.shape[axis] - 2)
        f = (c - i0).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = -1
        f = f.reshape(shape)
        out = np.take(out, i0, axis=axis) * (1 - f) + np.take(out, i0 + 1, axis=axis) * f
    return out.astype(np.float32)


def render_phase(labels: np.ndarray, texture: np.ndarray, phase: str, node_shift: np.ndarray | None = None,
                 node_texture: np.ndarray | None = None, extra: np.ndarray | None = None) -> np.ndarray:
    """Noise-free HU of one phase: tissue mean + tissue texture (+ per-voxel lesion adjustments)."""
    mean, amp = lookup_tables(phase)
    hu = mean[labels]
    a = amp[labels]
    if node_texture is not None:
        a = np.where(node_texture > 0, node_texture, a)
    hu += a * texture
    if node_shift is not None:
        hu += node_shift
    if extra is not None:
        hu += extra
    return hu


def blur(hu: np.ndarray, grid: Grid, psf_mm: float = 0.65) -> np.ndarray:
    """The scanner's point spread: partial volume at every boundary."""
    sigma = [max(psf_mm, 0.42 * s) / s for s in grid.spacing[::-1]]
    return ndimage.gaussian_filter(hu, sigma, mode="nearest")


def add_noise(hu: np.ndarray, rng: np.random.Generator, noise_hu: float) -> np.ndarray:
    """Correlated image noise; HU rounded and clipped to the 12-bit range stored in the DICOM files."""
    out = hu.astype(np.float32, copy=True)
    noise = rng.standard_normal(hu.shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, 0.6)
    noise *= noise_hu / (noise.std() + 1e-6)
    out += noise
    return np.clip(np.rint(out), -1024, 3071).astype(np.float32)
