"""Split schemes.

Patient-level schemes (``patient-kfold``, ``leave-one-patient-out``, ``official``) keep all spots
of a patient on one side of a fold; ``spot-kfold`` and ``repeated-kfold`` are spot-level as in
PEKA (spots of one sample on both sides: neighbouring spots share tissue and expression, so their
scores overstate, :func:`split_warnings`); ``spatial-block`` cuts each section into square blocks
of ``block_um`` µm and keeps every block on one side (for single-section studies).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError

SCHEMES = (
    "patient-kfold",
    "leave-one-patient-out",
    "spot-kfold",
    "repeated-kfold",
    "spatial-block",
    "official",
)

#: Schemes that put spots of one section on both sides of a fold.
SPOT_SCHEMES = ("spot-kfold", "repeated-kfold")


def split_warnings(split: dict, n_patients: int | None = None) -> list[str]:
    """The warnings a ``split`` config earns.

    A spot-level scheme leaks between neighbours; ``patient-kfold`` with fewer patients than
    ``n_folds`` runs one fold per patient, fewer folds than configured.
    """
    scheme = split.get("scheme", "patient-kfold")
    n_folds = split.get("n_folds", 5)
    if scheme == "patient-kfold" and n_patients is not None and 2 <= n_patients < n_folds:
        return [
            f"split patient-kfold: n_folds is {n_folds} but the task's samples come from "
            f"{n_patients} patients, so it runs {n_patients} folds (one per patient); set "
            f"`split.n_folds: {n_patients}` to say so, or add samples"
        ]
    if scheme not in SPOT_SCHEMES:
        return []
    return [
        f"split scheme {scheme!r} puts neighbouring spots of one section on both sides of a fold; "
        "they share tissue and expression, so its scores overstate how a model does on unseen "
        "tissue; use `spatial-block` (blocks of `split.block_um` µm) or a patient-level scheme"
    ]


def spatial_blocks(sections: np.ndarray, xy_um: np.ndarray, block_um: float) -> np.ndarray:
    """Block id per spot: squares of ``block_um`` µm from the slide's origin, per section."""
    cells = np.floor(np.asarray(xy_um, dtype=float) / block_um).astype(np.int64)
    keys = pd.DataFrame({"section": sections, "bx": cells[:, 0], "by": cells[:, 1]})
    return keys.groupby(["section", "bx", "by"], sort=False).ngroup().to_numpy()


def spots_um(
    sheet: pd.DataFrame,
    samples: np.ndarray,
    xy_px: np.ndarray,
    recorded: dict[str, list[float]] | None = None,
) -> np.ndarray:
    """Spot centres in µm from level-0 pixels (the cache's ``x, y``), as tiling scaled them.

    Each sample's µm/px is the one the tile step used, as the feature stores record it
    (``recorded``: sample → ``[x, y]``; from the slide, the sheet or a Space Ranger spot pitch);
    for stores without that record, the sheet's ``mpp`` where set, else its slide's metadata.
    """
    from histofuse.slides.wsi import Mpp, open_slide, slide_mpp

    xy = np.asarray(xy_px, dtype=float).copy()
    for sample in pd.unique(samples):
        override = sheet.at[sample, "mpp"] if "mpp" in sheet else None
        if recorded and sample in recorded:
            mpp = Mpp(*map(float, recorded[sample]), "tiles")
        elif override is not None and override == override:
            mpp = Mpp(float(override), float(override), "override")
        else:
            with open_slide(sheet.at[sample, "slide"]) as slide:
                mpp = slide_mpp(slide, sheet.at[sample, "slide"])
        xy[samples == sample] *= (mpp.x, mpp.y)
    return xy


