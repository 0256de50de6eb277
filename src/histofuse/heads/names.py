"""Head names, importable at workflow parse time (no torch, no scikit-learn).

Fusion heads combine several encoders and are planned only for multi-encoder feature sets.
"""

_FUSION = (
    "concat",
    "self-attn-released",
    "cross-attn-released",
    "contrastive",
    "token-attn",
    "mean",
    "gated",
)
TORCH_HEADS = ("linear", "mlp", *_FUSION)
FUSION_HEADS = frozenset(_FUSION)
