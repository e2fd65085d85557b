"""The PDAC tumour, the lymph nodes and LN-like distractor nodules of one patient.

Statistics follow the discovery cohort of Zheng et al. (IJCV 2024, Table 1 and section 4.1.1):
about 47% of patients metastasis-positive, 3.3 labelled LNs per patient, positive LNs only in
positive patients (about 1.4 each), positive LN volume median 665 mm^3 (IQR 210-804), negative
300 mm^3 (IQR 106-377), tumour diameter median 3.0 cm (IQR 2.5-4.1), head/uncinate in 63%.
Nodes are placed in fat at a gap from their station's organ/vessel that is mostly small with a
tail, inside the Table 7 distance range of the attention map (read from app.yaml). Classes overlap
on purpose in every appearance parameter (size, shape, texture, density, necrosis; generator 2.0):
some positive nodes are small and homogeneous (micro-metastases), some negative ones are large and
round (reactive), so that no single feature separates them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from lnmet.config import AttentionSettings
from lnmet.labels import ANATOMY_LABELS as L, ANATOMY_TO_ORGAN, ORGAN_CLASSES
from synthetic.anatomy import Anatomy
from synthetic.grid import Grid
from synthetic.shapes import Ellipsoid, Tube

# Quantile knots (probability, value) from Table 1; tails are the generator's own choice.
# Nominal tumour diameters are about 12% above Table 1's measured ones: the tumour is clipped to its
# envelope and measured in the axial plane, which takes off about that much.
TUMOUR_DIAMETER_KNOTS = ((0.0, 13.5), (0.10, 22.5), (0.25, 28.0), (0.50, 33.5), (0.75, 46.0), (0.92, 56.0), (1.0, 69.0))
# Positive knots sit above Table 1's quartiles so that the positive class as a whole (15% of it
# micro-metastases drawn from the negative distribution) has the paper's 665 [210-804] mm^3.
POSITIVE_LN_VOLUME_KNOTS = ((0.0, 50.0), (0.10, 150.0), (0.20, 290.0), (0.35, 600.0), (0.55, 760.0), (0.75, 840.0),
                            (0.92, 1400.0), (1.0, 2600.0))
NEGATIVE_LN_VOLUME_KNOTS = ((0.0, 30.0), (0.10, 60.0), (0.25, 110.0), (0.50, 330.0), (0.75, 385.0), (0.92, 620.0),
                            (1.0, 1200.0))

# Station weights: which organ/vessel a node lies next to (keys of lnmet.labels.ORGAN_CLASSES).
POSITIVE_STATIONS = {"pancreas": 0.34, "sma": 0.15, "cha_pha": 0.15, "duodenum": 0.10, "tc_sa": 0.10, "aorta": 0.10,
                     "lga": 0.03, "stomach": 0.03}
NEGATIVE_STATIONS = {"pancreas": 0.18, "duodenum": 0.10, "sma": 0.12, "cha_pha": 0.12, "tc_sa": 0.12, "aorta": 0.14,
                     "lga": 0.08, "stomach": 0.08, "spleen": 0.04, "esophagus": 0.02}

PLACEMENT_GRID = Grid.centred((180, 140, 112), (2.0, 2.0, 2.0), (0.0, 15.0, -10.0))


def sample_knots(rng: np.random.Generator, knots) -> float:
    """Draw from the distribution whose quantile function interpolates the knots (log-linear)."""
    p = np.array([k[0] for k in knots])
    v = np.log(np.array([k[1] for k in knots]))
    return float(np.exp(np.interp(rng.uniform(), p, v)))


@dataclass
class TumourSpec:
    centre: np.ndarray
    shape: Ellipsoid
    envelope: Tube  # the pancreas grown by a margin: the tumour stays within it
    location: str  # head | uncinate | body | tail
    nominal_diameter_mm: float
    aggressiveness: float  # latent: drives metastasis risk and appearance

    def paint(self, grid: Grid, arr: np.ndarray) -> None:
        lo, hi = self.shape.bbox()
        sl = grid.index_range(lo, hi)
        if sl is None:
            return
        x, y, z = grid.coords(sl)
        inside = self.shape.level(x, y, z) <= 1.0
        inside &= self.envelope.distance_ratio(grid, sl, x, y, z) <= 1.0
        block = arr[sl]
        inside &= np.isin(block, [L["pancreas"], L["body_fat"]])
        block[inside] = L["pdac"]
        arr[sl] = block


@dataclass
class NodeSpec:
    id: int
    positive: bool
    centre: np.ndarray
    shape: Ellipsoid
    station: str
    necrotic: bool
    texture: float  # heterogeneity (HU amplitude)
    hu_shift: float  # offset of the node's mean enhancement
    distractor: bool = False  # an LN-like nodule outside every station: not labelled
    # measured on the placement grid (voxel centres, as the paper's Table 7 was derived):
    nearest_structure: str = ""
    distance_mm: float = 0.0  # smallest distance of a node voxel to the nearest organ/vessel
    max_distance_mm: float = 0.0  # largest distance of a node voxel to its nearest organ/vessel
    in_range_fraction: float = 0.0  # node voxels within [d_min, d_max] of their nearest structure

    def paint(self, grid: Grid, arr: np.ndarray, inst: np.ndarray | None, value: int) -> None:
        lo, hi = self.shape.bbox()
        sl = grid.index_range(lo, hi)
        if sl is None:
            return
        x, y, z = grid.coords(sl)
        lvl = self.shape.level(x, y, z)
        block = arr[sl]
        inside = (lvl <= 1.0) & (block == L["body_fat"])
        if self.distractor:
            block[inside] = L["distractor_nodule"]
        else:
            block[inside] = L["lymph_node"]
            if self.necrotic:
                block[inside & (lvl <= 0.5)] = L["ln_necrosis"]
            if inst is not None:
                iblock = inst[sl]
                iblock[inside] = value
                inst[sl] = iblock
        arr[sl] = block


@dataclass
class Lesions:
    tumour: TumourSpec
    nodes: list[NodeSpec]
    distractors: list[NodeSpec]
    metastasis_positive: bool
    metastasis_probability: float


def organ_map(anatomy_labels: np.ndarray) -> np.ndarray:
    """The organ label map (1-10) from the anatomy label map (lumen, gas and tumour included)."""
    lut = np.zeros(256, np.uint8)
    for a, o in ANATOMY_TO_ORGAN.items():
        lut[a] = o
    return lut[anatomy_labels]


def _sample_tumour(anat: Anatomy, rng: np.random.Generator) -> TumourSpec:
    path = anat.tubes["pancreas"].path
    radii = anat.tubes["pancreas"].path_radii
    s = np.r_[0, np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))]
    s /= s[-1]
    if rng.uniform() < 0.63:
        if rng.uniform() < 0.25:
            location = "uncinate"
            unc = anat.tubes["uncinate"]
            k = int(rng.integers(0, max(1, len(unc.path) // 2)))
            centre, r_local = unc.path[k], unc.path_radii[k]
        else:
            location = "head"
            t = rng.uniform(0.0, 0.15)
            k = int(np.argmin(np.abs(s - t)))
            centre, r_local = path[k], radii[k]
    else:
        t = rng.uniform(0.35, 0.95)
        location = "body" if t < 0.65 else "tail"
        k = int(np.argmin(np.abs(s - t)))
        centre, r_local = path[k], radii[k]
    centre = centre + rng.normal(0, 0.25 * r_local, 3)
    diameter = sample_knots(rng, TUMOUR_DIAMETER_KNOTS)
    # nominal diameter -> semi-axes: the lobulation adds about 8% to the measured axial diameter
    semi = diameter / 2 * np.array([0.9, rng.uniform(0.75, 0.9), rng.uniform(0.7, 0.85)])
    shape = Ellipsoid(centre, semi, tuple(rng.uniform(-np.pi, np.pi, 3)), bumps=0.08,
                      bump_phase=rng.uniform(0, 6.28, 6))
    # The tumour grows within the pancreas and up to ~9 mm beyond its outline.
    margin = 9.0
    pan, unc = anat.tubes["pancreas"], anat.tubes["uncinate"]
    pts = np.vstack([unc.path[::-1], pan.path]) if location == "uncinate" else pan.path
    rr = np.r_[unc.path_radii[::-1], pan.path_radii] if location == "uncinate" else pan.path_radii
    envelope = Tube(pts, rr + margin, step=50.0)
    return TumourSpec(centre, shape, envelope, location, diameter, float(rng.normal()))


def _metastasis_probability(t: TumourSpec) -> float:
    head = 1.0 if t.location in ("head", "uncinate") else 0.0
    logit = -0.55 + 0.6 * (t.nominal_diameter_mm - 33.5) / 10.0 + 0.75 * t.aggressiveness + 0.25 * head
    return float(1.0 / (1.0 + np.exp(-logit)))


def _node_shape(rng: np.random.Generator, positive: bool, volume: float, centre: np.ndarray) -> Ellipsoid:
    # Metastatic nodes tend to be rounder (short/long axis ratio nearer 1), benign ones oval or
    # bean-shaped; the ranges overlap widely, as on real CT.
    if positive:
        ratios = np.array([1.0, rng.uniform(0.6, 0.97), rng.uniform(0.55, 0.95)])
    else:
        ratios = np.array([1.0, rng.uniform(0.45, 0.9), rng.uniform(0.42, 0.85)])
    a = (volume / (4.0 / 3.0 * np.pi * np.prod(ratios))) ** (1.0 / 3.0)
    return Ellipsoid(centre, a * ratios, tuple(rng.uniform(-np.pi, np.pi, 3)), bumps=0.05,
                     bump_phase=rng.uniform(0, 6.28, 6))


def node_appearance(rng: np.random.Generator, metastatic_look: bool) -> tuple[float, float, bool]:
    """Texture amplitude (HU), mean-enhancement offset (HU) and central necrosis of a node.

    Metastatic-looking nodes are on average more heterogeneous, slightly less enhancing and
    sometimes necrotic, but every range overlaps the benign one (paper Table 1: heterogeneity and
    size overlap), so that no single appearance parameter separates the classes.
    """
    if metastatic_look:
        return float(rng.uniform(2.5, 12.0)), float(rng.normal(-4.0, 8.0)), bool(rng.uniform() < 0.25)
    return float(rng.uniform(2.0, 9.0)), float(rng.normal(0.0, 8.0)), bool(rng.uniform() < 0.03)


class _PlacementMaps:
    """Distance maps of one patient on the coarse placement grid, shared by all node placements."""

    def __init__(self, labels: np.ndarray, grid: Grid, attention: AttentionSettings):
        self.grid = grid
        organs = organ_map(labels)
        sampling = grid.spacing[::-1]
        # Distances only matter up to a margin beyond the largest d_max: compute each class's
        # transform inside its bounding box grown by that margin (far cheaper for the vessels).
        margin = max(c.d_max for c in attention.classes) + attention.ramp_mm + 25.0
        self.dist = np.full((len(ORGAN_CLASSES),) + labels.shape, 1e4, np.float32)
        for i, c in enumerate(ORGAN_CLASSES):
            m = organs == c.label
            if not m.any():
                continue
            idx = np.nonzero(m)
            sl = tuple(slice(max(int(v.min()) - int(np.ceil(margin / sp)), 0), int(v.max()) + int(np.ceil(margin / sp)) + 1)
                       for v, sp in zip(idx, sampling))
            self.dist[i][sl] = ndimage.distance_transform_edt(~m[sl], sampling=sampling)
        self.nearest = np.argmin(self.dist, axis=0)
        self.nearest_dist = np.take_along_axis(self.dist, self.nearest[None], 0)[0]
        self.fat = labels == L["body_fat"]
        self.fat_clearance = ndimage.distance_transform_edt(self.fat, sampling=sampling).astype(np.float32)
        self.d_max = np.array([c.d_max for c in attention.classes], np.float32)
        self.ramp = attention.ramp_mm
        self.occupied = np.zeros(labels.shape, bool)  # voxels taken by nodes placed so far

    def candidates(self, station_idx: int | None, radius: float, gap_lo: float, gap_hi: float) -> np.ndarray:
        ok = self.fat & (self.fat_clearance >= radius + 0.5) & ~self.occupied
        if station_idx is None:  # distractor: attention must be 0 around the whole nodule
            reach = self.d_max[self.nearest] + self.ramp + radius + 4.0
            ok &= self.nearest_dist > reach
        else:
            d = self.dist[station_idx]
            ok &= (self.nearest == station_idx) & (d >= radius + gap_lo) & (d <= radius + gap_hi)
        return np.flatnonzero(ok)

    def mark(self, centre: np.ndarray, radius: float) -> None:
        g = self.grid
        sl = g.index_range(centre - radius - 3, centre + radius + 3)
        if sl is None:
            return
        x, y, z = g.coords(sl)
        self.occupied[sl] |= (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= (radius + 3) ** 2

    def point(self, flat_index: int, rng: np.random.Generator) -> np.ndarray:
        zyx = np.array(np.unravel_index(flat_index, self.fat.shape), float)
        xyz = np.array(self.grid.origin) + zyx[::-1] * np.array(self.grid.spacing)
        return xyz + rng.uniform(-0.5, 0.5, 3) * np.array(self.grid.spacing)


def _describe_nodes(maps: _PlacementMaps, nodes: list[NodeSpec], attention: AttentionSettings) -> None:
    """Distances of each node's voxels to the nearest organ/vessel (placement grid)."""
    d_min = np.array([c.d_min for c in attention.classes])
    g = maps.grid
    for n in nodes:
        lo, hi = n.shape.bbox()
        sl = g.index_range(lo, hi)
        if sl is None:
            continue
        x, y, z = g.coords(sl)
        vox = (n.shape.level(x, y, z) <= 1.0) & maps.fat[sl]
        if not vox.any():
            vox = n.shape.level(x, y, z) <= 1.0
        if not vox.any():
            continue
        near = maps.nearest[sl][vox]
        dist = maps.nearest_dist[sl][vox]
        idx = int(np.bincount(near).argmax())
        n.nearest_structure = ORGAN_CLASSES[idx].key
        n.distance_mm = float(dist.min())
        n.max_distance_mm = float(dist[near == idx].max())
        n.in_range_fraction = float(np.mean((dist >= d_min[near]) & (dist <= maps.d_max[near])))


