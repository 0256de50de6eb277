"""The PEKA fit job: per fold, teacher → adapter → student features → a head, metrics.

Feature set names (the ``features`` column of the report):

* ``peka:<enc>`` — Bone (PEFT MiSS) on a frozen identity projection of the cached features;
* ``peka-tail:<enc>`` — Bone on ``attn.qkv`` of the encoder's last ``k`` blocks, run on the
  cached tokens entering them;
* ``image+peka:<enc>`` — the frozen features concatenated with the ``peka`` student features;
* ``lora:<enc>``, ``adalora:<enc>``, ``hra:<enc>`` — PEFT baselines in the same pipeline, on the
  site chosen by ``peka.baseline_site`` (``features`` or ``tail``);
* ``teacher`` — the teacher embeddings themselves, an upper bound.

Everything that is learned (teacher PCA, k-means, teacher classifier, adapter, head) is fitted on
the training spots of each fold; test spots only receive predictions. Outputs have the layout and
columns of :func:`histofuse.fit.fit_task`, so the report treats these rows like any other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histofuse.errors import HistofuseError

log = logging.getLogger(__name__)

MODES = ("peka", "peka-tail", "image+peka", "lora", "adalora", "hra", "teacher")
DEFAULT_PEKA: dict[str, Any] = {
    "teacher": {"source": "builtin", "dim": 64},
    "clusters": 100,
    "classifier": {"hidden": 512, "epochs": 20, "lr": 1.0e-4, "batch_size": 32},
    "r": 256,
    "hidden": 512,
    "tail_blocks": 1,
    "baseline_site": "features",
    "train": {},
    "seed": 42,
}


def parse_features_name(name: str) -> tuple[str, str | None]:
    """``peka-tail:uni`` → (``peka-tail``, ``uni``); ``teacher`` → (``teacher``, None).

    Raises:
        HistofuseError: For an unknown mode or a missing encoder.
    """
    if name == "teacher":
        return "teacher", None
    mode, _, encoder = name.partition(":")
    if mode not in MODES or mode == "teacher" or not encoder:
        raise HistofuseError(
            f"PEKA feature set {name!r} is not `<mode>:<encoder>` with mode one of "
            f"{', '.join(m for m in MODES if m != 'teacher')}, or `teacher`"
        )
    return mode, encoder


def peka_task(
    task_name: str,
    task: dict[str, Any],
    samples_sheet: str | Path,
    features_name: str,
    head: str,
    head_params: dict[str, Any] | None,
    peka: dict[str, Any] | None,
    metrics_out: str | Path,
    predictions_out: str | Path,
    stores: Sequence[str | Path] = (),
    token_stores: Sequence[str | Path] = (),
) -> pd.DataFrame:
    """Runs one PEKA feature set with one head over all folds of a spot task.

    Args:
        task_name: Task id.
        task: The task config (as for :func:`histofuse.fit.fit_task`).
        samples_sheet: The sample sheet.
        features_name: See the module docstring.
        head: Head id (``hest``, ``ridge``, …).
        head_params: Head hyperparameters.
        peka: The ``peka`` config (overrides of :data:`DEFAULT_PEKA`).
        metrics_out: Metrics parquet.
        predictions_out: Predictions parquet.
        stores: Feature stores of the encoder (all modes but ``peka-tail``, whose baseline site is
            the tail).
        token_stores: Token stores of the encoder (tail modes).

    Returns:
        The metrics table written.
    """
    import torch

    from histofuse.data.expression import read_counts, transform_counts
    from histofuse.evaluation.splits import task_splits
    from histofuse.fit import (
        DEFAULT_TASK,
        _write_parquet,
        load_feature_set,
        metrics_table,
        score_fold,
        select_genes,
    )
    from histofuse.heads.fusion import torch_threads
    from histofuse.heads.probes import make_head
    from histofuse.peka import adapters
    from histofuse.peka.teacher import (
        DEFAULT_TEACHER,
        TeacherClassifier,
        builtin_teacher,
        read_teacher_file,
    )
    from histofuse.samples import load_samples

    t0 = time.perf_counter()
    mode, encoder = parse_features_name(features_name)
    cfg = {**DEFAULT_PEKA, **(peka or {})}
    teacher_cfg = {**DEFAULT_TEACHER, **(cfg["teacher"] or {})}
    clf_cfg = {**DEFAULT_PEKA["classifier"], **(cfg["classifier"] or {})}
    site = {"peka": "features", "image+peka": "features", "peka-tail": "tail"}.get(
        mode, cfg["baseline_site"]
    )
    method = "miss" if mode in ("peka", "peka-tail", "image+peka") else mode
    task = {**DEFAULT_TASK, **task}
    sheet = load_samples(samples_sheet, check_files=False)
    names = task["samples"] or [s for s in sheet.index if sheet.at[s, "expression"]]

    image, tokens, info = None, None, {}
    if mode == "teacher" or site == "features" or mode == "image+peka":
        if not stores:
            raise HistofuseError(f"PEKA {features_name}: no feature stores given")
        image, index, _ = load_feature_set(stores, names)
    if mode != "teacher" and site == "tail":
        if not token_stores:
            raise HistofuseError(f"PEKA {features_name}: no token stores given (tail mode)")
        tokens, tindex, info = adapters_tokens(token_stores, names)
        if image is not None:
            key = pd.MultiIndex.from_frame(tindex[["sample", "barcode"]])
            pos = key.get_indexer(pd.MultiIndex.from_frame(index[["sample", "barcode"]]))
            if (pos < 0).any():
                raise HistofuseError(f"token and feature stores of {encoder} cover other tiles")
            tokens = tokens[pos]
        else:
            index = tindex
    missing = sorted(set(names) - set(index["sample"]))
    if missing:
        raise HistofuseError(f"task {task_name!r}: no cached features for samples {missing}")

    order = np.concatenate([np.flatnonzero(index["sample"] == s) for s in names])
    index = index.iloc[order].reset_index(drop=True)
    image = image[order] if image is not None else None
    tokens = tokens[order] if tokens is not None else None
    counts = pd.concat(
        [
            read_counts(
                sheet.at[s, "expression"], index.loc[index["sample"] == s, "barcode"].to_numpy()
            )
            for s in names
        ],
        ignore_index=True,
    )
    if counts.isna().any().any():
        raise HistofuseError(f"task {task_name!r}: samples disagree on their gene lists")
    raw = counts.to_numpy()
    total = raw.sum(axis=1)
    log_counts = np.log1p(counts)
    genes_cfg = {**DEFAULT_TASK["genes"], **(task["genes"] or {})}
    sample_ids = index["sample"].to_numpy()
    patients = sheet.loc[sample_ids, "patient_id"].to_numpy()
    seeds = [int(v) for v in (task.get("seeds") or [task["seed"]])]
    file_teacher = (
        read_teacher_file(teacher_cfg, sample_ids, index["barcode"].to_numpy())
        if teacher_cfg["source"] == "file"
        else None
    )
    inputs = torch.as_tensor(tokens if site == "tail" and tokens is not None else image)

    metrics, predictions, fold_info = [], [], {}
    with torch_threads(1):  # the one CPU the peka rule reserves
        for seed in seeds:
            for fold, (train, test) in enumerate(
                task_splits(task["split"] or {}, patients, sample_ids, seed)
            ):
                genes = select_genes(log_counts, genes_cfg, train)
                y = transform_counts(counts[genes].to_numpy(), task["transform"], total)
                emb = (
                    file_teacher
                    if file_teacher is not None
                    else builtin_teacher(raw, train, int(teacher_cfg["dim"]), cfg["seed"])
                )
                info_fold: dict[str, Any] = {"genes": genes, "teacher_dim": int(emb.shape[1])}
                if mode == "teacher":
                    x = emb
                else:
                    clf = TeacherClassifier(
                        n_clusters=int(cfg["clusters"]), seed=int(cfg["seed"]), **clf_cfg
                    ).fit(emb[train])
                    train_cfg = {**adapters.DEFAULT_TRAIN, **(cfg["train"] or {})}
                    steps = int(train_cfg["epochs"]) * -(
                        -len(train) // int(train_cfg["batch_size"])
                    )
                    body = (
                        adapters.TailModel(
                            _encoder(encoder, stores, token_stores), int(info["blocks"])
                        )
                        if site == "tail"
                        else adapters.FeatureProjection(inputs.shape[1])
                    )
                    student = adapters.build_student(
                        body,
                        method,
                        int(cfg["r"]),
                        emb.shape[1],
                        int(cfg["hidden"]),
                        steps,
                        cfg["seed"],
                    )
                    history = adapters.train_student(
                        student,
                        inputs[train],
                        torch.as_tensor(emb[train]),
                        torch.as_tensor(clf.labels_),
                        clf.model_,
                        train_cfg,
                        seed=int(cfg["seed"]),
                    )
                    s = adapters.student_features(student, inputs)
                    x = np.concatenate([image, s], axis=1) if mode == "image+peka" else s
                    info_fold.update(
                        loss=history,
                        classifier_accuracy=clf.accuracy_,
                        clusters=int(clf.kmeans_.n_clusters),
                        trainable_params=adapters.n_trainable(student),
                    )
                fold_info[f"{seed}/{fold}"] = info_fold
                est = make_head(head, head_params, seed=seed)
                est.fit(x[train], y[train])
                pred = np.asarray(est.predict(x[test])).reshape(len(test), -1)
                fold_metrics, fold_pred = score_fold(
                    y[test], pred, genes, index.iloc[test], seed, fold
                )
                metrics.append(fold_metrics)
                predictions.append(fold_pred)
    out = metrics_table(metrics, task_name, features_name, head)
    meta = {
        "encoders": [encoder] if encoder else [],
        "peka": {"mode": mode, "site": site, "method": method, "config": cfg, "folds": fold_info},
        "tokens": info,
        "task": task,
        "head_params": head_params or {},
        "seconds": time.perf_counter() - t0,
    }
    _write_parquet(out, metrics_out, meta)
    _write_parquet(pd.concat(predictions, ignore_index=True), predictions_out, {})
    log.info("peka %s/%s/%s in %.1fs", task_name, features_name, head, time.perf_counter() - t0)
    return out


def adapters_tokens(
    token_stores: Sequence[str | Path], names: list[str]
) -> tuple[np.ndarray, pd.DataFrame, dict[str, Any]]:
    """Cached tokens of the task's samples (see :func:`histofuse.peka.tokens.read_tokens`)."""
    from histofuse.peka.tokens import read_tokens

    return read_tokens(token_stores, names)


def _encoder(name: str | None, stores: Sequence[str | Path], token_stores: Sequence[str | Path]):
    """The encoder whose tokens were cached, with the weights recorded in the token store."""
    from histofuse.cache.store import read_provenance
    from histofuse.encoders.model import create_encoder

    prov = read_provenance(token_stores[0])
    source = prov.get("weights_source")
    weights = None if source in (None, "random") or str(source).startswith("hf-hub:") else source
    enc = create_encoder(prov["encoder"]["name"], weights=weights)
    if enc.weights_sha256 != prov.get("weights_sha256"):
        raise HistofuseError(
            f"encoder {name!r} weights differ from those its tokens were cached with "
            f"({token_stores[0]}); re-run its tokens job"
        )
    return enc
