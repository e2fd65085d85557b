"""A procedural upper abdomen (generator 2.0): the body wall and skeleton of :mod:`synthetic.body`,
liver with hepatic and portal vessels, kidneys with cortex, medulla, sinus and pelvis, adrenals,
spleen, stomach, duodenum, a lobulated pancreas with interlobular fat, the ten organ/vessel classes
of the attention map, a branching arterial and venous tree (portal, splenic and superior mesenteric
veins, IVC, renal vessels, gastroduodenal, jejunal, colic and hepatic branches), aortic
calcifications, and colon and small-bowel loops with walls, fluid, faeces and gas.

Coordinates are DICOM LPS mm (x to the patient's left, y posterior, z superior), with the origin
near the pancreatic neck. The viscera are drawn in a reference layout that follows textbook
anatomy (lymph-node stations fall where the paper's Table 7 distances put them) and then fitted
to the patient's abdominal cavity, so that slim and obese patients differ as they do on real CT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from lnmet.labels import ANATOMY_LABELS as L
from synthetic.body import Body, sample_body
from synthetic.grid import Grid
from synthetic.shapes import Ellipsoid, Tube, WaveField

# The reference layout was drawn for a cavity reaching this far in front of the spine and to each side.
REFERENCE_FRONT_DEPTH_MM = 140.0
REFERENCE_HALF_WIDTH_MM = 122.0
# Share of patients whose stomach body and antrum are empty and collapsed (generator 2.5), as after the
# usual fasting before a pancreas CT; the rest are distended by water, food or gas.
STOMACH_COLLAPSED_SHARE = 0.5


@dataclass
class Hollow:
    """A hollow viscus segment (bowel): wall label, lumen contents and how full of gas it is."""

    tube: Tube
    content: str  # "fluid" | "faeces" | "gas" | "collapsed"
    gas_fraction: float  # share of the lumen's height taken by gas (non-dependent, anterior)


@dataclass
class Vessel:
    tube: Tube
    label: str  # key of ANATOMY_LABELS
    within: tuple[str, ...]  # labels it may be painted over


@dataclass
class Anatomy:
    """One patient's anatomy as primitives; :meth:`render` rasterises it onto any grid."""

    body: Body
    ellipsoids: dict[str, Ellipsoid] = field(default_factory=dict)
    tubes: dict[str, Tube] = field(default_factory=dict)
    vessels: list[Vessel] = field(default_factory=list)
    bowel: list[Hollow] = field(default_factory=list)
    calcifications: list[Ellipsoid] = field(default_factory=list)
    pancreas_path: np.ndarray | None = None  # control points head -> tail
    pancreas_radii: np.ndarray | None = None
    pancreas_lobulation: WaveField | None = None
    pancreas_fat_fraction: float = 0.05  # share of the gland's outline that is interlobular fat
    lobule_centres: np.ndarray | None = None
    bowel_mottle: WaveField | None = None
    stomach_collapsed: bool = False  # body and antrum empty and collapsed (generator 2.5)
    stomach_gas_level: float = 0.0  # y above which (anterior, smaller y) the stomach lumen holds gas
    duodenum_gas_level: float = -1e3  # the same for the duodenum (the bulb, most anterior, fills first)
    kidney_hilum: dict[str, np.ndarray] = field(default_factory=dict)

    # Old attribute names, kept for readers of generator 1.x code.
    @property
    def spine_centre(self) -> np.ndarray:
        return self.body.spine_centre

    @property
    def spine_radius(self) -> float:
        return self.body.spine_radius

    # ------------------------------------------------------------------ rendering
    def render(self, grid: Grid) -> np.ndarray:
        """The anatomy label map (``lnmet.labels.ANATOMY_LABELS``) on ``grid``, without tumour or nodes."""
        arr = np.zeros(grid.shape, np.uint8)
        self.body.render(grid, arr)

        def fat():
            return arr == L["body_fat"]

        E, T = self.ellipsoids, self.tubes
        for side in ("left", "right"):
            self._kidney(grid, arr, side)
        for side in ("left", "right"):
            E[f"adrenal_{side}"].paint(grid, arr, L["adrenal"], where=fat())
        for name in ("liver", "liver_left", "caudate"):
            E[name].paint(grid, arr, L["liver"], where=fat() | (arr == L["liver"]))
        E["gallbladder"].paint(grid, arr, L["gallbladder"], where=arr == L["liver"])
        self._paint_vessels(grid, arr, ("hepatic_vein", "portal_splenic_vein"), inside_liver=True)

        inside = np.isin(arr, [L["body_fat"], L["liver"], L["gallbladder"]])
        T["stomach"].paint(grid, arr, L["stomach"], where=inside, lumen_value=L["stomach_lumen"])
        lumen = arr == L["stomach_lumen"]
        _, ys, _ = grid.coords(grid.full)
        arr[lumen & np.broadcast_to(ys < self.stomach_gas_level, arr.shape)] = L["stomach_gas"]
        inside = np.isin(arr, [L["body_fat"], L["liver"], L["gallbladder"]])
        T["duodenum"].paint(grid, arr, L["duodenum"], where=inside, lumen_value=L["duodenum_lumen"])
        arr[(arr == L["duodenum_lumen"]) & np.broadcast_to(ys < self.duodenum_gas_level, arr.shape)] = L["duodenum_gas"]
        T["esophagus"].paint(grid, arr, L["esophagus"], where=inside | (arr == L["muscle_wall"]))
        E["spleen"].paint(grid, arr, L["spleen"], where=fat())
        if "spleen_pole" in E:  # the broad upper pole fills the posterior recess under the left dome
            E["spleen_pole"].paint(grid, arr, L["spleen"], where=fat() | (arr == L["lung"]))
        self._pancreas(grid, arr)
        inside = np.isin(arr, [L["body_fat"], L["liver"], L["gallbladder"], L["pancreas"], L["pancreas_fat"]])
        for name in ("ivc", "portal_vein", "smv", "splenic_vein"):
            label = "ivc" if name == "ivc" else "portal_splenic_vein"
            T[name].paint(grid, arr, L[label], where=inside | (arr == L["muscle_wall"]))
        T["aorta"].paint(grid, arr, L["aorta"], where=inside | (arr == L["muscle_wall"]))
        for c in self.calcifications:
            c.paint(grid, arr, L["calcification"], where=arr == L["aorta"])
        for name, label in (("sma", "sma"), ("celiac", "tc_sa"), ("splenic_artery", "tc_sa"),
                            ("lga", "lga"), ("cha", "cha_pha"), ("pha", "cha_pha")):
            T[name].paint(grid, arr, L[label], where=inside & (arr != L["aorta"]))
        self._paint_vessels(grid, arr, ("other_artery", "other_vein"), inside_liver=False)
        self._bowel(grid, arr)
        return arr

    def _kidney(self, grid: Grid, arr: np.ndarray, side: str) -> None:
        """Cortex, medullary pyramids, sinus fat and pelvis (opening towards the hilum)."""
        e = self.ellipsoids[f"kidney_{side}"]
        lo, hi = e.bbox()
        sl = grid.index_range(lo, hi)
        if sl is None:
            return
        x, y, z = grid.coords(sl)
        rho = e.level(x, y, z)
        block = arr[sl]
        ok = np.isin(block, [L["body_fat"]])
        kidney = (rho <= 1.0) & ok
        block[kidney] = L[f"kidney_{side}"]
        d = np.stack(np.broadcast_arrays(x - e.centre[0], y - e.centre[1], z - e.centre[2]))
        norm = np.sqrt((d ** 2).sum(0)) + 1e-6
        hilum = self.kidney_hilum[side]
        towards = (d[0] * hilum[0] + d[1] * hilum[1] + d[2] * hilum[2]) / norm
        theta = np.arctan2(d[1], d[0])
        pyramids = np.cos(6 * theta + e.bump_phase[0]) * np.cos(2 * np.pi * d[2] / 26.0 + e.bump_phase[1]) > -0.35
        block[kidney & (rho > 0.42) & (rho <= 0.74) & pyramids] = L["kidney_medulla"]
        sinus = kidney & (((rho <= 0.55) & (towards > 0.15)) | ((rho <= 1.0) & (towards > 0.8)))
        block[sinus] = L["renal_sinus_fat"]
        block[kidney & (rho <= 0.38) & (towards > 0.2)] = L["renal_pelvis"]
        arr[sl] = block

    def _pancreas(self, grid: Grid, arr: np.ndarray) -> None:
        """A lobulated outline (radius modulated by a smooth random field) with interlobular fat:
        the boundaries of lobules ~7 mm across, widened by the patient's fatty infiltration."""
        allowed = np.isin(arr, [L["body_fat"], L["liver"], L["gallbladder"]])
        for name in ("pancreas", "uncinate"):
            tube = self.tubes[name]
            lo, hi = tube.bbox(3.0)
            sl = grid.index_range(lo, hi)
            if sl is None:
                continue
            x, y, z = grid.coords(sl)
            ratio = tube.distance_ratio(grid, sl, x, y, z)
            wobble = self.pancreas_lobulation(x, y, z) if self.pancreas_lobulation is not None else 0.0
            inside = (ratio <= 1.0 + 0.16 * np.clip(wobble, -1.5, 1.5)) & allowed[sl]
            block = arr[sl]
            block[inside] = L["pancreas"]
            arr[sl] = block
        pan = np.flatnonzero(arr == L["pancreas"])
        if pan.size and self.lobule_centres is not None and self.pancreas_fat_fraction > 0:
            zyx = np.stack(np.unravel_index(pan, arr.shape), 1).astype(float)
            pts = np.array(grid.origin) + zyx[:, ::-1] * np.array(grid.spacing)
            d, _ = cKDTree(self.lobule_centres).query(pts, k=2)
            gap = d[:, 1] - d[:, 0]
            cut = np.quantile(gap, self.pancreas_fat_fraction)
            arr.ravel()[pan[gap <= cut]] = L["pancreas_fat"]

    def _paint_vessels(self, grid: Grid, arr: np.ndarray, labels: tuple[str, ...], inside_liver: bool) -> None:
        for v in self.vessels:
            if v.label not in labels or (("liver" in v.within) != inside_liver):
                continue
            v.tube.paint(grid, arr, L[v.label], where=np.isin(arr, [L[w] for w in v.within]))

    def _bowel(self, grid: Grid, arr: np.ndarray) -> None:
        """Colon and small-bowel segments, painted through the remaining fat, with their contents."""
        for seg in self.bowel:
            t = seg.tube
            lo, hi = t.bbox()
            sl = grid.index_range(lo, hi)
            if sl is None:
                continue
            x, y, z = grid.coords(sl)
            block = arr[sl]
            free = block == L["body_fat"]
            outer = (t.distance_ratio(grid, sl, x, y, z) <= 1.0) & free
            if not outer.any():
                continue
            wall = t.wall if seg.content != "collapsed" else t.wall * 2.2
            lumen = (t.distance_ratio(grid, sl, x, y, z, inner=wall) <= 1.0) & outer
            block[outer] = L["bowel"]
            content = {"fluid": "bowel_lumen", "faeces": "faeces", "gas": "gas", "collapsed": "bowel_lumen"}[seg.content]
            block[lumen] = L[content]
            if seg.content == "faeces" and self.bowel_mottle is not None:
                bubbles = np.broadcast_to(self.bowel_mottle(x, y, z) > 1.25, block.shape)
                block[lumen & bubbles] = L["gas"]
            if seg.gas_fraction > 0 and seg.content != "gas":
                yc = float(t.path[:, 1].mean())
                r = float(t.path_radii.mean())
                cap = np.broadcast_to(y < yc - r + 2.0 * r * seg.gas_fraction, block.shape)
                block[lumen & cap] = L["gas"]
            arr[sl] = block


