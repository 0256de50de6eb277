"""The data and design of a run, from what the run wrote: ``design.{csv,md}`` and an HTML section.

Four tables, each built from files the run produced (never from the config):

* **tasks** — from the metrics files (their rows and their metadata): samples and spots scored,
  patients (from the sample sheet, when given), target genes per fold, split scheme, folds,
  repeats, seeds, samples left out and spots dropped;
* **encoders** — from the feature stores' manifests and the provenance in each store's root
  ``zarr.json``: shards, tiles, weights (SHA-256 and source), cache keys, precision and the
  histofuse version that embedded them;
* **tiling** — from the tile stats JSON of each sample: µm/px of the slides and where the value
  came from, the µm/px tiles were read at, samples and tiles;
* **warnings** — every warning the run recorded: the tile stats' (µm/px disagreements, slides
  without a pyramid) and the metrics files' (a split that leaks), so none stays in a log.

``design.csv`` holds every fact as ``table, key, column, value`` rows; ``design.md`` and the
HTML section show the same tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from histofuse.report.render import MISSING, Grid

TASK_COLUMNS = [
    "task", "samples", "patients", "spots", "genes per fold", "split", "folds", "repeats",
    "seeds", "samples left out", "spots dropped",
]  # fmt: skip
ENCODER_COLUMNS = [
    "encoder", "shards", "tiles", "weights sha256", "weights", "cache keys", "dtype", "histofuse",
]  # fmt: skip
TILING_COLUMNS = ["µm/px", "µm/px source", "read at µm/px", "samples", "tiles"]
WARNING_COLUMNS = ["where", "warning"]
#: How many leading columns name a row of each table (``key`` in design.csv, joined by ·).
KEY_COLUMNS = {"tasks": 1, "encoders": 1, "tiling": 3, "warnings": 1}


def _joined(values: Iterable) -> str:
    """Distinct values in order, comma-separated; ``–`` for none."""
    kept = [str(v) for v in dict.fromkeys(values) if v is not None and v == v and v != ""]
    return ", ".join(kept) or MISSING


def _metrics_meta(path: str | Path) -> dict:
    import pyarrow.parquet as pq

    raw = (pq.read_schema(path).metadata or {}).get(b"histofuse")
    return json.loads(raw) if raw else {}


def _spots(metrics: pd.DataFrame) -> int:
    """Spots scored once per seed: the test spots of every fold of one seed, summed."""
    pooled = metrics[metrics["sample"] == ""] if "sample" in metrics else metrics
    rows = pooled if len(pooled) else metrics
    keys = [k for k in ("seed", "fold", "sample") if k in rows]
    per_fold = rows.groupby(keys)["n"].max()
    first_seed = per_fold.index.get_level_values(0)[0] if "seed" in keys else None
    return int(per_fold.loc[first_seed].sum() if first_seed is not None else per_fold.sum())


def _file_facts(path: str | Path) -> dict:
    """The design facts one metrics file holds."""
    cols = ["task", "seed", "fold", "sample", "gene", "n"]
    metrics = pd.read_parquet(path, columns=[c for c in cols if c in _columns(path)])
    meta = _metrics_meta(path)
    task = meta.get("task") or {}
    split = task.get("split") or {}
    genes = meta.get("genes") or {}
    samples = set(metrics["sample"]) - {""} if "sample" in metrics else set()
    return {
        "task": str(metrics["task"].iloc[0]) if len(metrics) else Path(path).parent.parent.name,
        "samples": samples,
        "spots": _spots(metrics) if "n" in metrics and len(metrics) else None,
        "genes": {len(g) for g in genes.values()} or {metrics["gene"].nunique()},
        "split": split.get("scheme"),
        "folds": metrics["fold"].nunique() if "fold" in metrics else None,
        # n_repeats is read by repeated-kfold only; other schemes carry its default.
        "repeats": split.get("n_repeats") if split.get("scheme") == "repeated-kfold" else None,
        "seeds": sorted(metrics["seed"].unique().tolist()) if "seed" in metrics else [],
        "missing": set(meta.get("missing_samples") or {}),
        "dropped": {(d["sample"], d["barcode"]) for d in meta.get("dropped_spots") or []},
    }


def _columns(path: str | Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_schema(path).names


def _patients(samples: set[str], sheet: pd.DataFrame | None) -> str:
    """Distinct patients of the samples, when the sheet names every one of them."""
    if sheet is None or not samples or not samples <= set(sheet.index):
        return MISSING
    return str(sheet.loc[sorted(samples), "patient_id"].nunique())


def task_table(
    metrics_files: Sequence[str | Path], sheet: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per task: what its metrics files say about its data and its design.

    A fact that differs between the task's files (spots, when feature sets drop different
    spots) shows every value found.
    """
    facts = pd.DataFrame([_file_facts(f) for f in metrics_files])
    rows = []
    for task, group in facts.groupby("task", sort=True):
        samples = set().union(*group["samples"])
        rows.append(
            {
                "task": task,
                "samples": len(samples) or MISSING,
                "patients": _patients(samples, sheet),
                "spots": _joined(sorted(set(group["spots"].dropna().astype(int)))),
                "genes per fold": _joined(sorted(set().union(*group["genes"]))),
                "split": _joined(group["split"]),
                "folds": _joined(group["folds"]),
                "repeats": _joined(group["repeats"]),
                "seeds": _joined(s for seeds in group["seeds"] for s in seeds),
                "samples left out": len(set().union(*group["missing"])),
                "spots dropped": len(set().union(*group["dropped"])),
            }
        )
    return pd.DataFrame(rows, columns=TASK_COLUMNS)


