"""A deterministic synthetic spatial-transcriptomics study for demos and end-to-end tests.

:func:`write_demo_cohort` writes a small cohort that looks, to the pipeline, like a real one:
pyramidal tiled-JPEG TIFF slides with H&E-like tissue, Visium-like spot counts in ``.h5ad`` files,
slide-level bulk expression, and a sample sheet. Expression is generated from what is drawn in each
spot's neighbourhood (nuclear density and size, tissue-region make-up, eosin, gland lumens) plus
batch effects and negative-binomial noise, so an encoder that captures the tissue better predicts
better.

Only the standard library is imported at module level: Snakefiles import
:func:`demo_sample_ids`, and parsing them must stay fast.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

GENERATOR_VERSION = "histofuse.demo/1"
SPOT_DIAMETER_UM = 55.0
SPOT_SPACING_UM = 100.0
CONTEXT_DIAMETER_UM = 112.0
TILE_SIZE = 256
JPEG_QUALITY = 90
MIN_SIZE_UM = 400.0
MAX_LEVEL0_PIXELS = 200_000_000
_COARSE_UM = 4.0  # nominal µm per pixel of the latent fields
_BACKGROUND = 241.0  # nominal brightness of glass

# Feature order of the expression model; see _spot_features.
FEATURES = (
    "nuclear_density",
    "tumour_nuclei",
    "lymphocyte_nuclei",
    "stroma",
    "nucleus_area",
    "eosin",
    "lumen",
    "context_tumour",
    "context_lymphocyte",
)

# Real gene symbols with the expression program that drives them.
_PROGRAMS: dict[str, str] = {
    "housekeeping": "ACTB GAPDH B2M EEF1A1 TPT1 FTL FTH1 MALAT1 TMSB4X HSP90AB1 PPIA UBC YWHAZ",
    "ribosomal": "RPLP0 RPS18 RPL13A RPS27A RPL3",
    "epithelial": "EPCAM KRT8 KRT18 KRT19 CDH1 CEACAM5 CLDN4 ELF3 TACSTD2 KRT20",
    "secretory": "MUC1 TFF3 AGR2 SPINK1 PIGR LCN2",
    "proliferation": "MKI67 TOP2A CCNB1 BIRC5 PCNA MCM2 CDK1 UBE2C",
    "fibroblast": "COL1A1 COL1A2 COL3A1 DCN LUM FN1 SPARC POSTN FAP PDGFRB VIM",
    "smooth_muscle": "ACTA2 TAGLN MYH11 DES",
    "t_cell": "PTPRC CD3E CD3D CD2 CD8A CD4 IL7R CCL5 GZMB NKG7",
    "b_cell": "MS4A1 CD79A CD19 IGHM IGKC JCHAIN MZB1 CXCL13",
    "myeloid": "CD68 CD163 LYZ C1QA C1QB CSF1R CD74 HLA-DRA",
    "endothelial": "PECAM1 VWF CDH5 PLVAP",
    "hypoxia": "VEGFA CA9 SLC2A1 LDHA NDRG1",
}
# Loadings of each program on FEATURES (missing = 0), scaled per gene by U(0.45, 0.9).
_PROGRAM_LOADINGS: dict[str, dict[int, float]] = {
    "housekeeping": {0: 0.15},
    "ribosomal": {0: 0.2, 1: 0.15},
    "epithelial": {1: 1.0, 7: 0.35, 3: -0.25},
    "secretory": {1: 0.6, 6: 0.8},
    "proliferation": {1: 0.7, 0: 0.5, 4: 0.45},
    "fibroblast": {3: 0.9, 5: 0.5, 1: -0.3},
    "smooth_muscle": {3: 0.6, 5: 0.7},
    "t_cell": {2: 1.0, 8: 0.4},
    "b_cell": {2: 0.8, 8: 0.7},
    "myeloid": {8: 0.5, 3: 0.3, 2: 0.3},
    "endothelial": {3: 0.5, 0: -0.2},
    "hypoxia": {0: 0.7, 1: 0.4, 6: -0.4},
}
# Range of the per-spot baseline mean counts (log-uniform) by program.
_PROGRAM_MEANS: dict[str, tuple[float, float]] = {
    "housekeeping": (15.0, 80.0),
    "ribosomal": (10.0, 60.0),
    "b_cell": (0.3, 12.0),
    "proliferation": (0.2, 2.0),
}
_DEFAULT_MEANS = (0.4, 8.0)
# Fixed centring/scaling of the raw spot features (calibrated on default cohorts) so that every
# slide uses the same scale and slide-level differences in composition survive into the counts.
_FEATURE_CENTRE = (2.1, 0.38, 0.13, 0.46, 55.0, 0.4, 0.03, 0.43, 0.16)
_FEATURE_SCALE = (0.73, 0.35, 0.27, 0.42, 24.0, 0.107, 0.1, 0.42, 0.26)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_float(name: str, value: object, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return value


def demo_sample_ids(n_patients: int = 3, slides_per_patient: int = 2) -> list[str]:
    """Names the samples of a demo cohort without generating anything.

    Args:
        n_patients: Number of patients (``P1``, ``P2``, ...).
        slides_per_patient: Number of slides per patient (``S1``, ``S2``, ...).

    Returns:
        Sample ids ``P{patient}-S{slide}``, patient-major: ``['P1-S1', 'P1-S2', 'P2-S1', ...]``.

    Raises:
        ValueError: If an argument is not a positive integer; the message names it.
    """
    n_patients = _check_int("n_patients", n_patients, 1)
    slides_per_patient = _check_int("slides_per_patient", slides_per_patient, 1)
    return [
        f"P{p}-S{s}" for p in range(1, n_patients + 1) for s in range(1, slides_per_patient + 1)
    ]


def write_demo_cohort(
    out: str | Path,
    seed: int = 0,
    n_patients: int = 3,
    slides_per_patient: int = 2,
    n_genes: int = 120,
    mpp: float = 0.5,
    width_um: float = 2000.0,
    height_um: float = 1500.0,
) -> Path:
    """Writes a synthetic spatial-transcriptomics cohort.

    Files under ``out``: ``slides/{sample_id}.tiff`` (pyramidal tiled-JPEG TIFF, level 0 at
    ``mpp`` µm/px), ``st/{sample_id}.h5ad`` (Visium-like spot counts), ``bulk.csv`` (slide-level
    counts), ``samples.tsv`` (the sample sheet, paths relative to ``out``) and, last, as the
    completion marker, ``cohort.json`` (the parameters). The same arguments give byte-identical
    slides and identical counts; each slide is drawn from its own random stream.

    Args:
        out: Output folder, created if missing; existing demo files in it are overwritten.
        seed: Non-negative random seed.
        n_patients: Number of patients.
        slides_per_patient: Slides (and Visium sections) per patient.
        n_genes: Number of genes; the first ones are real marker and housekeeping symbols.
        mpp: Level-0 resolution in µm per pixel.
        width_um: Slide width in µm.
        height_um: Slide height in µm.

    Returns:
        The path of ``out/samples.tsv``.

    Raises:
        ValueError: If an argument is out of range; the message names it.
    """
    seed = _check_int("seed", seed, 0)
    sample_ids = demo_sample_ids(n_patients, slides_per_patient)
    n_genes = _check_int("n_genes", n_genes, 1)
    mpp = _check_float("mpp", mpp, 0.0)
    if mpp <= 0.0 or mpp > 4.0:
        raise ValueError(f"mpp must be > 0 and <= 4 µm/px, got {mpp!r}")
    width_um = _check_float("width_um", width_um, MIN_SIZE_UM)
    height_um = _check_float("height_um", height_um, MIN_SIZE_UM)
    width_px, height_px = round(width_um / mpp), round(height_um / mpp)
    if width_px * height_px > MAX_LEVEL0_PIXELS:
        raise ValueError(
            f"mpp/width_um/height_um: level 0 would be {width_px}x{height_px} px, more than "
            f"{MAX_LEVEL0_PIXELS:,}; raise mpp or shrink width_um/height_um"
        )

    import numpy as np

    out = Path(out)
    for sub in ("slides", "st"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    marker = out / "cohort.json"
    marker.unlink(missing_ok=True)

    genes = _gene_model(seed, n_genes)
    patient_rngs = [np.random.default_rng([seed, 2, p]) for p in range(n_patients)]
    patients = [
        {
            "tumour_bias": float(r.normal(0.0, 0.6)),
            "lymph_bias": float(r.normal(0.0, 0.4)),
            "gene_effect": r.normal(0.0, 0.15, n_genes),
        }
        for r in patient_rngs
    ]

    bulk: dict[str, np.ndarray] = {}
    rows: list[dict[str, str]] = []
    n_spots: dict[str, int] = {}
    for index, sample_id in enumerate(sample_ids):
        patient = index // slides_per_patient
        slide_rng = np.random.default_rng([seed, 1, index])
        slide = _render_slide(
            slide_rng,
            height_px,
            width_px,
            mpp,
            tumour_bias=patients[patient]["tumour_bias"],
            lymph_bias=patients[patient]["lymph_bias"],
        )
        slide_path = out / "slides" / f"{sample_id}.tiff"
        _write_pyramid(slide.rgb, slide_path, mpp)
        spots = _spot_grid(slide, width_um, height_um, mpp)
        features = _spot_features(slide, spots["xy_um"])
        expr_rng = np.random.default_rng([seed, 3, index])
        counts, bulk_counts = _simulate_counts(
            expr_rng, genes, features, patients[patient]["gene_effect"]
        )
        _write_h5ad(out / "st" / f"{sample_id}.h5ad", counts, spots, genes["names"], mpp)
        bulk[sample_id] = bulk_counts
        n_spots[sample_id] = int(counts.shape[0])
        rows.append(
            {
                "sample_id": sample_id,
                "patient_id": f"P{patient + 1}",
                "slide": f"slides/{sample_id}.tiff",
                "expression": f"st/{sample_id}.h5ad",
                "mpp": repr(mpp),
            }
        )

    with _atomic(out / "bulk.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample_id", *genes["names"]])
        for sample_id in sample_ids:
            writer.writerow([sample_id, *(str(int(v)) for v in bulk[sample_id])])
    sheet = out / "samples.tsv"
    columns = ["sample_id", "patient_id", "slide", "expression", "mpp"]
    with _atomic(sheet) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "generator": GENERATOR_VERSION,
        "seed": seed,
        "n_patients": n_patients,
        "slides_per_patient": slides_per_patient,
        "n_samples": len(sample_ids),
        "n_genes": n_genes,
        "mpp": mpp,
        "width_um": width_um,
        "height_um": height_um,
        "width_px": width_px,
        "height_px": height_px,
        "spot_diameter_um": SPOT_DIAMETER_UM,
        "spot_spacing_um": SPOT_SPACING_UM,
        "features": list(FEATURES),
        "n_spots": n_spots,
        "sample_ids": sample_ids,
    }
    with _atomic(marker) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=2) + "\n")
    return sheet


class _atomic:
    """Context manager yielding a temporary path that replaces ``path`` on success."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Genes


