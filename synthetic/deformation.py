"""The known misalignment of the arterial phase: a smooth, breathing-like deformation.

The arterial image at point ``q`` shows the tissue that the venous image shows at ``q + w(q)``
(``w`` is closed-form, so it is exact at any resolution). Perfect registration of the arterial
image to the venous one recovers ``T(p) = p + u(p)`` with ``u`` the inverse displacement, which
:meth:`Breathing.inverse` computes by fixed-point iteration. Upper-abdominal viscera move most
(diaphragm), the spine and posterior wall little; a small rigid shift models table motion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from synthetic.grid import Grid


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


@dataclass
class Breathing:
    shift: np.ndarray  # rigid table shift (x, y, z) mm
    amplitude: np.ndarray  # visceral motion (x, y, z) mm, mostly superior-inferior
    z0: float  # level below which viscera move less
    bump_centres: np.ndarray  # (k, 3) local smooth perturbations
    bump_vectors: np.ndarray  # (k, 3) mm
    bump_width: float = 55.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Breathing":
        si = rng.uniform(4.0, 8.5) * rng.choice([-1.0, 1.0])
        amplitude = np.array([rng.uniform(-1.5, 1.5), rng.uniform(-3.0, 3.0), si])
        shift = rng.normal(0.0, 0.8, 3)
        k = 3
        centres = np.column_stack([rng.uniform(-80, 80, k), rng.uniform(-60, 60, k), rng.uniform(-60, 60, k)])
        vectors = rng.normal(0.0, 1.2, (k, 3))
        return cls(shift, amplitude, float(rng.uniform(-40.0, 0.0)), centres, vectors)

    def __call__(self, x, y, z) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """w at physical points (broadcastable arrays) -> (wx, wy, wz)."""
        s = _sigmoid((z - self.z0) / 30.0) * (0.25 + 0.75 * _sigmoid((45.0 - y) / 15.0))
        out = [self.shift[i] + s * self.amplitude[i] for i in range(3)]
        for c, v in zip(self.bump_centres, self.bump_vectors):
            g = np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * self.bump_width ** 2))
            for i in range(3):
                out[i] = out[i] + v[i] * g
        return tuple(np.broadcast_to(o, np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z))) for o in out)

    def inverse_points(self, p: np.ndarray, iterations: int = 30) -> np.ndarray:
        """Arterial positions q of venous points p (N, 3): q + w(q) = p."""
        p = np.asarray(p, float)
        q = p.copy()
        for _ in range(iterations):
            w = np.stack(self(q[:, 0], q[:, 1], q[:, 2]), axis=1)
            q = p - w
        return q

    def displacement_grid(self, grid: Grid) -> np.ndarray:
        """u(p) = q(p) - p on ``grid`` as an array (z, y, x, 3) (x, y, z components, mm)."""
        x, y, z = np.meshgrid(grid.axis(0), grid.axis(1), grid.axis(2), indexing="xy")
        # meshgrid 'xy' gives (y, x, z) order; rebuild in (z, y, x)
        pts = np.stack([a.transpose(2, 0, 1).ravel() for a in (x, y, z)], axis=1)
        q = self.inverse_points(pts)
        return (q - pts).reshape(grid.shape + (3,))

    def warp(self, source: np.ndarray, source_grid: Grid, target: Grid, order: int, cval: float,
             chunk: int = 16) -> np.ndarray:
        """The arterial image on ``target``: ``source`` (venous-space, on ``source_grid``) sampled at
        q + w(q), slab by slab to bound memory."""
        out = np.empty(target.shape, dtype=source.dtype)
        xs, ys = target.axis(0), target.axis(1)
        for k0 in range(0, target.shape[0], chunk):
            zs = target.axis(2)[k0:k0 + chunk]
            z, y, x = np.meshgrid(zs, ys, xs, indexing="ij")
            wx, wy, wz = self(x, y, z)
            idx = [((z + wz) - source_grid.origin[2]) / source_grid.spacing[2],
                   ((y + wy) - source_grid.origin[1]) / source_grid.spacing[1],
                   ((x + wx) - source_grid.origin[0]) / source_grid.spacing[0]]
            out[k0:k0 + chunk] = ndimage.map_coordinates(source, idx, order=order, mode="nearest", cval=cval,
                                                         prefilter=False)
        return out