def _j(rng: np.random.Generator, sd: float, n: int = 3) -> np.ndarray:
    return rng.normal(0.0, sd, n)


def _wiggle(points: np.ndarray, rng: np.random.Generator, amplitude: float, wavelength: float) -> np.ndarray:
    """Tortuosity: control points resampled about every wavelength/3 mm and displaced sideways by a
    smooth random amount (end points kept)."""
    pts = np.asarray(points, float)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.r_[0, np.cumsum(seg)]
    n = max(int(s[-1] / (wavelength / 3.0)), 2)
    t = np.linspace(0, s[-1], n + 1)
    out = np.column_stack([np.interp(t, s, pts[:, k]) for k in range(3)])
    phase = rng.uniform(0, 2 * np.pi, 2)
    for i in range(1, len(out) - 1):
        tangent = out[i + 1] - out[i - 1]
        tangent /= np.linalg.norm(tangent) + 1e-9
        a = np.cross(tangent, [0.0, 0.0, 1.0])
        if np.linalg.norm(a) < 1e-3:
            a = np.cross(tangent, [1.0, 0.0, 0.0])
        a /= np.linalg.norm(a)
        b = np.cross(tangent, a)
        w = 2 * np.pi * t[i] / wavelength
        out[i] += amplitude * (np.sin(w + phase[0]) * a + 0.6 * np.sin(0.7 * w + phase[1]) * b)
    return out