def _gene_model(seed: int, n_genes: int) -> dict[str, Any]:
    """Gene names, baseline means, loadings on FEATURES and NB dispersions."""
    import numpy as np

    # Round-robin over the programs, so that a short gene list still spans them all.
    by_program = [[(g, prog) for g in genes.split()] for prog, genes in _PROGRAMS.items()]
    longest = max(len(genes) for genes in by_program)
    named = [genes[i] for i in range(longest) for genes in by_program if i < len(genes)]
    names: list[str] = []
    base = np.empty(n_genes)
    loadings = np.zeros((n_genes, len(FEATURES)))
    shape = np.empty(n_genes)
    taken = {g for g, _ in named}
    name_rng = np.random.default_rng([seed, 5])
    for g in range(n_genes):
        rng = np.random.default_rng([seed, 4, g])
        if g < len(named):
            name, prog = named[g]
            for k, w in _PROGRAM_LOADINGS[prog].items():
                loadings[g, k] = w * rng.uniform(0.45, 0.9)
            loadings[g] += rng.normal(0.0, 0.05, len(FEATURES))
            lo, hi = _PROGRAM_MEANS.get(prog, _DEFAULT_MEANS)
            shape[g] = (
                rng.uniform(8.0, 30.0)
                if prog in ("housekeeping", "ribosomal")
                else (math.exp(rng.uniform(math.log(1.5), math.log(15.0))))
            )
        else:
            name = _invent_symbol(name_rng, taken, g)
            kind = rng.uniform()
            if kind < 0.3:  # strongly structured
                for k in rng.choice(len(FEATURES), size=2, replace=False):
                    loadings[g, k] = rng.normal(0.0, 0.7)
            elif kind < 0.7:  # weakly structured
                loadings[g] = rng.normal(0.0, 0.2, len(FEATURES))
            # else: pure noise, zero loadings
            lo, hi = 0.05, 10.0
            shape[g] = math.exp(rng.uniform(math.log(1.0), math.log(20.0)))
        taken.add(name)
        names.append(name)
        base[g] = rng.uniform(math.log(lo), math.log(hi))
    return {"names": names, "base": base, "loadings": loadings, "shape": shape}


