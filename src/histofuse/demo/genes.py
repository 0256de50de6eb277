"""The demo's gene model: names, baseline means, loadings on the image features, dispersions.

The first genes are real marker and housekeeping symbols, each driven by an expression program
(epithelial, fibroblast, T cell, ...) that loads on what is drawn in the spot; the rest are
invented symbols that are strongly, weakly or not at all structured.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Feature order of the expression model; see histofuse.demo.spots.spot_features.
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
_INVENTED_MEANS = (0.05, 10.0)

# Patterns of invented symbols, each drawing its numbers from the generator in this order.
_SYMBOLS = (
    lambda rng, n: f"ZNF{n}",
    lambda rng, n: f"C{int(rng.integers(1, 23))}orf{int(rng.integers(1, 200))}",
    lambda rng, n: f"LINC{int(rng.integers(1, 2800)):05d}",
    lambda rng, n: f"SLC{int(rng.integers(1, 50))}A{int(rng.integers(1, 15))}",
    lambda rng, n: f"TMEM{n}",
    lambda rng, n: f"FAM{int(rng.integers(3, 240))}{'ABC'[int(rng.integers(0, 3))]}",
    lambda rng, n: f"CCDC{int(rng.integers(1, 200))}",
    lambda rng, n: f"KIAA{int(rng.integers(100, 2100)):04d}",
)


def gene_model(seed: int, n_genes: int) -> dict[str, Any]:
    """Draws the cohort's genes.

    Args:
        seed: The cohort's seed; each gene has its own random stream.
        n_genes: Number of genes.

    Returns:
        ``names`` (list), ``base`` (log baseline means), ``loadings`` (genes × FEATURES) and
        ``shape`` (negative-binomial shape parameters).
    """
    named = _named_genes()
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
            (lo, hi), shape[g] = _program_gene(rng, prog, loadings[g])
        else:
            name = _invent_symbol(name_rng, taken, g)
            (lo, hi), shape[g] = _invented_gene(rng, loadings[g])
        taken.add(name)
        names.append(name)
        base[g] = rng.uniform(math.log(lo), math.log(hi))
    return {"names": names, "base": base, "loadings": loadings, "shape": shape}


def _named_genes() -> list[tuple[str, str]]:
    """The real symbols and their programs, round-robin so a short list spans every program."""
    by_program = [[(g, prog) for g in genes.split()] for prog, genes in _PROGRAMS.items()]
    longest = max(len(genes) for genes in by_program)
    return [genes[i] for i in range(longest) for genes in by_program if i < len(genes)]


def _program_gene(
    rng: np.random.Generator, prog: str, loadings: np.ndarray
) -> tuple[tuple[float, float], float]:
    """Fills a real gene's ``loadings`` from its program; returns its mean range and NB shape."""
    for k, w in _PROGRAM_LOADINGS[prog].items():
        loadings[k] = w * rng.uniform(0.45, 0.9)
    loadings += rng.normal(0.0, 0.05, len(FEATURES))
    if prog in ("housekeeping", "ribosomal"):
        shape = rng.uniform(8.0, 30.0)
    else:
        shape = math.exp(rng.uniform(math.log(1.5), math.log(15.0)))
    return _PROGRAM_MEANS.get(prog, _DEFAULT_MEANS), shape


def _invented_gene(
    rng: np.random.Generator, loadings: np.ndarray
) -> tuple[tuple[float, float], float]:
    """Fills an invented gene's ``loadings``; returns its mean range and NB shape."""
    kind = rng.uniform()
    if kind < 0.3:  # strongly structured
        for k in rng.choice(len(FEATURES), size=2, replace=False):
            loadings[k] = rng.normal(0.0, 0.7)
    elif kind < 0.7:  # weakly structured
        loadings[:] = rng.normal(0.0, 0.2, len(FEATURES))
    # else: pure noise, zero loadings
    return _INVENTED_MEANS, math.exp(rng.uniform(math.log(1.0), math.log(20.0)))


def _invent_symbol(rng: np.random.Generator, taken: set[str], index: int) -> str:
    """A realistic-looking, unused gene symbol (ZNF512, C7orf31, LINC01234, SLC25A3, ...).

    Falls back to ``LOC{100000 + index}`` once the patterns run out (about 12,000 names).
    """
    for _ in range(100):
        n = int(rng.integers(1, 900))
        name = _SYMBOLS[int(rng.integers(0, 8))](rng, n)
        if name not in taken:
            return name
    return f"LOC{100000 + index}"
