"""Geometric primitives in physical space (mm), rasterised onto a :class:`~synthetic.grid.Grid`.

Every primitive is evaluated only inside its own bounding box, so painting a thin vessel on a
512x512x200 grid costs little. Shapes are defined in mm, so the same patient renders at any
resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from synthetic.grid import Grid


def _rotation(rng_angles: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix from Euler angles (radians, about z, y, x)."""
    a, b, c = rng_angles
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


@dataclass
class Ellipsoid:
    """An ellipsoid with optional smooth radial lobulation (``bumps``: amplitude as a fraction)."""

    centre: np.ndarray
    semi_axes: np.ndarray
    angles: tuple[float, float, float] = (0.0, 0.0, 0.0)
    bumps: float = 0.0
    bump_phase: np.ndarray = field(default_factory=lambda: np.zeros(6))

    def __post_init__(self) -> None:
        self.centre = np.asarray(self.centre, float)
        self.semi_axes = np.asarray(self.semi_axes, float)
        self.rot = _rotation(self.angles)

    def bbox(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        r = self.semi_axes.max() * (1 + abs(self.bumps)) + margin
        return self.centre - r, self.centre + r

    def level(self, x, y, z) -> np.ndarray:
        """< 1 inside, 1 on the surface (normalised radius)."""
        dx, dy, dz = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        # body coordinates: R^T (p - c)
        u = self.rot[0, 0] * dx + self.rot[1, 0] * dy + self.rot[2, 0] * dz
        v = self.rot[0, 1] * dx + self.rot[1, 1] * dy + self.rot[2, 1] * dz
        w = self.rot[0, 2] * dx + self.rot[1, 2] * dy + self.rot[2, 2] * dz
        a, b, c = self.semi_axes
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
        if self.bumps:
            nrm = np.sqrt(u * u + v * v + w * w) + 1e-6
            ux, uy, uz = u / nrm, v / nrm, w / nrm
            p = self.bump_phase
            wobble = (np.sin(2 * ux + p[0]) * np.cos(3 * uy + p[1]) + np.sin(3 * uz + p[2]) * np.cos(2 * ux + p[3])
                      + 0.5 * np.sin(5 * uy + p[4]) * np.sin(4 * uz + p[5]))
            rho = rho / (1 + self.bumps * wobble / 2.5)
        return rho

    def paint(self, grid: Grid, arr: np.ndarray, value: int, where: np.ndarray | None = None,
              scale: float = 1.0) -> None:
        lo, hi = self.bbox()
        sl = grid.index_range(lo, hi)
        if sl is None:
            return
        x, y, z = grid.coords(sl)
        inside = self.level(x, y, z) <= scale
        if where is not None:
            inside &= where[sl]
        arr[sl][inside] = value


def smooth_path(points: np.ndarray, step: float = 3.0) -> np.ndarray:
    """Catmull-Rom spline through control points, resampled about every ``step`` mm."""
    pts = np.asarray(points, float)
    if len(pts) < 3:
        n = max(2, int(np.ceil(np.linalg.norm(pts[-1] - pts[0]) / step)) + 1)
        t = np.linspace(0, 1, n)[:, None]
        return pts[0] * (1 - t) + pts[-1] * t
    ext = np.vstack([2 * pts[0] - pts[1], pts, 2 * pts[-1] - pts[-2]])
    out = [pts[0]]
    for i in range(1, len(ext) - 2):
        p0, p1, p2, p3 = ext[i - 1], ext[i], ext[i + 1], ext[i + 2]
        seg_len = np.linalg.norm(p2 - p1)
        n = max(2, int(np.ceil(seg_len / step)))
        for t in np.linspace(0, 1, n + 1)[1:]:
            t2, t3 = t * t, t * t * t
            out.append(0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                              + (-p0 + 3 * p1 - 3 * p2 + p3) * t3))
    return np.asarray(out)


