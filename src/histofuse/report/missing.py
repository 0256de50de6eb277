"""What the results leave out, and why: ``missing.csv``.

Built from the metrics files' metadata, which the fit stage fills from the feature stores'
provenance: samples the tile step could not tile (``tiling.on_error: record``) and spots left out
for NaN/inf features or counts. One row per (task, sample, barcode, reason); ``barcode`` is empty
when the whole sample is missing; ``fits`` counts the fit jobs (feature set × head) concerned.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

MISSING_COLUMNS = ["task", "sample", "barcode", "reason", "fits"]


def missing_table(metrics_files: Sequence[str | Path]) -> pd.DataFrame:
    """Collects the left-out samples and spots recorded in metrics files."""
    import pyarrow.parquet as pq

    rows = []
    for f in metrics_files:
        raw = (pq.read_schema(f).metadata or {}).get(b"histofuse")
        meta = json.loads(raw) if raw else {}
        tasks = pq.read_table(f, columns=["task"]).column(0)
        task = tasks[0].as_py() if len(tasks) else Path(f).parent.parent.name
        for sample, reason in (meta.get("missing_samples") or {}).items():
            rows.append({"task": task, "sample": sample, "barcode": "", "reason": reason})
        for spot in meta.get("dropped_spots") or []:
            rows.append({"task": task, **{k: spot[k] for k in ("sample", "barcode", "reason")}})
    if not rows:
        return pd.DataFrame(columns=MISSING_COLUMNS)
    keys = ["task", "sample", "barcode", "reason"]
    table = pd.DataFrame(rows).groupby(keys, as_index=False).size().rename(columns={"size": "fits"})
    return table[MISSING_COLUMNS].sort_values(keys).reset_index(drop=True)


def write_missing(metrics_files: Sequence[str | Path], out: str | Path) -> pd.DataFrame:
    """Writes ``missing.csv`` (header only when nothing is missing); returns the table."""
    table = missing_table(metrics_files)
    table.to_csv(out, index=False)
    return table