def _invent_symbol(rng: np.random.Generator, taken: set[str], index: int) -> str:
    """A realistic-looking, unused gene symbol (ZNF512, C7orf31, LINC01234, SLC25A3, ...).

    Falls back to ``LOC{100000 + index}`` once the patterns run out (about 12,000 names).
    """
    for _ in range(100):
        n = int(rng.integers(1, 900))
        kind = int(rng.integers(0, 8))
        if kind == 0:
            name = f"ZNF{n}"
        elif kind == 1:
            name = f"C{int(rng.integers(1, 23))}orf{int(rng.integers(1, 200))}"
        elif kind == 2:
            name = f"LINC{int(rng.integers(1, 2800)):05d}"
        elif kind == 3:
            name = f"SLC{int(rng.integers(1, 50))}A{int(rng.integers(1, 15))}"
        elif kind == 4:
            name = f"TMEM{n}"
        elif kind == 5:
            name = f"FAM{int(rng.integers(3, 240))}{'ABC'[int(rng.integers(0, 3))]}"
        elif kind == 6:
            name = f"CCDC{int(rng.integers(1, 200))}"
        else:
            name = f"KIAA{int(rng.integers(100, 2100)):04d}"
        if name not in taken:
            return name
    return f"LOC{100000 + index}"


# --------------------------------------------------------------------------------------------
# Slide rendering


