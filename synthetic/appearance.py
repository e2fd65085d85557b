"""CT attenuation of each tissue: unenhanced, pancreatic-arterial and portal-venous phases.

Every tissue has an unenhanced (native) HU and an enhancement per phase for a reference patient
(typical multiphase pancreas-protocol CT: in the arterial phase the arteries, renal cortex,
pancreas and spleen enhance most; in the portal-venous phase the portal and hepatic veins, liver
and spleen are bright and the arteries less so; PDAC is hypo-enhancing in both). A patient's
:class:`Contrast` scales the enhancement (dose, cardiac output, body size), shifts the timing
within each phase, and varies every tissue (fatty liver, fatty pancreas, oral contrast, fat HU), so
that the generated cohort spans the range of real scans rather than one look. ``strength = 0``
gives a non-contrast scan (used by training-time domain randomisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from lnmet.labels import ANATOMY_LABELS as L
from synthetic.grid import Grid

PHASES = ("arterial", "venous")

# name -> (native HU, arterial enhancement, venous enhancement, texture amplitude arterial, venous)
TISSUES: dict[str, tuple[float, float, float, float, float]] = {
    "background_air": (-1000, 0, 0, 0, 0),
    "skin": (40, 5, 10, 5, 5),
    "subcutaneous_fat": (-105, 0, 0, 8, 8),
    "body_fat": (-98, 0, 0, 12, 12),
    "muscle_wall": (50, 5, 10, 6, 6),
    "paraspinal_muscle": (50, 4, 8, 6, 6),
    "bone_cortical": (850, 0, 0, 80, 80),
    "bone_cancellous": (220, 10, 15, 45, 45),
    "spinal_canal": (25, 0, 3, 4, 4),
    "costal_cartilage": (110, 0, 0, 25, 25),
    "table_shell": (250, 0, 0, 20, 20),
    "table_core": (-880, 0, 0, 15, 15),
    "lung": (-860, 0, 0, 40, 40),
    "liver": (56, 18, 52, 7, 7),
    "hepatic_vein": (42, 15, 130, 6, 6),
    "gallbladder": (8, 0, 0, 2, 2),
    "kidney_left": (32, 155, 130, 12, 10),
    "kidney_right": (32, 155, 130, 12, 10),
    "kidney_medulla": (30, 40, 125, 8, 10),
    "renal_pelvis": (8, 0, 5, 3, 3),
    "renal_sinus_fat": (-85, 0, 0, 15, 15),
    "adrenal": (20, 35, 40, 6, 6),
    "spleen": (46, 75, 70, 28, 6),
    "pancreas": (42, 80, 55, 9, 8),
    "pancreas_fat": (-80, 0, 0, 15, 15),
    "pdac": (38, 25, 32, 10, 10),
    "stomach": (40, 48, 55, 6, 6),
    "stomach_lumen": (8, 0, 0, 4, 4),
    "stomach_gas": (-940, 0, 0, 20, 20),
    "duodenum": (40, 45, 55, 6, 6),
    "duodenum_lumen": (12, 0, 0, 4, 4),
    "duodenum_gas": (-940, 0, 0, 20, 20),
    "bowel": (38, 40, 55, 6, 6),
    "bowel_lumen": (10, 0, 0, 5, 5),
    "faeces": (-30, 0, 0, 60, 60),
    "gas": (-940, 0, 0, 25, 25),
    "esophagus": (42, 10, 22, 5, 5),
    "aorta": (42, 280, 130, 8, 6),
    "sma": (42, 265, 125, 8, 6),
    "tc_sa": (42, 265, 125, 8, 6),
    "lga": (42, 255, 120, 8, 6),
    "cha_pha": (42, 260, 122, 8, 6),
    "other_artery": (42, 250, 120, 8, 6),
    "ivc": (40, 35, 105, 15, 8),
    "portal_splenic_vein": (42, 80, 145, 10, 8),
    "other_vein": (42, 55, 125, 10, 8),
    "calcification": (600, 0, 0, 150, 150),
    "lymph_node": (40, 18, 32, 4, 4),
    "ln_necrosis": (20, 2, 4, 4, 4),
    "distractor_nodule": (40, 18, 32, 4, 4),
}

# How much a tissue's arterial-phase enhancement grows when the arterial scan is late (timing +1)
# and shrinks when it is early (-1): veins and liver fill later than arteries.
ARTERIAL_TIMING_SENSITIVITY = {"portal_splenic_vein": 0.45, "other_vein": 0.5, "hepatic_vein": 0.6, "ivc": 0.5,
                               "liver": 0.35, "kidney_medulla": 0.4, "spleen": 0.1, "pancreas": 0.1,
                               "aorta": -0.1, "sma": -0.1, "tc_sa": -0.1, "lga": -0.1, "cha_pha": -0.1,
                               "other_artery": -0.1}
VENOUS_TIMING_SENSITIVITY = {"aorta": -0.2, "sma": -0.2, "tc_sa": -0.2, "lga": -0.2, "cha_pha": -0.2,
                             "other_artery": -0.2, "liver": 0.15, "hepatic_vein": 0.2, "kidney_medulla": 0.1}
FIXED = ("background_air", "table_shell", "table_core", "bone_cortical", "calcification", "stomach_gas", "duodenum_gas", "gas",
         "lung")
LUMINA = ("stomach_lumen", "duodenum_lumen", "bowel_lumen")


@dataclass
class Contrast:
    """One patient's enhancement: strength, timing within each phase and per-tissue variation.

    ``mean(name, phase)`` is the tissue's mean HU; ``phase`` may also be ``"native"``.
    """

    strength: float = 1.0
    arterial_timing: float = 0.0  # -1 early ... +1 late arterial
    venous_timing: float = 0.0  # -1 early ... +1 late portal-venous
    native_offset: dict[str, float] = field(default_factory=dict)
    enhancement_factor: dict[str, float] = field(default_factory=dict)

    @classmethod
    def sample(cls, rng: np.random.Generator, pancreas_fat_fraction: float = 0.0) -> "Contrast":
        c = cls(strength=float(rng.uniform(0.55, 1.2)), arterial_timing=float(rng.uniform(-1, 1)),
                venous_timing=float(rng.uniform(-1, 1)))
        for name in TISSUES:
            if name in FIXED:
                continue
            c.native_offset[name] = float(rng.normal(0, 5))
            c.enhancement_factor[name] = float(np.exp(rng.normal(0, 0.12)))
        fat = float(rng.uniform(-15, 15))
        for name in ("subcutaneous_fat", "body_fat", "renal_sinus_fat", "pancreas_fat"):
            c.native_offset[name] = fat + float(rng.normal(0, 3))
        if rng.uniform() < 0.2:  # hepatic steatosis
            c.native_offset["liver"] = float(rng.uniform(-45, -12))
        c.native_offset["pancreas"] = c.native_offset.get("pancreas", 0.0) - 25.0 * pancreas_fat_fraction
        c.native_offset["pancreas_fat"] = c.native_offset["pancreas_fat"] + 15.0
        if rng.uniform() < 0.2:  # positive oral contrast in the stomach and bowel
            oral = float(rng.uniform(140, 340))
            for name in LUMINA:
                c.native_offset[name] = oral - TISSUES[name][0] + float(rng.normal(0, 20))
        else:
            food = float(rng.uniform(0, 35))
            c.native_offset["stomach_lumen"] = food
        c.native_offset["ln_necrosis"] = c.native_offset.get("lymph_node", 0.0) + float(rng.normal(0, 4))
        c.native_offset["distractor_nodule"] = c.native_offset.get("lymph_node", 0.0)
        c.enhancement_factor["distractor_nodule"] = c.enhancement_factor.get("lymph_node", 1.0)
        return c

    def mean(self, name: str, phase: str) -> float:
        native, art, ven, _, _ = TISSUES[name]
        hu = native + self.native_offset.get(name, 0.0)
        if phase == "native":
            return hu
        factor = self.strength * self.enhancement_factor.get(name, 1.0)
        if phase == "arterial":
            return hu + factor * art * (1 + self.arterial_timing * ARTERIAL_TIMING_SENSITIVITY.get(name, 0.0))
        return hu + factor * ven * (1 + self.venous_timing * VENOUS_TIMING_SENSITIVITY.get(name, 0.0))

    def to_json(self) -> dict:
        return {"strength": round(self.strength, 4), "arterial_timing": round(self.arterial_timing, 4),
                "venous_timing": round(self.venous_timing, 4),
                "mean_hu": {phase: {n: round(self.mean(n, phase), 1) for n in TISSUES} for phase in
                            ("native",) + PHASES}}


def lookup_tables(phase: str, contrast: Contrast | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean HU, texture amplitude) indexed by anatomy label."""
    contrast = contrast or Contrast()
    k = PHASES.index(phase) if phase in PHASES else 1
    mean = np.zeros(256, np.float32)
    amp = np.zeros(256, np.float32)
    for name, value in L.items():
        if name not in TISSUES:
            continue
        mean[value] = contrast.mean(name, phase)
        amp[value] = TISSUES[name][3 + k]
    return mean, amp


