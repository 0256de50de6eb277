"""The latent fields a demo slide is drawn from, on a coarse (~4 µm) grid.

Smooth random fields decide the tissue outline, the local mix of tumour, stroma and lymphocyte
regions, the direction of the collagen fibres and the stain baselines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage.filters import gaussian
from skimage.measure import label
from skimage.transform import downscale_local_mean

COARSE_UM = 4.0  # nominal µm per pixel of the latent fields


@dataclass
class Grid:
    """Level-0 size and the coarse grid of the latent fields (``f`` level-0 px per cell)."""

    height: int
    width: int
    f: int
    cu: float  # µm per coarse pixel
    hc: int
    wc: int

    @classmethod
    def for_slide(cls, height: int, width: int, mpp: float) -> Grid:
        """The coarse grid of a ``height`` × ``width`` px slide at ``mpp`` µm/px."""
        f = max(1, round(COARSE_UM / mpp))
        return cls(height, width, f, f * mpp, -(-height // f), -(-width // f))

    def up(self, a: np.ndarray) -> np.ndarray:
        """A coarse map, bilinearly upsampled to level 0."""
        return upsample(a, self.f, self.height, self.width)

    def down(self, a: np.ndarray) -> np.ndarray:
        """A level-0 map, block-averaged to the coarse grid."""
        pad = ((0, self.hc * self.f - self.height), (0, self.wc * self.f - self.width))
        return downscale_local_mean(np.pad(a, pad, mode="edge"), (self.f, self.f)).astype(
            np.float32
        )


def smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, normalised to mean 0 and standard deviation 1."""
    field = gaussian(rng.standard_normal(shape).astype(np.float32), sigma=max(sigma, 0.5))
    field -= field.mean()
    sd = float(field.std())
    return field / sd if sd > 0 else field


