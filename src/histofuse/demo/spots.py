"""Visium-like spots on a demo slide, their image features, their counts and the ``.h5ad`` file.

Expression is generated from what is drawn in each spot's neighbourhood (nuclear density and
size, tissue-region make-up, eosin, gland lumens) plus batch effects and negative-binomial noise,
so an encoder that captures the tissue better predicts better.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from histofuse.atomic import atomic_path
from histofuse.demo.render import Slide

SPOT_DIAMETER_UM = 55.0
SPOT_SPACING_UM = 100.0
CONTEXT_DIAMETER_UM = 112.0
# Fixed centring/scaling of the raw spot features (calibrated on default cohorts) so that every
# slide uses the same scale and slide-level differences in composition survive into the counts.
_FEATURE_CENTRE = (2.1, 0.38, 0.13, 0.46, 55.0, 0.4, 0.03, 0.43, 0.16)
_FEATURE_SCALE = (0.73, 0.35, 0.27, 0.42, 24.0, 0.107, 0.1, 0.42, 0.26)


def spot_grid(slide: Slide, width_um: float, height_um: float, mpp: float) -> dict[str, Any]:
    """Visium-style hexagonal spots whose centre lies on tissue.

    Returns:
        ``array_row``, ``array_col`` (Visium array positions), ``xy_um`` and ``xy_px`` (spot
        centres as x, y in µm and in level-0 pixels).

    Raises:
        RuntimeError: If no spot centre falls on tissue.
    """
    pitch_y = SPOT_SPACING_UM * math.sqrt(3.0) / 2.0
    margin = CONTEXT_DIAMETER_UM / 2.0 + 4.0
    n_rows = int((height_um - 2 * margin) // pitch_y) + 1
    n_x = int((width_um - 2 * margin - SPOT_SPACING_UM / 2) // SPOT_SPACING_UM) + 1
    x0 = (width_um - ((n_x - 1) * SPOT_SPACING_UM + SPOT_SPACING_UM / 2)) / 2.0
    y0 = (height_um - (n_rows - 1) * pitch_y) / 2.0
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_x), indexing="ij")
    array_col = (2 * cols + rows % 2).ravel()
    array_row = rows.ravel()
    x_um = x0 + array_col * SPOT_SPACING_UM / 2.0
    y_um = y0 + array_row * pitch_y
    h, w = slide.tissue.shape
    yi = np.clip((y_um / mpp).astype(np.int64), 0, h - 1)
    xi = np.clip((x_um / mpp).astype(np.int64), 0, w - 1)
    on = slide.tissue[yi, xi]
    if not on.any():
        raise RuntimeError("no spot centre fell on tissue; enlarge width_um/height_um")
    xy_um = np.stack([x_um[on], y_um[on]], axis=1)
    return {
        "array_row": array_row[on],
        "array_col": array_col[on],
        "xy_um": xy_um,
        "xy_px": xy_um / mpp,
    }


def spot_features(slide: Slide, xy_um: np.ndarray) -> np.ndarray:
    """Standardised FEATURES per spot, plus the spot's tissue fraction as a last column.

    Args:
        slide: The rendered slide (its coarse maps).
        xy_um: Spot centres (x, y) in µm.

    Returns:
        Spots × (FEATURES + 1), the features clipped to ±4.
    """
    raw, tissue = _raw_spot_features(slide, xy_um)
    z = (raw - np.asarray(_FEATURE_CENTRE)) / np.asarray(_FEATURE_SCALE)
    z = np.clip(z, -4.0, 4.0)
    return np.concatenate([z, tissue[:, None]], axis=1)


def _disk_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of the pixels within ``radius`` of the origin."""
    r = math.ceil(radius)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dy**2 + dx**2 <= radius**2
    return dy[inside], dx[inside]


