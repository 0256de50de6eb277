"""Pre-cut patches (HEST ``patches/*.h5``) as a tile source, and HEST-Bench task folders.

A patches file holds ``img`` (N, H, W, 3) uint8, ``barcode`` (N or N×1 bytes) and ``coords``
(N×2, as stored by HEST). Its tiles table has one row per patch (``barcode, x, y, index``) and
metadata ``source: h5`` naming the file, so the embed stage reads the stored pixels instead of a
slide. The patches are used at the scale they were cut at (HEST: 224 px at 0.5 µm/px).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histofuse.atomic import atomic_path
from histofuse.errors import HistofuseError
from histofuse.slides.spec import TilingSpec


def patch_spec(spec: TilingSpec) -> TilingSpec:
    """The spec recorded for pre-cut patches: ``spots`` at the spec's size and µm/px.

    Nothing else of the spec applies to patches already cut (no tissue is detected), so the
    rest is the schema's defaults, and the fingerprint depends on the size and µm/px alone.
    """
    return TilingSpec.from_config(
        {"mode": "spots", "patch_um": spec.patch_um, "target_mpp": spec.target_mpp}
    )


def patch_tiles(h5: str | Path, spec: TilingSpec) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Builds the tiles table of a pre-cut patches file.

    Args:
        h5: The ``.h5`` with ``img``, ``barcode`` and ``coords``.
        spec: The tiling spec: its ``patch_um`` is the field of view of the stored patches
            (HEST: 112 µm) and its ``target_mpp`` the µm/px they are handed to encoders at
            (HEST: 0.5); see :func:`patch_spec`.

    Raises:
        HistofuseError: If the file is missing, unreadable or lacks a dataset.
    """
    import h5py

    h5 = Path(h5)
    if not h5.is_file():
        raise HistofuseError(f"patches file {h5} does not exist; check the HEST-Bench folder")
    try:
        with h5py.File(h5, "r") as f:
            missing = [k for k in ("img", "barcode", "coords") if k not in f]
            if missing:
                raise HistofuseError(f"patches file {h5} lacks dataset(s) {', '.join(missing)}")
            shape = f["img"].shape
            barcodes = np.asarray(f["barcode"][:]).reshape(-1)
            coords = np.asarray(f["coords"][:], dtype=np.float64).reshape(-1, 2)
    except OSError as exc:
        raise HistofuseError(f"patches file {h5} is not a readable HDF5 file: {exc}") from None
    if len(shape) != 4 or shape[3] != 3 or len(barcodes) != shape[0] != len(coords):
        raise HistofuseError(
            f"patches file {h5}: img {shape} must be (N, H, W, 3) matching barcodes"
        )
    spec = patch_spec(spec)
    table = pd.DataFrame(
        {
            "barcode": [b.decode() if isinstance(b, bytes) else str(b) for b in barcodes],
            "x": coords[:, 0],
            "y": coords[:, 1],
            "index": np.arange(len(barcodes), dtype=np.int64),
        }
    )
    meta = {
        "source": "h5",
        "patches": str(h5.resolve()),
        "stored_px": int(shape[1]),
        "patch_px": spec.patch_px,
        "tiling": spec.to_dict(),
        "tiling_fingerprint": spec.fingerprint(),
        "mpp_source": "pre-cut patches",
        "effective_mpp": spec.patch_um / shape[1],
        "n_tiles": len(table),
    }
    return table, meta


