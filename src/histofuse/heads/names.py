"""Head names, importable at workflow parse time (no torch, no scikit-learn).

Fusion heads combine several encoders and are planned only for multi-encoder feature sets.
"""

TORCH_HEADS = (
    "linear",
    "mlp",
    "concat",
    "self-attn-released",
    "cross-attn-released",
    "contrastive",
    "token-attn",
    "mean",
    "gated",
)
FUSION_HEADS = frozenset(
    {
        "concat",
        "self-attn-released",
        "cross-attn-released",
        "contrastive",
        "token-attn",
        "mean",
        "gated",
    }
)
