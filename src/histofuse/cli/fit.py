"""The fit verbs: ``fit`` (spot heads), ``bulk-fit`` (slide heads), ``peka`` (PEKA adapters).

Sections come as one document each (``--task-json``, ``--head-params``, ``--peka``: inline JSON
or a ``.json``/``.yaml`` file), validated against the config schema, which fills the defaults.
``--task-json`` is the task's config section (``tasks.<name>``, or ``bulk.<name>`` for
``bulk-fit``) as the workflow passes it; run by hand, copy that block of the config into a
``.yaml`` file, or give ``'{}'`` for a spot task with every default.
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


_TASK_JSON = (
    "the task's config section (`{section}.<name>` of config.yaml) as inline JSON or a "
    ".json/.yaml file, as the workflow passes it: copy that block into a file, e.g. "
    "`{example}`; a key left out takes the schema's default{note}"
)
_HEAD_PARAMS = (
    "the head's hyperparameters (config `heads.<head>`{extra}) as inline JSON or a .json/.yaml "
    "file, e.g. '{{\"n_components\": 128}}' (default: %(default)s, the head's own defaults)"
)


def _cache_keys_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-keys",
        default=None,
        help="encoder → the key parts its stores must carry (JSON or a file; used by the workflow, "
        "which passes the configured ones); stores made otherwise are refused (default: none, "
        "no check)",
    )


def _outputs_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics", required=True, help="metrics parquet to write (per-gene Pearson)"
    )
    parser.add_argument(
        "--predictions", required=True, help="predictions parquet to write (held-out predictions)"
    )


def _spot_verb_flags(parser: argparse.ArgumentParser, features: str) -> None:
    """The flags ``fit`` and ``peka`` share: task, its settings, samples, features, head."""
    parser.add_argument("--task", required=True, help="task name (a key of config `tasks`)")
    parser.add_argument(
        "--task-json",
        required=True,
        help=_TASK_JSON.format(section="tasks", example="tasks.yaml", note="; '{}' takes them all"),
    )
    parser.add_argument(
        "--samples", required=True, help="sample sheet (.csv/.tsv, as config `samples`)"
    )
    parser.add_argument("--features", required=True, help=features)
    parser.add_argument("--head", required=True, help="head name (a key of config `heads`)")
    parser.add_argument("--head-params", default="{}", help=_HEAD_PARAMS.format(extra=""))


def register(sub: argparse._SubParsersAction) -> None:
    """Adds this module's verbs to the ``histofuse`` parser."""
    s = sub.add_parser("fit", help="fit one head on one feature set for one task")
    _spot_verb_flags(s, "feature set: an encoder, or a fusion of config `feature_sets`")
    s.add_argument(
        "--stores", nargs="+", required=True, help="feature stores (.zarr) of the feature set"
    )
    _outputs_flags(s)
    s.add_argument(
        "--memory-budget-mb",
        type=float,
        default=None,
        help="stream features from the cache when they exceed this many MiB (float32); "
        "default: none, hold them in memory (the workflow passes config fit.memory_budget_mb, "
        "whose schema default is none too)",
    )
    _cache_keys_flag(s)
    s.set_defaults(func=_fit)

    s = sub.add_parser("bulk-fit", help="fit one slide head for a slide-level bulk task")
    s.add_argument("--task", required=True, help="bulk task name (a key of config `bulk`)")
    s.add_argument(
        "--task-json",
        required=True,
        help=_TASK_JSON.format(
            section="bulk",
            example="bulk.yaml",
            note="; its table comes with --table (the workflow leaves out table, heads, abmil, "
            "feature_sets, aggregations and slide_embeddings)",
        ),
    )
    s.add_argument("--samples", required=True, help="sample sheet (slide → case)")
    s.add_argument("--table", required=True, help="bulk table (.csv/.tsv/.parquet/.h5ad)")
    s.add_argument("--features", required=True, help="feature set: an encoder or slide encoder")
    s.add_argument(
        "--aggregation",
        required=True,
        choices=["mean", "abmil", "slide"],
        help="slide vectors: mean of tiles, ABMIL over tiles, or slide-embedding files",
    )
    s.add_argument("--stores", nargs="*", help="feature stores (mean, abmil; default: none)")
    s.add_argument("--embeddings", nargs="*", help="slide embedding tables (slide; default: none)")
    s.add_argument("--head", required=True, help="head name (a key of the task's `heads`)")
    s.add_argument(
        "--head-params",
        default="{}",
        help=_HEAD_PARAMS.format(extra=", with the task's `abmil` for --aggregation abmil"),
    )
    _outputs_flags(s)
    _cache_keys_flag(s)
    s.set_defaults(func=_bulk_fit)

    s = sub.add_parser("peka", help="train PEKA adapters per fold and fit one head on them")
    _spot_verb_flags(s, "PEKA feature set `mode:encoder`, e.g. peka:uni, peka-tail:uni, teacher")
    s.add_argument("--stores", nargs="*", help="feature stores of the encoder (default: none)")
    s.add_argument(
        "--token-stores",
        nargs="*",
        help="token stores of `histofuse tokens` (tail modes; default: none)",
    )
    s.add_argument(
        "--peka",
        default="{}",
        help="the config's `peka` section (JSON or a .json/.yaml file); a key left out takes the "
        "schema's default (default: %(default)s, the schema's `peka` defaults, the released "
        "PEKA settings)",
    )
    _outputs_flags(s)
    _cache_keys_flag(s)
    s.set_defaults(func=_peka)
