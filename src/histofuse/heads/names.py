"""Head and hyperparameter names, importable at workflow parse time (no torch, no scikit-learn).

Fusion heads combine several encoders and are planned only for multi-encoder feature sets. The
hyperparameter names let the plan check ``heads:`` before any job; they are the estimators'
``get_params()`` keys (less the internal ``strategy`` and ``blocks``), which a test holds equal.
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

_TORCH_PARAMS = frozenset(
    ("batch_size", "embed_dim", "epochs", "hidden", "kv_block", "lr", "min_lr", "num_heads",
     "random_state", "standardize", "temperature", "threads", "weight", "weight_decay")
)  # fmt: skip

#: Spot head → its hyperparameters (``histofuse.heads.probes.make_head``).
HEAD_PARAMS: dict[str, frozenset[str]] = {
    "hest": frozenset(("alpha", "cap_components", "max_iter", "n_components", "random_state")),
    "hest-alphacv": frozenset(("alphas", "cap_components", "n_components", "random_state")),
    "ridge": frozenset(("alpha", "random_state")),
    **{name: _TORCH_PARAMS for name in TORCH_HEADS},
}
#: Hyperparameters of a bulk head on pooled slide vectors (``mean``, ``slide``).
SLIDE_HEAD_PARAMS = _TORCH_PARAMS | {"latent_dim"}
#: Hyperparameters of a bulk head under ``abmil`` (its ``heads`` entry plus ``abmil``).
ABMIL_PARAMS = SLIDE_HEAD_PARAMS | {"attention_dim"}