@dataclass
class Tube:
    """A tube along a smooth path with a radius per control point (vessels, bowel, pancreas).

    ``wall`` > 0 makes a hollow organ: :meth:`paint` paints the lumen with ``lumen_value``.
    """

    points: np.ndarray
    radii: np.ndarray
    wall: float = 0.0
    step: float = 3.0

    def __post_init__(self) -> None:
        ctrl = np.asarray(self.points, float)
        radii = np.asarray(self.radii, float)
        if radii.size == 1:  # one radius for the whole tube
            radii = np.full(len(ctrl), float(radii.ravel()[0]))
        self.path = smooth_path(ctrl, self.step)
        # radius along the path: interpolate by arc length of the control polygon
        s_ctrl = np.r_[0, np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))]
        s_path = np.r_[0, np.cumsum(np.linalg.norm(np.diff(self.path, axis=0), axis=1))]
        s_path = s_path * (s_ctrl[-1] / max(s_path[-1], 1e-6))
        self.path_radii = np.interp(s_path, s_ctrl, radii)

    def bbox(self, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        r = self.path_radii.max() + margin
        return self.path.min(axis=0) - r, self.path.max(axis=0) + r

    def distance_ratio(self, grid: Grid, sl, x, y, z, inner: float = 0.0) -> np.ndarray:
        """min over segments of distance / (radius - inner) for the voxels of a block (<= 1 inside)."""
        best = np.full(np.broadcast_shapes(x.shape, y.shape, z.shape), np.inf)
        for i in range(len(self.path) - 1):
            a, b = self.path[i], self.path[i + 1]
            ra, rb = self.path_radii[i] - inner, self.path_radii[i + 1] - inner
            if max(ra, rb) <= 0:
                continue
            r = max(ra, rb)
            lo, hi = np.minimum(a, b) - r, np.maximum(a, b) + r
            sub = grid.index_range(lo, hi)
            if sub is None:
                continue
            # restrict to the block
            loc = tuple(slice(max(s.start, q.start) - q.start, min(s.stop, q.stop) - q.start)
                        for s, q in zip(sub, sl))
            if any(l.stop <= l.start for l in loc):
                continue
            xs, ys, zs = x[:, :, loc[2]], y[:, loc[1], :], z[loc[0], :, :]
            ab = b - a
            L2 = float(ab @ ab) + 1e-12
            t = ((xs - a[0]) * ab[0] + (ys - a[1]) * ab[1] + (zs - a[2]) * ab[2]) / L2
            t = np.clip(t, 0.0, 1.0)
            d = np.sqrt((xs - a[0] - t * ab[0]) ** 2 + (ys - a[1] - t * ab[1]) ** 2 + (zs - a[2] - t * ab[2]) ** 2)
            rr = np.maximum(ra + t * (rb - ra), 1e-3)
            blk = best[loc]
            np.minimum(blk, d / rr, out=blk)
            best[loc] = blk
        return best

    def paint(self, grid: Grid, arr: np.ndarray, value: int, where: np.ndarray | None = None,
              lumen_value: int | None = None) -> None:
        lo, hi = self.bbox()
        sl = grid.index_range(lo, hi)
        if sl is None:
            return
        x, y, z = grid.coords(sl)
        ratio = self.distance_ratio(grid, sl, x, y, z)
        inside = ratio <= 1.0
        if where is not None:
            inside &= where[sl]
        block = arr[sl]
        block[inside] = value
        if self.wall > 0 and lumen_value is not None:
            lumen = self.distance_ratio(grid, sl, x, y, z, inner=self.wall) <= 1.0
            lumen &= inside
            block[lumen] = lumen_value
        arr[sl] = block


def elliptic_cylinder_level(x, y, centre_xy, semi_xy) -> np.ndarray:
    """Normalised radius of an axial ellipse (< 1 inside)."""
    return np.sqrt(((x - centre_xy[0]) / semi_xy[0]) ** 2 + ((y - centre_xy[1]) / semi_xy[1]) ** 2)


@dataclass
class WaveField:
    """A smooth random field in physical space: a sum of plane waves with random directions, phases
    and wavelengths. Zero-mean, unit variance, defined at any point, so that a patient's lobulation,
    haustra or bowel-content mottling look the same at every voxel size."""

    directions: np.ndarray  # (k, 3) unit vectors
    wavenumbers: np.ndarray  # (k,) rad/mm
    phases: np.ndarray  # (k,)

    @classmethod
    def sample(cls, rng: np.random.Generator, wavelength_mm: tuple[float, float], waves: int = 12) -> "WaveField":
        d = rng.normal(size=(waves, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        lam = rng.uniform(*wavelength_mm, waves)
        return cls(d, 2 * np.pi / lam, rng.uniform(0, 2 * np.pi, waves))

    def __call__(self, x, y, z) -> np.ndarray:
        out = 0.0
        for (dx, dy, dz), k, p in zip(self.directions, self.wavenumbers, self.phases):
            out = out + np.sin(k * (dx * x + dy * y + dz * z) + p)
        return np.asarray(out) * np.sqrt(2.0 / len(self.phases))


def superellipse_level(x, y, centre_xy, semi_x: float, semi_ant: float, semi_post: float,
                       n_ant: float = 2.1, n_post: float = 2.8) -> np.ndarray:
    """Normalised radius (< 1 inside) of a body-like cross-section: a superellipse whose posterior
    half is flatter (the patient lies on the table) than its anterior half. y grows posteriorly."""
    dx = np.abs(x - centre_xy[0]) / semi_x
    dy = y - centre_xy[1]
    post = dy > 0
    b = np.where(post, semi_post, semi_ant)
    n = np.where(post, n_post, n_ant)
    return (dx ** n + (np.abs(dy) / b) ** n) ** (1.0 / n)


def superellipse_radius(angle: float, semi_x: float, semi_ant: float, semi_post: float,
                        n_ant: float = 2.1, n_post: float = 2.8) -> float:
    """Distance from the centre to the boundary of :func:`superellipse_level` along the direction
    (sin angle, cos angle): angle 0 points posteriorly, +pi/2 to the patient's left."""
    sx, cy = np.sin(angle), np.cos(angle)
    b, n = (semi_post, n_post) if cy > 0 else (semi_ant, n_ant)
    return float((abs(sx / semi_x) ** n + abs(cy / b) ** n) ** (-1.0 / n))
