"""What a feature store was made from, compared with what the config asks for.

A store's cache key is a hash that includes its weights' content, which is known only once the
weights are loaded; its parts known at parse time are recorded in its provenance: the encoder
spec, the weights source, the tiling spec's fingerprint and the feature dtype. The plan gives
each reader the parts the config asks for (:func:`expected_key`, one per encoder), and the
reader refuses a store made from anything else (:func:`check_store_key`): a cache copied from
another run, or kept after a config change that Snakemake did not see, is never used as if it
were current.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from histofuse.errors import HistofuseError

KEY_PARTS = ("encoder", "weights", "weights_sha256", "tiling", "dtype")
"""The parts of an expected key, in the order a mismatch names them."""

_CONFIG_KEYS = {
    "encoder": "the encoder's spec (`encoders`)",
    "weights": "`weights`",
    "weights_sha256": "the content of the `weights` file",
    "tiling": "`tiling`",
    "dtype": "`embed.dtype`",
}


def expected_key(
    spec: Any, weights: str | None, tiling: str, dtype: str, weights_sha256: str | None = None
) -> dict[str, str]:
    """The parts of a store's key that the config decides.

    Args:
        spec: The encoder's :class:`~histofuse.encoders.registry.EncoderSpec`.
        weights: The configured weights source, or None for the spec's own.
        tiling: The fingerprint of the tiling spec the store's tiles are cut with.
        dtype: The configured feature dtype (``embed.dtype``).
        weights_sha256: The sha256 of the configured weights file, when it is a file (the
            store must have loaded these very bytes); None compares no content.
    """
    key = {
        "encoder": spec.fingerprint(),
        "weights": str(weights if weights is not None else spec.weights),
        "tiling": tiling,
        "dtype": dtype,
    }
    if weights_sha256 is not None:
        key["weights_sha256"] = weights_sha256
    return key


def recorded_key(provenance: dict[str, Any]) -> dict[str, str | None]:
    """The same parts as :func:`expected_key`, as a store's provenance records them."""
    from histofuse.encoders.registry import EncoderSpec

    try:
        encoder = EncoderSpec(**provenance["encoder"]).fingerprint()
    except (KeyError, TypeError, ValueError):  # no spec, or one this version cannot build
        encoder = None
    return {
        "encoder": encoder,
        "weights": provenance.get("weights_source"),
        "weights_sha256": provenance.get("weights_sha256"),
        "tiling": provenance.get("tiling_fingerprint"),
        "dtype": provenance.get("dtype"),
    }


def check_store_key(
    store: str | Path, provenance: dict[str, Any], expected: dict[str, str]
) -> None:
    """Refuses a store whose recorded key parts differ from the expected ones.

    A store without tiles (every sample failed at tiling) records no tiling fingerprint; its
    tiling is not compared.

    Raises:
        HistofuseError: Naming the store, each differing part with both values, and the command
            that rebuilds the store.
    """
    from histofuse.cache.manifest import rebuild_hint

    got = recorded_key(provenance)
    differ = [
        part
        for part in KEY_PARTS
        if part in expected
        and got[part] != expected[part]
        and not (part == "tiling" and got[part] == "")
    ]
    if differ:
        names = dict(_CONFIG_KEYS)
        if "tokens" in provenance:  # a token store: its dtype is the tokens'
            names["dtype"] = "`peka.tokens_dtype`"
        what = "; ".join(f"{names[p]}: store {got[p]!r}, config {expected[p]!r}" for p in differ)
        raise HistofuseError(
            f"feature store {store} was made with another configuration than this run's ({what})"
            f": it is stale (the config changed, or the cache was copied from another run); "
            f"{rebuild_hint(store)}"
        )
