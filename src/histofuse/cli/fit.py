"""The fit verbs: ``fit`` (spot heads), ``bulk-fit`` (slide heads), ``peka`` (PEKA adapters).

Sections come as one document each (``--task-json``, ``--head-params``, ``--peka``: inline JSON
or a ``.json``/``.yaml`` file), validated against the config schema, which fills the defaults.
"""

from __future__ import annotations

import argparse
from typing import Any

from histofuse.cli import document


def _task(args: argparse.Namespace) -> Any:
    from histofuse import settings

    doc = document(args.task_json, "--task-json")
    return settings.load(settings.Task, "tasks", doc, label=f"tasks.{args.task}")


def _check_cache_keys(args: argparse.Namespace, stores: Any, dtype: str | None = None) -> None:
    """Refuses stores whose key differs from ``--cache-keys`` (when given), before any work.

    ``dtype`` replaces the expected dtype (token stores hold ``peka.tokens_dtype``).

    Raises:
        HistofuseError: If the keys are malformed or a store's key differs.
    """
    if args.cache_keys is None or not stores:
        return
    from histofuse.errors import HistofuseError
    from histofuse.evaluation.features import stores_by_encoder

    keys = document(args.cache_keys, "--cache-keys")
    if not all(isinstance(k, dict) for k in keys.values()):
        raise HistofuseError("--cache-keys must map each encoder to its key parts (JSON)")
    if dtype is not None:
        keys = {e: {**k, "dtype": dtype} for e, k in keys.items()}
    stores_by_encoder(stores, keys)


def _fit(args: argparse.Namespace) -> None:
    from histofuse.fit import fit_task

    _check_cache_keys(args, args.stores)
    fit_task(
        args.task,
        _task(args),
        args.samples,
        args.stores,
        args.features,
        args.head,
        document(args.head_params, "--head-params"),
        args.metrics,
        args.predictions,
        memory_budget_mb=args.memory_budget_mb,
    )


def _bulk_fit(args: argparse.Namespace) -> None:
    from histofuse import settings
    from histofuse.bulk.evaluate import fit_bulk_task

    _check_cache_keys(args, args.stores)
    # The rule passes the table as --table, not in the task's document.
    doc = {**document(args.task_json, "--task-json"), "table": args.table}
    fit_bulk_task(
        args.task,
        settings.load(settings.BulkTask, "bulk", doc, label=f"bulk.{args.task}"),
        args.samples,
        args.features,
        args.aggregation,
        args.head,
        document(args.head_params, "--head-params"),
        args.metrics,
        args.predictions,
        stores=args.stores or (),
        embeddings=args.embeddings or (),
    )


def _peka(args: argparse.Namespace) -> None:
    from histofuse import settings
    from histofuse.peka.run import peka_task

    peka = settings.load(settings.Peka, "peka", document(args.peka, "--peka"))
    _check_cache_keys(args, args.stores)
    _check_cache_keys(args, args.token_stores, dtype=peka.tokens_dtype)
    peka_task(
        args.task,
        _task(args),
        args.samples,
        args.features,
        args.head,
        document(args.head_params, "--head-params"),
        peka,
        args.metrics,
        args.predictions,
        stores=args.stores or (),
        token_stores=args.token_stores or (),
    )


def _cache_keys_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-keys",
        default=None,
        help="encoder → the key parts its stores must carry (JSON or a file; the workflow "
        "passes the configured ones); stores made otherwise are refused",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Adds this module's verbs to the ``histofuse`` parser."""
    s = sub.add_parser("fit", help="fit one head on one feature set for one task")
    s.add_argument("--task", required=True)
    s.add_argument("--task-json", required=True, help="the task's settings (JSON or a file)")
    s.add_argument("--samples", required=True, help="sample sheet")
    s.add_argument("--stores", nargs="+", required=True)
    s.add_argument("--features", required=True, help="feature set name")
    s.add_argument("--head", required=True)
    s.add_argument("--head-params", default="{}", help="head hyperparameters (JSON or a file)")
    s.add_argument("--metrics", required=True)
    s.add_argument("--predictions", required=True)
    s.add_argument(
        "--memory-budget-mb",
        type=float,
        default=None,
        help="stream features from the cache when they exceed this many MiB (float32)",
    )
    _cache_keys_flag(s)
    s.set_defaults(func=_fit)

    s = sub.add_parser("bulk-fit", help="fit one slide head for a slide-level bulk task")
    s.add_argument("--task", required=True)
    s.add_argument("--task-json", required=True, help="the task's settings (JSON or a file)")
    s.add_argument("--samples", required=True, help="sample sheet (slide → case)")
    s.add_argument("--table", required=True, help="bulk table (.csv/.tsv/.parquet/.h5ad)")
    s.add_argument("--features", required=True, help="feature set name")
    s.add_argument("--aggregation", required=True, choices=["mean", "abmil", "slide"])
    s.add_argument("--stores", nargs="*", help="feature stores (mean, abmil)")
    s.add_argument("--embeddings", nargs="*", help="slide embedding tables (slide)")
    s.add_argument("--head", required=True)
    s.add_argument("--head-params", default="{}", help="head hyperparameters (JSON or a file)")
    s.add_argument("--metrics", required=True)
    s.add_argument("--predictions", required=True)
    _cache_keys_flag(s)
    s.set_defaults(func=_bulk_fit)

    s = sub.add_parser("peka", help="train PEKA adapters per fold and fit one head on them")
    s.add_argument("--task", required=True)
    s.add_argument("--task-json", required=True, help="the task's settings (JSON or a file)")
    s.add_argument("--samples", required=True, help="sample sheet")
    s.add_argument("--features", required=True, help="e.g. peka:uni, peka-tail:uni, teacher")
    s.add_argument("--stores", nargs="*", help="feature stores of the encoder")
    s.add_argument("--token-stores", nargs="*", help="token stores of the encoder (tail modes)")
    s.add_argument("--head", required=True)
    s.add_argument("--head-params", default="{}", help="head hyperparameters (JSON or a file)")
    s.add_argument("--peka", default="{}", help="the `peka` settings (JSON or a file)")
    s.add_argument("--metrics", required=True)
    s.add_argument("--predictions", required=True)
    _cache_keys_flag(s)
    s.set_defaults(func=_peka)
