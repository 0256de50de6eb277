"""The ``init`` verb: a study folder that runs the installed pipeline on its own config."""

from __future__ import annotations

import argparse
from pathlib import Path

from histofuse.errors import HistofuseError

CONFIG = """\
# histofuse study. Run it from this folder:  snakemake --cores all
# Results go to results/ and logs/ here; only this file's settings apply (no demo). Every key,
# its type and default: schemas/config.schema.yaml in the histofuse package.

samples: samples.tsv     # one row per slide (see the sheet's header); paths relative to the sheet

tiling:
  mode: grid             # tiles over detected tissue; `spots` centres a tile on each spot of a
                         # sample's `expression` file (what spot tasks fit on)
  patch_um: 112          # tile side in µm (HEST: 224 px at 0.5 µm/px)
  target_mpp: 0.5        # µm/px handed to the encoders
  on_error: stop         # `record`: a slide that cannot be tiled is listed, the others go on

# Encoders to embed every tile with (`histofuse encoders` lists them, with their weights).
encoders: [uni]

# Local weights files (without one, an encoder's hf-hub weights are downloaded when it runs).
weights: {}
#   uni: /path/to/uni/pytorch_model.bin

embed:
  gpu: 1                 # GPUs per embed job (0: CPU)

# Spot-level expression tasks. None: a slide-only study (tiles, features, QC pictures and
# results/report/slides.html). A task needs the sheet's `expression` files, `tiling.mode: spots`.
tasks: {}
#   my-task:
#     genes: {top_k: 50}
#     split: {scheme: patient-kfold, n_folds: 5}

heads:
  hest: {}               # HEST-Benchmark's PCA + ridge probe
"""

SHEET = "sample_id\tpatient_id\tslide\texpression\tmpp\n"

SNAKEFILE = """\
# A histofuse study: the installed histofuse pipeline, run on this folder's config.yaml.
#   snakemake --cores all      (results/ and logs/ are written in this folder)
from histofuse import workflow_dir


configfile: "config.yaml"


module histofuse:
    snakefile:
        str(workflow_dir() / "Snakefile")
    config:
        config


use rule * from histofuse


onstart:
    # Snakemake runs only this Snakefile's onstart: record the shard registry and the study.
    from histofuse.plan.study import start_run
    from snakemake.logging import logger

    warning = start_run(config)
    if warning:
        logger.warning(warning)
"""

README = """\
# histofuse study

1. Fill `samples.tsv`, one row per slide, tab-separated: `sample_id` (letters, digits, `.`, `_`,
   `-`), `patient_id` (folds never split a patient), `slide` (any OpenSlide format), and
   optionally `expression` (an `.h5ad` of spot counts, for spot tasks) and `mpp` (µm/px, for
   slides whose metadata lacks it). Paths are relative to the sheet. Columns whose name starts
   with `#` are ignored.
2. Edit `config.yaml`: encoders, weights, and tasks (none: tiles and features only).
3. `snakemake -n` shows the plan; `snakemake --cores all` runs it (the local profile in
   `profiles/default` is picked up from this folder).
"""


def _files(folder: Path) -> dict[Path, str]:
    """The study's files and their text."""
    from histofuse import workflow_dir

    profile = (workflow_dir() / "profiles" / "default" / "config.yaml").read_text()
    return {
        folder / "config.yaml": CONFIG,
        folder / "samples.tsv": SHEET,
        folder / "Snakefile": SNAKEFILE,
        folder / "README.md": README,
        folder / "profiles" / "default" / "config.yaml": profile,
    }


def init_study(folder: str | Path) -> list[Path]:
    """Writes a study folder: config, sample sheet header, Snakefile, README, local profile.

    Args:
        folder: The study's folder, created if missing.

    Returns:
        The files written.

    Raises:
        HistofuseError: If any of the files exists (nothing is written then).
    """
    files = _files(Path(folder))
    taken = [str(p) for p in files if p.exists()]
    if taken:
        raise HistofuseError(
            f"init {folder}: {', '.join(taken)} already exist(s); choose a new folder or move "
            "them away (init never overwrites a study's files)"
        )
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(files)


def _init(args: argparse.Namespace) -> None:
    for path in init_study(args.folder):
        print(path)


def register(sub: argparse._SubParsersAction) -> None:
    """Adds this module's verbs to the ``histofuse`` parser."""
    s = sub.add_parser(
        "init",
        help="write a study folder (config.yaml, samples.tsv, a Snakefile running the installed "
        "pipeline); fill the sheet, then run `snakemake` there",
    )
    s.add_argument("folder", help="the study's folder (created; existing files are kept)")
    s.set_defaults(func=_init)
