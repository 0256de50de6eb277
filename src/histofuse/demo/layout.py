"""Where the demo cohort's files are: its sample ids and paths, known before it is generated.

The one description of the demo's folder layout. The generator writes to these paths and the
plan predicts them (so Snakemake knows the demo's outputs before it runs); cheap to import.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHEET = "samples.tsv"
MARKER = "cohort.json"
BULK_TABLE = "bulk.csv"
HEST_BENCH_DIR = "hest-bench"
HEST_BENCH_GENE_LISTS = ("var_50genes.json", "mean_50genes.json")


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int, or a ValueError naming ``name`` if it is not an integer ≥ minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_float(name: str, value: object, minimum: float) -> float:
    """``value`` as a float, or a ValueError naming ``name`` unless it is finite and ≥ minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return value


def sample_ids(n_patients: int = 3, slides_per_patient: int = 2) -> list[str]:
    """Names the samples of a demo cohort without generating anything.

    Args:
        n_patients: Number of patients (``P1``, ``P2``, ...).
        slides_per_patient: Number of slides per patient (``S1``, ``S2``, ...).

    Returns:
        Sample ids ``P{patient}-S{slide}``, patient-major: ``['P1-S1', 'P1-S2', 'P2-S1', ...]``.

    Raises:
        ValueError: If an argument is not a positive integer; the message names it.
    """
    n_patients = check_int("n_patients", n_patients, 1)
    slides_per_patient = check_int("slides_per_patient", slides_per_patient, 1)
    return [
        f"P{p}-S{s}" for p in range(1, n_patients + 1) for s in range(1, slides_per_patient + 1)
    ]


def hest_bench_ids(n_patients: int = 3, slides_per_patient: int = 2) -> list[str]:
    """Samples of the demo's HEST-Bench task: the first slide of each patient.

    Raises:
        ValueError: If an argument is not a positive integer.
    """
    return [s for s in sample_ids(n_patients, slides_per_patient) if s.endswith("-S1")]


def slide_path(sample_id: str) -> str:
    """A sample's slide, relative to the cohort folder (as the sheet lists it)."""
    return f"slides/{sample_id}.tiff"


def expression_path(sample_id: str) -> str:
    """A sample's spot counts, relative to the cohort folder (as the sheet lists it)."""
    return f"st/{sample_id}.h5ad"


def hest_bench_patches_path(sample_id: str) -> str:
    """A sample's patches, relative to the HEST-Bench task folder (as its splits list them)."""
    return f"patches/{sample_id}.h5"


def hest_bench_expression_path(sample_id: str) -> str:
    """A sample's spot counts, relative to the HEST-Bench task folder (as its splits list them)."""
    return f"adata/{sample_id}.h5ad"


def hest_bench_split_path(side: str, fold: int) -> str:
    """A fold's ``train`` or ``test`` split, relative to the HEST-Bench task folder."""
    return f"splits/{side}_{fold}.csv"


@dataclass(frozen=True)
class DemoLayout:
    """The files of one configured demo cohort.

    Attributes:
        root: The cohort folder (the folder of the configured sample sheet).
        patients: Number of patients.
        slides_per_patient: Slides per patient.
        hest_bench: Whether the cohort also has a HEST-Bench task folder.
    """

    root: Path
    patients: int = 3
    slides_per_patient: int = 2
    hest_bench: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DemoLayout:
        """The layout a (validated) config's ``demo`` section generates beside ``samples``."""
        demo = config["demo"]
        return cls(
            Path(config["samples"]).parent,
            demo["patients"],
            demo["slides_per_patient"],
            bool(demo["hest_bench"]),
        )

    @property
    def sample_ids(self) -> list[str]:
        """The cohort's sample ids."""
        return sample_ids(self.patients, self.slides_per_patient)

    @property
    def hest_bench_ids(self) -> list[str]:
        """The samples of its HEST-Bench task."""
        return hest_bench_ids(self.patients, self.slides_per_patient)

    @property
    def sheet(self) -> Path:
        """The sample sheet."""
        return self.root / SHEET

    @property
    def marker(self) -> Path:
        """The completion marker, written last (the generator's parameters)."""
        return self.root / MARKER

    @property
    def bulk_table(self) -> Path:
        """The slide-level bulk table."""
        return self.root / BULK_TABLE

    @property
    def hest_bench_dir(self) -> Path:
        """The HEST-Bench task folder (written only with ``hest_bench``)."""
        return self.root / HEST_BENCH_DIR

    def slide(self, sample_id: str) -> Path:
        """A sample's slide."""
        return self.root / slide_path(sample_id)

    def expression(self, sample_id: str) -> Path:
        """A sample's spot counts."""
        return self.root / expression_path(sample_id)

    def hest_bench_files(self) -> list[Path]:
        """Every file of the HEST-Bench task folder (none without ``hest_bench``)."""
        if not self.hest_bench:
            return []
        d, ids = self.hest_bench_dir, self.hest_bench_ids
        files = [d / hest_bench_patches_path(s) for s in ids]
        files += [d / hest_bench_expression_path(s) for s in ids]
        files += [
            d / hest_bench_split_path(side, i)
            for i in range(self.patients)
            for side in ("train", "test")
        ]
        return files + [d / name for name in HEST_BENCH_GENE_LISTS]