def _random_walk(rng: np.random.Generator, start: np.ndarray, steps: int, step_mm: float, box_lo, box_hi) -> np.ndarray:
    """A smooth random walk kept inside a box (small-bowel loops)."""
    pts = [np.asarray(start, float)]
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    for _ in range(steps):
        direction = direction + rng.normal(0, 0.55, 3)
        direction /= np.linalg.norm(direction)
        nxt = pts[-1] + step_mm * direction
        for k in range(3):
            if nxt[k] < box_lo[k] or nxt[k] > box_hi[k]:
                direction[k] = -direction[k]
                nxt[k] = np.clip(nxt[k], box_lo[k], box_hi[k])
        pts.append(nxt)
    return np.asarray(pts)


def _fit_to_cavity(a: Anatomy) -> None:
    """Move the viscera drawn in the reference layout into this patient's cavity: positions in front
    of the spine scale with the cavity's depth, lateral positions with its width (sizes unchanged)."""
    b = a.body
    sy = b.spine_centre[1]
    front = b.centre[1] - b.semi_ant + b.cavity_shrink
    fy = float(np.clip((sy - front) / REFERENCE_FRONT_DEPTH_MM, 0.8, 1.2))
    fx = float(np.clip((b.semi_x - b.cavity_shrink) / REFERENCE_HALF_WIDTH_MM, 0.85, 1.3))

    def move(p: np.ndarray) -> np.ndarray:
        p = np.array(p, float)
        p[..., 0] = p[..., 0] * fx
        ant = p[..., 1] < sy
        p[..., 1] = np.where(ant, sy - (sy - p[..., 1]) * fy, p[..., 1])
        return p

    for e in list(a.ellipsoids.values()) + a.calcifications:
        e.centre = move(e.centre)
    for name in ("liver", "liver_left", "spleen", "spleen_pole"):  # the large solid organs grow a little with the frame
        e = a.ellipsoids.get(name)
        if e is None:
            continue
        e.semi_axes = e.semi_axes * np.sqrt(fx)
    tubes = list(a.tubes.values()) + [v.tube for v in a.vessels] + [h.tube for h in a.bowel]
    for t in tubes:
        t.points = move(t.points)
        t.path = move(t.path)
    a.pancreas_path = move(a.pancreas_path)
    if a.lobule_centres is not None:
        a.lobule_centres = move(a.lobule_centres)
    a.stomach_gas_level = float(sy - (sy - a.stomach_gas_level) * fy)
    a.duodenum_gas_level = float(sy - (sy - a.duodenum_gas_level) * fy)


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy."""
    body = sample_body(rng)
    a = Anatomy(body=body)
    spine_c, spine_r = body.spine_centre, body.spine_radius

    def P(*pts, sd=3.0):
        """Control points with a per-point jitter."""
        arr = np.asarray(pts, float)
        return arr + _j(rng, sd, arr.size).reshape(arr.shape)

    E = a.ellipsoids
    E["liver"] = Ellipsoid(np.r_[-72, 10, 48] + _j(rng, 5), np.array([86, 92, 74]) * rng.uniform(0.88, 1.1, 3),
                           (rng.uniform(-0.2, 0.2), 0, 0), bumps=0.05, bump_phase=rng.uniform(0, 6.28, 6))
    E["liver_left"] = Ellipsoid(np.r_[-2, -50, 62] + _j(rng, 5), np.array([58, 34, 34]) * rng.uniform(0.8, 1.2, 3),
                                (rng.uniform(-0.3, 0.3), 0, 0.2))
    E["caudate"] = Ellipsoid(np.r_[-20, 26, 44] + _j(rng, 3), np.array([16, 14, 26]) * rng.uniform(0.85, 1.15, 3))
    E["gallbladder"] = Ellipsoid(np.r_[-48, -40, 18] + _j(rng, 4), np.array([14, 13, 28]) * rng.uniform(0.7, 1.2, 3),
                                 (0, 0.3, 0.3))
    E["kidney_left"] = Ellipsoid(np.r_[70, 66, -18] + _j(rng, 4), np.array([27, 22, 54]) * rng.uniform(0.9, 1.1, 3),
                                 (0.5, 0.15, 0.0), bump_phase=rng.uniform(0, 6.28, 6))
    E["kidney_right"] = Ellipsoid(np.r_[-70, 66, -32] + _j(rng, 4), np.array([27, 22, 54]) * rng.uniform(0.9, 1.1, 3),
                                  (-0.5, -0.15, 0.0), bump_phase=rng.uniform(0, 6.28, 6))
    a.kidney_hilum = {"left": np.array([-0.75, -0.55, 0.1]), "right": np.array([0.75, -0.55, 0.1])}
    for k in a.kidney_hilum:
        a.kidney_hilum[k] /= np.linalg.norm(a.kidney_hilum[k])
    E["adrenal_left"] = Ellipsoid(np.r_[46, 42, 30] + _j(rng, 3), [3.5, 14, 20], (0.6, 0.3, 0.2))
    E["adrenal_right"] = Ellipsoid(np.r_[-34, 44, 38] + _j(rng, 3), [3.5, 13, 20], (-0.4, 0.2, 0.1))
    # The spleen lies in the posterolateral left upper quadrant along the 10th rib (Gray's): its long
    # axis runs from the posterior pole beside the spine, at the depth of the left kidney, forwards and
    # laterally, descending; its diaphragmatic surface is moulded by the body wall and its visceral
    # surface by the stomach and kidney (painted first), which gives the crescent of axial CT.
    spleen_len = rng.uniform(50, 66)
    E["spleen"] = Ellipsoid(np.r_[106, 72, 34] + _j(rng, 4), [24 * rng.uniform(0.85, 1.2), spleen_len, rng.uniform(40, 55)],
                            (rng.uniform(0.55, 0.9), 0.0, rng.uniform(0.25, 0.5)),
                            bumps=0.1, bump_phase=rng.uniform(0, 6.28, 6))
    # Generator 2.2: the upper pole is the broad part, higher, more medial and posterior, under the
    # left dome against the diaphragm (the real CT's spleen widens upwards to 40+ cm^2 and reaches
    # towards the fundus; 2.1's single ellipsoid tapered upwards at the lateral wall). Drawn from a
    # spawned stream, so every other draw of a seed is the one of 2.1.
    pole = rng.spawn(1)[0]
    E["spleen_pole"] = Ellipsoid(E["spleen"].centre + np.r_[-32, 12, 26] + _j(pole, 4),
                                 np.array([32, 32, 26]) * pole.uniform(0.8, 1.15, 3),
                                 (pole.uniform(0.3, 0.7), 0.0, pole.uniform(-0.2, 0.2)),
                                 bumps=0.1, bump_phase=pole.uniform(0, 6.28, 6))

    T = a.tubes
    ax, ay = 15.0 + rng.normal(0, 2), spine_c[1] - spine_r - 12.0 + rng.normal(0, 1.5)
    aorta_r = rng.uniform(10.0, 12.5)
    T["aorta"] = Tube(P([ax - 2, ay + 6, 140], [ax, ay, 60], [ax, ay - 2, 0], [ax - 1, ay, -80], [ax - 2, ay + 3, -150],
                        sd=1.0), [aorta_r] * 5)
    ivc_x = -24.0 + rng.normal(0, 2)
    T["ivc"] = Tube(P([ivc_x - 8, ay + 4, 120], [ivc_x - 2, ay, 60], [ivc_x, ay - 2, 0], [ivc_x, ay + 2, -150], sd=1.5),
                    [13, 11, 10.5, 10.5])
    ge = np.r_[36, 14, 60] + _j(rng, 3)
    T["esophagus"] = Tube(np.vstack([P([ax - 6, ay - 22, 140], [ax, ay - 22, 100], sd=1.5), P([ax + 10, ay - 22, 78]), ge]),
                          [8, 8, 8.5, 9])
    pylorus = np.r_[-16, -44, 12] + _j(rng, 3)
    st_r = rng.uniform(0.8, 1.2)
    body_pts = P([58, 12, 66], [62, -12, 44], [44, -40, 22], [12, -56, 10])
    # Generator 2.3: the fundus lies posteriorly under the left dome, where the spleen's gastric
    # surface meets it (Gray's: the visceral surface of the spleen is moulded by the stomach); 2.2's
    # lay forward, with fat between it and the spleen. Drawn from a spawned stream, so every other
    # draw of a seed is the one of 2.2.
    fundus = rng.spawn(1)[0]
    body_pts[0] += [fundus.uniform(0.0, 8.0), fundus.uniform(10.0, 22.0), 0.0]
    st_radii, st_wall = np.array([14, 34, 34, 29, 20, 11]) * st_r, rng.uniform(3.0, 5.5)
    a.stomach_gas_level = -46.0 + rng.normal(0, 8)
    # Generator 2.5: an empty stomach. Fasting, the body and antrum lie collapsed, a soft-tissue band of
    # thick folded wall with little or no lumen (about 2-3 cm across), while the fundus keeps its gas and
    # fluid; 2.3 always drew a distended stomach. Drawn from a spawned stream, so every other draw of a
    # seed is the one of 2.3.
    empty = rng.spawn(1)[0]
    a.stomach_collapsed = bool(empty.uniform() < STOMACH_COLLAPSED_SHARE)
    if a.stomach_collapsed:
        st_radii[2:5] *= empty.uniform(0.35, 0.6, 3)
        st_wall = empty.uniform(5.0, 8.0)
        if empty.uniform() < 0.5:  # the gas stays in the fundus, above the body's collapsed lumen
            a.stomach_gas_level -= empty.uniform(0.0, 20.0)
    T["stomach"] = Tube(np.vstack([ge + [10, 4, 2], body_pts, pylorus]), st_radii, wall=st_wall, step=4.0)
    # Supine, duodenal gas rises to the anterior lumen: none in some patients, a cap in the bulb in
    # others, a gas-filled duodenum in a few (generator 2.1).
    a.duodenum_gas_level = -1e3 if rng.uniform() < 0.4 else float(rng.uniform(-40.0, 24.0))
    T["duodenum"] = Tube(np.vstack([pylorus, P([-36, -30, 12], [-52, -8, 4], [-56, 2, -18], [-50, 8, -42], [-24, 16, -56],
                                               [2, 14, -60], [22, 10, -50], [30, 4, -30], [34, -2, -14])]),
                         [10, 12, 12, 12, 12, 11, 11, 11, 11, 10], wall=2.5, step=3.0)
    tail_end = E["spleen"].centre + np.r_[-20, -22, -12] + _j(rng, 2)  # at the splenic hilum
    pan = np.vstack([P([-34, 2, -16], [-12, -6, -2], [8, -8, 4], [34, 0, 8], [62, 14, 12], sd=2.5), tail_end])
    pr = np.array([16.0, 10.5, 10.0, 11.0, 9.5, 8.0]) * rng.uniform(0.8, 1.15)
    T["pancreas"] = Tube(pan, pr, step=3.0)
    T["uncinate"] = Tube(P([-30, 6, -18], [-18, 14, -30], [-6, 12, -34], sd=2.0), [11, 9, 6])
    a.pancreas_path, a.pancreas_radii = pan, pr
    a.pancreas_lobulation = WaveField.sample(rng, (5.0, 11.0))
    u = rng.uniform()
    a.pancreas_fat_fraction = float(rng.uniform(0.02, 0.12) if u < 0.6 else rng.uniform(0.12, 0.3) if u < 0.9
                                    else rng.uniform(0.3, 0.5))
    lo, hi = np.minimum(pan.min(0), [-50, -20, -50]) - 25, np.maximum(pan.max(0), [-50, -20, -50]) + 25
    n_lob = int(np.prod(hi - lo) / 7.0 ** 3)
    a.lobule_centres = lo + rng.uniform(size=(n_lob, 3)) * (hi - lo)

    # Arteries from the aorta: coeliac trunk at about T12/L1, SMA 1 cm below.
    ca_z = 20.0 + rng.normal(0, 3)
    ca0 = np.r_[ax, ay - aorta_r + 2, ca_z]
    ca1 = ca0 + np.r_[-2, -16, 3] + _j(rng, 1.5)
    T["celiac"] = Tube(np.vstack([ca0, ca1]), [3.8, 3.6])
    splenic = np.vstack([ca1, P([34, ca1[1] + 2, ca_z + 2], [58, 8, ca_z + 4], [80, 22, ca_z]), tail_end + [4, 2, 6]])
    T["splenic_artery"] = Tube(_wiggle(splenic, rng, rng.uniform(2.0, 6.0), rng.uniform(18, 30)), [3.3], step=2.0)
    T["lga"] = Tube(np.vstack([ca1, P([16, -4, ca_z + 12], [24, -12, ca_z + 26], [30, -10, ca_z + 36])]), [2.8, 2.7, 2.6, 2.4])
    cha_end = np.r_[-24, -8, ca_z + 1] + _j(rng, 2)
    T["cha"] = Tube(np.vstack([ca1, P([-8, ca1[1] - 4, ca_z]), cha_end]), [3.4, 3.3, 3.2])
    pha_end = np.r_[-44, -14, ca_z + 30] + _j(rng, 3)
    T["pha"] = Tube(np.vstack([cha_end, P([-34, -14, ca_z + 14]), pha_end]), [3.0, 2.9, 2.7])
    sma0 = np.r_[ax, ay - aorta_r + 2, ca_z - 12 + rng.normal(0, 2)]
    sma_pts = np.vstack([sma0, P([ax - 3, sma0[1] - 14, sma0[2] - 8], [ax - 6, -12, sma0[2] - 24], [ax - 8, -14, -70],
                                 [ax - 10, -10, -150])])
    T["sma"] = Tube(sma_pts, [4.2, 4.0, 3.9, 3.7, 3.4])
    # Portal system: splenic vein behind the pancreas, SMV right of the SMA, portal vein to the hilum.
    conf = np.r_[-2, 12, 0] + _j(rng, 2)
    T["splenic_vein"] = Tube(_wiggle(np.vstack([tail_end + [4, 10, -2], P([60, 26, 6], [32, 18, 4]), conf]), rng, 1.5, 40),
                             [5.0], step=3.0)
    smv_pts = np.vstack([P([ax - 24, -12, -150], [ax - 22, -10, -60], [ax - 18, 0, -20], sd=2), conf])
    T["smv"] = Tube(smv_pts, [5, 5.5, 6, 6.5])
    hilum = np.r_[-54, -2, 46] + _j(rng, 3)
    T["portal_vein"] = Tube(np.vstack([conf, P([-20, 8, 16], [-38, 2, 34]), hilum]), [7, 7, 6.5, 6])

    _branches(a, rng, ca_z=ca_z, ax=ax, ay=ay, aorta_r=aorta_r, ivc_x=ivc_x, cha_end=cha_end, pha_end=pha_end,
              sma_pts=sma_pts, smv_pts=smv_pts, conf=conf, hilum=hilum, pylorus=pylorus)
    _calcifications(a, rng)
    _bowel_loops(a, rng)
    _fit_to_cavity(a)
    return a


def _branches(a: Anatomy, rng: np.random.Generator, *, ca_z, ax, ay, aorta_r, ivc_x, cha_end, pha_end, sma_pts,
              smv_pts, conf, hilum, pylorus) -> None:
    """The unlabelled vessels: what a network must not call SMA, hepatic artery or node."""
    V = a.vessels
    fat = ("body_fat",)
    liver = ("liver",)

    def add(points, radii, label, within=fat, wiggle=0.0):
        pts = np.asarray(points, float)
        if wiggle:
            pts = _wiggle(pts, rng, wiggle, rng.uniform(15, 30))
            radii = [float(np.mean(radii))]
        V.append(Vessel(Tube(pts, radii, step=2.5), label, within))

    # Hepatic veins converge on the IVC just below the diaphragm.
    top = np.r_[ivc_x - 4, ay + 2, 78]
    for tip in ([-110, 20, 50], [-70, -30, 45], [-20, -55, 62]):
        mid = (top + np.asarray(tip)) / 2 + _j(rng, 5)
        add([top, mid, np.asarray(tip) + _j(rng, 6)], [6.0, 4.5, 2.5], "hepatic_vein", liver)
    # Intrahepatic portal branches from the hilum.
    for tip in ([-105, 5, 40], [-95, 30, 70], [-30, -45, 60], [-75, -25, 20]):
        add([hilum, (hilum + np.asarray(tip)) / 2 + _j(rng, 4), np.asarray(tip) + _j(rng, 6)], [5.0, 3.8, 2.4],
            "portal_splenic_vein", liver)
    # Hepatic arterial branches inside the liver.
    for tip in ([-95, 0, 50], [-30, -40, 62]):
        add([pha_end, np.asarray(tip) + _j(rng, 6)], [2.4, 1.8], "other_artery", liver + fat)
    # Gastroduodenal artery down between duodenum and pancreatic head, then the right gastroepiploic.
    gda_end = np.r_[-30, -26, -10] + _j(rng, 3)
    add([cha_end, np.r_[-28, -16, 8] + _j(rng, 2), gda_end], [2.6, 2.4, 2.2], "other_artery", fat, wiggle=1.5)
    add([gda_end, pylorus + [10, -16, -6], pylorus + [45, -25, 0], pylorus + [80, -20, 10]], [2.0], "other_artery", fat,
        wiggle=2.0)
    # Right gastric artery along the lesser curvature.
    add([cha_end, pylorus + [6, 4, 12], pylorus + [30, 8, 22]], [1.8, 1.6, 1.5], "other_artery", fat, wiggle=1.5)
    # Jejunal and ileal branches of the SMA fanning to the left, middle colic forwards, ileocolic to the right.
    sma_path = Tube(sma_pts, [1.0] * len(sma_pts)).path
    smv_path = Tube(smv_pts, [1.0] * len(smv_pts)).path
    for k in range(int(rng.integers(4, 7))):
        i = min(int(len(sma_path) * (0.35 + 0.1 * k)), len(sma_path) - 1)
        p0 = sma_path[i]
        p1 = p0 + np.r_[rng.uniform(35, 70), rng.uniform(-25, 5), rng.uniform(-30, 5)]
        add([p0, (p0 + p1) / 2 + _j(rng, 6), p1], [2.2, 1.8, 1.4], "other_artery", fat, wiggle=2.5)
        j = min(i + 2, len(smv_path) - 1)
        q0 = smv_path[j]
        q1 = p1 + _j(rng, 6) + np.r_[0, 0, -6]
        add([q0, (q0 + q1) / 2 + _j(rng, 6), q1], [2.8, 2.2, 1.6], "other_vein", fat, wiggle=2.5)
    i = int(len(sma_path) * 0.3)
    add([sma_path[i], sma_path[i] + np.r_[-10, -40, 0] + _j(rng, 5), sma_path[i] + np.r_[-30, -75, -10] + _j(rng, 8)],
        [2.2, 1.8, 1.5], "other_artery", fat, wiggle=2.0)
    i = int(len(sma_path) * 0.75)
    add([sma_path[i], sma_path[i] + np.r_[-40, 0, -20] + _j(rng, 5), sma_path[i] + np.r_[-80, 10, -40] + _j(rng, 8)],
        [2.4, 2.0, 1.6], "other_artery", fat, wiggle=2.0)
    # Inferior mesenteric artery and vein (the IMV ends in the splenic vein).
    add([[ax + 4, ay - aorta_r + 2, -95], [ax + 25, ay - 20, -110], [ax + 45, ay - 10, -140]], [2.2, 2.0, 1.8],
        "other_artery", fat, wiggle=1.5)
    add([[ax + 40, ay - 8, -140], [ax + 30, ay - 14, -60], conf + [30, 8, 4]], [3.0, 3.0, 3.2], "other_vein", fat,
        wiggle=2.0)
    # Gastrocolic trunk and left gastric (coronary) vein.
    add([smv_pts[2], smv_pts[2] + np.r_[-25, -35, 5] + _j(rng, 4)], [3.5, 2.5], "other_vein", fat, wiggle=1.5)
    add([conf + [6, -4, 4], conf + [20, -20, 30] + _j(rng, 4), conf + [26, -16, 48]], [3.0, 2.8, 2.4], "other_vein", fat,
        wiggle=1.5)
    # Renal arteries and veins: the left renal vein passes between the SMA and the aorta.
    kz = float(np.mean([a.ellipsoids["kidney_left"].centre[2], a.ellipsoids["kidney_right"].centre[2]])) + 8
    within = fat + ("renal_sinus_fat",)
    for side, kname in ((1, "kidney_left"), (-1, "kidney_right")):
        hil = a.ellipsoids[kname].centre + np.r_[-side * 14, -8, 6]
        add([[ax, ay + side * 2, kz], [ax + side * 25, ay + 6, kz - 2], hil], [3.2, 3.0, 2.8], "other_artery", within,
            wiggle=1.0)
        if side == 1:
            add([hil + [0, -4, 0], [ax + 22, ay - 10, kz + 4], [ax, ay - aorta_r - 5, kz + 6], [ivc_x, ay - 2, kz + 4]],
                [5.0, 5.0, 4.0, 5.0], "other_vein", within)
        else:
            add([hil + [0, -4, 0], [ivc_x - 12, ay - 2, kz]], [5.0, 5.0], "other_vein", within)


def _calcifications(a: Anatomy, rng: np.random.Generator) -> None:
    """Atherosclerotic plaques on the aortic wall (more in some patients than others)."""
    n = int(rng.poisson(rng.choice([0.0, 3.0, 10.0], p=[0.35, 0.4, 0.25])))
    aorta = a.tubes["aorta"]
    for _ in range(n):
        i = int(rng.integers(len(aorta.path)))
        c, r = aorta.path[i], aorta.path_radii[i]
        ang = rng.uniform(0, 2 * np.pi)
        p = c + (r - 1.2) * np.r_[np.cos(ang), np.sin(ang), 0.0]
        a.calcifications.append(Ellipsoid(p, [rng.uniform(1.0, 2.2), rng.uniform(1.0, 2.2), rng.uniform(1.5, 5.0)]))


def _bowel_loops(a: Anatomy, rng: np.random.Generator) -> None:
    """Colon (ascending, transverse, descending, with haustra) and small-bowel loops (jejunum in the
    left upper quadrant, ileum lower down), each segment with its own contents."""
    a.bowel_mottle = WaveField.sample(rng, (3.0, 8.0))
    colon_r = rng.uniform(17, 25)
    tc_z = rng.uniform(-45, -20)
    # Generator 2.3: the splenic (left colic) flexure is the colon's highest point, higher than the
    # right one, in contact with the spleen's anterior end and lateral to the stomach, held to the
    # diaphragm by the phrenicocolic ligament (Gray's); the transverse colon rises steeply to it.
    # 2.2's turned at the pancreas' level and left the upper left quadrant around the spleen and the
    # fundus to fat. Drawn from a spawned stream, so every other draw of a seed is the one of 2.2.
    flexure = rng.spawn(1)[0]
    flexure_z = flexure.uniform(35.0, 65.0)
    colon = np.array([[-85, 15, -110], [-98, 22, -65], [-96, 14, -25], [-78, -22, -2], [-45, -70, tc_z],
                      [5, -82, tc_z - 15], [55, -68, tc_z], [96, 4, flexure_z], [102, 22, -10], [100, 30, -60],
                      [92, 36, -115]], float) + rng.normal(0, 5, (11, 3))
    path = Tube(colon, [colon_r] * len(colon), step=6.0).path
    pieces = np.array_split(np.arange(len(path)), max(len(path) // 7, 1))
    for idx in pieces:
        if len(idx) < 2:
            continue
        pts = path[max(idx[0] - 1, 0): idx[-1] + 1]
        radii = colon_r * (1 + 0.18 * np.sin(np.arange(len(pts)) * 2.2 + rng.uniform(0, 6)))
        content = str(rng.choice(["faeces", "gas", "fluid"], p=[0.5, 0.35, 0.15]))
        a.bowel.append(Hollow(Tube(pts, radii, wall=rng.uniform(2.0, 3.5), step=5.0), content,
                              float(rng.uniform(0.1, 0.5) if content != "gas" else 0.0)))
    n_loops = int(rng.integers(20, 32))
    for k in range(n_loops):
        jejunum = k < n_loops // 2
        if jejunum:
            lo, hi = np.r_[15, -75, -75], np.r_[95, 25, 5]
        else:
            lo, hi = np.r_[-80, -85, -115], np.r_[80, 25, -40]
        start = lo + rng.uniform(size=3) * (hi - lo)
        pts = _random_walk(rng, start, int(rng.integers(6, 11)), rng.uniform(18, 28), lo, hi)
        content = str(rng.choice(["fluid", "collapsed", "gas"], p=[0.7, 0.2, 0.1]))
        a.bowel.append(Hollow(Tube(pts, [rng.uniform(9, 14)] * len(pts), wall=rng.uniform(1.5, 2.8), step=4.0), content,
                              float(rng.uniform(0.0, 0.3) if rng.uniform() < 0.35 else 0.0)))
