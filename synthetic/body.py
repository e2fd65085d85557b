"""The body wall and what surrounds the viscera: skin, subcutaneous fat, abdominal and back
muscles, spine with transverse processes, ribs and costal cartilage, diaphragm and lung bases,
arms (at the patient's sides or raised out of the field of view) and the scanner table.

These are the structures next to which a network trained on a plain ellipse finds "organs" and
"nodes" on real CT (issue 16): they carry no organ label, but they must be in the training images.
Coordinates as in :mod:`synthetic.anatomy` (LPS mm, origin near the pancreatic neck, y posterior).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lnmet.labels import ANATOMY_LABELS as L
from synthetic.grid import Grid
from synthetic.shapes import Ellipsoid, Tube, superellipse_level, superellipse_radius

VERTEBRA_HEIGHT_MM = 28.0  # one vertebral level (body + disc)
L1_CENTRE_Z = -6.0  # the pancreatic neck lies at about L1


@dataclass
class Body:
    """One patient's body wall, skeleton, table and arms."""

    centre: np.ndarray  # (x, y) of the cross-section
    semi_x: float
    semi_ant: float
    semi_post: float
    skin: float
    subcut: float
    muscle: float
    spine_centre: np.ndarray  # (x, y) of the vertebral bodies
    spine_radius: float
    arms_down: bool
    table_gap: float
    dome_z: tuple[float, float]  # diaphragm dome height right, left
    muscles: dict[str, Ellipsoid] = field(default_factory=dict)
    ribs: list[Tube] = field(default_factory=list)
    cartilage: list[Tube] = field(default_factory=list)
    crura: list[Tube] = field(default_factory=list)
    processes: list[Tube] = field(default_factory=list)
    arm_centres: list[np.ndarray] = field(default_factory=list)

    # ------------------------------------------------------------------ geometry
    def taper(self, z):
        """The trunk narrows slightly towards the thorax."""
        return 1.0 - 0.05 * np.clip((z - 30.0) / 80.0, 0, 1)

    def level(self, x, y, z, shrink: float = 0.0) -> np.ndarray:
        """Normalised radius of the body outline shrunk by ``shrink`` mm (< 1 inside)."""
        t = self.taper(z)
        return superellipse_level(x, y, self.centre, self.semi_x * t - shrink, self.semi_ant * t - shrink,
                                  self.semi_post * t - shrink)

    def wall_point(self, angle: float, z: float, shrink: float) -> np.ndarray:
        """A point of the outline shrunk by ``shrink`` at ``angle`` (0 posterior, +pi/2 left) and height z."""
        t = float(self.taper(z))
        r = superellipse_radius(angle, self.semi_x * t - shrink, self.semi_ant * t - shrink, self.semi_post * t - shrink)
        return np.array([self.centre[0] + r * np.sin(angle), self.centre[1] + r * np.cos(angle), z])

    @property
    def cavity_shrink(self) -> float:
        return self.skin + self.subcut + self.muscle

    def diaphragm_z(self, x, y) -> np.ndarray:
        """Height of the diaphragm's lower surface: two domes, lowest in the posterior recesses."""
        u = (x - self.centre[0]) / self.semi_x
        v = (y - self.centre[1]) / max(self.semi_post, self.semi_ant)
        w = 1.0 / (1.0 + np.exp(-u / 0.15))  # 0 on the right, 1 on the left, smooth across the midline
        dome = self.dome_z[0] * (1 - w) + self.dome_z[1] * w
        side = (np.abs(u) - 0.35).clip(0)
        return dome - 70.0 * side ** 2 - 60.0 * np.clip(v, 0, None) ** 2 * (0.5 + np.abs(u))

    # ------------------------------------------------------------------ rendering
    def render(self, grid: Grid, arr: np.ndarray) -> None:
        """Paint the table, body wall, lungs, muscles, spine, ribs and arms into ``arr`` (empty before)."""
        x, y, z = grid.coords(grid.full)
        self._table(grid, arr, x, y)
        for shrink, label in ((0.0, "skin"), (self.skin, "subcutaneous_fat"), (self.skin + self.subcut, "muscle_wall"),
                              (self.cavity_shrink, "body_fat")):
            arr[np.broadcast_to(self.level(x, y, z, shrink) <= 1.0, arr.shape)] = L[label]
        body = arr > 0
        body &= ~np.isin(arr, [L["table_shell"], L["table_core"]])
        cavity = arr == L["body_fat"]
        # Diaphragm (4 mm) and the lung bases above it, inside the cavity.
        dz = self.diaphragm_z(x, y)
        arr[cavity & np.broadcast_to((z >= dz) & (z < dz + 4.0), arr.shape)] = L["muscle_wall"]
        arr[cavity & np.broadcast_to(z >= dz + 4.0, arr.shape)] = L["lung"]
        for name, e in self.muscles.items():
            e.paint(grid, arr, L["paraspinal_muscle"], where=body & (arr != L["skin"]))
        for crus in self.crura:
            crus.paint(grid, arr, L["muscle_wall"], where=np.isin(arr, [L["body_fat"], L["lung"]]))
        self._spine(grid, arr)
        for proc in self.processes:
            proc.paint(grid, arr, L["bone_cortical"], where=body, lumen_value=L["bone_cancellous"])
        wall = np.isin(arr, [L["muscle_wall"], L["subcutaneous_fat"], L["body_fat"], L["lung"], L["paraspinal_muscle"]])
        for rib in self.ribs:
            rib.paint(grid, arr, L["bone_cortical"], where=wall, lumen_value=L["bone_cancellous"])
        for cart in self.cartilage:
            cart.paint(grid, arr, L["costal_cartilage"], where=wall)
        if self.arms_down:
            self._arms(grid, arr, x, y)

    def _table(self, grid: Grid, arr: np.ndarray, x, y) -> None:
        top = self.centre[1] + self.semi_post + self.table_gap - 22.0 * (np.clip(x, -230, 230) / 230.0) ** 2
        inside_x = np.abs(x) <= 230.0
        depth = y - top
        shell = inside_x & (((depth >= 0) & (depth < 2.0)) | ((depth >= 11.0) & (depth < 13.0)))
        core = inside_x & (depth >= 2.0) & (depth < 11.0)
        arr[np.broadcast_to(core, arr.shape)] = L["table_core"]
        arr[np.broadcast_to(shell, arr.shape)] = L["table_shell"]

    def _spine(self, grid: Grid, arr: np.ndarray) -> None:
        """Vertebral bodies with discs, canal and posterior elements (pedicles, laminae, spinous process)."""
        sx, sy = self.spine_centre
        r = self.spine_radius
        sl = grid.index_range((sx - r - 40, sy - r - 2, -1e4), (sx + r + 40, sy + r + 70, 1e4))
        if sl is None:
            return
        xs, ys, zs = grid.coords(sl)
        block = arr[sl]
        body = ~np.isin(block, [0, L["table_shell"], L["table_core"], L["skin"]])
        d_body = np.sqrt((xs - sx) ** 2 + ((ys - sy) * 1.15) ** 2) + 0 * zs
        phase = np.mod(zs - L1_CENTRE_Z + VERTEBRA_HEIGHT_MM / 2, VERTEBRA_HEIGHT_MM)
        disc = ((phase < 4.5) + 0 * d_body) > 0
        block[(d_body <= r) & body] = L["bone_cortical"]
        block[(d_body <= r - 2.0) & body] = L["bone_cancellous"]
        block[(d_body <= r) & disc & body] = L["muscle_wall"]  # intervertebral disc ~ soft tissue
        cy = sy + r + 10
        d_canal = np.sqrt((xs - sx) ** 2 + (ys - cy) ** 2) + 0 * zs
        post = (np.abs(xs - sx) <= 15) & (ys > sy + r - 2) & (ys < sy + r + 52) & (d_canal > 8.5)
        arch = post & ((np.abs(xs - sx) + 0.55 * (ys - sy - r) <= 30) | (np.abs(xs - sx) <= 4.5)) & body
        block[arch & ~disc] = L["bone_cortical"]
        block[arch & ~disc & (d_canal > 11.0) & (np.abs(xs - sx) <= 10) & (ys < sy + r + 30)] = L["bone_cancellous"]
        block[(d_canal <= 8.5) & body] = L["spinal_canal"]
        arr[sl] = block

    def _arms(self, grid: Grid, arr: np.ndarray, x, y) -> None:
        for c in self.arm_centres:
            d = np.sqrt(((x - c[0]) / 42.0) ** 2 + ((y - c[1]) / 48.0) ** 2)
            outside = arr == 0
            for scale, label in ((1.0, "skin"), (0.95, "subcutaneous_fat"), (0.78, "muscle_wall")):
                arr[outside & np.broadcast_to(d <= scale, arr.shape)] = L[label]
            bone = np.sqrt((x - c[0] - 4) ** 2 + (y - c[1] + 6) ** 2)
            arm = np.broadcast_to(d <= 0.78, arr.shape) & outside
            arr[arm & np.broadcast_to(bone <= 10.5, arr.shape)] = L["bone_cortical"]
            arr[arm & np.broadcast_to(bone <= 7.0, arr.shape)] = L["bone_cancellous"]


