"""The sample sheet: one row per sample, validated, with paths resolved against the sheet."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from histofuse.errors import HistofuseError

REQUIRED = ("sample_id", "patient_id", "slide")
OPTIONAL = ("expression", "mpp", "tasks")


def load_samples(path: str | Path, check_files: bool = True) -> pd.DataFrame:
    """Reads and validates a sample sheet (TSV), or builds it from a HEST-1k folder.

    Columns: ``sample_id``, ``patient_id``, ``slide`` (required), ``expression`` (``.h5ad``, or
    a Space Ranger ``outs/`` folder; for spot tasks), ``mpp`` (a µm/px override) and ``tasks``
    (task names separated by commas; empty: every task) (optional). Relative paths resolve
    against the sheet's folder.

    Args:
        path: The sheet, or a HEST-1k style folder (see :func:`histofuse.hest.read_hest1k`).
        check_files: Whether every referenced file must exist.

    Returns:
        The table indexed by ``sample_id`` with absolute paths, plus ``mpp_source`` (where the
        ``mpp`` value came from: ``override`` for the sheet's column, ``hest-metadata`` for a
        HEST-1k folder; empty when the slide's own metadata decides).

    Raises:
        HistofuseError: Naming the row and column of the first problem.
    """
    path = Path(path)
    from histofuse.hest import is_hest1k, read_hest1k

    if is_hest1k(path):
        return read_hest1k(path)
    df = _read_sheet(path)
    _check_columns(df, path)
    _check_ids(df, path)
    mpp = _check_mpp(df, path)
    _check_rows(df, path)
    _resolve_paths(df, path, check_files)
    df["mpp"] = mpp
    df["mpp_source"] = ["override" if v == v else "" for v in df["mpp"]]
    if "expression" not in df.columns:
        df["expression"] = ""
    if "tasks" in df.columns:
        df["tasks"] = [",".join(parse_tasks(v)) for v in df["tasks"]]
    else:
        df["tasks"] = ""
    return df.set_index("sample_id", drop=False)


def _read_sheet(path: Path) -> pd.DataFrame:
    """Reads a sheet's TSV as strings (empty cells as ``""``)."""
    if not path.is_file():
        raise HistofuseError(f"sample sheet {path} does not exist; check `samples:` in the config")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise HistofuseError(f"sample sheet {path} is not a readable TSV: {exc}") from exc
    if len(df.columns) == 1 and "," in df.columns[0]:
        raise HistofuseError(
            f"sample sheet {path} must be tab-separated (it looks comma-separated); save it "
            "with tabs between the columns"
        )
    if not isinstance(df.index, pd.RangeIndex):  # pandas took the extra field(s) as an index
        raise HistofuseError(
            f"sample sheet {path}, row 2 has more tab-separated fields than the header "
            f"({len(df.columns)}); remove the extra tabs or name the column in the header"
        )
    return df


def _check_columns(df: pd.DataFrame, path: Path) -> None:
    """Checks that a sheet has the required columns, no unknown ones, and rows."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise HistofuseError(
            f"sample sheet {path} lacks column(s) {', '.join(missing)}; "
            f"required: {', '.join(REQUIRED)}"
        )
    unknown = [c for c in df.columns if c not in REQUIRED + OPTIONAL and not c.startswith("#")]
    if unknown:
        raise HistofuseError(
            f"sample sheet {path} has unknown column(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(REQUIRED + OPTIONAL)}"
        )
    if df.empty:
        raise HistofuseError(f"sample sheet {path} has no rows")
    for col in REQUIRED:
        empty = df.index[df[col].str.strip() == ""]
        if len(empty):
            raise HistofuseError(f"sample sheet {path}, row {empty[0] + 2}: `{col}` is empty")


def _check_ids(df: pd.DataFrame, path: Path) -> None:
    """Checks that sample ids are unique and usable in file names."""
    dup = df["sample_id"][df["sample_id"].duplicated()]
    if len(dup):
        raise HistofuseError(
            f"sample sheet {path}: duplicate sample_id {dup.iloc[0]!r} (rows "
            f"{', '.join(str(i + 2) for i in df.index[df['sample_id'] == dup.iloc[0]])})"
        )
    bad_id = df["sample_id"][~df["sample_id"].str.fullmatch(r"[A-Za-z0-9._-]+")]
    if len(bad_id):
        raise HistofuseError(
            f"sample sheet {path}: sample_id {bad_id.iloc[0]!r} may only use letters, digits, '.', "
            "'_' and '-'"
        )


def _check_mpp(df: pd.DataFrame, path: Path) -> pd.Series | float:
    """The ``mpp`` column as numbers (NaN where empty; NaN for all without the column)."""
    if "mpp" not in df.columns:
        return float("nan")
    mpp = pd.to_numeric(df["mpp"].replace("", None), errors="coerce")
    bad = df.index[(df["mpp"] != "") & ~(mpp > 0)]
    if len(bad):
        raise HistofuseError(
            f"sample sheet {path}, row {bad[0] + 2}: mpp {df.at[bad[0], 'mpp']!r} must be a "
            "positive number (µm per level-0 pixel) or empty"
        )
    return mpp


def _resolve_paths(df: pd.DataFrame, path: Path, check_files: bool) -> None:
    """Makes ``slide`` and ``expression`` absolute (against the sheet's folder), checks them."""
    base = str(path.resolve().parent)
    for col in ("slide", "expression"):
        if col not in df.columns:
            continue
        # os.path is ~20x faster than Path.resolve() on 10k-row sheets parsed by every job.
        df[col] = [os.path.normpath(os.path.join(base, v)) if v else "" for v in df[col]]
        if not check_files:
            continue
        for i, v in zip(df.index, df[col], strict=True):
            if v and not os.path.isfile(v):
                _check_folder(df, path, i, col)


def _check_folder(df: pd.DataFrame, path: Path, i: int, col: str) -> None:
    """A sheet path that is not a file: a Space Ranger ``outs/`` folder (``expression``), or none.

    Raises:
        HistofuseError: Naming the row, if the path does not exist or is a folder that is not
            a Space Ranger output.
    """
    from histofuse.data.spaceranger import check_outs

    where = f"sample sheet {path}, row {i + 2} ({df.at[i, 'sample_id']})"
    v = df.at[i, col]
    if col == "expression" and os.path.isdir(v):
        try:
            check_outs(v)
        except HistofuseError as exc:
            raise HistofuseError(f"{where}: {exc}") from None
        return
    raise HistofuseError(f"{where}: {col} file {v} does not exist")


def sheet_schema() -> dict:
    """The JSON schema of one sample-sheet row (``histofuse/schemas/samples.schema.yaml``)."""
    from importlib.resources import files

    import yaml

    return yaml.safe_load(files("histofuse").joinpath("schemas/samples.schema.yaml").read_text())


def _check_rows(df: pd.DataFrame, path: Path) -> None:
    """Validates every row against :func:`sheet_schema`; the error names the row and column."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(sheet_schema())
    for i, row in zip(df.index, df.to_dict("records"), strict=True):
        err = next(iter(sorted(validator.iter_errors(row), key=lambda e: list(e.path))), None)
        if err is None:
            continue
        col = err.path[0] if err.path else ""
        desc = validator.schema["properties"].get(col, {}).get("description", err.message)
        raise HistofuseError(
            f"sample sheet {path}, row {i + 2} ({row.get('sample_id', '')}): `{col}` = "
            f"{row.get(col)!r} is invalid; expected {desc}"
        )


def parse_tasks(cell: object) -> list[str]:
    """The task names of a sheet's ``tasks`` cell (comma- or semicolon-separated; may be empty)."""
    if not isinstance(cell, str):
        return []
    return [t.strip() for t in re.split(r"[,;]", cell) if t.strip()]


def joins_task(sheet: pd.DataFrame, sample: str, task: str) -> bool:
    """Whether a sample with an expression file is in a task that does not list its samples.

    A sample joins every such task unless the sheet's ``tasks`` cell names some, then only those.
    """
    expression = sheet.at[sample, "expression"]
    if not isinstance(expression, str) or not expression:
        return False
    chosen = parse_tasks(sheet.at[sample, "tasks"]) if "tasks" in sheet else []
    return not chosen or task in chosen
