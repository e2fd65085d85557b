"""Domain randomisation of training patches (issue 16): appearance varied far beyond one scanner,
so that the segmentation models learn shape and context rather than the generator's HU values.

Applied to each patch in HU, before intensity normalisation (:class:`training.sampling.PatchSampler`):

1. **Tissue HU** (needs a tissue map: ``anatomyTr/`` of the generator's export, else the task's
   own labels). The patch's median HU per tissue and channel is moved to a new target, and the
   difference, smoothed by the scanner's point spread, is added to the patch (texture and noise
   stay). Targets come from one of two modes:

   - *contrast*: the tissue table of :mod:`synthetic.appearance` with a new contrast strength
     (none in ``no_contrast_probability`` of patches: a non-contrast scan; else weak to strong),
     new timing within each phase, per-tissue factors and shifts (``organ_shift_hu``). With
     ``clear_label_without_contrast`` a non-contrast patch's label is cleared: for a lesion that
     only contrast shows (a PDAC: native 38 HU in a 42 HU gland), so that the model learns to mark
     nothing it cannot see rather than to guess;
   - *random* (``random_hu_probability``, SynthSeg's idea): every soft tissue gets an arbitrary HU,
     so that no absolute value can be relied on.

   Without a tissue map only per-label shifts are applied.
2. **Thick slices** (``slab_probability``): slabs of 2-5 mm averaged, sampled and linearly
   interpolated back, as the app's resampling of a thick series gives; or an in-plane blur.
3. **Kernel-shaped noise** (``noise_probability``): :func:`synthetic.scanner.kernel_noise` with a
   random kernel and level (0-25 HU).
4. **Partial coverage** (``partial_probability``): the patch ends at a random slice (padding beyond,
   labels cleared), as at the edge of a scan that covers less of the abdomen.
5. **The app's registration** (``misalign_probability``, arterial channels only): the training data's
   arterial phase is perfectly aligned, the app's is registered (mean residual 0.5 mm, up to 2 mm at
   the landmarks, interpolated once more) and, where breathing moved tissue beyond the arterial
   series' field or the arterial series covers fewer slices, padded with air while the venous
   channel still shows tissue. So the arterial channel is warped by a smooth random displacement of
   up to ``misalign_mm`` and, in ``arterial_edge_probability`` of those patches, padded beyond a
   random slice near one end (``arterial_edge_fraction`` of the patch at most); the label stays,
   since the venous phase shows the anatomy.

Gamma, contrast and global intensity changes are MONAI transforms on the normalised patch
(:func:`training.sampling.build_augmentation`). Each model's metadata records these settings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Sequence

import numpy as np
from scipy import ndimage

from lnmet.labels import ANATOMY_LABELS
from synthetic.appearance import FIXED, TISSUES, Contrast
from synthetic.scanner import kernel_noise

NAME_BY_LABEL = {v: k for k, v in ANATOMY_LABELS.items()}
FIXED_LABELS = {ANATOMY_LABELS[n] for n in FIXED}


@dataclass(frozen=True)
class RandomisationSettings:
    """Probabilities and ranges of the domain randomisation (recorded in the model metadata)."""

    probability: float = 0.85  # share of patches whose tissue HU is changed
    no_contrast_probability: float = 0.15
    strength_range: tuple[float, float] = (0.05, 1.4)
    organ_shift_hu: float = 12.0
    random_hu_probability: float = 0.2
    random_hu_range: tuple[float, float] = (-150.0, 320.0)
    slab_probability: float = 0.3
    slab_mm: tuple[float, float] = (2.0, 5.0)
    blur_probability: float = 0.2
    noise_probability: float = 0.5
    noise_hu: tuple[float, float] = (0.0, 25.0)
    partial_probability: float = 0.1
    clear_label_without_contrast: bool = False  # a non-contrast patch's label is emptied (PDAC)
    misalign_probability: float = 0.0  # arterial channel warped as the app's registration leaves it
    misalign_mm: float = 2.0  # largest displacement of that warp
    misalign_mesh_mm: float = 40.0  # spacing of its random control points
    arterial_edge_probability: float = 0.5  # of the warped patches: arterial padded beyond a slice
    arterial_edge_fraction: float = 0.25  # at most this share of the patch's slices padded

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def randomisation_with(settings: RandomisationSettings, changes: Sequence[str]) -> RandomisationSettings:
    """``settings`` with ``SETTING=VALUE`` changes (a command line's), each value parsed as its field's
    type (a range as ``LOW,HIGH``; a switch as true/false); an unknown setting or a bad value raises
    ValueError naming it."""
    current = asdict(settings)
    out = {}
    for change in changes:
        key, sep, text = change.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or key not in current:
            raise ValueError(f"randomisation setting {change!r}: expected SETTING=VALUE with SETTING one of "
                             f"{', '.join(current)}")
        old = current[key]
        try:
            if isinstance(old, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError("expected true or false")
                out[key] = text.lower() in ("true", "1")
            elif isinstance(old, tuple):
                values = tuple(float(v) for v in text.split(","))
                if len(values) != len(old):
                    raise ValueError(f"expected {len(old)} numbers separated by a comma")
                out[key] = values
            else:
                out[key] = float(text)
        except ValueError as exc:
            raise ValueError(f"randomisation setting {key}={text!r}: {exc}") from None
    return replace(settings, **out)


def tissue_medians(image: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Median HU ``[C, 256]`` of every tissue label of a case (NaN where absent)."""
    out = np.full((image.shape[0], 256), np.nan, np.float32)
    labels = np.unique(tissue)
    flat = tissue.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], labels)
    bounds = np.r_[bounds, flat.size]
    for c in range(image.shape[0]):
        values = image[c].ravel()[order]
        for i, lab in enumerate(labels):
            seg = values[bounds[i]:bounds[i + 1]]
            if seg.size:
                out[c, int(lab)] = float(np.median(seg))
    return out