def _raw_spot_features(slide: Slide, xy_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FEATURES per spot from the maps of what was drawn (spot disk and 112 µm context).

    Returns:
        The raw features (spots x FEATURES) and each spot's tissue fraction.
    """
    cu = slide.coarse_um
    m = slide.maps
    hc, wc = m["tissue"].shape
    cy = np.rint(xy_um[:, 1] / cu - 0.5).astype(np.int64)
    cx = np.rint(xy_um[:, 0] / cu - 0.5).astype(np.int64)

    def mean(name: str, radius_um: float) -> np.ndarray:
        dy, dx = _disk_offsets(radius_um / cu)
        yy = np.clip(cy[:, None] + dy[None], 0, hc - 1)
        xx = np.clip(cx[:, None] + dx[None], 0, wc - 1)
        return m[name][yy, xx].mean(axis=1)

    r_spot = SPOT_DIAMETER_UM / 2.0
    r_ctx = CONTEXT_DIAMETER_UM / 2.0
    px_area = cu * cu
    tissue = np.maximum(mean("tissue", r_spot), 0.05)
    n_t = mean("n_tumour", r_spot)
    n_s = mean("n_stroma", r_spot)
    n_l = mean("n_lymphocyte", r_spot)
    n_all = n_t + n_s + n_l
    density = n_all / (tissue * px_area) * 1000.0  # nuclei per 1000 µm² of tissue
    area = mean("nucleus_area", r_spot) / np.maximum(n_all, 1e-3)
    area = np.where(n_all > 1e-3, area, _FEATURE_CENTRE[4])
    ctx_tissue = np.maximum(mean("tissue", r_ctx), 0.05)
    ctx_n = mean("n_tumour", r_ctx) + mean("n_stroma", r_ctx) + mean("n_lymphocyte", r_ctx)
    raw = np.stack(
        [
            np.log1p(density),
            n_t / (n_all + 0.05),
            n_l / (n_all + 0.05),
            mean("stroma", r_spot) / tissue,
            area,
            mean("eosin", r_spot) / tissue,
            mean("lumen", r_spot) / tissue,
            mean("tumour", r_ctx) / ctx_tissue,
            mean("n_lymphocyte", r_ctx) / (ctx_n + 0.05),
        ],
        axis=1,
    )
    return raw, tissue


def simulate_counts(
    rng: np.random.Generator,
    genes: dict[str, Any],
    features: np.ndarray,
    patient_effect: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Negative-binomial spot counts and slide-level bulk counts.

    Args:
        rng: The slide's expression stream.
        genes: The gene model (:func:`histofuse.demo.genes.gene_model`).
        features: :func:`spot_features` of the slide's spots.
        patient_effect: The patient's log-fold change per gene.

    Returns:
        Spot counts (spots × genes, int32) and bulk counts (genes, int64).
    """
    z, tissue = features[:, :-1], features[:, -1]
    n_spots = z.shape[0]
    n_genes = genes["base"].size
    batch = rng.normal(0.0, 0.1, n_genes) + rng.normal(0.0, 0.15)
    library = rng.normal(0.0, 0.25, n_spots) + 0.2 * z[:, 0] + np.log(tissue)
    log_mu = (
        genes["base"][None]
        + z @ genes["loadings"].T
        + (batch + patient_effect)[None]
        + library[:, None]
    )
    mu = np.exp(np.clip(log_mu, -12.0, 9.0))
    shape = genes["shape"][None]
    lam = rng.gamma(np.broadcast_to(shape, mu.shape), mu / shape)
    counts = rng.poisson(lam).astype(np.int32)
    # Bulk: all tissue; spots (55 µm) sample ~27 % of their hexagonal cell (100 µm pitch).
    cell_um2 = SPOT_SPACING_UM**2 * math.sqrt(3.0) / 2.0
    spot_um2 = math.pi * (SPOT_DIAMETER_UM / 2.0) ** 2
    expected = counts.sum(axis=0) * (cell_um2 / spot_um2) * np.exp(rng.normal(0.0, 0.05, n_genes))
    bulk = rng.poisson(expected).astype(np.int64)
    return counts, bulk


def write_h5ad(
    path: Path, counts: np.ndarray, spots: dict[str, Any], gene_names: list[str], mpp: float
) -> None:
    """Writes a Visium-like AnnData file: CSR int32 counts, spots in level-0 pixels (x, y).

    Args:
        path: The ``.h5ad`` file, replaced atomically.
        counts: Spot counts (spots × genes).
        spots: :func:`spot_grid` of the slide.
        gene_names: The variable names.
        mpp: Level-0 µm per pixel (stored in ``uns["spatial_meta"]``).
    """
    barcodes = _barcodes(spots["array_row"], spots["array_col"])
    obs = pd.DataFrame(
        {
            "array_row": spots["array_row"].astype(np.int64),
            "array_col": spots["array_col"].astype(np.int64),
            "in_tissue": np.ones(len(barcodes), np.int64),
        },
        index=pd.Index(barcodes, name="barcode"),
    )
    var = pd.DataFrame(index=pd.Index(gene_names, name="gene"))
    adata = ad.AnnData(X=sparse.csr_matrix(counts, dtype=np.int32), obs=obs, var=var)
    adata.obsm["spatial"] = np.asarray(spots["xy_px"], dtype=np.float64)
    adata.uns["spatial_meta"] = {
        "spot_diameter_um": SPOT_DIAMETER_UM,
        "spot_spacing_um": SPOT_SPACING_UM,
        "mpp": float(mpp),
    }
    with atomic_path(path) as tmp:
        adata.write_h5ad(tmp)


def _barcodes(rows: np.ndarray, cols: np.ndarray) -> list[str]:
    """Visium-like barcodes derived from the array position (as on a real capture area)."""
    seen: set[str] = set()
    out = []
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        salt = 0
        while True:
            digest = hashlib.blake2b(f"{r}:{c}:{salt}".encode(), digest_size=4).digest()
            bits = int.from_bytes(digest, "big")
            bc = "".join("ACGT"[(bits >> (2 * i)) & 3] for i in range(16)) + "-1"
            if bc not in seen:
                break
            salt += 1
        seen.add(bc)
        out.append(bc)
    return out
