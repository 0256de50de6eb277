"""What a demo slide shows at level 0: gland lumens, vessels, nuclei and red blood cells."""

from __future__ import annotations

import math

import numpy as np
from skimage.draw import ellipse
from skimage.filters import gaussian

from histofuse.demo.fields import Grid

Ellipse = tuple[float, float, float, float, float]  # centre row, col; radii (px); rotation

# Nucleus shape by kind: long axis (µm), short axis (µm, or ``None`` for a share of the long
# one), stain strength, chromatin texture. The long-axis bound sizes the stamps.
_NUCLEUS = {
    "tumour": ((4.5, 7.2), (0.55, 0.9), (0.6, 1.0), 0.4),
    "stroma": ((5.0, 8.0), None, (1.0, 1.45), 0.2),
    "lymphocyte": ((2.5, 3.4), (0.85, 1.0), (1.5, 1.95), 0.15),
    "rbc": ((3.2, 3.8), (0.75, 1.0), (0.7, 0.95), 0.05),  # haemoglobin, paler in the middle
}
_STROMA_SHORT_UM = (1.1, 1.9)
_MAX_AXIS_UM = {"tumour": 8.0, "stroma": 8.5, "lymphocyte": 3.6, "rbc": 3.8}


def draw_lumens(
    rng: np.random.Generator,
    grid: Grid,
    mpp: float,
    fields: dict[str, np.ndarray],
    tissue: np.ndarray,
    tissue_c: np.ndarray,
) -> tuple[np.ndarray, list[Ellipse], list[Ellipse]]:
    """Gland lumens in tumour regions and small blood vessels in stroma (level-0 map)."""
    f, wc = grid.f, grid.wc
    lumen = np.zeros((grid.height, grid.width), np.float32)
    glands: list[Ellipse] = []
    vessels: list[Ellipse] = []
    for kind, rate, radius, out in (
        ("gland", (fields["p_t"] ** 2) / 140.0**2, (12.0, 40.0), glands),
        ("vessel", fields["p_s"] / 230.0**2, (5.0, 14.0), vessels),
    ):
        n_here = rng.poisson(rate * tissue_c * (grid.cu * grid.cu))
        for idx in np.repeat(np.arange(grid.hc * wc), n_here.ravel()).tolist():
            cy = (idx // wc + rng.uniform()) * f
            cx = (idx % wc + rng.uniform()) * f
            a = rng.uniform(*radius) / mpp
            b = a * rng.uniform(0.35, 0.9) if kind == "gland" else a * rng.uniform(0.5, 1.0)
            theta = rng.uniform(-math.pi, math.pi)
            rr, cc = ellipse(cy, cx, a, b, shape=lumen.shape, rotation=theta)
            lumen[rr, cc] = 1.0
            out.append((cy, cx, a, b, theta))
    return gaussian(lumen, 0.8 / mpp) * tissue, glands, vessels


def place_nuclei(
    rng: np.random.Generator,
    grid: Grid,
    mpp: float,
    fields: dict[str, np.ndarray],
    tissue: np.ndarray,
    tissue_c: np.ndarray,
    lumen: np.ndarray,
    lumen_c: np.ndarray,
    glands: list[Ellipse],
    vessels: list[Ellipse],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nucleus centres (level-0 rows, cols), kinds (0 tumour, 1 stroma, 2 lymphocyte), angles.

    A Poisson process on the coarse grid whose intensity and type mix follow the region
    proportions, plus epithelial nuclei lining the glands (long axis towards the lumen) and flat
    endothelial nuclei around the vessels (long axis along the wall).
    """
    f, wc, cu = grid.f, grid.wc, grid.cu
    rate_um2 = np.stack([fields["p_t"] / 80.0, fields["p_s"] / 450.0, fields["p_l"] / 40.0])
    rate_um2 *= (tissue_c * (1.0 - np.clip(lumen_c * 1.5, 0, 1)))[None]
    n_nuc = rng.poisson(rate_um2.sum(axis=0) * cu * cu)
    cell = np.repeat(np.arange(grid.hc * wc), n_nuc.ravel())
    cum = np.cumsum(rate_um2.reshape(3, -1)[:, cell], axis=0)
    u = rng.uniform(size=cell.size) * cum[-1]
    ys = [((cell // wc) + rng.uniform(size=cell.size)) * f]
    xs = [((cell % wc) + rng.uniform(size=cell.size)) * f]
    kinds = [(u >= cum[0]).astype(np.int64) + (u >= cum[1]).astype(np.int64)]
    angle = [np.full(cell.size, np.nan)]  # nan: along the fibres (stroma) or at random
    for group, offset_um, spacing_um, kind, turn in (
        (glands, 4.0, 6.5, 0, 0.0),
        (vessels, 1.2, 14.0, 1, math.pi / 2),
    ):
        for cy, cx, a, b, theta in group:
            ry, rx, radial = _ellipse_ring(
                rng, cy, cx, a, b, theta, offset_um / mpp, spacing_um / mpp
            )
            ys.append(ry)
            xs.append(rx)
            kinds.append(np.full(ry.size, kind, np.int64))
            angle.append((radial + turn) % math.pi)
    yi = np.clip(np.round(np.concatenate(ys)).astype(np.int64), 0, grid.height - 1)
    xi = np.clip(np.round(np.concatenate(xs)).astype(np.int64), 0, grid.width - 1)
    kinds_a, angle_a = np.concatenate(kinds), np.concatenate(angle)
    ok = tissue[yi, xi] & (lumen[yi, xi] < 0.5)
    yi, xi, kinds_a, angle_a = yi[ok], xi[ok], kinds_a[ok], angle_a[ok]
    free = np.isnan(angle_a)
    fibre = fields["fibre_angle"].ravel()[(yi // f) * wc + xi // f]
    angle_a[free] = np.where(kinds_a[free] == 1, fibre[free], rng.uniform(0, math.pi, free.sum()))
    angle_a += rng.normal(0.0, 0.15, angle_a.size)
    return yi, xi, kinds_a, angle_a


def draw_cells(
    rng: np.random.Generator,
    grid: Grid,
    mpp: float,
    yi: np.ndarray,
    xi: np.ndarray,
    kinds: np.ndarray,
    angle: np.ndarray,
    vessels: list[Ellipse],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stamps nuclei (haematoxylin map, area of each in µm²) and red blood cells (map)."""
    height, width = grid.height, grid.width
    n_orient, n_var = 12, 8
    orientations = np.repeat(np.arange(n_orient) * math.pi / n_orient, n_var)
    banks = [
        _stamp_bank(rng, "tumour", mpp, n_orient * n_var, angles=orientations),
        _stamp_bank(rng, "stroma", mpp, n_orient * n_var, angles=orientations),
        _stamp_bank(rng, "lymphocyte", mpp, 32),
    ]
    pad = max(b[0].shape[1] for b in banks)
    nuclei = np.zeros((height + 2 * pad, width + 2 * pad), np.float32)
    nuc_area = np.zeros(yi.size)
    for k, (bank, areas) in enumerate(banks):
        sel = kinds == k
        if k < 2:  # orientation-binned banks
            obin = np.round(angle[sel] / (math.pi / n_orient)).astype(np.int64) % n_orient
            ids = obin * n_var + rng.integers(0, n_var, size=obin.size)
        else:
            ids = rng.integers(0, bank.shape[0], size=int(sel.sum()))
        nuc_area[sel] = areas[ids]
        _stamp(nuclei, bank, yi[sel], xi[sel], ids, pad)
    rbc = _draw_red_cells(rng, grid, mpp, vessels, pad)
    crop = (slice(pad, pad + height), slice(pad, pad + width))
    return nuclei[crop], nuc_area, np.ascontiguousarray(rbc[crop])


def _draw_red_cells(
    rng: np.random.Generator, grid: Grid, mpp: float, vessels: list[Ellipse], pad: int
) -> np.ndarray:
    """Red blood cells inside the vessels, on a canvas padded by ``pad`` px."""
    height, width = grid.height, grid.width
    rbc_bank, _ = _stamp_bank(rng, "rbc", mpp, 16)
    rbc_y, rbc_x = [], []
    for cy, cx, a, b, theta in vessels:
        n_rbc = rng.poisson(1.3 * a * b * mpp * mpp / 3.4**2)
        rad = np.sqrt(rng.uniform(size=n_rbc)) * 0.85
        phi = rng.uniform(0, 2 * math.pi, n_rbc)
        p, q = a * rad * np.cos(phi), b * rad * np.sin(phi)
        rbc_y.append(cy + p * math.cos(theta) + q * math.sin(theta))
        rbc_x.append(cx + p * math.sin(theta) - q * math.cos(theta))
    rbc = np.zeros((height + 2 * pad, width + 2 * pad), np.float32)
    if rbc_y:
        ry = np.clip(np.round(np.concatenate(rbc_y)).astype(np.int64), 0, height - 1)
        rx = np.clip(np.round(np.concatenate(rbc_x)).astype(np.int64), 0, width - 1)
        _stamp(rbc, rbc_bank, ry, rx, rng.integers(0, 16, ry.size), pad)
    return rbc


def _stamp_bank(
    rng: np.random.Generator,
    kind: str,
    mpp: float,
    n: int,
    angles: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Soft nucleus stamps (haematoxylin concentration) and their areas in µm²."""
    size = math.ceil(2.0 * _MAX_AXIS_UM[kind] / mpp) + 5
    size += 1 - size % 2
    bank = np.zeros((n, size, size), np.float32)
    areas = np.zeros(n)
    for i in range(n):
        a, b, strength, chromatin = _nucleus_shape(rng, kind)
        theta = float(angles[i]) if angles is not None else rng.uniform(-math.pi, math.pi)
        m = _outline(rng, kind, size, a, b, theta, mpp)
        areas[i] = m.sum() * mpp * mpp
        body = _chromatin(rng, kind, m, b, chromatin, mpp)
        bank[i] = np.clip(gaussian(body, 0.45 / mpp), 0.0, None) * strength
    return bank, areas


def _nucleus_shape(rng: np.random.Generator, kind: str) -> tuple[float, float, float, float]:
    """A nucleus's semi-axes (µm), stain strength and chromatin texture."""
    long_um, short, strength, chromatin = _NUCLEUS[kind]
    a = rng.uniform(*long_um)
    b = rng.uniform(*_STROMA_SHORT_UM) if short is None else a * rng.uniform(*short)
    return a, b, rng.uniform(*strength), chromatin


def _outline(
    rng: np.random.Generator, kind: str, size: int, a: float, b: float, theta: float, mpp: float
) -> np.ndarray:
    """The nucleus mask (semi-axes in µm): an ellipse, a second lobe on some tumour nuclei."""
    c = (size - 1) / 2.0
    m = np.zeros((size, size), np.float32)
    rr, cc = ellipse(c, c, a / mpp, b / mpp, shape=m.shape, rotation=theta)
    m[rr, cc] = 1.0
    if kind == "tumour" and rng.uniform() < 0.35:  # pleomorphic: a second overlapping lobe
        off = rng.uniform(0.3, 0.6) * a / mpp
        phi = rng.uniform(-math.pi, math.pi)
        rr, cc = ellipse(
            c + off * math.sin(phi),
            c + off * math.cos(phi),
            0.7 * a / mpp,
            0.7 * b / mpp,
            shape=m.shape,
            rotation=theta + rng.uniform(-1, 1),
        )
        m[rr, cc] = 1.0
    return m


def _chromatin(
    rng: np.random.Generator, kind: str, m: np.ndarray, b: float, chromatin: float, mpp: float
) -> np.ndarray:
    """Textured stain inside the mask ``m`` (short semi-axis ``b`` in µm), before blurring."""
    size = m.shape[0]
    tex = gaussian(rng.standard_normal((size, size)).astype(np.float32), 0.6 / mpp)
    tex /= max(float(tex.std()), 1e-6)
    body = m * (1.0 + chromatin * tex)
    if kind == "rbc":
        body = body * (1.0 - 0.35 * np.clip((gaussian(m, 1.0 / mpp) - 0.6) / 0.4, 0, 1))
    if kind == "tumour":  # vesicular chromatin: pale centre, dark rim, a nucleolus or two
        c = (size - 1) / 2.0
        inner = gaussian(m, 1.2 / mpp)
        body = body * (1.0 - 0.5 * np.clip((inner - 0.55) / 0.4, 0.0, 1.0))
        for _ in range(int(rng.integers(1, 3))):
            r = rng.uniform(0.0, 0.45) * b / mpp
            phi = rng.uniform(-math.pi, math.pi)
            rr, cc = ellipse(
                c + r * math.sin(phi), c + r * math.cos(phi), 0.6 / mpp, 0.6 / mpp, m.shape
            )
            body[rr, cc] += 0.6 * m[rr, cc]
    return body


def _stamp(
    canvas: np.ndarray, bank: np.ndarray, ys: np.ndarray, xs: np.ndarray, ids: np.ndarray, pad: int
) -> None:
    """Draws ``bank[ids]`` centred at (ys, xs) into the padded canvas, keeping the maximum."""
    half = bank.shape[1] // 2
    for y, x, k in zip(
        (ys + pad - half).tolist(), (xs + pad - half).tolist(), ids.tolist(), strict=True
    ):
        view = canvas[y : y + bank.shape[1], x : x + bank.shape[2]]
        np.maximum(view, bank[k], out=view)


def _ellipse_ring(
    rng: np.random.Generator,
    cy: float,
    cx: float,
    a: float,
    b: float,
    theta: float,
    offset: float,
    spacing: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points spaced along the outline of a ``draw.ellipse`` grown by ``offset`` px.

    Returns:
        Rows, columns and the radial direction as a ``draw.ellipse`` rotation angle.
    """
    a, b = a + offset, b + offset
    n = max(int(2 * math.pi * math.sqrt((a * a + b * b) / 2) / spacing), 3)
    phi = np.linspace(0, 2 * math.pi, n, endpoint=False) + rng.uniform(0, 1)
    p, q = a * np.cos(phi), b * np.sin(phi)  # along draw.ellipse's row / column radius
    dy = p * math.cos(theta) + q * math.sin(theta)
    dx = p * math.sin(theta) - q * math.cos(theta)
    return cy + dy, cx + dx, np.arctan2(dx, dy) % math.pi
