"""The PEKA fit job: per fold, teacher → adapter → student features → a head, metrics.

Feature set names (the ``features`` column of the report; grammar in
:mod:`histofuse.plan.names`):

* ``peka:<enc>`` — Bone (PEFT MiSS) on a frozen identity projection of the cached features;
* ``peka-tail:<enc>`` — Bone on ``attn.qkv`` of the encoder's last ``k`` blocks, run on the
  cached tokens entering them;
* ``image+peka:<enc>`` — the frozen features concatenated with the ``peka`` student features;
* ``lora:<enc>``, ``adalora:<enc>``, ``hra:<enc>`` — PEFT baselines in the same pipeline, on the
  site chosen by ``peka.baseline_site`` (``features`` or ``tail``);
* ``teacher`` — the teacher embeddings themselves, an upper bound.

Everything that is learned (teacher PCA, k-means, teacher classifier, adapter, head) is fitted on
the training spots of each fold; test spots only receive predictions. The job is spot rows
(:mod:`histofuse.evaluation.spots`, as the fit stage's) and a student per fold
(:class:`PekaModel`) run by :func:`histofuse.evaluation.runner.run_task`, so its outputs have the
layout and columns of every other feature set's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histofuse import settings
from histofuse.errors import HistofuseError
from histofuse.evaluation.runner import Fold
from histofuse.evaluation.spots import SpotFeatures, SpotRows
from histofuse.plan.names import TEACHER, FeatureSet
from histofuse.settings import Peka, Task

#: Where each PEKA mode adapts the encoder; the baselines and the teacher: ``peka.baseline_site``.
SITES = {"peka": "features", "image+peka": "features", "peka-tail": "tail"}
#: Modes whose adapter is Bone (PEFT MiSS); the baselines' adapter is their mode.
MISS_MODES = ("peka", "peka-tail", "image+peka")


@dataclass
class PekaModel:
    """Per fold: teacher, student features and a head (the ``peka`` stage's model).

    Attributes:
        features: The parsed feature-set name.
        site: ``features`` (cached features) or ``tail`` (cached tokens).
        cfg: The ``peka`` settings.
        head: Head id (:func:`histofuse.heads.probes.make_head`).
        head_params: Its hyperparameters.
        rows: The task's spots (raw counts for the built-in teacher).
        image: Cached features of the spots (``None`` in tail modes).
        tokens: Cached tokens of the spots (tail modes).
        tokens_info: The token store's ``tokens`` provenance.
        token_stores: Token stores (their provenance names the encoder's weights).
        folds: What each fold learned, by ``seed/fold``.
    """

    features: FeatureSet
    site: str
    cfg: Peka
    head: str
    head_params: dict[str, Any]
    rows: SpotRows
    image: np.ndarray | None = None
    tokens: np.ndarray | None = None
    tokens_info: dict[str, Any] = field(default_factory=dict)
    token_stores: Sequence[str | Path] = ()
    folds: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import torch

        from histofuse.peka.teacher import read_teacher_file

        self.mode = self.features.mode
        self.method = "miss" if self.mode in MISS_MODES else self.mode
        tail = self.site == "tail" and self.tokens is not None
        self.inputs = torch.as_tensor(self.tokens if tail else self.image)
        index = self.rows.index
        self.file_teacher = (
            read_teacher_file(
                self.cfg.teacher, index["sample"].to_numpy(), index["barcode"].to_numpy()
            )
            if self.cfg.teacher.source == "file"
            else None
        )

    def fit_predict(self, fold: Fold, y: np.ndarray, genes: list[str]) -> np.ndarray:
        """Fits the fold's teacher, student and head on its training spots; predicts the rest."""
        from histofuse.heads.probes import make_head
        from histofuse.heads.streaming import fit_predict
        from histofuse.peka.teacher import builtin_teacher

        emb = self.file_teacher
        if emb is None:
            raw = self.rows.counts.to_numpy()
            emb = builtin_teacher(raw, fold.train, int(self.cfg.teacher.dim), self.cfg.seed)
        info: dict[str, Any] = {"genes": genes, "teacher_dim": int(emb.shape[1])}
        x = emb if self.mode == TEACHER else self._student_features(fold.train, emb, info)
        self.folds[f"{fold.seed}/{fold.fold}"] = info
        est = make_head(self.head, self.head_params, seed=fold.seed)
        return fit_predict(est, x, y, fold.train, fold.test)

    def _student_features(
        self, train: np.ndarray, emb: np.ndarray, info: dict[str, Any]
    ) -> np.ndarray:
        """Trains the fold's student by distillation; its features of every spot."""
        import torch

        from histofuse.peka import adapters
        from histofuse.peka.teacher import TeacherClassifier

        cfg = self.cfg
        clf = TeacherClassifier(
            n_clusters=int(cfg.clusters),
            hidden=cfg.classifier.hidden,
            epochs=cfg.classifier.epochs,
            lr=cfg.classifier.lr,
            batch_size=cfg.classifier.batch_size,
            seed=int(cfg.seed),
        ).fit(emb[train])
        steps = int(cfg.train.epochs) * -(-len(train) // int(cfg.train.batch_size))
        body = (
            adapters.TailModel(self._encoder(), int(self.tokens_info["blocks"]))
            if self.site == "tail"
            else adapters.FeatureProjection(self.inputs.shape[1])
        )
        student = adapters.build_student(
            body, self.method, int(cfg.r), emb.shape[1], int(cfg.hidden), steps, cfg.seed
        )
        history = adapters.train_student(
            student,
            self.inputs[train],
            torch.as_tensor(emb[train]),
            torch.as_tensor(clf.labels_),
            clf.model_,
            cfg.train,
            seed=int(cfg.seed),
        )
        s = adapters.student_features(student, self.inputs)
        info.update(
            loss=history,
            classifier_accuracy=clf.accuracy_,
            clusters=int(clf.kmeans_.n_clusters),
            trainable_params=adapters.n_trainable(student),
        )
        return np.concatenate([self.image, s], axis=1) if self.mode == "image+peka" else s

    def _encoder(self) -> Any:
        """The encoder whose tokens were cached, with the weights recorded in the token store."""
        from histofuse.cache import read_provenance
        from histofuse.encoders.model import create_encoder

        prov = read_provenance(self.token_stores[0])
        source = prov.get("weights_source")
        local = source not in (None, "random") and not str(source).startswith("hf-hub:")
        enc = create_encoder(prov["encoder"]["name"], weights=source if local else None)
        if enc.weights_sha256 != prov.get("weights_sha256"):
            raise HistofuseError(
                f"encoder {self.features.encoder!r} weights differ from those its tokens were "
                f"cached with ({self.token_stores[0]}); re-run its tokens job"
            )
        return enc

    def meta(self) -> dict[str, Any]:
        """The encoder, what each fold learned, the token cache and the head's settings."""
        encoder = self.features.encoder
        return {
            "encoders": [encoder] if encoder else [],
            "peka": {
                "mode": self.mode,
                "site": self.site,
                "method": self.method,
                "config": settings.to_dict(self.cfg),
                "folds": self.folds,
            },
            "tokens": self.tokens_info,
            "head_params": self.head_params,
        }


def peka_task(
    task_name: str,
    task: Task,
    samples_sheet: str | Path,
    features_name: str,
    head: str,
    head_params: dict[str, Any] | None,
    peka: Peka,
    metrics_out: str | Path,
    predictions_out: str | Path,
    stores: Sequence[str | Path] = (),
    token_stores: Sequence[str | Path] = (),
) -> pd.DataFrame:
    """Runs one PEKA feature set with one head over all folds of a spot task.

    Samples recorded as failed at tiling and spots with non-finite features or counts are left
    out as in the fit stage (:func:`histofuse.evaluation.spots.spot_rows`).

    Args:
        task_name: Task id.
        task: The task's settings.
        samples_sheet: The sample sheet.
        features_name: See the module docstring.
        head: Head id (``hest``, ``ridge``, …).
        head_params: Head hyperparameters.
        peka: The ``peka`` settings.
        metrics_out: Metrics parquet.
        predictions_out: Predictions parquet.
        stores: Feature stores of the encoder (all modes but ``peka-tail``, whose baseline site is
            the tail).
        token_stores: Token stores of the encoder (tail modes).

    Returns:
        The metrics table written.

    Raises:
        HistofuseError: If the name is not a PEKA feature set or its stores are missing.
    """
    from histofuse.evaluation.runner import Outputs, run_task
    from histofuse.evaluation.spots import spot_rows, task_samples
    from histofuse.heads.fusion import torch_threads
    from histofuse.plan.names import parse

    t0 = time.perf_counter()
    fs = parse(features_name)
    if not fs.is_peka:
        raise HistofuseError(
            f"feature set {features_name!r} is not a PEKA feature set (`<mode>:<encoder>` or "
            f"`{TEACHER}`)"
        )
    site = SITES.get(fs.mode, peka.baseline_site)
    samples = task_samples(task_name, task, samples_sheet, check_files=False)
    loaded, info = _load_inputs(fs, site, samples.names, stores, token_stores)
    rows, loaded = spot_rows(samples, [*stores, *token_stores], loaded)
    arrays = loaded.arrays
    model = PekaModel(
        fs, site, peka, head, head_params or {}, rows,
        image=arrays.get("image"), tokens=arrays.get("tokens"), tokens_info=info,
        token_stores=token_stores,
    )  # fmt: skip
    out = Outputs(task_name, features_name, metrics_out, predictions_out)
    with torch_threads(1):  # the one CPU the peka rule reserves
        return run_task(rows, model, out, t0)


def _load_inputs(
    fs: FeatureSet,
    site: str,
    names: list[str],
    stores: Sequence[str | Path],
    token_stores: Sequence[str | Path],
) -> tuple[SpotFeatures, dict[str, Any]]:
    """The cached features (``image``) or tokens (tail site) of the task's spots, tokens' info.

    Raises:
        HistofuseError: If the stores the mode needs are not given.
    """
    from histofuse.evaluation.features import load_feature_set
    from histofuse.peka.tokens import read_tokens

    if fs.mode == TEACHER or site == "features":
        if not stores:
            raise HistofuseError(f"PEKA {fs.name}: no feature stores given")
        image, index, _ = load_feature_set(stores, names)
        return SpotFeatures(index, {"image": image}), {}
    if not token_stores:
        raise HistofuseError(f"PEKA {fs.name}: no token stores given (tail mode)")
    tokens, index, info = read_tokens(token_stores, names)
    return SpotFeatures(index, {"tokens": tokens}), info
