"""Writes the demo cohort: slides, spot counts, the bulk table, the sample sheet and the marker.

Only the standard library is imported at module level (the package is imported by Snakefiles);
the drawing and expression modules are imported when a cohort is written.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histofuse.atomic import atomic_path, write_text
from histofuse.demo.layout import (
    DemoLayout,
    check_float,
    check_int,
    expression_path,
    slide_path,
)

if TYPE_CHECKING:
    import numpy as np

GENERATOR_VERSION = "histofuse.demo/1"
MIN_SIZE_UM = 400.0
MAX_LEVEL0_PIXELS = 200_000_000
_SHEET_COLUMNS = ["sample_id", "patient_id", "slide", "expression", "mpp"]


@dataclass(frozen=True)
class _Args:
    """The validated arguments of :func:`write_demo_cohort`."""

    seed: int
    n_patients: int
    slides_per_patient: int
    n_genes: int
    mpp: float
    width_um: float
    height_um: float

    @property
    def width_px(self) -> int:
        """Level-0 width in pixels."""
        return round(self.width_um / self.mpp)

    @property
    def height_px(self) -> int:
        """Level-0 height in pixels."""
        return round(self.height_um / self.mpp)


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

    Files under ``out`` (named by :mod:`histofuse.demo.layout`): ``slides/{sample_id}.tiff``
    (pyramidal tiled-JPEG TIFF, level 0 at ``mpp`` µm/px), ``st/{sample_id}.h5ad`` (Visium-like
    spot counts), ``bulk.csv`` (slide-level counts), ``samples.tsv`` (the sample sheet, paths
    relative to ``out``) and, last, as the completion marker, ``cohort.json`` (the parameters).
    The same arguments give byte-identical slides and identical counts; each slide is drawn from
    its own random stream.

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
    args = _check_args(seed, n_patients, slides_per_patient, n_genes, mpp, width_um, height_um)
    from histofuse.demo.genes import gene_model

    layout = DemoLayout(Path(out), args.n_patients, args.slides_per_patient)
    layout.marker.unlink(missing_ok=True)
    genes = gene_model(args.seed, args.n_genes)
    patients = _patients(args)
    bulk: dict[str, np.ndarray] = {}
    n_spots: dict[str, int] = {}
    for index, sample_id in enumerate(layout.sample_ids):
        patient = patients[index // args.slides_per_patient]
        bulk[sample_id], n_spots[sample_id] = _write_sample(
            layout, args, index, sample_id, genes, patient
        )
    _write_bulk(layout, genes["names"], bulk)
    _write_sheet(layout, args.mpp)
    _write_marker(layout, args, n_spots)
    return layout.sheet


def _check_args(
    seed: object,
    n_patients: object,
    slides_per_patient: object,
    n_genes: object,
    mpp: object,
    width_um: object,
    height_um: object,
) -> _Args:
    """The arguments of :func:`write_demo_cohort`, or a ValueError naming the first bad one."""
    seed = check_int("seed", seed, 0)
    n_patients = check_int("n_patients", n_patients, 1)
    slides_per_patient = check_int("slides_per_patient", slides_per_patient, 1)
    n_genes = check_int("n_genes", n_genes, 1)
    mpp = check_float("mpp", mpp, 0.0)
    if mpp <= 0.0 or mpp > 4.0:
        raise ValueError(f"mpp must be > 0 and <= 4 µm/px, got {mpp!r}")
    args = _Args(
        seed,
        n_patients,
        slides_per_patient,
        n_genes,
        mpp,
        check_float("width_um", width_um, MIN_SIZE_UM),
        check_float("height_um", height_um, MIN_SIZE_UM),
    )
    if args.width_px * args.height_px > MAX_LEVEL0_PIXELS:
        raise ValueError(
            f"mpp/width_um/height_um: level 0 would be {args.width_px}x{args.height_px} px, more "
            f"than {MAX_LEVEL0_PIXELS:,}; raise mpp or shrink width_um/height_um"
        )
    return args


def _patients(args: _Args) -> list[dict[str, Any]]:
    """Per patient: tumour and lymphocyte biases of the slides, log-fold change per gene."""
    import numpy as np

    patient_rngs = [np.random.default_rng([args.seed, 2, p]) for p in range(args.n_patients)]
    return [
        {
            "tumour_bias": float(r.normal(0.0, 0.6)),
            "lymph_bias": float(r.normal(0.0, 0.4)),
            "gene_effect": r.normal(0.0, 0.15, args.n_genes),
        }
        for r in patient_rngs
    ]


def _write_sample(
    layout: DemoLayout,
    args: _Args,
    index: int,
    sample_id: str,
    genes: dict[str, Any],
    patient: dict[str, Any],
) -> tuple[np.ndarray, int]:
    """Draws and writes one sample's slide and spot counts; returns its bulk counts and spots."""
    import numpy as np

    from histofuse.demo.pyramid import write_pyramid
    from histofuse.demo.render import render_slide
    from histofuse.demo.spots import simulate_counts, spot_features, spot_grid, write_h5ad

    slide_rng = np.random.default_rng([args.seed, 1, index])
    slide = render_slide(
        slide_rng,
        args.height_px,
        args.width_px,
        args.mpp,
        tumour_bias=patient["tumour_bias"],
        lymph_bias=patient["lymph_bias"],
    )
    write_pyramid(slide.rgb, layout.slide(sample_id), args.mpp)
    spots = spot_grid(slide, args.width_um, args.height_um, args.mpp)
    features = spot_features(slide, spots["xy_um"])
    expr_rng = np.random.default_rng([args.seed, 3, index])
    counts, bulk = simulate_counts(expr_rng, genes, features, patient["gene_effect"])
    write_h5ad(layout.expression(sample_id), counts, spots, genes["names"], args.mpp)
    return bulk, int(counts.shape[0])