def upsample(a: np.ndarray, f: int, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a coarse map by ``f`` (pixel centres aligned), cropped.

    Separable and float32, about twice as fast as ``skimage.transform.resize`` here.
    """
    a = np.asarray(a, np.float32)

    def axis_weights(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(n_out, dtype=np.float32) + 0.5) / f - 0.5
        i0 = np.clip(np.floor(src), 0, n_in - 1).astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w = np.clip(src - i0, 0.0, 1.0).astype(np.float32)
        return i0, i1, w

    r0, r1, wr = axis_weights(height, a.shape[0])
    c0, c1, wc = axis_weights(width, a.shape[1])
    rows = a[r0] + (a[r1] - a[r0]) * wr[:, None]
    left = np.take(rows, c0, axis=1)  # C-ordered, unlike rows[:, c0]
    out = np.take(rows, c1, axis=1)
    out -= left
    out *= wc[None, :]
    out += left
    return out


def latent_fields(
    rng: np.random.Generator, grid: Grid, tumour_bias: float, lymph_bias: float
) -> dict[str, np.ndarray]:
    """Coarse latent fields: tissue outline, region proportions, fibre direction, stains."""
    hc, wc, cu = grid.hc, grid.wc, grid.cu
    tissue = _tissue_field(rng, hc, wc, cu)
    logit_t = 1.2 * smooth(rng, (hc, wc), 100.0 / cu) + 0.3 + tumour_bias + rng.normal(0.0, 0.3)
    logit_s = 1.0 * smooth(rng, (hc, wc), 150.0 / cu)
    logit_l = 1.5 * smooth(rng, (hc, wc), 40.0 / cu) - 1.7 + lymph_bias
    logits = np.stack([logit_t, logit_s, logit_l]) / 0.12
    logits -= logits.max(axis=0)
    prob = np.exp(logits)
    prob /= prob.sum(axis=0)
    # Soften the borders a little (a few µm) so regions blend like real tissue.
    p_t, p_s, p_l = (gaussian(p, 4.0 / cu) for p in prob)
    # Collagen fibres follow the contours of psi: a drifting linear trend plus perturbations.
    y_um, x_um = (np.mgrid[0:hc, 0:wc].astype(np.float32) + 0.5) * cu
    alpha = rng.uniform(0.0, math.pi)
    psi = x_um * math.cos(alpha) + y_um * math.sin(alpha)
    psi += 40.0 * smooth(rng, (hc, wc), 70.0 / cu) + 8.0 * smooth(rng, (hc, wc), 15.0 / cu)
    gy, gx = np.gradient(psi)
    # draw.ellipse's rotation turns the row axis towards the column axis; along the fibres
    # (perpendicular to grad psi) the direction (row, col) is (gx, -gy).
    fibre_angle = np.arctan2(-gy, gx) % math.pi
    clefts = np.clip(0.6 * smooth(rng, (hc, wc), 25.0 / cu) + 0.2, 0.0, 1.0)
    e_base = (0.55 * p_s + 0.42 * p_t + 0.22 * p_l) * (1.0 + 0.1 * smooth(rng, (hc, wc), 5.0))
    h_base = 0.04 * p_s + 0.17 * p_t + 0.1 * p_l
    return {
        "tissue": tissue,
        "p_t": p_t,
        "p_s": p_s,
        "p_l": p_l,
        "psi": psi,
        "fibre_angle": fibre_angle,
        "clefts": clefts,
        "e_base": e_base,
        "h_base": h_base,
    }


def _tissue_field(rng: np.random.Generator, hc: int, wc: int, cu: float) -> np.ndarray:
    """Signed coarse field, > 0 on tissue: one or two irregular blobs covering ~50-70 %."""
    y, x = np.mgrid[0:hc, 0:wc].astype(np.float32)
    y = (y + 0.5) * cu
    x = (x + 0.5) * cu
    field = _blobs(rng, x, y, hc * cu, wc * cu)
    field += 0.22 * smooth(rng, (hc, wc), 150.0 / cu)
    field += 0.07 * smooth(rng, (hc, wc), 35.0 / cu)
    field += 0.025 * smooth(rng, (hc, wc), 8.0 / cu)
    # Sections rarely touch the edge of the scanned area: push tissue away from the border.
    h_um, w_um = hc * cu, wc * cu
    border = np.minimum(np.minimum(x, w_um - x), np.minimum(y, h_um - y))
    field -= 0.8 * np.clip(1.0 - border / 150.0, 0.0, 1.0)
    coverage = rng.uniform(0.5, 0.62)
    field -= np.float32(np.quantile(field, 1.0 - coverage))
    clean = _clean_mask(field > 0, cu)
    eps = np.float32(0.004)
    return np.where(clean, np.maximum(field, eps), np.minimum(field, -eps)).astype(np.float32)


def _blobs(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, h_um: float, w_um: float
) -> np.ndarray:
    """One or two rotated elliptic cones (> 0 inside) at µm positions ``x``, ``y``."""
    two = rng.uniform() < 0.45
    centres = [(0.29, 0.5), (0.71, 0.5)] if two else [(0.5, 0.5)]
    field = np.full(x.shape, -10.0, np.float32)
    for fx, fy in centres:
        cx = (fx + rng.uniform(-0.04, 0.04)) * w_um
        cy = (fy + rng.uniform(-0.06, 0.06)) * h_um
        ax = (0.25 if two else 0.42) * w_um * rng.uniform(0.9, 1.1)
        ay = 0.42 * h_um * rng.uniform(0.9, 1.1)
        t = rng.uniform(-0.5, 0.5)
        u = (x - cx) * math.cos(t) + (y - cy) * math.sin(t)
        v = -(x - cx) * math.sin(t) + (y - cy) * math.cos(t)
        field = np.maximum(field, 1.0 - np.sqrt((u / ax) ** 2 + (v / ay) ** 2))
    return field


def _clean_mask(mask: np.ndarray, cu: float) -> np.ndarray:
    """Keeps the big pieces of tissue, drops crumbs, fills small holes (keeps tears)."""
    lab = label(mask, connectivity=2)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    keep = sizes >= max(0.04 * mask.size, 1)
    keep[int(np.argmax(sizes))] = True
    keep[0] = False
    clean = keep[lab]
    holes = label(~clean, connectivity=1)
    hole_sizes = np.bincount(holes.ravel())
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    small = hole_sizes < (80.0 / cu) ** 2
    small[border] = False
    small[0] = False
    clean |= small[holes]
    return clean