@dataclass
class _Slide:
    """A rendered slide and the latent maps that expression is computed from."""

    rgb: np.ndarray  # (H, W, 3) uint8, level 0
    tissue: np.ndarray  # (H, W) bool, level 0
    coarse_um: float  # µm per coarse pixel
    maps: dict[str, np.ndarray]  # coarse (hc, wc) maps


def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, normalised to mean 0 and standard deviation 1."""
    import numpy as np
    from skimage.filters import gaussian

    field = gaussian(rng.standard_normal(shape).astype(np.float32), sigma=max(sigma, 0.5))
    field -= field.mean()
    sd = float(field.std())
    return field / sd if sd > 0 else field


def _tissue_field(rng: np.random.Generator, hc: int, wc: int, cu: float) -> np.ndarray:
    """Signed coarse field, > 0 on tissue: one or two irregular blobs covering ~50-70 %."""
    import numpy as np
    from skimage.measure import label

    h_um, w_um = hc * cu, wc * cu
    y, x = np.mgrid[0:hc, 0:wc].astype(np.float32)
    y = (y + 0.5) * cu
    x = (x + 0.5) * cu
    two = rng.uniform() < 0.45
    centres = [(0.29, 0.5), (0.71, 0.5)] if two else [(0.5, 0.5)]
    field = np.full((hc, wc), -10.0, np.float32)
    for fx, fy in centres:
        cx = (fx + rng.uniform(-0.04, 0.04)) * w_um
        cy = (fy + rng.uniform(-0.06, 0.06)) * h_um
        ax = (0.25 if two else 0.42) * w_um * rng.uniform(0.9, 1.1)
        ay = 0.42 * h_um * rng.uniform(0.9, 1.1)
        t = rng.uniform(-0.5, 0.5)
        u = (x - cx) * math.cos(t) + (y - cy) * math.sin(t)
        v = -(x - cx) * math.sin(t) + (y - cy) * math.cos(t)
        field = np.maximum(field, 1.0 - np.sqrt((u / ax) ** 2 + (v / ay) ** 2))
    field += 0.22 * _smooth(rng, (hc, wc), 150.0 / cu)
    field += 0.07 * _smooth(rng, (hc, wc), 35.0 / cu)
    field += 0.025 * _smooth(rng, (hc, wc), 8.0 / cu)
    # Sections rarely touch the edge of the scanned area: push tissue away from the border.
    border = np.minimum(np.minimum(x, w_um - x), np.minimum(y, h_um - y))
    field -= 0.8 * np.clip(1.0 - border / 150.0, 0.0, 1.0)
    coverage = rng.uniform(0.5, 0.62)
    field -= np.float32(np.quantile(field, 1.0 - coverage))
    mask = field > 0
    # Keep the big pieces, drop crumbs, fill small holes (keep tears).
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
    eps = np.float32(0.004)
    return np.where(clean, np.maximum(field, eps), np.minimum(field, -eps)).astype(np.float32)


def _stamp_bank(
    rng: np.random.Generator,
    kind: str,
    mpp: float,
    n: int,
    angles: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Soft nucleus stamps (haematoxylin concentration) and their areas in µm²."""
    import numpy as np
    from skimage.draw import ellipse
    from skimage.filters import gaussian

    max_axis_um = {"tumour": 8.0, "stroma": 8.5, "lymphocyte": 3.6, "rbc": 3.8}[kind]
    size = math.ceil(2.0 * max_axis_um / mpp) + 5
    size += 1 - size % 2
    c = (size - 1) / 2.0
    bank = np.zeros((n, size, size), np.float32)
    areas = np.zeros(n)
    for i in range(n):
        m = np.zeros((size, size), np.float32)
        if kind == "tumour":
            a = rng.uniform(4.5, 7.2)
            b = a * rng.uniform(0.55, 0.9)
            strength = rng.uniform(0.6, 1.0)
            chromatin = 0.4
        elif kind == "stroma":
            a = rng.uniform(5.0, 8.0)
            b = rng.uniform(1.1, 1.9)
            strength = rng.uniform(1.0, 1.45)
            chromatin = 0.2
        elif kind == "lymphocyte":
            a = rng.uniform(2.5, 3.4)
            b = a * rng.uniform(0.85, 1.0)
            strength = rng.uniform(1.5, 1.95)
            chromatin = 0.15
        else:  # red blood cell (a haemoglobin "stain"), paler in the middle
            a = rng.uniform(3.2, 3.8)
            b = a * rng.uniform(0.75, 1.0)
            strength = rng.uniform(0.7, 0.95)
            chromatin = 0.05
        theta = float(angles[i]) if angles is not None else rng.uniform(-math.pi, math.pi)
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
        areas[i] = m.sum() * mpp * mpp
        tex = gaussian(rng.standard_normal((size, size)).astype(np.float32), 0.6 / mpp)
        tex /= max(float(tex.std()), 1e-6)
        body = m * (1.0 + chromatin * tex)
        if kind == "rbc":
            body = body * (1.0 - 0.35 * np.clip((gaussian(m, 1.0 / mpp) - 0.6) / 0.4, 0, 1))
        if kind == "tumour":  # vesicular chromatin: pale centre, dark rim, a nucleolus or two
            inner = gaussian(m, 1.2 / mpp)
            body = body * (1.0 - 0.5 * np.clip((inner - 0.55) / 0.4, 0.0, 1.0))
            for _ in range(int(rng.integers(1, 3))):
                r = rng.uniform(0.0, 0.45) * b / mpp
                phi = rng.uniform(-math.pi, math.pi)
                rr, cc = ellipse(
                    c + r * math.sin(phi), c + r * math.cos(phi), 0.6 / mpp, 0.6 / mpp, m.shape
                )
                body[rr, cc] += 0.6 * m[rr, cc]
        bank[i] = np.clip(gaussian(body, 0.45 / mpp), 0.0, None) * strength
    return bank, areas


