"""Split schemes.

Patient-level schemes (``patient-kfold``, ``leave-one-patient-out``, ``official``) keep all spots
of a patient on one side of a fold; ``spot-kfold`` and ``repeated-kfold`` are spot-level as in
PEKA (spots of one sample on both sides).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from histofuse.errors import HistofuseError

SCHEMES = (
    "patient-kfold",
    "leave-one-patient-out",
    "spot-kfold",
    "repeated-kfold",
    "official",
)


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
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Folds of a task's ``split`` config.

    Args:
        split: ``scheme``, ``n_folds``, ``n_repeats`` (``repeated-kfold``) and ``dir``
            (``official``: a folder of ``train_{i}.csv`` / ``test_{i}.csv`` with a ``sample_id``
            column, as HEST-Benchmark ships them).
        patients: Patient id per row.
        samples: Sample id per row.
        seed: Shuffling seed of the spot-level schemes.

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
    if scheme == "official":
        return _official(split.get("dir"), samples)
    raise HistofuseError(f"unknown split scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")


def _official(folder: str | None, samples: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    from pathlib import Path

    import pandas as pd

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