def sample_lesions(anat: Anatomy, rng: np.random.Generator, attention: AttentionSettings) -> Lesions:
    """Tumour, metastasis status, lymph nodes and distractors for one patient."""
    tumour = _sample_tumour(anat, rng)
    p_met = _metastasis_probability(tumour)
    positive_patient = bool(rng.uniform() < p_met)
    if positive_patient:
        n_pos, n_neg = 1 + int(rng.poisson(0.36)), int(rng.poisson(0.92))
    else:
        n_pos, n_neg = 0, 1 + int(rng.poisson(3.2))
    n_distractors = int(rng.integers(0, 4))

    labels = anat.render(PLACEMENT_GRID)
    tumour.paint(PLACEMENT_GRID, labels)
    maps = _PlacementMaps(labels, PLACEMENT_GRID, attention)
    keys = [c.key for c in ORGAN_CLASSES]

    nodes: list[NodeSpec] = []
    kinds = [True] * n_pos + [False] * n_neg
    for positive in kinds:
        micro = positive and rng.uniform() < 0.15  # micro-metastasis: looks like a negative node
        reactive = (not positive) and rng.uniform() < 0.10  # reactive node: large and round
        knots = NEGATIVE_LN_VOLUME_KNOTS if (not positive or micro) else POSITIVE_LN_VOLUME_KNOTS
        volume = sample_knots(rng, knots)
        if reactive:
            volume *= rng.uniform(1.5, 2.5)
        stations = POSITIVE_STATIONS if positive else NEGATIVE_STATIONS
        names = list(stations)
        probs = np.array([stations[n] for n in names])
        for _attempt in range(12):
            station = names[int(rng.choice(len(names), p=probs / probs.sum()))]
            shape = _node_shape(rng, positive and not micro or reactive, volume, np.zeros(3))
            r_mid = float(np.sort(shape.semi_axes)[1])
            d_max = float(attention.classes[keys.index(station)].d_max)
            if rng.uniform() < 0.85:
                gap = min(rng.exponential(2.5), max(d_max - 2 * r_mid - 1.0, 0.0))
                lo, hi = max(gap - 1.0, 0.5), gap + 1.5
            else:  # the tail: farther out, still within the station's range
                lo, hi = 2.0, max(d_max - 2 * r_mid, 3.0)
            cand = maps.candidates(keys.index(station), r_mid, lo, hi)
            if cand.size:
                centre = maps.point(int(cand[rng.integers(cand.size)]), rng)
                maps.mark(centre, float(shape.semi_axes.max()))
                shape.centre = centre
                texture, hu_shift, necrotic = node_appearance(rng, positive and not micro)
                nodes.append(NodeSpec(len(nodes) + 1, positive, centre, shape, station, necrotic=necrotic,
                                      texture=texture, hu_shift=hu_shift))
                break

    distractors: list[NodeSpec] = []
    for _ in range(n_distractors):
        volume = sample_knots(rng, NEGATIVE_LN_VOLUME_KNOTS)
        shape = _node_shape(rng, False, volume, np.zeros(3))
        cand = maps.candidates(None, float(shape.semi_axes.max()), 0, 0)
        if cand.size:
            centre = maps.point(int(cand[rng.integers(cand.size)]), rng)
            maps.mark(centre, float(shape.semi_axes.max()))
            shape.centre = centre
            texture, hu_shift, _ = node_appearance(rng, False)
            distractors.append(NodeSpec(0, False, centre, shape, "none", False, texture, hu_shift, distractor=True))
    _describe_nodes(maps, nodes, attention)
    # A positive patient whose positive nodes found no room keeps its label: its nodes are occult.
    return Lesions(tumour, nodes, distractors, positive_patient, p_met)