def _write_bulk(layout: DemoLayout, gene_names: list[str], bulk: dict[str, np.ndarray]) -> None:
    """The bulk table: one row of integer counts per sample, one column per gene."""
    with atomic_path(layout.bulk_table) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["sample_id", *gene_names])
        for sample_id in layout.sample_ids:
            writer.writerow([sample_id, *(str(int(v)) for v in bulk[sample_id])])


def _write_sheet(layout: DemoLayout, mpp: float) -> None:
    """The sample sheet, with the slide and expression paths relative to the cohort folder."""
    rows = [
        {
            "sample_id": sample_id,
            "patient_id": f"P{index // layout.slides_per_patient + 1}",
            "slide": slide_path(sample_id),
            "expression": expression_path(sample_id),
            "mpp": repr(mpp),
        }
        for index, sample_id in enumerate(layout.sample_ids)
    ]
    with atomic_path(layout.sheet) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_SHEET_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _write_marker(layout: DemoLayout, args: _Args, n_spots: dict[str, int]) -> None:
    """The completion marker: the generator's parameters, written last."""
    from histofuse.demo.genes import FEATURES
    from histofuse.demo.spots import SPOT_DIAMETER_UM, SPOT_SPACING_UM

    meta = {
        "generator": GENERATOR_VERSION,
        "seed": args.seed,
        "n_patients": args.n_patients,
        "slides_per_patient": args.slides_per_patient,
        "n_samples": len(layout.sample_ids),
        "n_genes": args.n_genes,
        "mpp": args.mpp,
        "width_um": args.width_um,
        "height_um": args.height_um,
        "width_px": args.width_px,
        "height_px": args.height_px,
        "spot_diameter_um": SPOT_DIAMETER_UM,
        "spot_spacing_um": SPOT_SPACING_UM,
        "features": list(FEATURES),
        "n_spots": n_spots,
        "sample_ids": layout.sample_ids,
    }
    write_text(json.dumps(meta, indent=2) + "\n", layout.marker)
