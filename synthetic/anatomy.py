"""A procedural upper abdomen: body wall, fat, spine, liver, kidneys, bowel, the ten organ/vessel
classes of the attention map, the portal/splenic vein and the IVC.

Coordinates are DICOM LPS mm (x to the patient's left, y posterior, z superior), with the origin
near the pancreatic neck. Positions, sizes and vessel courses vary with the patient's random
generator; the layout follows textbook anatomy closely enough that lymph-node stations (JPS) fall
where the paper's Table 7 distances put them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lnmet.labels import ANATOMY_LABELS as L
from synthetic.grid import Grid
from synthetic.shapes import Ellipsoid, Tube, elliptic_cylinder_level


@dataclass
class Anatomy:
    """One patient's anatomy as primitives; :meth:`render` rasterises it onto any grid."""

    body_centre: np.ndarray
    body_semi: np.ndarray  # outer skin ellipse (x, y)
    subcut: float  # subcutaneous fat thickness
    muscle: float  # abdominal wall muscle thickness
    spine_centre: np.ndarray  # (x, y) of the vertebral body
    spine_radius: float
    ellipsoids: dict[str, Ellipsoid] = field(default_factory=dict)
    tubes: dict[str, Tube] = field(default_factory=dict)
    bowel: list[Tube] = field(default_factory=list)
    pancreas_path: np.ndarray | None = None  # control points head -> tail
    pancreas_radii: np.ndarray | None = None
    stomach_gas_level: float = 0.0  # y above which (anterior, smaller y) the stomach lumen holds gas

    # ------------------------------------------------------------------ rendering
    def render(self, grid: Grid) -> np.ndarray:
        """The anatomy label map (``lnmet.labels.ANATOMY_LABELS``) on ``grid``, without tumour or nodes."""
        arr = np.zeros(grid.shape, np.uint8)
        x, y, z = grid.coords(grid.full)
        # Body: skin/subcutaneous fat, muscle wall, visceral fat (slight taper towards the top).
        taper = 1.0 - 0.04 * np.clip((z - 40.0) / 60.0, 0, 1)
        for shrink, label in ((0.0, "subcutaneous_fat"), (self.subcut, "muscle_wall"),
                              (self.subcut + self.muscle, "body_fat")):
            semi = (self.body_semi[0] * taper - shrink, self.body_semi[1] * taper - shrink)
            lvl = elliptic_cylinder_level(x, y, self.body_centre, semi)
            arr[np.broadcast_to(lvl <= 1.0, arr.shape)] = L[label]
        body = arr > 0

        # Paraspinal muscles and the spine (vertebral bodies with discs, canal, posterior elements).
        for name in ("paraspinal_left", "paraspinal_right", "psoas_left", "psoas_right"):
            if name in self.ellipsoids:
                self.ellipsoids[name].paint(grid, arr, L["paraspinal_muscle"], where=body)
        sx, sy = self.spine_centre
        r = self.spine_radius
        sl = grid.index_range((sx - r - 30, sy - r - 2, -1e4), (sx + r + 30, sy + r + 60, 1e4))
        if sl is not None:
            xs, ys, zs = grid.coords(sl)
            block = arr[sl]
            d_body = np.sqrt((xs - sx) ** 2 + (ys - sy) ** 2) + 0 * zs
            disc = (np.mod(zs + 7.0, 30.0) < 5.0) + 0 * d_body > 0
            block[(d_body <= r)] = L["bone_cortical"]
            block[(d_body <= r - 2.0)] = L["bone_cancellous"]
            block[(d_body <= r) & disc] = L["muscle_wall"]  # intervertebral disc ~ soft tissue
            d_canal = np.sqrt((xs - sx) ** 2 + (ys - (sy + r + 9)) ** 2) + 0 * zs
            post = (np.abs(xs - sx) <= 14) & (ys > sy + r) & (ys < sy + r + 40) & (d_canal > 8.0)
            lamina = post & (np.abs(xs - sx) + 0.6 * (ys - sy - r) <= 34)
            block[lamina & ~disc] = L["bone_cortical"]
            block[lamina & ~disc & (d_canal > 10.5) & (np.abs(xs - sx) <= 11)] = L["bone_cancellous"]
            block[d_canal <= 8.0] = L["spinal_canal"]
            arr[sl] = block

        fat = arr == L["body_fat"]
        for name, label in (("liver", "liver"), ("liver_left", "liver"), ("kidney_left", "kidney_left"),
                            ("kidney_right", "kidney_right")):
            if name in self.ellipsoids:
                self.ellipsoids[name].paint(grid, arr, L[label], where=fat | (arr == L["liver"]))
        if "gallbladder" in self.ellipsoids:
            self.ellipsoids["gallbladder"].paint(grid, arr, L["gallbladder"], where=arr == L["liver"])

        # Bowel loops in the lower abdomen, only through fat.
        fat = arr == L["body_fat"]
        for loop in self.bowel:
            loop.paint(grid, arr, L["bowel"], where=fat, lumen_value=L["bowel_lumen"])

        # Viscera stay inside the abdominal cavity (within the muscle wall, outside the spine).
        inside_body = np.isin(arr, [L["body_fat"], L["liver"], L["kidney_left"], L["kidney_right"], L["bowel"],
                                    L["bowel_lumen"], L["gallbladder"]])
        self.tubes["stomach"].paint(grid, arr, L["stomach"], where=inside_body, lumen_value=L["stomach_lumen"])
        # gas in the non-dependent (anterior) part of the stomach lumen
        lumen = arr == L["stomach_lumen"]
        ys_full = np.broadcast_to(y, arr.shape)
        arr[lumen & (ys_full < self.stomach_gas_level)] = L["stomach_gas"]
        self.tubes["duodenum"].paint(grid, arr, L["duodenum"], where=inside_body, lumen_value=L["duodenum_lumen"])
        self.tubes["esophagus"].paint(grid, arr, L["esophagus"], where=inside_body)
        self.ellipsoids["spleen"].paint(grid, arr, L["spleen"], where=inside_body & (arr != L["stomach"]))
        self.tubes["pancreas"].paint(grid, arr, L["pancreas"], where=inside_body)
        if "uncinate" in self.tubes:
            self.tubes["uncinate"].paint(grid, arr, L["pancreas"], where=inside_body)
        for name in ("ivc", "portal_vein", "smv", "splenic_vein"):
            label = "ivc" if name == "ivc" else "portal_splenic_vein"
            self.tubes[name].paint(grid, arr, L[label], where=inside_body)
        self.tubes["aorta"].paint(grid, arr, L["aorta"], where=inside_body)
        for name, label in (("sma", "sma"), ("celiac", "tc_sa"), ("splenic_artery", "tc_sa"),
                            ("lga", "lga"), ("cha", "cha_pha"), ("pha", "cha_pha")):
            self.tubes[name].paint(grid, arr, L[label], where=inside_body & (arr != L["aorta"]))
        return arr


