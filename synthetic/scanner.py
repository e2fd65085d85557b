"""What the scanner adds to the noise-free image: reconstruction-kernel-shaped noise that is
stronger in the middle of the body than at its edge, and beam-hardening-like dark streaks between
dense objects (ribs, spine, arms, calcium) with faint streaks fanning out from the spine.

Real CT noise is not white: filtered back-projection gives it a noise power spectrum that rises
from zero at low frequency (ramp filter) and falls at the kernel's cut-off, so it has a grain of a
few voxels, finer for sharp kernels. :class:`Scanner` holds one acquisition's settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lnmet.labels import ANATOMY_LABELS as L
from synthetic.grid import Grid

DENSE = (L["bone_cortical"], L["bone_cancellous"], L["calcification"], L["costal_cartilage"])


@dataclass(frozen=True)
class Scanner:
    """One acquisition's image-quality settings."""

    noise_hu: float  # noise standard deviation in the middle of the body
    kernel_cutoff: float  # cycles/mm where the kernel's noise power peaks (soft ~0.2, sharp ~0.45)
    streak_hu: float  # depth of the beam-hardening streaks between dense objects
    noise_centre_boost: float = 0.4  # relative extra noise at the body's centre

    @classmethod
    def sample(cls, rng: np.random.Generator, noise_hu: float) -> "Scanner":
        return cls(noise_hu=float(noise_hu * rng.uniform(0.75, 1.3)), kernel_cutoff=float(rng.uniform(0.18, 0.42)),
                   streak_hu=float(rng.uniform(4.0, 30.0)), noise_centre_boost=float(rng.uniform(0.2, 0.6)))

    def to_json(self) -> dict:
        return {"noise_hu": round(self.noise_hu, 2), "kernel_cutoff_per_mm": round(self.kernel_cutoff, 3),
                "streak_hu": round(self.streak_hu, 2)}


def kernel_noise(shape_zyx: tuple[int, int, int], spacing_xyz, cutoff: float, rng: np.random.Generator,
                 chunk: int = 24) -> np.ndarray:
    """Unit-variance noise with a ramp-times-window in-plane spectrum, slice by slice (in chunks),
    and slight correlation between neighbouring slices."""
    nz, ny, nx = shape_zyx
    fy = np.fft.fftfreq(ny, spacing_xyz[1])[:, None]
    fx = np.fft.rfftfreq(nx, spacing_xyz[0])[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2) / cutoff
    amplitude = (np.sqrt(f) * np.exp(-0.5 * f ** 2)).astype(np.float32)
    out = np.empty(shape_zyx, np.float32)
    for z0 in range(0, nz, chunk):
        white = rng.standard_normal((min(chunk, nz - z0), ny, nx)).astype(np.float32)
        spec = np.fft.rfft2(white) * amplitude
        out[z0:z0 + chunk] = np.fft.irfft2(spec, s=(ny, nx)).astype(np.float32)
    out = ndimage.gaussian_filter1d(out, 0.5, axis=0)
    out /= out.std() + 1e-6
    return out


def body_depth_factor(hu: np.ndarray, grid: Grid, boost: float) -> np.ndarray:
    """1 at the body's edge rising to 1 + boost at its centre (longer X-ray paths, more noise)."""
    step = max(1, int(round(4.0 / grid.spacing[0])))
    body = (hu[:, ::step, ::step] > -500).astype(np.float32)
    sig = [max(2.0 / grid.spacing[2], 0.5), 35.0 / (grid.spacing[1] * step), 35.0 / (grid.spacing[0] * step)]
    depth = ndimage.gaussian_filter(body, sig)
    depth = np.clip(depth / max(float(depth.max()), 1e-6), 0, 1)
    zoom = [1.0, hu.shape[1] / depth.shape[1], hu.shape[2] / depth.shape[2]]
    full = ndimage.zoom(depth, zoom, order=1)[:, : hu.shape[1], : hu.shape[2]]
    if full.shape != hu.shape:
        full = np.pad(full, [(0, a - b) for a, b in zip(hu.shape, full.shape)], mode="edge")
    return 1.0 + boost * full


