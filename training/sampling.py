"""Patch sampling and augmentation for segmentation training.

* nnU-Net's foreground oversampling: in each batch the last ``round(B * p)`` samples (at least the
  last one when ``p`` > 0 and B > 1, as nnU-Net's rule gives) are centred on a voxel of a random
  foreground class present in the case; the others are placed uniformly at random. With
  ``per_instance`` (LN task) a foreground patch is centred on a voxel of a node drawn uniformly
  among the case's nodes, so that small nodes get as many patches as large ones (drawn by voxel,
  a 2000 mm^3 node gets 40 times the patches of a 50 mm^3 one, and small nodes are what is missed).
* "Informative negative selection" (Zheng et al. 2024, section 3.1.1) for the attention-guided LN
  model: a patch is only used when some attention in it is > 0 (random placement is retried, then
  the patch is centred on a random voxel with attention > 0).
* Domain randomisation (:mod:`training.randomisation`), when given: tissue HU (contrast strength
  and timing, per-organ shifts, arbitrary HU), thick slabs, kernel-shaped noise, partial coverage,
  applied in HU before the single-phase exposure and the normalisation.
* Single-phase exposure: with probability ``single_phase_fraction`` the arterial channel of a patch
  is replaced by the venous one, as the app feeds a venous-only study (before normalisation, so
  the model sees exactly what inference gives it).
* Augmentation with MONAI dictionary transforms, cheap enough for a CPU: small rotations (mostly
  in the axial plane) and scaling, intensity scale/shift, Gaussian noise, contrast (gamma). No
  mirroring: left/right flips would break the anatomy the attention map encodes.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from lnmet.normalization import normalize_ct
from lnmet.patches import extract_box
from training.datasets import CaseData
from training.randomisation import DomainRandomiser

MAX_RANDOM_TRIES = 20




class PatchSampler:
    """Draws training patches from cached cases (see the module docstring for the rules)."""

    def __init__(self, cases: Sequence[CaseData], patch_zyx: Sequence[int], normalization: list[dict[str, Any]],
                 foreground_fraction: float = 0.33, informative_only: bool = False, seed: int = 0,
                 single_phase_fraction: float = 0.0, phase_channels: tuple[int, int] | None = None,
                 per_instance: bool = False, randomiser: DomainRandomiser | None = None):
        if not cases:
            raise ValueError("PatchSampler: no training cases")
        if informative_only and any(c.attention is None for c in cases):
            raise ValueError("PatchSampler: informative negative selection needs each case's attention map")
        if per_instance and any(c.instances is None for c in cases):
            raise ValueError("PatchSampler: per-instance foreground sampling needs each case's instance map")
        self.per_instance = per_instance
        self.randomiser = randomiser
        self._instance_coords: dict[str, list[np.ndarray]] = {}
        self.cases = list(cases)
        self.patch = tuple(int(p) for p in patch_zyx)
        self.normalization = normalization
        self.fg_fraction = float(foreground_fraction)
        self.informative_only = informative_only
        self.rng = np.random.default_rng(seed)
        self.pad_hu = [float(p["clip_hu"][0]) for p in normalization]
        self.single_phase_fraction = float(single_phase_fraction)
        self.phase_channels = phase_channels  # (arterial index, venous index)
        if self.single_phase_fraction > 0 and phase_channels is None:
            raise ValueError("PatchSampler: single-phase exposure needs the (arterial, venous) channel indices")
        # "uninformative": patches with no attended voxel, the ones informative negative selection rejects
        # (0 with it; without it, their share says how far the ablation's sampling differs)
        self.stats = {"patches": 0, "foreground": 0, "informative_retries": 0, "informative_fallback": 0,
                      "uninformative": 0, "single_phase": 0}

    def _forced_foreground(self, index: int, batch_size: int) -> bool:
        # nnU-Net: sample i is forced to contain foreground unless i < round(B * (1 - p))
        return not index < round(batch_size * (1 - self.fg_fraction))

    def _random_start(self, case: CaseData) -> list[int]:
        # inside the volume where it fits, else centred-ish with padding on both sides
        return [int(self.rng.integers(0, n - p + 1)) if n >= p else int(self.rng.integers(n - p, 1))
                for n, p in zip(case.shape, self.patch)]

    def _centred_start(self, centre: Sequence[int]) -> list[int]:
        return [int(c) - p // 2 + int(self.rng.integers(-(p // 4), p // 4 + 1)) for c, p in zip(centre, self.patch)]

    def _has_attention(self, case: CaseData, start: Sequence[int]) -> bool:
        assert case.attention is not None
        box = tuple(slice(max(s, 0), max(s + p, 0)) for s, p in zip(start, self.patch))
        region = case.attention[box]
        return region.size > 0 and bool((region > 0).any())

    def _instance_voxels(self, case: CaseData) -> list[np.ndarray]:
        """Voxel positions [N, 3] of each instance of ``case`` (computed once per case)."""
        if case.case_id not in self._instance_coords:
            assert case.instances is not None
            inst = case.instances.ravel()
            idx = np.flatnonzero(inst)
            idx = idx[np.argsort(inst[idx], kind="stable")]
            groups = np.split(idx, np.flatnonzero(np.diff(inst[idx])) + 1) if idx.size else []
            self._instance_coords[case.case_id] = [np.stack(np.unravel_index(g, case.instances.shape), axis=1)
                                                   for g in groups]
        return self._instance_coords[case.case_id]

    def choose_start(self, case: CaseData, force_foreground: bool) -> list[int]:
        """Start index [z, y, x] of a patch of ``case``."""
        classes = [k for k, v in case.class_coords.items() if len(v)]
        nodes = self._instance_voxels(case) if (self.per_instance and force_foreground) else []
        if force_foreground and (classes or nodes):
            if nodes:
                coords = nodes[int(self.rng.integers(len(nodes)))]
            else:
                coords = case.class_coords[int(self.rng.choice(classes))]
            start = self._centred_start(coords[self.rng.integers(len(coords))])
            if not self.informative_only or self._has_attention(case, start):
                self.stats["foreground"] += 1
                return start
        start = self._random_start(case)
        if self.informative_only:
            tries = 0
            while not self._has_attention(case, start) and tries < MAX_RANDOM_TRIES:
                start = self._random_start(case)
                tries += 1
            self.stats["informative_retries"] += tries
            if not self._has_attention(case, start):
                pool = case.informative_coords
                if pool is None or len(pool) == 0:
                    raise ValueError(f"case {case.case_id}: no voxel with attention > 0 (no organ labels?)")
                start = self._centred_start(pool[self.rng.integers(len(pool))])
                self.stats["informative_fallback"] += 1
        return start

    def sample(self, case: CaseData, force_foreground: bool) -> dict[str, np.ndarray]:
        """One patch: normalised ``image`` [C, z, y, x] float32, ``label`` [1, ...] float32 and, for
        cases with an attention map, ``attention`` [1, ...] float32."""
        start = self.choose_start(case, force_foreground)
        img = np.stack([extract_box(case.image[c], start, self.patch, self.pad_hu[c])
                        for c in range(case.image.shape[0])]).astype(np.float32)
        label = extract_box(case.label, start, self.patch, 0)
        if self.randomiser is not None:
            tissue = extract_box(case.tissue, start, self.patch, 0) if case.tissue is not None else None
            img, label = self.randomiser(img, label, tissue, case.tissue_hu, self.pad_hu, case.tissue_is_anatomy)
        if self.single_phase_fraction > 0 and self.rng.random() < self.single_phase_fraction:
            arterial, venous = self.phase_channels  # type: ignore[misc]
            img[arterial] = img[venous]
            self.stats["single_phase"] += 1
        out = {"image": normalize_ct(img, self.normalization), "label": label[None].astype(np.float32)}
        if case.attention is not None:
            out["attention"] = extract_box(case.attention, start, self.patch, 0)[None].astype(np.float32)
            self.stats["uninformative"] += int(not (out["attention"] > 0).any())
        self.stats["patches"] += 1
        return out

    def batch(self, batch_size: int) -> list[dict[str, np.ndarray]]:
        """``batch_size`` patches from randomly chosen cases, with the foreground rule."""
        picks = self.rng.integers(len(self.cases), size=batch_size)
        return [self.sample(self.cases[int(i)], self._forced_foreground(b, batch_size)) for b, i in enumerate(picks)]


def build_augmentation(with_attention: bool, seed: int = 0) -> Compose:
    """MONAI dictionary transforms applied to each patch (image, label and attention together)."""
    keys = ["image", "label"] + (["attention"] if with_attention else [])
    modes = ["bilinear", "nearest"] + (["bilinear"] if with_attention else [])
    pads = ["border", "zeros"] + (["zeros"] if with_attention else [])
    aug = Compose([
        RandAffined(keys=keys, mode=modes, padding_mode=pads, prob=0.2,
                    rotate_range=(math.radians(15), math.radians(5), math.radians(5)),
                    scale_range=(0.15, 0.15, 0.15)),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.15),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.15),
        RandGaussianNoised(keys="image", prob=0.1, std=0.05),
        RandAdjustContrastd(keys="image", prob=0.15, gamma=(0.75, 1.5)),
    ])
    aug.set_random_state(seed=seed)
    return aug


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack patches into batch tensors (plain tensors, MONAI meta stripped)."""
    out = {}
    for key in samples[0]:
        out[key] = torch.stack([torch.as_tensor(np.asarray(s[key]), dtype=torch.float32) for s in samples])
    return out