class DomainRandomiser:
    """Applies the randomisation to HU patches ``[C, z, y, x]`` (see the module docstring)."""

    def __init__(self, settings: RandomisationSettings, channel_phases: Sequence[str | None],
                 spacing_zyx: Sequence[float], rng: np.random.Generator):
        self.s = settings
        self.phases = [p if p in ("arterial", "venous") else "venous" for p in channel_phases]
        self.spacing = tuple(float(v) for v in spacing_zyx)
        self.rng = rng
        self.stats = {"patches": 0, "tissue": 0, "no_contrast": 0, "random_hu": 0, "slab": 0, "blur": 0, "noise": 0,
                      "partial": 0, "label_cleared": 0, "misaligned": 0, "arterial_edge": 0}
        self.arterial = [c for c, p in enumerate(channel_phases) if p == "arterial"]
        self._no_contrast = False  # the last patch's tissue HU were a non-contrast scan's

    # -------------------------------------------------------------- tissue HU
    def _targets(self, present: np.ndarray, medians: np.ndarray, anatomy: bool) -> np.ndarray:
        """Target HU ``[C, len(present)]`` for the tissues present."""
        rng, s = self.rng, self.s
        n_ch = medians.shape[0]
        out = medians[:, present].copy()
        if not anatomy:
            out += rng.normal(0, s.organ_shift_hu, out.shape)
            return out
        if rng.uniform() < s.random_hu_probability:
            self.stats["random_hu"] += 1
            base = rng.uniform(*s.random_hu_range, len(present))
            for k, lab in enumerate(present):
                if int(lab) in FIXED_LABELS or NAME_BY_LABEL.get(int(lab)) not in TISSUES:
                    continue
                out[:, k] = base[k] + rng.normal(0, 30, n_ch)
            return out
        if rng.uniform() < s.no_contrast_probability:
            strength = 0.0
            self.stats["no_contrast"] += 1
            self._no_contrast = True
        else:
            strength = rng.uniform(*s.strength_range)
        con = Contrast(strength=strength, arterial_timing=rng.uniform(-1, 1), venous_timing=rng.uniform(-1, 1))
        for k, lab in enumerate(present):
            name = NAME_BY_LABEL.get(int(lab))
            if name is None or name not in TISSUES or int(lab) in FIXED_LABELS:
                continue
            con.native_offset[name] = float(rng.normal(0, s.organ_shift_hu))
            con.enhancement_factor[name] = float(np.exp(rng.normal(0, 0.15)))
            for c in range(n_ch):
                out[c, k] = con.mean(name, "native" if strength == 0 else self.phases[c])
        return out

    def tissue_hu(self, img: np.ndarray, tissue: np.ndarray, medians: np.ndarray, anatomy: bool = True) -> np.ndarray:
        present = np.unique(tissue)
        present = present[np.isfinite(medians[0, present])]
        if present.size == 0:
            return img
        targets = self._targets(present, medians, anatomy)
        lut = np.zeros((img.shape[0], 256), np.float32)
        lut[:, present] = targets - medians[:, present]
        sigma = [0.7 / sp for sp in self.spacing]
        for c in range(img.shape[0]):
            img[c] += ndimage.gaussian_filter(lut[c][tissue], sigma, mode="nearest")
        self.stats["tissue"] += 1
        return img

    # -------------------------------------------------------------- acquisition
    def slab(self, img: np.ndarray) -> np.ndarray:
        """Average slabs of a random thickness along z, sample them and interpolate back linearly."""
        dz = self.spacing[0]
        thick = self.rng.uniform(*self.s.slab_mm)
        factor = thick / dz
        if factor <= 1.2:
            return img
        nz = img.shape[1]
        smooth = ndimage.uniform_filter1d(img, size=max(int(round(factor)), 1), axis=1, mode="nearest")
        offset = self.rng.uniform(0, factor)
        centres = np.arange(offset, nz, factor)
        if len(centres) < 2:
            return img
        sampled = ndimage.map_coordinates(smooth, _coords_along(smooth.shape, 1, centres), order=1, mode="nearest")
        pos = np.interp(np.arange(nz), centres, np.arange(len(centres)))
        self.stats["slab"] += 1
        return ndimage.map_coordinates(sampled, _coords_along(sampled.shape, 1, pos), order=1, mode="nearest")

    def noise(self, img: np.ndarray) -> np.ndarray:
        level = self.rng.uniform(*self.s.noise_hu)
        cutoff = self.rng.uniform(0.15, 0.5)
        for c in range(img.shape[0]):
            img[c] += level * kernel_noise(img.shape[1:], self.spacing[::-1], cutoff, self.rng)
        self.stats["noise"] += 1
        return img

    def misalign(self, img: np.ndarray, pad_hu: Sequence[float]) -> np.ndarray:
        """The arterial channels as the app's registration gives them: a smooth random warp of at
        most ``misalign_mm`` along each axis (linear interpolation), sometimes air beyond a slice near one end."""
        rng, s = self.rng, self.s
        shape = img.shape[1:]
        mesh = [max(2, int(np.ceil(n * sp / s.misalign_mesh_mm)) + 1) for n, sp in zip(shape, self.spacing)]
        amplitude = rng.uniform(0.0, s.misalign_mm)
        coords = np.indices(shape, dtype=np.float32)
        for axis in range(3):
            coarse = rng.normal(0.0, 1.0, mesh)
            coarse *= amplitude / max(float(np.abs(coarse).max()), 1e-6)
            field = ndimage.zoom(coarse, [n / m for n, m in zip(shape, mesh)], order=1, grid_mode=True,
                                 mode="nearest")[:shape[0], :shape[1], :shape[2]]
            coords[axis] += field / self.spacing[axis]
        edge = rng.uniform() < s.arterial_edge_probability
        depth = int(rng.integers(1, max(2, int(shape[0] * s.arterial_edge_fraction) + 1))) if edge else 0
        top = rng.uniform() < 0.5
        for c in self.arterial:
            img[c] = ndimage.map_coordinates(img[c], coords, order=1, mode="nearest")
            if depth:
                if top:
                    img[c, shape[0] - depth:] = pad_hu[c]
                else:
                    img[c, :depth] = pad_hu[c]
        self.stats["misaligned"] += 1
        self.stats["arterial_edge"] += int(bool(depth))
        return img

    def __call__(self, img: np.ndarray, label: np.ndarray, tissue: np.ndarray | None, medians: np.ndarray | None,
                 pad_hu: Sequence[float], anatomy: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Randomise one HU patch ``img`` [C, z, y, x] (float32, changed in place) and its label [z, y, x];
        ``anatomy``: the tissue map holds the generator's anatomy labels (else a task's own labels)."""
        rng, s = self.rng, self.s
        self.stats["patches"] += 1
        self._no_contrast = False
        if tissue is not None and medians is not None and rng.uniform() < s.probability:
            img = self.tissue_hu(img, tissue, medians, anatomy)
            if self._no_contrast and s.clear_label_without_contrast:
                label = np.zeros_like(label)
                self.stats["label_cleared"] += 1
        if rng.uniform() < s.slab_probability:
            img = self.slab(img)
        elif rng.uniform() < s.blur_probability:
            sig = rng.uniform(0.3, 1.0)
            img = ndimage.gaussian_filter(img, [0] + [sig / sp for sp in self.spacing])
            self.stats["blur"] += 1
        if rng.uniform() < s.noise_probability:
            img = self.noise(img)
        if rng.uniform() < s.partial_probability:
            cut = int(rng.integers(img.shape[1] // 4, img.shape[1]))
            if rng.uniform() < 0.5:
                img[:, cut:] = np.asarray(pad_hu, np.float32)[:, None, None, None]
                label = label.copy()
                label[cut:] = 0
            else:
                k = img.shape[1] - cut
                img[:, :k] = np.asarray(pad_hu, np.float32)[:, None, None, None]
                label = label.copy()
                label[:k] = 0
            self.stats["partial"] += 1
        if self.arterial and rng.uniform() < s.misalign_probability:
            img = self.misalign(img, pad_hu)
        return img, label


def _coords_along(shape: Sequence[int], axis: int, positions: np.ndarray) -> np.ndarray:
    """Sampling coordinates for :func:`scipy.ndimage.map_coordinates` that take ``positions`` along
    ``axis`` and every index along the other axes."""
    grids = [np.arange(n, dtype=np.float32) for n in shape]
    grids[axis] = np.asarray(positions, np.float32)
    return np.stack(np.meshgrid(*grids, indexing="ij"))