def _j(rng: np.random.Generator, sd: float, n: int = 3) -> np.ndarray:
    return rng.normal(0.0, sd, n)


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy."""
    s = rng.uniform(0.92, 1.08)  # body habitus
    body_centre = np.array([0.0, 15.0]) + _j(rng, 2.0, 2)
    body_semi = np.array([150.0, 115.0]) * s * rng.uniform(0.96, 1.04, 2)
    subcut = rng.uniform(10.0, 24.0) * s
    muscle = rng.uniform(8.0, 12.0)
    spine_c = np.array([0.0, 64.0]) + _j(rng, 2.0, 2)
    spine_r = rng.uniform(18.0, 22.0)

    a = Anatomy(body_centre=body_centre, body_semi=body_semi, subcut=subcut, muscle=muscle,
                spine_centre=spine_c, spine_radius=spine_r)

    def P(*pts, sd=3.0):
        """Control points with a common patient shift and a per-point jitter."""
        arr = np.asarray(pts, float)
        return arr + _j(rng, sd, arr.size).reshape(arr.shape)

    E = a.ellipsoids
    E["paraspinal_left"] = Ellipsoid(np.r_[spine_c[0] + 38, spine_c[1] + 38, 0.0], [24, 30, 400], (0.2, 0, 0))
    E["paraspinal_right"] = Ellipsoid(np.r_[spine_c[0] - 38, spine_c[1] + 38, 0.0], [24, 30, 400], (-0.2, 0, 0))
    E["psoas_left"] = Ellipsoid(np.r_[spine_c[0] + 32, spine_c[1] - 2, -110.0], [16, 16, 75], (0, 0.15, 0))
    E["psoas_right"] = Ellipsoid(np.r_[spine_c[0] - 32, spine_c[1] - 2, -110.0], [16, 16, 75], (0, -0.15, 0))
    E["liver"] = Ellipsoid(np.r_[-70, 8, 50] + _j(rng, 5), np.array([78, 82, 62]) * rng.uniform(0.9, 1.1, 3),
                           (rng.uniform(-0.2, 0.2), 0, 0), bumps=0.05, bump_phase=rng.uniform(0, 6.28, 6))
    E["liver_left"] = Ellipsoid(np.r_[-5, -48, 62] + _j(rng, 5), np.array([55, 32, 32]) * rng.uniform(0.85, 1.15, 3),
                                (rng.uniform(-0.3, 0.3), 0, 0.2))
    E["gallbladder"] = Ellipsoid(np.r_[-48, -40, 18] + _j(rng, 4), np.array([14, 13, 28]) * rng.uniform(0.8, 1.2, 3),
                                 (0, 0.3, 0.3))
    E["kidney_left"] = Ellipsoid(np.r_[72, 68, -45] + _j(rng, 4), np.array([26, 22, 52]) * rng.uniform(0.9, 1.1, 3),
                                 (0.5, 0.15, 0.0))
    E["kidney_right"] = Ellipsoid(np.r_[-72, 68, -58] + _j(rng, 4), np.array([26, 22, 52]) * rng.uniform(0.9, 1.1, 3),
                                  (-0.5, -0.15, 0.0))
    spleen_len = rng.uniform(44, 56)
    E["spleen"] = Ellipsoid(np.r_[92, 44, 32] + _j(rng, 4), [20 * rng.uniform(0.85, 1.15), spleen_len, 50],
                            (rng.uniform(-0.75, -0.55), 0.0, rng.uniform(-0.25, 0.0)),
                            bumps=0.08, bump_phase=rng.uniform(0, 6.28, 6))

    T = a.tubes
    ax, ay = 15.0 + rng.normal(0, 2), spine_c[1] - spine_r - 12.0 + rng.normal(0, 1.5)
    aorta_r = rng.uniform(10.0, 12.5)
    T["aorta"] = Tube(P([ax - 2, ay + 6, 140], [ax, ay, 60], [ax, ay - 2, 0], [ax - 1, ay, -80], [ax - 2, ay + 3, -150],
                        sd=1.0), [aorta_r] * 5)
    ivc_x = -24.0 + rng.normal(0, 2)
    T["ivc"] = Tube(P([ivc_x - 8, ay + 4, 120], [ivc_x - 2, ay, 60], [ivc_x, ay - 2, 0], [ivc_x, ay + 2, -150], sd=1.5),
                    [13, 11, 10.5, 10.5])
    # Esophagus: anterior-left of the aorta through the hiatus to the gastro-oesophageal junction.
    ge = np.r_[36, 14, 60] + _j(rng, 3)
    T["esophagus"] = Tube(np.vstack([P([ax - 6, ay - 22, 140], [ax, ay - 22, 100], sd=1.5), P([ax + 10, ay - 22, 78]), ge]),
                          [8, 8, 8.5, 9])
    # Stomach: fundus -> body -> antrum -> pylorus (a J-shaped hollow tube).
    pylorus = np.r_[-16, -44, 12] + _j(rng, 3)
    st_r = rng.uniform(0.85, 1.15)
    T["stomach"] = Tube(np.vstack([ge + [10, 4, 2], P([58, 12, 66], [62, -12, 44], [44, -40, 22], [12, -56, 10]), pylorus]),
                        np.array([14, 34, 34, 29, 20, 11]) * st_r, wall=4.0, step=4.0)
    a.stomach_gas_level = -46.0 + rng.normal(0, 5)
    # Duodenum: C-loop around the pancreatic head (D1 -> D4).
    T["duodenum"] = Tube(np.vstack([pylorus, P([-36, -30, 12], [-52, -8, 4], [-56, 2, -18], [-50, 8, -42], [-24, 16, -56],
                                               [2, 14, -60], [22, 10, -50], [30, 4, -30], [34, -2, -14])]),
                         [10, 12, 12, 12, 12, 11, 11, 11, 11, 10], wall=2.5, step=3.0)
    # Pancreas: head -> neck -> body -> tail towards the splenic hilum; uncinate behind the SMV.
    tail_end = E["spleen"].centre + np.r_[-14, -12, -12] + _j(rng, 2)
    pan = np.vstack([P([-34, 2, -16], [-12, -6, -2], [8, -8, 4], [34, 0, 8], [62, 14, 12], sd=2.5), tail_end])
    pr = np.array([16.0, 10.5, 10.0, 11.0, 9.5, 8.0]) * rng.uniform(0.85, 1.15)
    T["pancreas"] = Tube(pan, pr, step=3.0)
    T["uncinate"] = Tube(P([-30, 6, -18], [-18, 14, -30], [-6, 12, -34], sd=2.0), [11, 9, 6])
    a.pancreas_path, a.pancreas_radii = pan, pr

    # Arteries from the aorta: coeliac trunk at about T12/L1, SMA 1 cm below.
    ca_z = 20.0 + rng.normal(0, 3)
    ca0 = np.r_[ax, ay - aorta_r + 2, ca_z]
    ca1 = ca0 + np.r_[-2, -16, 3] + _j(rng, 1.5)
    T["celiac"] = Tube(np.vstack([ca0, ca1]), [3.8, 3.6])
    T["splenic_artery"] = Tube(np.vstack([ca1, P([34, ca1[1] + 2, ca_z + 2], [58, 8, ca_z + 4], [80, 22, ca_z]), tail_end + [4, 2, 6]]),
                               [3.4, 3.4, 3.3, 3.2, 3.0])
    T["lga"] = Tube(np.vstack([ca1, P([16, -4, ca_z + 12], [24, -12, ca_z + 26], [30, -10, ca_z + 36])]), [2.8, 2.7, 2.6, 2.4])
    cha_end = np.r_[-24, -8, ca_z + 1] + _j(rng, 2)
    T["cha"] = Tube(np.vstack([ca1, P([-8, ca1[1] - 4, ca_z]), cha_end]), [3.4, 3.3, 3.2])
    T["pha"] = Tube(np.vstack([cha_end, P([-34, -14, ca_z + 14], [-44, -14, ca_z + 30])]), [3.0, 2.9, 2.7])
    sma0 = np.r_[ax, ay - aorta_r + 2, ca_z - 12 + rng.normal(0, 2)]
    T["sma"] = Tube(np.vstack([sma0, P([ax - 3, sma0[1] - 14, sma0[2] - 8], [ax - 6, -12, sma0[2] - 24], [ax - 8, -14, -70],
                                       [ax - 10, -10, -150])]), [4.2, 4.0, 3.9, 3.7, 3.4])
    # Portal system: splenic vein behind the pancreas, SMV right of the SMA, portal vein to the hilum.
    conf = np.r_[-2, 12, 0] + _j(rng, 2)
    T["splenic_vein"] = Tube(np.vstack([tail_end + [4, 10, -2], P([60, 26, 6], [32, 18, 4]), conf]), [4.5, 4.8, 5.0, 5.5])
    T["smv"] = Tube(np.vstack([P([ax - 24, -12, -150], [ax - 22, -10, -60], [ax - 18, 0, -20], sd=2), conf]), [5, 5.5, 6, 6.5])
    T["portal_vein"] = Tube(np.vstack([conf, P([-20, 8, 16], [-38, 2, 34], [-54, -2, 46])]), [7, 7, 6.5, 6])

    # Small bowel / colon loops below the pancreas and anterior (painted through fat only).
    n_loops = rng.integers(4, 8)
    for _ in range(n_loops):
        start = np.r_[rng.uniform(-90, 90), rng.uniform(-80, -20), rng.uniform(-140, -50)]
        pts = [start]
        for _k in range(4):
            pts.append(pts[-1] + np.r_[rng.normal(0, 25), rng.normal(0, 15), rng.normal(0, 20)])
        pts = np.asarray(pts)
        pts[:, 2] = np.minimum(pts[:, 2], -45)
        a.bowel.append(Tube(pts, [rng.uniform(9, 14)] * 5, wall=2.0, step=4.0))
    # Transverse colon: anterior, below the stomach, with gas.
    tc_z = rng.uniform(-40, -25)
    a.bowel.append(Tube(P([-90, -40, tc_z + 10], [-40, -75, tc_z], [20, -80, tc_z - 5], [80, -60, tc_z + 8], sd=4),
                        [rng.uniform(16, 22)] * 4, wall=2.5, step=4.0))
    return a