def add_ct_noise(hu: np.ndarray, grid: Grid, scanner: Scanner, rng: np.random.Generator) -> np.ndarray:
    """Kernel-shaped, spatially varying noise; HU rounded and clipped to the 12-bit stored range."""
    noise = kernel_noise(hu.shape, grid.spacing, scanner.kernel_cutoff, rng)
    noise *= scanner.noise_hu * body_depth_factor(hu, grid, scanner.noise_centre_boost) / (1 + scanner.noise_centre_boost / 2)
    out = hu.astype(np.float32, copy=True) + noise
    return np.clip(np.rint(out), -1024, 3071).astype(np.float32)


def _segment_distance(x, y, a, b) -> np.ndarray:
    ab = b - a
    t = np.clip(((x - a[0]) * ab[0] + (y - a[1]) * ab[1]) / (ab @ ab + 1e-9), 0, 1)
    return np.sqrt((x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2)


def add_streaks(hu: np.ndarray, labels: np.ndarray, grid: Grid, scanner: Scanner, rng: np.random.Generator,
                max_pairs: int = 5) -> np.ndarray:
    """Dark bands along the lines joining the largest dense objects of each slice (beam hardening
    between ribs, spine and arms) and faint alternating streaks radiating from the spine."""
    if scanner.streak_hu <= 0:
        return hu
    out = hu
    step = max(1, int(round(2.0 / grid.spacing[0])))
    xc, yc = grid.axis(0)[::step], grid.axis(1)[::step]
    x, y = xc[None, :], yc[:, None]
    width = 2.5
    fan_angles = rng.uniform(0, np.pi, 6)
    fan_signs = rng.choice([-1.0, 1.0], 6)
    zoom = (hu.shape[1] / len(yc), hu.shape[2] / len(xc))
    for k in range(labels.shape[0]):
        dense = np.isin(labels[k, ::step, ::step], DENSE)
        if dense.sum() < 3:
            continue
        comp, n = ndimage.label(dense)
        if n < 2:
            continue
        idx = np.arange(1, n + 1)
        mass = ndimage.sum(dense, comp, idx) * (grid.spacing[0] * step) ** 2
        cy, cx = np.array(ndimage.center_of_mass(dense, comp, idx)).T
        pts = np.column_stack([xc[np.round(cx).astype(int)], yc[np.round(cy).astype(int)]])
        order = np.argsort(mass)[::-1][:8]
        pairs = []
        for i in range(len(order)):
            for j in range(i + 1, len(order)):
                a, b = order[i], order[j]
                if float(np.linalg.norm(pts[a] - pts[b])) > 60.0:
                    pairs.append((float(np.sqrt(mass[a] * mass[b])), a, b))
        pairs.sort(reverse=True)
        band = np.zeros((len(yc), len(xc)), np.float32)
        ref = max(pairs[0][0], 1.0) if pairs else 1.0
        for w, a, b in pairs[:max_pairs]:
            band -= (w / ref) * np.exp(-0.5 * (_segment_distance(x, y, pts[a], pts[b]) / width) ** 2).astype(np.float32)
        spine = pts[order[0]]
        r = np.sqrt((x - spine[0]) ** 2 + (y - spine[1]) ** 2)
        ang = np.arctan2(y - spine[1], x - spine[0])
        for t, s in zip(fan_angles, fan_signs):
            dist = np.abs(np.sin(ang - t)) * r
            band += (0.25 * s * np.exp(-0.5 * (dist / 2.0) ** 2) * np.exp(-r / 120.0)).astype(np.float32)
        full = ndimage.zoom(band, zoom, order=1)[: hu.shape[1], : hu.shape[2]]
        out[k, : full.shape[0], : full.shape[1]] += scanner.streak_hu * full
    return out