def _stamp(
    canvas: np.ndarray, bank: np.ndarray, ys: np.ndarray, xs: np.ndarray, ids: np.ndarray, pad: int
) -> None:
    """Draws ``bank[ids]`` centred at (ys, xs) into the padded canvas, keeping the maximum."""
    import numpy as np

    half = bank.shape[1] // 2
    for y, x, k in zip(
        (ys + pad - half).tolist(), (xs + pad - half).tolist(), ids.tolist(), strict=True
    ):
        view = canvas[y : y + bank.shape[1], x : x + bank.shape[2]]
        np.maximum(view, bank[k], out=view)


def _upsample(a: np.ndarray, f: int, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a coarse map by ``f`` (pixel centres aligned), cropped.

    Separable and float32, about twice as fast as ``skimage.transform.resize`` here.
    """
    import numpy as np

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


@dataclass
class _Grid:
    """Level-0 size and the coarse grid of the latent fields (``f`` level-0 px per cell)."""

    height: int
    width: int
    f: int
    cu: float  # µm per coarse pixel
    hc: int
    wc: int

    def up(self, a: np.ndarray) -> np.ndarray:
        """A coarse map, bilinearly upsampled to level 0."""
        return _upsample(a, self.f, self.height, self.width)

    def down(self, a: np.ndarray) -> np.ndarray:
        """A level-0 map, block-averaged to the coarse grid."""
        import numpy as np
        from skimage.transform import downscale_local_mean

        pad = ((0, self.hc * self.f - self.height), (0, self.wc * self.f - self.width))
        return downscale_local_mean(np.pad(a, pad, mode="edge"), (self.f, self.f)).astype(
            np.float32
        )


def _render_slide(
    rng: np.random.Generator,
    height: int,
    width: int,
    mpp: float,
    tumour_bias: float,
    lymph_bias: float,
) -> _Slide:
    """Draws an H&E-like slide and the coarse maps of what was drawn.

    Latent smooth random fields on a ~4 µm grid decide the tissue outline and the local mix of
    tumour, stroma and lymphocyte regions; glands, vessels and nuclei are placed from them and
    stamped at level 0; haematoxylin and eosin concentrations are then mixed into RGB with
    Beer-Lambert stain vectors.
    """
    import numpy as np

    f = max(1, round(_COARSE_UM / mpp))
    grid = _Grid(height, width, f, f * mpp, -(-height // f), -(-width // f))
    fields = _latent_fields(rng, grid, tumour_bias, lymph_bias)
    tissue = grid.up(fields["tissue"]) > 0
    tissue_c = grid.down(tissue.astype(np.float32))
    lumen, glands, vessels = _draw_lumens(rng, grid, mpp, fields, tissue, tissue_c)
    lumen_c = grid.down(lumen)
    yi, xi, kinds, angle = _place_nuclei(
        rng, grid, mpp, fields, tissue, tissue_c, lumen, lumen_c, glands, vessels
    )
    nuclei, nuc_area, rbc = _draw_cells(rng, grid, mpp, yi, xi, kinds, angle, vessels)
    rgb, eosin = _paint(rng, grid, mpp, fields, tissue, lumen, nuclei, rbc)

    def coarse(idx: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(idx, weights=weights, minlength=grid.hc * grid.wc).reshape(
            grid.hc, grid.wc
        )

    cidx = (yi // f) * grid.wc + xi // f
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
    return _Slide(rgb=rgb, tissue=tissue, coarse_um=grid.cu, maps=maps)


def _latent_fields(
    rng: np.random.Generator, grid: _Grid, tumour_bias: float, lymph_bias: float
) -> dict[str, np.ndarray]:
    """Coarse latent fields: tissue outline, region proportions, fibre direction, stains."""
    import numpy as np
    from skimage.filters import gaussian

    hc, wc, cu = grid.hc, grid.wc, grid.cu
    tissue = _tissue_field(rng, hc, wc, cu)
    logit_t = 1.2 * _smooth(rng, (hc, wc), 100.0 / cu) + 0.3 + tumour_bias + rng.normal(0.0, 0.3)
    logit_s = 1.0 * _smooth(rng, (hc, wc), 150.0 / cu)
    logit_l = 1.5 * _smooth(rng, (hc, wc), 40.0 / cu) - 1.7 + lymph_bias
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
    psi += 40.0 * _smooth(rng, (hc, wc), 70.0 / cu) + 8.0 * _smooth(rng, (hc, wc), 15.0 / cu)
    gy, gx = np.gradient(psi)
    # draw.ellipse's rotation turns the row axis towards the column axis; along the fibres
    # (perpendicular to grad psi) the direction (row, col) is (gx, -gy).
    fibre_angle = np.arctan2(-gy, gx) % math.pi
    clefts = np.clip(0.6 * _smooth(rng, (hc, wc), 25.0 / cu) + 0.2, 0.0, 1.0)
    e_base = (0.55 * p_s + 0.42 * p_t + 0.22 * p_l) * (1.0 + 0.1 * _smooth(rng, (hc, wc), 5.0))
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


_Ellipse = tuple[float, float, float, float, float]  # centre row, col; radii (px); rotation


def _draw_lumens(
    rng: np.random.Generator,
    grid: _Grid,
    mpp: float,
    fields: dict[str, np.ndarray],
    tissue: np.ndarray,
    tissue_c: np.ndarray,
) -> tuple[np.ndarray, list[_Ellipse], list[_Ellipse]]:
    """Gland lumens in tumour regions and small blood vessels in stroma (level-0 map)."""
    import numpy as np
    from skimage.draw import ellipse
    from skimage.filters import gaussian

    f, wc = grid.f, grid.wc
    lumen = np.zeros((grid.height, grid.width), np.float32)
    glands: list[_Ellipse] = []
    vessels: list[_Ellipse] = []
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


def _place_nuclei(
    rng: np.random.Generator,
    grid: _Grid,
    mpp: float,
    fields: dict[str, np.ndarray],
    tissue: np.ndarray,
    tissue_c: np.ndarray,
    lumen: np.ndarray,
    lumen_c: np.ndarray,
    glands: list[_Ellipse],
    vessels: list[_Ellipse],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nucleus centres (level-0 rows, cols), kinds (0 tumour, 1 stroma, 2 lymphocyte), angles.

    A Poisson process on the coarse grid whose intensity and type mix follow the region
    proportions, plus epithelial nuclei lining the glands (long axis towards the lumen) and flat
    endothelial nuclei around the vessels (long axis along the wall).
    """
    import numpy as np

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


def _draw_cells(
    rng: np.random.Generator,
    grid: _Grid,
    mpp: float,
    yi: np.ndarray,
    xi: np.ndarray,
    kinds: np.ndarray,
    angle: np.ndarray,
    vessels: list[_Ellipse],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stamps nuclei (haematoxylin map, area of each in µm²) and red blood cells (map)."""
    import numpy as np

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
    # Red blood cells inside the vessels.
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
    crop = (slice(pad, pad + height), slice(pad, pad + width))
    return nuclei[crop], nuc_area, np.ascontiguousarray(rbc[crop])


def _paint(
    rng: np.random.Generator,
    grid: _Grid,
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
    import numpy as np
    from skimage.filters import gaussian

    height, width, hc, wc = grid.height, grid.width, grid.hc, grid.wc
    fine = _smooth(rng, (hc, wc), 1.2)
    phase = grid.up(fields["psi"] * np.float32(2 * math.pi / 11.0) + 1.3 * fine)
    bundle = np.sin(phase * np.float32(0.23))
    np.sin(phase, out=phase)
    cleft = phase
    cleft -= np.float32(0.6)
    np.clip(cleft, 0.0, 0.4, out=cleft)
    where = fields["p_s"] * fields["clefts"]
    cleft *= grid.up(where * np.clip(_smooth(rng, (hc, wc), 2.0) + 0.2, 0.0, 1.0) / 0.4)
    grain = gaussian(rng.standard_normal((height, width), dtype=np.float32), 0.7 / mpp)
    grain *= np.float32(1.0 / max(float(grain[::7, ::7].std()), 1e-6))
    # eosin = e_base * (1 - 0.6 cleft + 0.15 bundle) * (1 + 0.12 grain) * (1 - 0.75 lumen)
    #         * (1 - 0.4 min(nuclei, 1)), on tissue only
    eosin = grid.up(fields["e_base"])
    cleft *= np.float32(-0.6)
    cleft += np.float32(1.0)
    bundle *= np.float32(0.15)
    cleft += bundle
    eosin *= cleft
    del cleft, bundle
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
    # haem = (h_base * (1 + 0.25 grain) + nuclei) * (1 - 0.9 lumen), on tissue only
    haem = grid.up(fields["h_base"])
    grain *= np.float32(0.25)
    grain += np.float32(1.0)
    haem *= grain
    del grain
    haem += nuclei
    np.multiply(lumen, np.float32(-0.9), out=shade)
    shade += np.float32(1.0)
    haem *= shade
    haem[~tissue] = 0.0
    del shade

    # Per-slide stain vectors (Macenko's reference H&E, jittered) and glass brightness.
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
    return rgb, eosin


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
    import numpy as np

    a, b = a + offset, b + offset
    n = max(int(2 * math.pi * math.sqrt((a * a + b * b) / 2) / spacing), 3)
    phi = np.linspace(0, 2 * math.pi, n, endpoint=False) + rng.uniform(0, 1)
    p, q = a * np.cos(phi), b * np.sin(phi)  # along draw.ellipse's row / column radius
    dy = p * math.cos(theta) + q * math.sin(theta)
    dx = p * math.sin(theta) - q * math.cos(theta)
    return cy + dy, cx + dx, np.arctan2(dx, dy) % math.pi


def _write_pyramid(rgb: np.ndarray, path: Path, mpp: float) -> None:
    """Writes a tiled-JPEG pyramidal TIFF that OpenSlide reads as 'generic-tiff'.

    What OpenSlide 4 needs: every level tiled (a striped TIFF is refused), the reduced levels as
    further pages of the main IFD chain (with SubIFDs it sees level 0 only), and XResolution /
    YResolution with ResolutionUnit centimeter (or inch; none gives no ``openslide.mpp-x``).
    Tiles are JPEG (YCbCr 2x2, as tifffile writes RGB input) at quality 90; levels shrink by 4
    with area averaging.
    """
    import numpy as np
    import tifffile
    from skimage.transform import downscale_local_mean

    width = rgb.shape[1]
    levels = [rgb]
    while True:
        h, w = levels[-1].shape[:2]
        if min(h, w) < 4 or (len(levels) >= 3 and (min(h, w) < 64 or max(h, w) <= TILE_SIZE)):
            break  # at least two reduced levels, then down to about one tile
        hp, wp = -(-h // 4) * 4, -(-w // 4) * 4
        padded = np.pad(levels[-1], ((0, hp - h), (0, wp - w), (0, 0)), mode="edge")
        small = downscale_local_mean(padded, (4, 4, 1))
        levels.append(np.clip(np.rint(small), 0, 255).astype(np.uint8))
    bigtiff = rgb.nbytes > 2**31
    with _atomic(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
        for i, level in enumerate(levels):
            scale = level.shape[1] / width
            ppcm = 1e4 / mpp * scale
            tif.write(
                level,
                photometric="rgb",  # stored as JPEG YCbCr 2x2, as scanners do
                tile=(TILE_SIZE, TILE_SIZE),
                compression="jpeg",
                compressionargs={"level": JPEG_QUALITY},
                resolution=(ppcm, ppcm),
                resolutionunit="CENTIMETER",
                subfiletype=1 if i else 0,
                metadata=None,
                software="histofuse.demo",
            )


# --------------------------------------------------------------------------------------------
# Spots and expression


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


def _spot_grid(slide: _Slide, width_um: float, height_um: float, mpp: float) -> dict[str, Any]:
    """Visium-style hexagonal spots whose centre lies on tissue."""
    import numpy as np

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


def _disk_offsets(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Row and column offsets of the pixels within ``radius`` of the origin."""
    import numpy as np

    r = math.ceil(radius)
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = dy**2 + dx**2 <= radius**2
    return dy[inside], dx[inside]


def _raw_spot_features(slide: _Slide, xy_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FEATURES per spot from the maps of what was drawn (spot disk and 112 µm context).

    Returns:
        The raw features (spots x FEATURES) and each spot's tissue fraction.
    """
    import numpy as np

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


def _spot_features(slide: _Slide, xy_um: np.ndarray) -> np.ndarray:
    """Standardised FEATURES per spot, plus the spot's tissue fraction as a last column."""
    import numpy as np

    raw, tissue = _raw_spot_features(slide, xy_um)
    z = (raw - np.asarray(_FEATURE_CENTRE)) / np.asarray(_FEATURE_SCALE)
    z = np.clip(z, -4.0, 4.0)
    return np.concatenate([z, tissue[:, None]], axis=1)


def _simulate_counts(
    rng: np.random.Generator,
    genes: dict[str, Any],
    features: np.ndarray,
    patient_effect: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Negative-binomial spot counts and slide-level bulk counts."""
    import numpy as np

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


def _write_h5ad(
    path: Path, counts: np.ndarray, spots: dict[str, Any], gene_names: list[str], mpp: float
) -> None:
    """Writes a Visium-like AnnData file: CSR int32 counts, spots in level-0 pixels (x, y)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    from scipy import sparse

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
    with _atomic(path) as tmp:
        adata.write_h5ad(tmp)


# --------------------------------------------------------------------------------------------
# The cohort in the HEST-Bench task layout

HEST_BENCH_DIR = "hest-bench"


def demo_hest_bench_ids(n_patients: int = 3, slides_per_patient: int = 2) -> list[str]:
    """Samples of the demo's HEST-Bench task: the first slide of each patient.

    Raises:
        ValueError: If an argument is not a positive integer.
    """
    return [s for s in demo_sample_ids(n_patients, slides_per_patient) if s.endswith("-S1")]


def write_demo_hest_bench(
    cohort: str | Path,
    out: str | Path | None = None,
    samples: list[str] | None = None,
    patch_px: int = 224,
    patch_mpp: float = 0.5,
    n_genes: int = 50,
) -> Path:
    """Writes a demo cohort's samples as a HEST-Bench task folder.

    The layout is HEST-Bench's (``hest_protocol.md`` §3.1): ``patches/{id}.h5`` with ``img``
    (N, ``patch_px``, ``patch_px``, 3) uint8 patches centred on the spots, cut at ``patch_mpp``
    µm/px by the tile reader, ``barcode`` (N×1 bytes) and ``coords`` (N×2 level-0 px);
    ``adata/{id}.h5ad`` (the spot counts); ``splits/train_{i}.csv`` / ``test_{i}.csv``
    (``sample_id, patches_path, expr_path``; one patient per test fold); ``var_50genes.json``
    and ``mean_50genes.json`` (``{"genes": [...]}``: the most variable and the most expressed
    genes of log1p counts over all spots of the task, as HEST chose them).

    Args:
        cohort: A folder written by :func:`write_demo_cohort`.
        out: The task folder (default ``cohort/hest-bench``).
        samples: Sample ids (default :func:`demo_hest_bench_ids`); they must cover two patients.
        patch_px: Side of the stored patches in pixels (HEST: 224).
        patch_mpp: Their µm/px (HEST: 0.5).
        n_genes: Length of the gene lists (HEST: 50).

    Returns:
        The task folder.

    Raises:
        ValueError: If the cohort is missing, a sample is unknown or there are fewer than two
            patients.
    """
    import shutil

    import h5py
    import numpy as np
    import pandas as pd

    from histofuse.data.expression import read_counts, top_variable_genes
    from histofuse.samples import load_samples
    from histofuse.slides.reader import TileDataset
    from histofuse.slides.spec import TilingSpec
    from histofuse.slides.tiling import tile_spots

    cohort = Path(cohort)
    if not (cohort / "cohort.json").is_file():
        raise ValueError(f"cohort {cohort} is not a finished demo cohort (no cohort.json)")
    patch_px = _check_int("patch_px", patch_px, 8)
    patch_mpp = _check_float("patch_mpp", patch_mpp, 0.0)
    n_genes = _check_int("n_genes", n_genes, 1)
    meta = json.loads((cohort / "cohort.json").read_text())
    sheet = load_samples(cohort / "samples.tsv")
    ids = samples or demo_hest_bench_ids(meta["n_patients"], meta["slides_per_patient"])
    unknown = sorted(set(ids) - set(sheet.index))
    if unknown:
        raise ValueError(f"samples {unknown} are not in the cohort {cohort}")
    patients = sheet.loc[ids, "patient_id"]
    if patients.nunique() < 2:
        raise ValueError("a HEST-Bench task needs samples of at least two patients")
    out = Path(out) if out is not None else cohort / HEST_BENCH_DIR
    for sub in ("splits", "patches", "adata"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    spec = TilingSpec(patch_um=patch_px * patch_mpp, target_mpp=patch_mpp)
    logs = []
    for sid in ids:
        row = sheet.loc[sid]
        table, tmeta = tile_spots(row["slide"], row["expression"], spec)
        ds = TileDataset(table, tmeta)
        with _atomic(out / "patches" / f"{sid}.h5") as tmp, h5py.File(tmp, "w") as f:
            f["img"] = np.stack([ds[i] for i in range(len(ds))]).astype(np.uint8)
            f["barcode"] = np.array([b.encode() for b in table["barcode"]])[:, None]
            f["coords"] = table[["x", "y"]].to_numpy(dtype=np.float64)
        with _atomic(out / "adata" / f"{sid}.h5ad") as tmp:
            shutil.copyfile(row["expression"], tmp)
        logs.append(np.log1p(read_counts(row["expression"])))
    log_counts = pd.concat(logs, ignore_index=True)
    var_genes = top_variable_genes(log_counts, n_genes)
    mean = log_counts.mean(axis=0)
    mean_genes = sorted(mean.index, key=lambda g: (-mean[g], g))[:n_genes]
    for name, genes in (("var_50genes.json", var_genes), ("mean_50genes.json", mean_genes)):
        with _atomic(out / name) as tmp:
            Path(tmp).write_text(json.dumps({"genes": genes}, indent=1) + "\n")
    for i, patient in enumerate(sorted(set(patients))):
        for side, chosen in (("train", patients != patient), ("test", patients == patient)):
            lines = ["sample_id,patches_path,expr_path"]
            lines += [f"{s},patches/{s}.h5,adata/{s}.h5ad" for s in patients.index[chosen]]
            with _atomic(out / "splits" / f"{side}_{i}.csv") as tmp:
                Path(tmp).write_text("\n".join(lines) + "\n")
    return out
