"""The encoder verbs: ``embed`` (features), ``tokens`` (PEKA's token cache), ``encoders``."""

from __future__ import annotations

import argparse
import json

from histofuse import settings
from histofuse.cli import document
from histofuse.settings import Embed


def _settings(args: argparse.Namespace) -> Embed:
    """The ``embed`` section given with ``--embed`` (a key left out takes the schema default)."""
    return settings.load(Embed, "embed", document(args.embed, "--embed"))


def _embed(args: argparse.Namespace) -> None:
    from histofuse.embed import Features
    from histofuse.encoders.run import run_encoder

    cfg = _settings(args)
    output = Features(cfg.dtype, compile=args.compile)
    run_encoder(output, args.tiles, args.encoder, args.out, args.weights, cfg)


def _tokens(args: argparse.Namespace) -> None:
    from histofuse.encoders.run import run_encoder
    from histofuse.peka.tokens import Tokens

    output = Tokens(args.blocks, args.dtype)
    run_encoder(output, args.tiles, args.encoder, args.out, args.weights, _settings(args))


def _encoders(args: argparse.Namespace) -> None:
    from histofuse.encoders.registry import get_spec, list_encoders

    rows = []
    for name in list_encoders():
        spec = get_spec(name)
        n_params = spec.n_params
        if args.count or args.json:
            from histofuse.encoders.model import build_trunk

            n_params = sum(p.numel() for p in build_trunk(spec, device="meta").parameters())
        rows.append(
            {
                "name": name,
                "embed_dim": spec.embed_dim,
                "n_params": n_params,
                "input_size": spec.input_size,
                "mean": list(spec.mean),
                "std": list(spec.std),
                "pooling": spec.pooling,
                "weights": spec.weights,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'name':<16} {'dim':>5} {'params':>12} {'input':>5} {'pooling':<9} weights")
    for r in rows:
        params = f"{r['n_params']:,}" if r["n_params"] else "-"
        print(
            f"{r['name']:<16} {r['embed_dim']:>5} {params:>12} {r['input_size']:>5} "
            f"{r['pooling']:<9} {r['weights']}"
        )


def _job_arguments(s: argparse.ArgumentParser) -> None:
    """The arguments of one encoder job: encoder, tiles, store, weights and embed settings."""
    s.add_argument("--encoder", required=True, help="registered encoder (see `histofuse encoders`)")
    s.add_argument(
        "--tiles",
        nargs="+",
        required=True,
        help="tiles parquet files of `histofuse tile`, one per sample; stored in this order",
    )
    s.add_argument(
        "--out", required=True, help="store to write (.zarr directory; its manifest goes beside it)"
    )
    s.add_argument(
        "--weights",
        default=None,
        help="weights file (.pt/.pth/.bin/.safetensors) or hub id, as config `weights.<encoder>`; "
        "default: the registry's weights of the encoder",
    )
    s.add_argument(
        "--embed",
        default="{}",
        help="the `embed` config section as inline JSON or a .json/.yaml file, e.g. "
        '\'{"batch_size": 128, "device": "cpu"}\'; a key left out takes the schema\'s default '
        "(default: %(default)s, all of the schema's `embed` defaults)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Adds this module's verbs to the ``histofuse`` parser."""
    s = sub.add_parser("embed", help="embed the tiles of a shard with one encoder")
    _job_arguments(s)
    s.add_argument(
        "--compile", action="store_true", help="wrap the model in torch.compile (default: off)"
    )
    s.set_defaults(func=_embed)

    s = sub.add_parser(
        "tokens",
        help="cache the tokens entering a ViT's last blocks (used by the workflow for PEKA's tail)",
    )
    _job_arguments(s)
    s.add_argument(
        "--blocks",
        type=int,
        required=True,
        help="k: the tokens entering the last k blocks are cached (config `peka.tail_blocks`)",
    )
    s.add_argument(
        "--dtype",
        required=True,
        choices=["float16", "float32"],
        help="token dtype on disk (config `peka.tokens_dtype`)",
    )
    s.set_defaults(func=_tokens)

    s = sub.add_parser("encoders", help="list the encoder registry")
    s.add_argument(
        "--json", action="store_true", help="print one JSON list instead of a table (default: off)"
    )
    s.add_argument(
        "--count",
        action="store_true",
        help="count parameters from the built architecture (meta device; default: off, the "
        "registry's counts; always on with --json)",
    )
    s.set_defaults(func=_encoders)