def _rib_paths(body: Body, rng: np.random.Generator) -> tuple[list[Tube], list[Tube]]:
    """Ribs 7-12 of both sides and the costal cartilages of ribs 7-10.

    A rib leaves its vertebra at the level of its head, runs around inside the muscle layer and
    descends anteriorly; ribs 11-12 are short (floating), the cartilages of 7-10 rise again towards
    the xiphoid and form the costal margin.
    """
    ribs, carts = [], []
    shrink = body.skin + body.subcut + 0.45 * body.muscle
    xiphoid_z = 62.0 + rng.normal(0, 6)
    ends = {12: 1.25, 11: 1.8, 10: 2.35, 9: 2.45, 8: 2.55, 7: 2.65}
    for side in (-1.0, 1.0):  # -1: right (negative x), +1: left
        for k, end in ends.items():
            head_z = L1_CENTRE_Z + VERTEBRA_HEIGHT_MM * (13 - k) - 8.0 + rng.normal(0, 2)
            drop = rng.uniform(55, 80) * (1.0 if k >= 10 else 1.15)
            end_angle = end + rng.normal(0, 0.05)
            angles = np.linspace(0.42, end_angle, 9)
            pts = []
            for a in angles:
                s = (a - 0.42) / (end_angle - 0.42)
                z = head_z + 6.0 * np.sin(np.pi * min(s * 3, 1.0)) - drop * s ** 1.3
                pts.append(body.wall_point(side * a, z, shrink))
            head = np.array([body.spine_centre[0] + side * (body.spine_radius + 10), body.spine_centre[1] + 4, head_z])
            pts = np.vstack([head, pts])
            radius = rng.uniform(4.0, 5.0)
            ribs.append(Tube(pts, [radius * 0.9] + [radius] * (len(pts) - 1), wall=1.6, step=4.0))
            if k <= 10:
                last = pts[-1]
                target_angle = side * (3.02 - 0.06 * (k - 7))
                target_z = xiphoid_z - 9.0 * (k - 7)
                c_pts = [last]
                for s in (0.35, 0.7, 1.0):
                    a = side * end_angle + (target_angle - side * end_angle) * s
                    zc = last[2] + (target_z - last[2]) * s ** 1.5
                    c_pts.append(body.wall_point(a, zc, shrink))
                carts.append(Tube(np.vstack(c_pts), [radius * 0.95] * 4, step=4.0))
    return ribs, carts