def _provenance(manifest: Path, doc: dict) -> dict:
    """The store's provenance (root attributes of its ``zarr.json``), or ``{}`` if unreadable."""
    root = manifest.parent / doc.get("store", "") / "zarr.json"
    if not root.is_file():
        return {}
    return (json.loads(root.read_text()).get("attributes") or {}).get("histofuse") or {}


def encoder_table(manifests: Sequence[Path]) -> pd.DataFrame:
    """One row per encoder: its stores' shards, tiles, weights, cache keys and versions."""
    rows = []
    for path in manifests:
        doc = json.loads(Path(path).read_text())
        prov = _provenance(Path(path), doc)
        rows.append(
            {
                "encoder": (prov.get("encoder") or {}).get("name") or Path(path).parent.name,
                "tiles": int(doc.get("n_tiles", 0)),
                "weights sha256": prov.get("weights_sha256"),
                "weights": prov.get("weights_source"),
                "cache keys": doc.get("cache_key"),
                "dtype": prov.get("dtype"),
                "histofuse": (prov.get("versions") or {}).get("histofuse"),
            }
        )
    if not rows:
        return pd.DataFrame(columns=ENCODER_COLUMNS)
    frame = pd.DataFrame(rows)
    out = frame.groupby("encoder", sort=True).agg(
        shards=("tiles", "size"),
        tiles=("tiles", "sum"),
        **{c: (c, _joined) for c in ENCODER_COLUMNS[3:]},
    )
    return out.reset_index()[ENCODER_COLUMNS]


def _number(value: float | None) -> str:
    """A µm/px as written in the stats; ``–`` where a sample that failed has none."""
    return MISSING if value is None else f"{value:g}"


def tiling_table(stats: Sequence[dict]) -> pd.DataFrame:
    """Samples and tiles per (µm/px, its source, the µm/px read at), from tile stats."""
    rows = [
        {
            "µm/px": _number(doc.get("mpp_x")),
            "µm/px source": doc.get("mpp_source") or MISSING,
            "read at µm/px": _number(doc.get("effective_mpp")),
            "sample": doc["sample"],
            "tiles": int(doc.get("n_tiles") or 0),
        }
        for doc in stats
    ]
    if not rows:
        return pd.DataFrame(columns=TILING_COLUMNS)
    keys = TILING_COLUMNS[:3]
    out = pd.DataFrame(rows).groupby(keys, sort=True, as_index=False)
    return out.agg(samples=("sample", "nunique"), tiles=("tiles", "sum"))[TILING_COLUMNS]