def write_patch_qc(table: pd.DataFrame, meta: dict[str, Any], out: str | Path, n: int = 64) -> None:
    """Writes a QC picture of a pre-cut patches file: up to ``n`` patches, evenly spread.

    Each patch is drawn as the encoders receive it (``patch_px``), in a square contact sheet,
    with its index in the file.
    """
    from PIL import Image, ImageDraw

    ds = H5PatchDataset(table, meta)
    picks = np.unique(np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int))
    side = max(64, min(128, ds.patch_px))
    cols = max(1, int(np.ceil(np.sqrt(len(picks)))))
    rows = max(1, int(np.ceil(len(picks) / cols)))
    sheet = Image.new("RGB", (cols * (side + 4) + 4, rows * (side + 4) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, i in enumerate(picks if len(ds) else []):
        img = Image.fromarray(ds[int(i)]).resize((side, side), Image.Resampling.LANCZOS)
        x, y = 4 + (k % cols) * (side + 4), 4 + (k // cols) * (side + 4)
        sheet.paste(img, (x, y))
        draw.text((x + 2, y + 2), str(int(ds.index[i])), fill=(20, 20, 20))
    with atomic_path(out) as tmp:
        sheet.save(tmp)


class H5PatchDataset:
    """Stored patches as uint8 (H, W, 3) arrays at ``patch_px``; opened lazily in each worker."""

    def __init__(self, tiles: pd.DataFrame, meta: dict[str, Any]) -> None:
        self.path = Path(meta["patches"])
        self.patch_px = int(meta["patch_px"])
        self.index = tiles["index"].to_numpy(dtype=np.int64)
        self._file = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r")
        img = np.asarray(self._file["img"][int(self.index[i])], dtype=np.uint8)
        if img.shape[:2] != (self.patch_px, self.patch_px):
            from PIL import Image

            img = np.array(
                Image.fromarray(img).resize(
                    (self.patch_px, self.patch_px), Image.Resampling.LANCZOS
                )
            )
        return img

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}


def read_hest_bench(folder: str | Path) -> dict[str, Any]:
    """Reads a HEST-Bench task folder.

    Args:
        folder: With ``splits/{train,test}_{i}.csv`` (``sample_id, patches_path, expr_path``,
            relative to the folder), ``patches/*.h5``, ``adata/*.h5ad`` and ``var_50genes.json``.

    Returns:
        ``samples``: table (``sample_id, patient_id, patches, expression``; the patient id is the
        test fold, as HEST's splits are patient-level), ``genes``: the target genes, ``folds``:
        list of (train ids, test ids).

    Raises:
        HistofuseError: Naming the file and the fix on a missing or malformed part.
    """
    folder = Path(folder)
    tests = sorted((folder / "splits").glob("test_*.csv"))
    if not tests:
        raise HistofuseError(f"HEST-Bench folder {folder} has no splits/test_*.csv")
    genes_file = folder / "var_50genes.json"
    try:
        genes = [str(g) for g in json.loads(genes_file.read_text())["genes"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HistofuseError(
            f"HEST-Bench gene list {genes_file} is missing or has no `genes` list ({exc!r})"
        ) from None
    rows: dict[str, dict[str, str]] = {}
    folds = []
    for test in tests:
        i = test.stem.removeprefix("test_")
        train = folder / "splits" / f"train_{i}.csv"
        train_ids = _read_split(folder, train, rows, None)
        folds.append((train_ids, _read_split(folder, test, rows, f"fold{i}")))
    samples = pd.DataFrame(list(rows.values())).set_index("sample_id", drop=False)
    return {"samples": samples, "genes": genes, "folds": folds}


def _read_split(
    folder: Path, split: Path, rows: dict[str, dict[str, str]], patient: str | None
) -> list[str]:
    """Reads one split file into ``rows`` (one per sample); returns its sample ids.

    ``patient`` is the patient id of the samples of a test split (``None`` for a train split).
    """
    if not split.is_file():
        raise HistofuseError(f"HEST-Bench split {split} is missing")
    df = pd.read_csv(split)
    need = {"sample_id", "patches_path", "expr_path"} - set(df.columns)
    if need:
        raise HistofuseError(f"HEST-Bench split {split} lacks column(s) {sorted(need)}")
    for r in df.itertuples():
        patches, expr = folder / r.patches_path, folder / r.expr_path
        for p in (patches, expr):
            if not p.is_file():
                raise HistofuseError(
                    f"HEST-Bench split {split}, sample {r.sample_id}: {p} is missing"
                )
        row = rows.setdefault(
            str(r.sample_id),
            {"sample_id": str(r.sample_id), "patches": str(patches.resolve()),
             "expression": str(expr.resolve()), "patient_id": ""},
        )  # fmt: skip
        if patient is not None:
            row["patient_id"] = patient
    return df["sample_id"].astype(str).tolist()