def texture_field(grid: Grid, rng: np.random.Generator, coarse_mm: float = 2.0) -> np.ndarray:
    """A smooth zero-mean, unit-variance random field on ``grid``, generated on a coarse grid so that
    the same seed gives the same texture whatever the voxel size."""
    lo = np.array(grid.origin)
    hi = lo + (np.array(grid.size_xyz) - 1) * np.array(grid.spacing)
    start = np.floor(lo / coarse_mm) * coarse_mm - 2 * coarse_mm
    n = (np.ceil((hi - start) / coarse_mm) + 3).astype(int)
    noise = rng.standard_normal(tuple(n[::-1])).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, 1.0)
    noise /= noise.std() + 1e-6
    coords = [(grid.axis(a) - start[a]) / coarse_mm for a in (2, 1, 0)]
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
                 node_texture: np.ndarray | None = None, extra: np.ndarray | None = None,
                 contrast: Contrast | None = None) -> np.ndarray:
    """Noise-free HU of one phase: tissue mean + tissue texture (+ per-voxel lesion adjustments)."""
    mean, amp = lookup_tables(phase, contrast)
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


def blur(hu: np.ndarray, grid: Grid, psf_mm: float = 0.65, slice_thickness_mm: float | None = None) -> np.ndarray:
    """The scanner's point spread (partial volume at every boundary); along z the slice profile."""
    thick = slice_thickness_mm if slice_thickness_mm is not None else grid.spacing[2]
    sigma_mm = [max(psf_mm, 0.42 * thick), max(psf_mm, 0.42 * grid.spacing[1]), max(psf_mm, 0.42 * grid.spacing[0])]
    return ndimage.gaussian_filter(hu, [s / sp for s, sp in zip(sigma_mm, grid.spacing[::-1])], mode="nearest")


def add_noise(hu: np.ndarray, rng: np.random.Generator, noise_hu: float) -> np.ndarray:
    """White-ish noise (generator 1.x); :func:`synthetic.scanner.add_ct_noise` is the kernel-shaped one."""
    out = hu.astype(np.float32, copy=True)
    noise = rng.standard_normal(hu.shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, 0.6)
    noise *= noise_hu / (noise.std() + 1e-6)
    out += noise
    return np.clip(np.rint(out), -1024, 3071).astype(np.float32)
