"""Draws an H&E-like demo slide and keeps the coarse maps of what was drawn.

Latent smooth random fields on a ~4 µm grid (:mod:`histofuse.demo.fields`) decide the tissue
outline and the local mix of tumour, stroma and lymphocyte regions; glands, vessels and nuclei
are placed from them and stamped at level 0 (:mod:`histofuse.demo.cells`); haematoxylin and
eosin concentrations are then mixed into RGB with Beer-Lambert stain vectors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage.filters import gaussian

from histofuse.demo.cells import draw_cells, draw_lumens, place_nuclei
from histofuse.demo.fields import Grid, latent_fields, smooth

_BACKGROUND = 241.0  # nominal brightness of glass


@dataclass
class Slide:
    """A rendered slide and the latent maps that expression is computed from."""

    rgb: np.ndarray  # (H, W, 3) uint8, level 0
    tissue: np.ndarray  # (H, W) bool, level 0
    coarse_um: float  # µm per coarse pixel
    maps: dict[str, np.ndarray]  # coarse (hc, wc) maps


def render_slide(
    rng: np.random.Generator,
    height: int,
    width: int,
    mpp: float,
    tumour_bias: float,
    lymph_bias: float,
) -> Slide:
    """Draws an H&E-like slide and the coarse maps of what was drawn.

    Args:
        rng: The slide's random stream.
        height: Level-0 height in pixels.
        width: Level-0 width in pixels.
        mpp: Level-0 µm per pixel.
        tumour_bias: The patient's shift of the tumour share (logit).
        lymph_bias: The patient's shift of the lymphocyte share (logit).

    Returns:
        The RGB image, its tissue mask and the coarse maps (region shares, nuclei counts by
        kind, nucleus area, lumen, eosin) that the spot features are computed from.
    """
    grid = Grid.for_slide(height, width, mpp)
    fields = latent_fields(rng, grid, tumour_bias, lymph_bias)
    tissue = grid.up(fields["tissue"]) > 0
    tissue_c = grid.down(tissue.astype(np.float32))
    lumen, glands, vessels = draw_lumens(rng, grid, mpp, fields, tissue, tissue_c)
    lumen_c = grid.down(lumen)
    yi, xi, kinds, angle = place_nuclei(
        rng, grid, mpp, fields, tissue, tissue_c, lumen, lumen_c, glands, vessels
    )
    nuclei, nuc_area, rbc = draw_cells(rng, grid, mpp, yi, xi, kinds, angle, vessels)
    rgb, eosin = _paint(rng, grid, mpp, fields, tissue, lumen, nuclei, rbc)

    def coarse(idx: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(idx, weights=weights, minlength=grid.hc * grid.wc).reshape(
            grid.hc, grid.wc
        )

    cidx = (yi // grid.f) * grid.wc + xi // grid.f
    maps = {
        "tissue": tissue_c,
        "tumour": fields["p_t"] * tissue_c,
        "stroma": fields["p_s"] * tissue_c,
        "lymphocyte": fields["p_l"] * tissue_c,
        "lumen": lumen_c,
        "eosin": grid.down(eosin),
        "n_tumour": coarse(cidx[kinds == 0]),
        "n_stroma": coarse(cidx[kinds == 1]),
        "n_lymphocyte": coarse(cidx[kinds == 2]),
        "nucleus_area": coarse(cidx, nuc_area),
    }
    return Slide(rgb=rgb, tissue=tissue, coarse_um=grid.cu, maps=maps)


def _paint(
    rng: np.random.Generator,
    grid: Grid,
    mpp: float,
    fields: dict[str, np.ndarray],
    tissue: np.ndarray,
    lumen: np.ndarray,
    nuclei: np.ndarray,
    rbc: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Stain concentrations mixed into RGB (Beer-Lambert); returns RGB uint8 and the eosin map.

    Eosin carries wavy collagen bundles and clefts along the fibres; haematoxylin is a faint
    background plus the nuclei. In-place float32 arithmetic keeps this at a few full-size passes.
    """
    fibres = _fibres(rng, grid, fields)
    grain = gaussian(rng.standard_normal((grid.height, grid.width), dtype=np.float32), 0.7 / mpp)
    grain *= np.float32(1.0 / max(float(grain[::7, ::7].std()), 1e-6))
    eosin = _eosin(grid, fields, fibres, grain, tissue, lumen, nuclei)
    del fibres
    haem = _haematoxylin(grid, fields, grain, tissue, lumen, nuclei)
    del grain
    return _mix_stains(rng, haem, eosin, rbc), eosin