def block_splits(
    sections: np.ndarray, xy_um: np.ndarray | None, split: dict, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``spatial-block`` folds: scikit-learn's GroupKFold over the blocks, shuffled by ``seed``.

    Raises:
        HistofuseError: Without spot positions, or with fewer blocks than folds.
    """
    from sklearn.model_selection import GroupKFold

    if xy_um is None:
        raise HistofuseError("split scheme 'spatial-block' needs the spots' positions in µm")
    block_um, n_folds = float(split.get("block_um", 500.0)), int(split.get("n_folds", 5))
    blocks = spatial_blocks(sections, xy_um, block_um)
    n_blocks = int(blocks.max()) + 1 if len(blocks) else 0
    if n_blocks < n_folds:
        raise HistofuseError(
            f"split scheme 'spatial-block': the spots fill {n_blocks} blocks of {block_um:g} µm, "
            f"fewer than `split.n_folds` {n_folds}; set a smaller `split.block_um` or fewer folds"
        )
    splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(blocks)), groups=blocks))


def patient_splits(
    patients: np.ndarray, scheme: str = "patient-kfold", n_folds: int = 5
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (train, test) index arrays with patients never in both.

    Args:
        patients: Patient id per row.
        scheme: ``patient-kfold`` (scikit-learn's GroupKFold with ``min(n_folds, n_patients)``
            folds) or ``leave-one-patient-out``.
        n_folds: Folds for ``patient-kfold``.

    Raises:
        HistofuseError: If there are fewer than two patients or the scheme is unknown.
    """
    from sklearn.model_selection import GroupKFold, LeaveOneGroupOut

    n_patients = len(np.unique(patients))
    if n_patients < 2:
        raise HistofuseError("a patient-level split needs at least two patients in the task")
    if scheme == "patient-kfold":
        splitter = GroupKFold(n_splits=min(n_folds, n_patients))
    elif scheme == "leave-one-patient-out":
        splitter = LeaveOneGroupOut()
    else:
        raise HistofuseError(f"unknown split scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    yield from splitter.split(np.zeros(len(patients)), groups=patients)


def task_splits(
    split: dict,
    patients: np.ndarray,
    samples: np.ndarray,
    seed: int,
    xy_um: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds of a task's ``split`` config.

    Args:
        split: ``scheme``, ``n_folds``, ``n_repeats`` (``repeated-kfold``), ``block_um``
            (``spatial-block``) and ``dir`` (``official``: a folder of ``train_{i}.csv`` /
            ``test_{i}.csv`` with a ``sample_id`` column, as HEST-Benchmark ships them).
        patients: Patient id per row.
        samples: Sample (section) id per row.
        seed: Shuffling seed of the spot-level and block schemes.
        xy_um: Spot centres in µm (rows × 2), for ``spatial-block``.

    Raises:
        HistofuseError: For an unknown scheme or unusable split files.
    """
    from sklearn.model_selection import KFold, RepeatedKFold

    scheme = split.get("scheme", "patient-kfold")
    n_folds = int(split.get("n_folds", 5))
    rows = np.zeros(len(samples))
    if scheme in ("patient-kfold", "leave-one-patient-out"):
        return list(patient_splits(patients, scheme, n_folds))
    if scheme == "spot-kfold":
        return list(KFold(n_folds, shuffle=True, random_state=seed).split(rows))
    if scheme == "repeated-kfold":
        reps = int(split.get("n_repeats", 10))
        return list(RepeatedKFold(n_splits=n_folds, n_repeats=reps, random_state=seed).split(rows))
    if scheme == "spatial-block":
        return block_splits(samples, xy_um, split, seed)
    if scheme == "official":
        return _official(split.get("dir"), samples)
    raise HistofuseError(f"unknown split scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


def _official(folder: str | None, samples: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    from pathlib import Path

    if not folder:
        raise HistofuseError("split scheme 'official' needs `split.dir`, the folder of split CSVs")
    root = Path(folder)
    folds, i = [], 0
    while (root / f"test_{i}.csv").exists():
        sides = []
        for side in ("train", "test"):
            path = root / f"{side}_{i}.csv"
            if not path.exists():
                raise HistofuseError(f"split file {path} is missing; it pairs with test_{i}.csv")
            ids = pd.read_csv(path)
            if "sample_id" not in ids:
                raise HistofuseError(f"split file {path} has no `sample_id` column")
            sides.append(np.flatnonzero(np.isin(samples, ids["sample_id"].astype(str))))
        if np.intersect1d(*sides).size:
            raise HistofuseError(f"split {i} in {root} puts a sample on both sides")
        folds.append((sides[0], sides[1]))
        i += 1
    if not folds:
        raise HistofuseError(f"no split files test_0.csv ... in {root}; set `split.dir` right")
    return folds