def warnings_table(metrics_files: Sequence[str | Path], stats: Sequence[dict]) -> pd.DataFrame:
    """Every recorded warning, once: ``sample …`` from tile stats, ``task …`` from metrics."""
    rows = [
        {"where": f"sample {doc['sample']}", "warning": str(w)}
        for doc in stats
        for w in doc.get("warnings") or []
    ]
    for path in metrics_files:
        found = _metrics_meta(path).get("warnings") or []
        if found:
            task = pd.read_parquet(path, columns=["task"])["task"].iloc[0]
            rows += [{"where": f"task {task}", "warning": str(w)} for w in found]
    frame = pd.DataFrame(rows, columns=WARNING_COLUMNS).drop_duplicates()
    # one row per place: a warning repeated by every file of a task is said once
    return frame.groupby("where", sort=True, as_index=False).agg({"warning": " | ".join})


def sort_design_files(files: Sequence[str | Path]) -> dict[str, list[Path]]:
    """Manifests, tile stats and the sample sheet among ``files``.

    A folder (a shard's tiles, ``tiling.jobs: shard``) gives the stats JSON it holds.
    """
    out: dict[str, list[Path]] = {"manifests": [], "stats": [], "sheet": []}
    for f in map(Path, files):
        if f.is_dir():
            out["stats"] += sorted(f.glob("*.json"))
        elif f.name.endswith(".manifest.json"):
            out["manifests"].append(f)
        elif f.suffix == ".json":
            out["stats"].append(f)
        elif f.suffix in (".tsv", ".csv"):
            out["sheet"].append(f)
    return out


def _sheet(paths: Sequence[Path]) -> pd.DataFrame | None:
    if not paths:
        return None
    frames = [pd.read_csv(p, sep=None, engine="python", dtype=str) for p in paths]
    return pd.concat(frames).drop_duplicates("sample_id").set_index("sample_id")


def design_tables(
    metrics_files: Sequence[str | Path], design_files: Sequence[str | Path] = ()
) -> dict[str, pd.DataFrame]:
    """The tasks, encoders and tiling tables of a run (see the module docstring)."""
    from histofuse.report.slides import read_stats

    files = sort_design_files(design_files)
    stats = [read_stats(p) for p in files["stats"]]  # read once, for two tables
    return {
        "tasks": task_table(metrics_files, _sheet(files["sheet"])),
        "encoders": encoder_table(files["manifests"]),
        "tiling": tiling_table(stats),
        "warnings": warnings_table(metrics_files, stats),
    }


_TITLES = {
    "tasks": ("Tasks", "From the metrics files: samples and spots scored, the split and seeds."),
    "encoders": (
        "Encoders",
        "From the feature stores' manifests and provenance: weights, cache keys, versions.",
    ),
    "tiling": ("Tiling", "From the tile stats: slide µm/px, its source, and the µm/px read at."),
    "warnings": ("Warnings", "Recorded by the tile step (per sample) and the fits (per task)."),
}


def design_grids(tables: dict[str, pd.DataFrame], version: str) -> list[Grid]:
    """The design tables as grids; the report's histofuse version in the first note."""
    grids = []
    for name, frame in tables.items():
        title, note = _TITLES[name]
        if name == "tasks":
            note += f" Report written by histofuse {version}."
        if not len(frame):
            note += " None given to the report."
        grid = Grid(title=title, header=list(frame.columns), note=note)
        for rec in frame.astype(str).to_dict("records"):
            grid.add(list(rec.values()))
        grids.append(grid)
    return grids


def write_design(out: Path, tables: dict[str, pd.DataFrame], version: str) -> list[Grid]:
    """Writes ``design.csv`` (table, key, column, value) and ``design.md``; returns the grids."""
    rows = [
        {"table": name, "key": " · ".join(rec[k] for k in keys), "column": col, "value": rec[col]}
        for name, frame in tables.items()
        for keys in [list(frame.columns[: KEY_COLUMNS[name]])]
        for rec in frame.astype(str).to_dict("records")
        for col in frame.columns[len(keys) :]
    ]
    rows.append({"table": "report", "key": "histofuse", "column": "version", "value": version})
    pd.DataFrame(rows, columns=["table", "key", "column", "value"]).to_csv(
        out / "design.csv", index=False
    )
    grids = design_grids(tables, version)
    text = "# histofuse: data and design\n\n" + "\n".join(g.to_markdown() for g in grids)
    (out / "design.md").write_text(text)
    return grids