def _fibres(rng: np.random.Generator, grid: Grid, fields: dict[str, np.ndarray]) -> np.ndarray:
    """The eosin factor of the collagen: ``1 - 0.6 cleft + 0.15 bundle`` at level 0."""
    hc, wc = grid.hc, grid.wc
    fine = smooth(rng, (hc, wc), 1.2)
    phase = grid.up(fields["psi"] * np.float32(2 * math.pi / 11.0) + 1.3 * fine)
    bundle = np.sin(phase * np.float32(0.23))
    np.sin(phase, out=phase)
    cleft = phase
    cleft -= np.float32(0.6)
    np.clip(cleft, 0.0, 0.4, out=cleft)
    where = fields["p_s"] * fields["clefts"]
    cleft *= grid.up(where * np.clip(smooth(rng, (hc, wc), 2.0) + 0.2, 0.0, 1.0) / 0.4)
    cleft *= np.float32(-0.6)
    cleft += np.float32(1.0)
    bundle *= np.float32(0.15)
    cleft += bundle
    return cleft


def _eosin(
    grid: Grid,
    fields: dict[str, np.ndarray],
    fibres: np.ndarray,
    grain: np.ndarray,
    tissue: np.ndarray,
    lumen: np.ndarray,
    nuclei: np.ndarray,
) -> np.ndarray:
    """Eosin: ``e_base * fibres * (1 + 0.12 grain) * (1 - 0.75 lumen) * (1 - 0.4 min(nuclei, 1))``.

    On tissue only, and never negative.
    """
    eosin = grid.up(fields["e_base"])
    eosin *= fibres
    shade = np.multiply(grain, np.float32(0.12))
    shade += np.float32(1.0)
    eosin *= shade
    np.multiply(lumen, np.float32(-0.75), out=shade)
    shade += np.float32(1.0)
    eosin *= shade
    np.minimum(nuclei, np.float32(1.0), out=shade)
    shade *= np.float32(-0.4)
    shade += np.float32(1.0)
    eosin *= shade
    eosin[~tissue] = 0.0
    np.maximum(eosin, 0.0, out=eosin)
    return eosin


def _haematoxylin(
    grid: Grid,
    fields: dict[str, np.ndarray],
    grain: np.ndarray,
    tissue: np.ndarray,
    lumen: np.ndarray,
    nuclei: np.ndarray,
) -> np.ndarray:
    """Haematoxylin: ``(h_base * (1 + 0.25 grain) + nuclei) * (1 - 0.9 lumen)``, on tissue only.

    Turns ``grain`` into its factor in place.
    """
    haem = grid.up(fields["h_base"])
    grain *= np.float32(0.25)
    grain += np.float32(1.0)
    haem *= grain
    haem += nuclei
    shade = np.multiply(lumen, np.float32(-0.9), out=np.empty(haem.shape, np.float32))
    shade += np.float32(1.0)
    haem *= shade
    haem[~tissue] = 0.0
    return haem


def _mix_stains(
    rng: np.random.Generator, haem: np.ndarray, eosin: np.ndarray, rbc: np.ndarray
) -> np.ndarray:
    """RGB uint8 from the stain maps: per-slide stain vectors, glass brightness, sensor noise.

    The stain vectors are Macenko's reference H&E, jittered per slide.
    """
    height, width = haem.shape
    stain_h = np.array([0.5626, 0.7201, 0.4062]) + rng.normal(0.0, 0.02, 3)
    stain_e = np.array([0.2159, 0.8012, 0.5581]) + rng.normal(0.0, 0.02, 3)
    stain_h *= rng.uniform(0.9, 1.1) / np.linalg.norm(stain_h)
    stain_e *= rng.uniform(0.9, 1.1) / np.linalg.norm(stain_e)
    stain_rbc = np.array([0.1, 1.0, 0.85])
    glass = _BACKGROUND + rng.uniform(-2.0, 2.0)
    noise = rng.standard_normal((height, width), dtype=np.float32)
    noise *= np.float32(2.0)
    rbc_at = np.flatnonzero(rbc)
    rbc_val = rbc.ravel()[rbc_at]
    rgb = np.empty((height, width, 3), np.uint8)
    for ch in range(3):
        od = haem * np.float32(stain_h[ch])
        od += eosin * np.float32(stain_e[ch])
        od.reshape(-1)[rbc_at] += rbc_val * np.float32(stain_rbc[ch])  # od is C-ordered
        np.negative(od, out=od)
        np.exp(od, out=od)
        od *= np.float32(glass)
        od += noise
        np.clip(od, 0, 255, out=od)
        rgb[..., ch] = np.rint(od)
    return rgb
