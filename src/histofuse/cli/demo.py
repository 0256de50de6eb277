"""The ``demo-cohort`` verb: the synthetic demo cohort (and its HEST-Bench task folder)."""

from __future__ import annotations

import argparse


def _demo_cohort(args: argparse.Namespace) -> None:
    from histofuse.demo import write_demo_cohort

    sheet = write_demo_cohort(
        args.out,
        seed=args.seed,
        n_patients=args.patients,
        slides_per_patient=args.slides_per_patient,
        n_genes=args.genes,
    )
    print(sheet)
    if args.hest_bench:
        from histofuse.demo import write_demo_hest_bench

        folder = write_demo_hest_bench(
            sheet.parent, patch_px=args.hest_bench_px, patch_mpp=args.hest_bench_mpp
        )
        print(folder)


def register(sub: argparse._SubParsersAction) -> None:
    """Adds this module's verbs to the ``histofuse`` parser."""
    s = sub.add_parser("demo-cohort", help="write the synthetic demo cohort")
    s.add_argument(
        "--out",
        required=True,
        help="folder of the cohort (slides/, st/, bulk.csv, samples.tsv); created if missing",
    )
    s.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    s.add_argument(
        "--patients", type=int, default=3, help="number of patients (default: %(default)s)"
    )
    s.add_argument(
        "--slides-per-patient",
        type=int,
        default=2,
        help="slides (and Visium sections) per patient (default: %(default)s)",
    )
    s.add_argument("--genes", type=int, default=120, help="number of genes (default: %(default)s)")
    s.add_argument(
        "--hest-bench",
        action="store_true",
        help="also write OUT/hest-bench, a HEST-Bench task folder (default: off)",
    )
    s.add_argument(
        "--hest-bench-px",
        type=int,
        default=224,
        help="side of its stored patches, px (default: %(default)s)",
    )
    s.add_argument(
        "--hest-bench-mpp",
        type=float,
        default=0.5,
        help="resolution of its patches, µm/px (default: %(default)s)",
    )
    s.set_defaults(func=_demo_cohort)
