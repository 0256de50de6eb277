"""The evaluation design, checked at parse time: splits the sheet cannot fill stop the run.

A split is built only in the ``fit`` jobs, after tiling and embedding; a task whose sheet cannot
fill it (one patient for a patient-level scheme) would fail there, hours later. Here the plan
refuses it before any job, naming the task, the numbers and the fix. A spot-level scheme
(``spot-kfold``, ``repeated-kfold``) is allowed but warned about: neighbouring spots of one
section land on both sides of a fold, so its scores overstate (the metrics files record it too).
HEST-Bench tasks use their folder's official splits and are not checked.
"""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

from histofuse.errors import HistofuseError
from histofuse.evaluation.splits import split_warnings

if TYPE_CHECKING:
    from histofuse.plan.core import Plan

#: Snakemake's logger: a warning given to it reaches the run's log file as well as the terminal.
RUN_LOG = "snakemake.logging"


class LeakWarning(UserWarning):
    """A split whose scores may mislead.

    Test spots with neighbours among the training spots (a spot-level scheme), or fewer folds
    than configured.
    """


def split_problem(task: str, split: dict, n_patients: int) -> str | None:
    """Why a task's split cannot be built from its patients, with the fix; None if it can.

    A patient-level scheme needs two patients. ``patient-kfold`` with fewer patients than
    ``n_folds`` runs one fold per patient (as documented): not refused, but warned about
    (:func:`~histofuse.evaluation.splits.split_warnings`) in the log and the report.
    """
    scheme = split["scheme"]
    if scheme not in ("patient-kfold", "leave-one-patient-out") or n_patients >= 2:
        return None
    return (
        f"config `tasks.{task}.split`: {scheme} needs two or more patients; the task's samples "
        f"come from {n_patients}; add samples of other patients, or use `spatial-block` (blocks "
        "of each section on one side) for a single-patient study"
    )


def check_splits(plan: Plan) -> list[str]:
    """Stops on a split the sheet cannot fill; warns about spot-level schemes.

    Returns:
        The warnings given (one per task with a spot-level scheme).

    Raises:
        HistofuseError: Naming the task, its number of patients and folds, and the fix.
    """
    given = []
    for task, spec in plan.config["tasks"].items():
        if spec.get("hest_bench"):
            continue
        samples = plan._task_samples(task)  # not memoised: the plan's answers come later
        if not samples:
            continue
        n_patients = plan.samples.loc[samples, "patient_id"].nunique()
        problem = split_problem(task, spec["split"], n_patients)
        if problem:
            raise HistofuseError(problem)
        for message in split_warnings(spec["split"], n_patients):
            given.append(f"task {task}: {message}")
            if logging.getLogger(RUN_LOG).handlers:  # under Snakemake: one line in its log
                logging.getLogger(RUN_LOG).warning(given[-1])
            else:
                warnings.warn(given[-1], LeakWarning, stacklevel=2)
    return given
