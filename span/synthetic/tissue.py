"""Procedural H&E-like tissue: outline, holes, tumour, pen marks and dust, with ground-truth masks.

`render_tissue` draws the demo slides (`span.synthetic.demo`) and the tests' slides (the masks
are the ground truth); the large benchmark slide (`span.synthetic.large_slide`) reuses the
tissue layout and the stains. Everything is deterministic from a seed; sizes are in micrometres
and rendered at a given mpp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from span.synthetic.layouts import LayoutError, grow_region
from span.synthetic.noise import NoiseField, smooth_noise, upsample

# Layout (tissue outline, holes, tumour islands) is drawn on a coarse grid with this spacing, so
# the same seed gives the same tissue at 20x and 40x; it is upsampled to the render resolution.
LAYOUT_UM = 4.0
# Patch cell used to estimate how many patches a slide yields (224 px at 0.5 um/px).
PATCH_UM = 112.0

PEN_COLOURS: dict[str, tuple[int, int, int]] = {
    "blue": (40, 60, 170),
    "green": (40, 140, 80),
    "black": (30, 30, 35),
}
BACKGROUND_RGB = (243.0, 242.0, 246.0)
NORMAL_NUCLEI_PER_UM2 = 1 / 300.0  # stroma: sparse small nuclei (radius ~2.6 um)
TUMOUR_NUCLEI_PER_UM2 = 1 / 65.0  # tumour: crowded large nuclei (radius ~4.4 um)


def _absorbance(rgb: Sequence[float]) -> np.ndarray:
    """Optical density (natural log) of a colour seen through unit concentration of a stain."""
    return np.log(255.0 / np.asarray(rgb, dtype=np.float64)).astype(np.float32)


# Stain absorbance vectors chosen so unit concentration over white gives these colours.
EOSIN = _absorbance((236, 152, 198))  # pink stroma
HAEMATOXYLIN = _absorbance((100, 72, 150))  # purple nuclei of normal cells
TUMOUR_HAEMATOXYLIN = _absorbance((62, 50, 138))  # darker, bluer nuclei of tumour cells

# exp(-OD) through a 256-entry lookup table (cv2.convertScaleAbs + cv2.LUT): far faster than
# np.exp on (H, W, 3) float32. 96 steps per unit OD: ~1% transmission steps, OD up to 2.65.
_OD_STEPS = 96
_TRANSMISSION_LUT = np.round(255.0 * np.exp(-np.arange(256, dtype=np.float64) / _OD_STEPS)).astype(
    np.uint8
)


# --------------------------------------------------------------------------------------------
# Small vectorised helpers
# --------------------------------------------------------------------------------------------


def _ellipse_rho(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ay: float, ax: float, angle: float
) -> np.ndarray:
    """Normalised elliptical radius (1 on the ellipse boundary) on a coordinate grid."""
    c, s = math.cos(angle), math.sin(angle)
    dy, dx = yy - cy, xx - cx
    u = (dx * c + dy * s) / ax
    v = (-dx * s + dy * c) / ay
    return np.sqrt(u * u + v * v)


def to_rgb(od: np.ndarray) -> np.ndarray:
    """Beer-Lambert: non-negative optical density (..., 3) float32 -> uint8 transmitted colour."""
    idx = np.clip(od * np.float32(_OD_STEPS) + np.float32(0.5), 0, 255).astype(np.uint8)
    return _TRANSMISSION_LUT[idx]


# --------------------------------------------------------------------------------------------
# Layout on the coarse grid (mpp-independent)
# --------------------------------------------------------------------------------------------


def tissue_layout(
    rng: np.random.Generator,
    gh: int,
    gw: int,
    cell_um: float,
    tissue_fraction: float,
) -> np.ndarray:
    """Signed tissue field on a (gh, gw) grid: > 0 inside tissue (holes already cut out).

    Lobes and holes are sized for a ~2 mm field of view and grow with larger ones.
    """
    size_scale = max(1.0, min(gh, gw) * cell_um / 2000.0)
    yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
    n_frag = int(rng.integers(1, 4))
    base_r = math.sqrt(gh * gw * tissue_fraction / (math.pi * n_frag))
    field = np.full((gh, gw), -1.0, dtype=np.float32)
    for _ in range(n_frag):
        cy = rng.uniform(0.3, 0.7) * gh
        cx = rng.uniform(0.3, 0.7) * gw
        r = base_r * rng.uniform(0.9, 1.3)
        aspect = rng.uniform(0.55, 1.0)
        rho = _ellipse_rho(
            yy, xx, cy, cx, r * math.sqrt(aspect), r / math.sqrt(aspect), rng.uniform(0, math.pi)
        )
        np.maximum(field, 1.0 - rho, out=field)
    # Irregular outline: large lobes plus a ragged edge.
    big = max(2.0, 150.0 * size_scale / cell_um)
    field += 0.35 * smooth_noise(rng, (gh, gw), big) + 0.08 * smooth_noise(rng, (gh, gw), big / 5)
    # Keep tissue off the slide border.
    margin = 0.07 * min(gh, gw)
    edge = np.minimum(np.minimum(yy, gh - 1 - yy), np.minimum(xx, gw - 1 - xx))
    field -= 3.0 * np.clip((margin - edge) / margin, 0.0, None)
    thr = float(np.quantile(field, 1.0 - min(0.95, tissue_fraction * 1.05)))
    field -= thr

    # Holes (lumen, fat): ellipses well inside the tissue, cut out with a signed min().
    inside = (field > 0).astype(np.uint8)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 5) * cell_um
    hole = np.full((gh, gw), -1.0, dtype=np.float32)
    n_holes = int(rng.integers(4, 10) * round(size_scale))
    cand = np.flatnonzero(dist > 60.0 * size_scale)
    if cand.size:
        for _ in range(n_holes):
            k = int(cand[rng.integers(cand.size)])
            cy, cx = divmod(k, gw)
            r_um = min(rng.uniform(15.0, 70.0) * size_scale, 0.8 * float(dist.flat[k]))
            aspect = rng.uniform(0.5, 1.0)
            a = r_um / cell_um
            rho = _ellipse_rho(
                yy,
                xx,
                cy,
                cx,
                a * math.sqrt(aspect),
                a / math.sqrt(aspect),
                rng.uniform(0, math.pi),
            )
            np.maximum(hole, 1.0 - rho, out=hole)
    return np.minimum(field, -0.5 * hole)


def _tumour_layout(
    rng: np.random.Generator, tissue: np.ndarray, cell_um: float, target_fraction: float
) -> np.ndarray:
    """Signed tumour field: several islands clustered around one centre inside the tissue."""
    gh, gw = tissue.shape
    inside = tissue > 0
    tissue_area = int(inside.sum())
    out = np.full((gh, gw), -1.0, dtype=np.float32)
    if tissue_area == 0:
        return out
    dist = cv2.distanceTransform(inside.astype(np.uint8), cv2.DIST_L2, 5)
    # Cluster centre: a deep-ish tissue point.
    deep = np.flatnonzero(dist >= 0.5 * dist.max())
    cy, cx = divmod(int(deep[rng.integers(deep.size)]), gw)
    target = target_fraction * tissue_area
    cluster_r = math.sqrt(1.6 * target / math.pi)
    # Stroma septa between tumour nests: islands are capped, then smooth noise carves them.
    septa = 0.6 * np.clip(smooth_noise(rng, (gh, gw), max(2.0, 40.0 / cell_um)), -2.5, 2.5)
    islands = np.full((gh, gw), -10.0, dtype=np.float32)
    spread = 0.8 * cluster_r
    for i in range(240):
        # Island centres uniform in a disc around the cluster centre; the disc widens slowly
        # while the target is not reached (tissue edges and holes eat into it).
        rad = spread * math.sqrt(rng.random())
        ang = rng.uniform(0.0, 2 * math.pi)
        iy, ix = cy + rad * math.sin(ang), cx + rad * math.cos(ang)
        if 0 <= iy < gh and 0 <= ix < gw and inside[int(iy), int(ix)]:
            r = cluster_r * rng.uniform(0.15, 0.3)
            aspect = rng.uniform(0.5, 1.0)
            ay, ax = r * math.sqrt(aspect), r / math.sqrt(aspect)
            # The septa noise is >= -1.5, so an island reaches at most rho = 2.5.
            ext = 2.5 * max(ay, ax) + 1
            y0, y1 = max(0, int(iy - ext)), min(gh, int(iy + ext) + 1)
            x0, x1 = max(0, int(ix - ext)), min(gw, int(ix + ext) + 1)
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            rho = _ellipse_rho(yy, xx, iy, ix, ay, ax, rng.uniform(0, math.pi))
            np.maximum(islands[y0:y1, x0:x1], 1.0 - rho, out=islands[y0:y1, x0:x1])
        if i % 4 == 3:
            out = np.minimum(np.minimum(islands, 0.4) + septa, tissue)
            if int((out > 0).sum()) >= target:
                break
            spread *= 1.04
    return out


#: Tumour arrangements of `render_tissue`: islands clustered around one centre (None), or the
#: same share of patch cells made tumour in 1-2 compact clumps or scattered one by one.
ARRANGEMENTS = (None, "clumped", "scattered")


def _arranged_tumour_layout(
    rng: np.random.Generator,
    tissue: np.ndarray,
    cell_um: float,
    target_fraction: float,
    arrangement: str,
) -> np.ndarray:
    """Signed tumour field made of whole patch cells (112 um, on the patching grid): a share of
    the tissue cells, chosen clumped (grown regions, `span.synthetic.layouts`) or scattered
    (one cell at a time, apart). Each chosen cell holds one rounded tumour nest filling most of
    it and never crossing into a neighbour, so a tumour patch looks the same in a clump as
    alone and no normal patch carries a sliver of its neighbour's tumour: the two arrangements
    differ in where the tumour patches are, not in any patch's content."""
    per_cell = PATCH_UM / cell_um  # layout pixels per patch cell
    gh, gw = tissue.shape
    ch, cw = int(gh // per_cell), int(gw // per_cell)
    inside = (tissue > 0).astype(np.float32)
    cover = cv2.resize(inside, (cw, ch), interpolation=cv2.INTER_AREA)
    cells = cover > 0.75
    out = np.full((gh, gw), -1.0, dtype=np.float32)
    n_cells = int(cells.sum())
    count = round(target_fraction * n_cells)
    if count == 0:
        return out
    chosen = np.zeros_like(cells)
    if arrangement == "scattered":  # one cell at a time, away from the others while possible
        for _ in range(count):
            near = cv2.dilate(chosen.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            free = cells & ~near if (cells & ~near).any() else cells & ~chosen
            rows, cols = np.nonzero(free)
            k = int(rng.integers(len(rows)))
            chosen[rows[k], cols[k]] = True
    else:
        sizes = [count // 2, count - count // 2] if count >= 8 else [count]
        while sizes:
            size, free = sizes.pop(), cells & ~chosen
            rows, cols = np.nonzero(free)
            for _ in range(20):  # seeds in small fragments cannot hold the clump
                k = int(rng.integers(len(rows)))
                try:
                    chosen |= grow_region(free, (int(rows[k]), int(cols[k])), size, rng)
                    break
                except LayoutError:
                    continue
            else:  # fragmented tissue: two smaller clumps instead
                sizes += [size // 2, size - size // 2]
    edge = 0.25 * smooth_noise(rng, (gh, gw), max(2.0, 30.0 / cell_um))
    nest = np.full((gh, gw), -1.0, dtype=np.float32)
    for r, c in zip(*np.nonzero(chosen), strict=True):
        # The nest's box: its cell less one layout pixel, so no tumour crosses into a neighbour.
        y0, y1 = math.ceil(r * per_cell) + 1, math.floor((r + 1) * per_cell) - 1
        x0, x1 = math.ceil(c * per_cell) + 1, math.floor((c + 1) * per_cell) - 1
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        cy, cx = (r + 0.5) * per_cell, (c + 0.5) * per_cell
        half = 0.5 * per_cell * rng.uniform(0.8, 0.95)
        rho = ((np.abs(yy - cy) / half) ** 4 + (np.abs(xx - cx) / half) ** 4) ** 0.25
        nest[y0:y1, x0:x1] = 1.0 - rho + edge[y0:y1, x0:x1]
    return np.minimum(nest, tissue)


# --------------------------------------------------------------------------------------------
# Full-resolution rendering, in horizontal strips (bounded, reused memory)
# --------------------------------------------------------------------------------------------

# Pixels per strip: strips' buffers (~8 MB each) are recycled by malloc instead of being freshly
# mapped and page-faulted, which dominated the run time of whole-image temporaries.
_STRIP_PIXELS = 1 << 21
_NUCLEUS_SIGMA_UM = 2.0


def _layout_masks(
    tissue_grid: np.ndarray,
    tumour_grid: np.ndarray | None,
    mpp: float,
    y0: int,
    y1: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue and tumour masks of rows [y0, y1) at ``mpp``: the layout fields, upsampled, > 0."""
    s, shape = mpp / LAYOUT_UM, (y1 - y0, width)
    tissue = upsample(tissue_grid, s, s, shape, offset=(y0, 0.0)) > 0
    if tumour_grid is None:
        return tissue, np.zeros(shape, dtype=bool)
    tumour = upsample(tumour_grid, s, s, shape, offset=(y0, 0.0)) > 0
    return tissue, tumour & tissue


class _StainRenderer:
    """H&E colours at ``mpp`` for any strip of rows of one field of view.

    Beer-Lambert mix of eosin (fibrous stroma), haematoxylin (nuclei, darker and bluer in
    tumour) and glass, through a lookup table. All random draws happen in ``__init__`` (noise
    grids, nucleus positions), so strips can be rendered independently and still agree.
    """

    def __init__(
        self,
        r_tex: np.random.Generator,
        r_nuc: np.random.Generator,
        tissue_grid: np.ndarray,
        tumour_grid: np.ndarray | None,
        shape: tuple[int, int],
        mpp: float,
    ) -> None:
        self.tissue_grid, self.tumour_grid = tissue_grid, tumour_grid
        self.shape, self.mpp = shape, mpp
        self.layout_scale = mpp / LAYOUT_UM
        self.drift = NoiseField(r_tex, shape, 200.0 / mpp, exact=True)  # stain intensity drift
        self.blend = NoiseField(r_tex, shape, 120.0 / mpp, exact=True)
        # Wavy collagen fibres: two anisotropic noises blended by a slowly varying weight.
        self.fibre_a = NoiseField(r_tex, shape, 14.0 / mpp, 2.5 / mpp, exact=True)
        self.fibre_b = NoiseField(r_tex, shape, 2.5 / mpp, 14.0 / mpp, exact=True)
        self.grain = NoiseField(r_tex, shape, 1.5 / mpp, exact=True)
        self.sensor_seed = int(r_tex.integers(2**63 - 1))
        self._nuclei_points(r_nuc)

    def _nuclei_points(self, rng: np.random.Generator) -> None:
        """Poisson nuclei: sparse small ones in normal tissue, crowded large ones in tumour.

        A point of weight k = exp(r^2 / 2 sigma^2) blurred by a normalised Gaussian crosses 1 at
        distance r, so one blur draws round nuclei of per-point radius r.
        """
        h, w = self.shape
        n = int(rng.poisson(TUMOUR_NUCLEI_PER_UM2 * h * w * self.mpp**2))
        ys = np.sort(rng.integers(0, h, n))
        xs = rng.integers(0, w, n)
        u = rng.random(n)
        jitter = rng.uniform(0.8, 1.2, n)
        # Look up the masks at the candidate points on the coarse layout (nearest cell).
        gy = np.minimum(
            ((ys + 0.5) * self.layout_scale).astype(np.int64), self.tissue_grid.shape[0] - 1
        )
        gx = np.minimum(
            ((xs + 0.5) * self.layout_scale).astype(np.int64), self.tissue_grid.shape[1] - 1
        )
        in_tissue = self.tissue_grid[gy, gx] > 0
        in_tumour = in_tissue & (
            self.tumour_grid[gy, gx] > 0 if self.tumour_grid is not None else False
        )
        density = np.where(
            in_tumour, TUMOUR_NUCLEI_PER_UM2, np.where(in_tissue, NORMAL_NUCLEI_PER_UM2, 0.0)
        )
        keep = u * TUMOUR_NUCLEI_PER_UM2 < density
        r = np.where(in_tumour, 4.4, 2.6)[keep] * jitter[keep]
        sigma = _NUCLEUS_SIGMA_UM / self.mpp
        self.nuc_y, self.nuc_x = ys[keep], xs[keep]
        self.nuc_w = (np.exp(r * r / (2 * _NUCLEUS_SIGMA_UM**2)) * (2 * math.pi * sigma**2)).astype(
            np.float32
        )
        self.nuc_k = 2 * math.ceil(4.2 * sigma) + 1
        self.nuc_sigma = sigma

    def nuclei(self, y0: int, y1: int) -> np.ndarray:
        halo = self.nuc_k // 2
        a, b = max(0, y0 - halo), min(self.shape[0], y1 + halo)
        i, j = np.searchsorted(self.nuc_y, [a, b])
        points = np.zeros((b - a, self.shape[1]), dtype=np.float32)
        points[self.nuc_y[i:j] - a, self.nuc_x[i:j]] = self.nuc_w[i:j]
        field = cv2.GaussianBlur(points, (self.nuc_k, self.nuc_k), self.nuc_sigma)[y0 - a : y1 - a]
        cv2.addWeighted(field, 1.6, field, 0.0, -0.96, dst=field)
        return cv2.min(cv2.max(field, 0.0, dst=field), 1.0, dst=field)

    def render(self, y0: int, y1: int) -> np.ndarray:
        """RGB uint8 rows [y0, y1) at ``self.mpp``."""
        tissue_mask, tumour_mask = _layout_masks(
            self.tissue_grid, self.tumour_grid, self.mpp, y0, y1, self.shape[1]
        )
        tis = tissue_mask.astype(np.float32)
        tum = tumour_mask.astype(np.float32)
        drift = self.drift.rows(y0, y1)
        cv2.addWeighted(drift, 0.12, drift, 0.0, 1.0, dst=drift)
        blend = self.blend.rows(y0, y1)
        cv2.addWeighted(blend, 0.6, blend, 0.0, 0.5, dst=blend)
        cv2.min(cv2.max(blend, 0.0, dst=blend), 1.0, dst=blend)
        fibre = self.fibre_a.rows(y0, y1)
        other = self.fibre_b.rows(y0, y1)
        cv2.subtract(fibre, other, dst=fibre)
        cv2.multiply(fibre, blend, dst=fibre)
        cv2.add(fibre, other, dst=fibre)
        grain = self.grain.rows(y0, y1)

        c_eosin = cv2.addWeighted(fibre, 0.3, grain, 0.08, 0.9, dst=fibre)
        cv2.max(c_eosin, 0.25, dst=c_eosin)
        cv2.multiply(c_eosin, drift, dst=c_eosin)
        # Tumour: less collagen, more (basophilic) cytoplasm.
        cv2.multiply(c_eosin, cv2.addWeighted(tum, -0.45, tis, 1.0, 0.0, dst=blend), dst=c_eosin)
        c_haem = cv2.addWeighted(tum, 0.22, tis, 0.06, 0.0, dst=other)
        cv2.multiply(c_haem, drift, dst=c_haem)

        nuc = self.nuclei(y0, y1)
        chromatin = cv2.addWeighted(grain, 0.2, grain, 0.0, 0.85, dst=grain)
        cv2.min(cv2.max(chromatin, 0.5, dst=chromatin), 1.1, dst=chromatin)
        cv2.multiply(nuc, chromatin, dst=nuc)
        cv2.multiply(nuc, tis, dst=nuc)
        c_tumour = cv2.multiply(nuc, tum, dst=tum)
        cv2.subtract(nuc, c_tumour, dst=nuc)  # normal nuclei
        cv2.scaleAdd(nuc, 0.95, c_haem, dst=c_haem)
        cv2.multiply(c_tumour, 1.15, dst=c_tumour)

        # Glass: slow illumination drift plus per-pixel sensor noise, as a grey optical density.
        sensor = np.random.default_rng([self.sensor_seed, y0])
        glass = sensor.random(nuc.shape, dtype=np.float32, out=nuc)
        cv2.addWeighted(drift, 0.05, glass, 0.016, -0.058, dst=glass)

        od = drift
        bg_od = np.log(255.0 / np.asarray(BACKGROUND_RGB))
        channels = []
        for ch in range(3):
            cv2.addWeighted(
                c_eosin, float(EOSIN[ch]), c_haem, float(HAEMATOXYLIN[ch]), float(bg_od[ch]), dst=od
            )
            cv2.scaleAdd(c_tumour, float(TUMOUR_HAEMATOXYLIN[ch]), od, dst=od)
            cv2.add(od, glass, dst=od)
            channels.append(cv2.LUT(cv2.convertScaleAbs(od, alpha=_OD_STEPS), _TRANSMISSION_LUT))
        return cv2.merge(channels)


def _draw_pen(
    rng: np.random.Generator,
    image: np.ndarray,
    tissue_grid: np.ndarray,
    cell_um: float,
    mpp: float,
    colour: tuple[int, int, int],
) -> np.ndarray:
    """Draw one or two thick ink strokes hugging the tissue edge; return the ink mask."""
    h, w = image.shape[:2]
    mask = np.zeros((h, w), dtype=np.uint8)
    inside = (tissue_grid > 0).astype(np.uint8)
    edge = cv2.morphologyEx(inside, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    edge_pts = np.flatnonzero(edge)
    ty, tx = np.nonzero(inside)
    if edge_pts.size == 0:
        return mask.astype(bool)
    centre = np.array([tx.mean(), ty.mean()]) * cell_um  # (x, y) in um
    side_um = min(h, w) * mpp
    for _ in range(1 + int(rng.random() < 0.35)):
        gy, gx = divmod(int(edge_pts[rng.integers(edge_pts.size)]), tissue_grid.shape[1])
        p = (np.array([gx, gy]) + 0.5) * cell_um
        normal = p - centre
        normal /= max(float(np.linalg.norm(normal)), 1e-6)
        ang = rng.uniform(-0.35, 0.35)
        normal = np.array(
            [
                normal[0] * math.cos(ang) - normal[1] * math.sin(ang),
                normal[0] * math.sin(ang) + normal[1] * math.cos(ang),
            ]
        )
        tangent = np.array([-normal[1], normal[0]])
        # A curved stroke roughly along the tissue edge: its middle touches the tissue, its
        # ends swing out over the glass.
        length = rng.uniform(0.4, 0.7) * side_um
        thick = rng.uniform(150.0, 300.0)
        o1, o2 = rng.uniform(0.05, 0.25, 2) * length
        mid = rng.uniform(-0.2, 0.6) * thick
        start = p - 0.5 * length * tangent + o1 * normal
        end = p + 0.5 * length * tangent + o2 * normal
        ctrl = p + 2.0 * (mid - (o1 + o2) / 4.0) * normal
        t = np.linspace(0.0, 1.0, 48)[:, None]
        curve = (1 - t) ** 2 * start + 2 * (1 - t) * t * ctrl + t**2 * end
        pts = np.round(curve / mpp).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(
            mask, [pts], False, 1, thickness=max(1, round(thick / mpp)), lineType=cv2.LINE_8
        )
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return mask.astype(bool)
    # Multiplicative ink (a dye over the section) with patchy opacity alpha in [0.6, 1]:
    # transmission T**alpha, interpolated linearly between T**0.6 and T per channel.
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    alpha = smooth_noise(rng, (y1 - y0, x1 - x0), 80.0 / mpp)
    cv2.addWeighted(alpha, 0.25, alpha, 0.0, 0.625, dst=alpha)  # (alpha - 0.6) / 0.4
    cv2.min(cv2.max(alpha, 0.0, dst=alpha), 1.0, dst=alpha)
    trans = np.asarray(colour, dtype=np.float64) / 255.0
    lo = trans**0.6
    factor = cv2.transform(alpha[..., None], np.stack([trans - lo, lo], axis=1))
    region = image[y0:y1, x0:x1]
    inked = cv2.multiply(region, factor, dtype=cv2.CV_8U)
    np.copyto(region, inked, where=mask[y0:y1, x0:x1, None].astype(bool))
    return mask.astype(bool)


def _draw_dust(
    rng: np.random.Generator, image: np.ndarray, tissue_grid: np.ndarray, cell_um: float, mpp: float
) -> None:
    """A few small (< 40 um) grey/dark specks on the background."""
    free = cv2.erode((tissue_grid <= 0).astype(np.uint8), np.ones((9, 9), np.uint8))
    cand = np.flatnonzero(free)
    if cand.size == 0:
        return
    for _ in range(int(rng.integers(3, 11))):
        gy, gx = divmod(int(cand[rng.integers(cand.size)]), tissue_grid.shape[1])
        cy, cx = (gy + 0.5) * cell_um, (gx + 0.5) * cell_um
        grey = float(rng.uniform(50.0, 150.0))
        colour = tuple(float(np.clip(grey + t, 0, 255)) for t in rng.uniform(-12.0, 12.0, 3))
        size_um = rng.uniform(5.0, 36.0)
        for _ in range(int(rng.integers(1, 4))):  # a speck is 1-3 overlapping blobs
            jy, jx = rng.normal(0.0, 0.15 * size_um, 2)
            ax = max(1, round(rng.uniform(0.2, 0.4) * size_um / mpp))
            ay = max(1, round(ax * rng.uniform(0.3, 1.0)))
            centre = (round((cx + jx) / mpp), round((cy + jy) / mpp))
            cv2.ellipse(
                image, centre, (ax, ay), float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA
            )


def render_tissue(
    height_um: float,
    width_um: float,
    mpp: float,
    *,
    tumour: bool,
    seed: int,
    pen: str | None = None,
    dust: bool = True,
    tissue_fraction: float = 0.42,
    tumour_fraction: float | None = None,
    arrangement: str | None = None,
    texture_mpp: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render an H&E-like field of view; returns (RGB uint8, tissue, tumour, pen) masks.

    The layout (tissue outline, holes, tumour islands, pen and dust positions) depends only on
    the seed and the physical size, so the same seed at 0.25 and 0.5 um/px shows the same tissue.
    Stain texture is rendered at ``max(mpp, texture_mpp)`` and upsampled (a 40x slide costs
    about a 20x one); masks, pen and dust are drawn at ``mpp``. ``tumour_fraction`` (of the
    tissue area) defaults to a seeded draw in 0.12-0.25 (0.08-0.16 when arranged);
    ``tissue_fraction`` is of the slide.
    ``arrangement`` places the tumour as clustered islands (None), or as that share of the
    tissue's patch cells in compact clumps ("clumped") or at random ("scattered").
    """
    if arrangement not in ARRANGEMENTS:
        raise ValueError(f"arrangement must be one of {ARRANGEMENTS}, got {arrangement!r}")
    if pen is not None and pen not in PEN_COLOURS:
        raise ValueError(f"pen must be None or one of {sorted(PEN_COLOURS)}, got {pen!r}")
    if mpp <= 0 or height_um <= 0 or width_um <= 0:
        raise ValueError("height_um, width_um and mpp must be positive")
    h, w = round(height_um / mpp), round(width_um / mpp)
    r_layout, r_tumour, r_tex, r_nuc, r_pen, r_dust = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)
    )

    # Layout on the coarse grid; strips upsample its signed fields and threshold them at 0.
    gh, gw = math.ceil(height_um / LAYOUT_UM), math.ceil(width_um / LAYOUT_UM)
    tissue_grid = tissue_layout(r_layout, gh, gw, LAYOUT_UM, tissue_fraction)
    # Arranged tumour is sparser: scattered cells must be able to keep apart.
    low, high = (0.12, 0.25) if arrangement is None else (0.08, 0.16)
    frac = r_tumour.uniform(low, high) if tumour_fraction is None else tumour_fraction
    if not tumour:
        tumour_grid = None
    elif arrangement is None:
        tumour_grid = _tumour_layout(r_tumour, tissue_grid, LAYOUT_UM, frac)
    else:
        tumour_grid = _arranged_tumour_layout(r_tumour, tissue_grid, LAYOUT_UM, frac, arrangement)

    tex_mpp = max(mpp, texture_mpp)
    tex_shape = (round(height_um / tex_mpp), round(width_um / tex_mpp))
    stains = _StainRenderer(r_tex, r_nuc, tissue_grid, tumour_grid, tex_shape, tex_mpp)

    image = np.empty((h, w, 3), dtype=np.uint8)
    tissue_mask = np.empty((h, w), dtype=bool)
    tumour_mask = np.empty((h, w), dtype=bool)
    f = mpp / tex_mpp  # texture pixels per output pixel (1, or 0.5 at 40x)
    step = max(16, _STRIP_PIXELS // w)
    for y0 in range(0, h, step):
        y1 = min(h, y0 + step)
        tissue_mask[y0:y1], tumour_mask[y0:y1] = _layout_masks(
            tissue_grid, tumour_grid, mpp, y0, y1, w
        )
        if f == 1.0:
            image[y0:y1] = stains.render(y0, y1)
        else:
            ty0 = max(0, math.floor((y0 + 0.5) * f - 0.5) - 1)
            ty1 = min(tex_shape[0], math.ceil((y1 - 0.5) * f - 0.5) + 2)
            tex = stains.render(ty0, ty1)
            image[y0:y1] = upsample(tex, f, f, (y1 - y0, w), offset=(y0 - ty0 / f, 0.0))

    if dust:
        _draw_dust(r_dust, image, tissue_grid, LAYOUT_UM, mpp)
    if pen is not None:
        pen_mask = _draw_pen(r_pen, image, tissue_grid, LAYOUT_UM, mpp, PEN_COLOURS[pen])
    else:
        pen_mask = np.zeros((h, w), dtype=bool)
    return image, tissue_mask, tumour_mask, pen_mask
