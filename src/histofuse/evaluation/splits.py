"""Split schemes. Every scheme keeps all spots of a patient on one side of a fold."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from histofuse.errors import HistofuseError

SCHEMES = ("patient-kfold", "leave-one-patient-out")


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