def sample_body(rng: np.random.Generator) -> Body:
    """Draw one patient's body: habitus (size and fat), arms, table, skeleton and muscles."""
    s = rng.uniform(0.9, 1.1)  # frame size
    fat = float(np.clip(rng.lognormal(-0.15, 0.45), 0.3, 2.4))  # adiposity
    spine_c = np.array([rng.normal(0, 1.5), 62.0 + rng.normal(0, 2)])
    spine_r = rng.uniform(17.0, 21.0) * s
    skin = rng.uniform(1.5, 2.5)
    subcut = float(np.clip(3.0 + 13.0 * fat * rng.uniform(0.8, 1.2), 3.0, 45.0))
    # The trunk is anchored on the spine: its back lies a little behind the spinous processes, its
    # front as far ahead as frame and visceral fat make it.
    back = spine_c[1] + spine_r + 40.0 + subcut + skin
    front = spine_c[1] - (114.0 + 22.0 * fat) * s * rng.uniform(0.95, 1.05) - subcut
    depth = back - front
    semi_post, semi_ant = 0.46 * depth, 0.54 * depth
    semi_x = (146.0 + 20.0 * fat) * s * rng.uniform(0.95, 1.05) + subcut
    centre = np.array([rng.normal(0, 2.0), back - semi_post])
    body = Body(centre=centre, semi_x=semi_x, semi_ant=semi_ant, semi_post=semi_post, skin=skin, subcut=subcut,
                muscle=rng.uniform(8.0, 13.0) * s, spine_centre=spine_c, spine_radius=spine_r,
                arms_down=bool(rng.uniform() < 0.3), table_gap=rng.uniform(0.0, 12.0),
                dome_z=(rng.uniform(92, 118), rng.uniform(84, 108)))
    sx, sy, r = spine_c[0], spine_c[1], body.spine_radius
    M = body.muscles
    back_y = sy + r + 26.0
    for side, name in ((1, "erector_left"), (-1, "erector_right")):
        M[name] = Ellipsoid(np.r_[sx + side * 30, back_y, 0.0], np.array([25.0, 19.0, 600.0]) * rng.uniform(0.9, 1.1, 3),
                            (side * 0.15, 0, 0))
        M["psoas_" + name.split("_")[1]] = Ellipsoid(np.r_[sx + side * (r + 14), sy - 2, -120.0],
                                                     [17 * s, 16 * s, 100], (0, side * 0.18, 0))
        M["quadratus_" + name.split("_")[1]] = Ellipsoid(np.r_[sx + side * (r + 40), sy + 18, -95.0],
                                                         [16 * s, 10 * s, 85], (side * 0.5, 0, 0))
    body.ribs, body.cartilage = _rib_paths(body, rng)
    # Lumbar transverse processes (below the ribs) at mid-height of each vertebra.
    for level in range(0, 5):
        zc = L1_CENTRE_Z - VERTEBRA_HEIGHT_MM * level + 2.0
        for side in (-1, 1):
            body.processes.append(Tube(np.array([[sx + side * 9, sy + r + 4, zc], [sx + side * 44, sy + r + 12, zc - 2]]),
                                       [4.5, 3.0], wall=1.5, step=3.0))
    # Diaphragmatic crura around the aorta, from the hiatus down onto the lumbar vertebrae.
    ay = sy - r
    body.crura = [
        Tube(np.array([[sx - 16, ay + 10, -50], [sx - 18, ay - 4, 0], [sx - 10, ay - 22, 45], [sx + 6, ay - 30, 72]]),
             [5.5, 6.0, 5.0, 4.0], step=4.0),
        Tube(np.array([[sx + 20, ay + 10, -25], [sx + 26, ay - 4, 10], [sx + 24, ay - 20, 45], [sx + 10, ay - 30, 72]]),
             [5.0, 5.5, 5.0, 4.0], step=4.0),
    ]
    if body.arms_down:
        for side in (-1, 1):
            body.arm_centres.append(np.r_[side * (semi_x + rng.uniform(48, 75)), centre[1] + rng.normal(10, 8)])
    return body
