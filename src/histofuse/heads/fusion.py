"""Trained heads and Meta-Encoder fusion strategies: torch modules wrapped as estimators.

Every module takes the concatenated features ``x`` (batch, sum of block widths) and the block
widths ``blocks`` (one per encoder, in the feature set's order) and returns ``(prediction,
auxiliary loss)``.

As released by Meta-Encoder (see the project's methods notes):

* ``concat``: ``Linear(sum d_i, n_genes)``.
* ``self-attn-released``: multi-head attention with query/key/value width ``sum d_i`` and
  embedding width ``embed_dim`` (1024), applied to ``x.unsqueeze(0)``: a sequence of length 1.
  The softmax over one key is identically 1, so the output is ``out_proj(v_proj(x))``: a linear
  bottleneck ``sum d_i → 1024 → 1024`` followed by ``Linear(1024, n_genes)``; the query and key
  projections get no gradient. :meth:`SelfAttnReleased.bottleneck` is that linear form.
* ``cross-attn-released``: one attention per query encoder, queries from that encoder, keys and
  values from one encoder (``kv_block``; the widest by default, as GigaPath in the release);
  outputs concatenated → ``Linear``. At length 1 the prediction depends on the key/value encoder
  alone.
* ``contrastive``: per-encoder ``Linear(d_i, embed_dim)``, projections concatenated →
  ``Linear``; loss adds ``weight`` × the mean pairwise symmetric CLIP loss (cosine similarity,
  ``temperature`` 0.5, in-batch negatives).

Beyond the release:

* ``token-attn``: each encoder projected to ``embed_dim`` as one token (plus a learned encoder
  embedding), one transformer encoder layer across the encoder tokens, mean-pooled → ``Linear``.
* ``mean``: the mean of per-encoder projections → ``Linear``.
* ``gated``: learned softmax weights per encoder over the per-encoder projections → ``Linear``.
* ``linear``: one ``Linear`` (same as ``concat``; the single-encoder probe of Meta-Encoder).
* ``mlp``: ``Linear(sum d_i, hidden) → ReLU → Linear(hidden, n_genes)``.

Training defaults are the release's: MSE, Adam (lr 1e-4, no weight decay), cosine annealing
stepped per batch down to 1e-6, batch 512, the last epoch's model. Seeded and deterministic on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from histofuse.errors import HistofuseError
from histofuse.heads.names import TORCH_HEADS

if TYPE_CHECKING:
    from histofuse.heads.streaming import LazyFeatures

STRATEGIES = TORCH_HEADS

MODULE_PARAMS = ("embed_dim", "num_heads", "hidden", "kv_block", "weight", "temperature")
"""A trained head's hyperparameters that shape its :class:`FusionModule`."""


def module_params(head: object) -> dict[str, object]:
    """The :data:`MODULE_PARAMS` of a head, as keyword arguments of :class:`FusionModule`."""
    return {name: getattr(head, name) for name in MODULE_PARAMS}


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Runs the block with torch on ``n`` CPU threads, then restores the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ReleasedAttention(nn.Module):
    """Multi-head attention with separate query/key/value widths, in the (L, N, E) layout.

    Mirrors the released ``attention_utils.MultiheadAttention``: ``q_proj``, ``k_proj`` and
    ``v_proj`` map their inputs to ``embed_dim``, scaled dot-product attention per head, then
    ``out_proj``.
    """

    def __init__(self, embed_dim: int, num_heads: int, qdim: int, kdim: int, vdim: int) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise HistofuseError(
                f"head hyperparameter embed_dim={embed_dim} must be divisible by "
                f"num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.q_proj = nn.Linear(qdim, embed_dim)
        self.k_proj = nn.Linear(kdim, embed_dim)
        self.v_proj = nn.Linear(vdim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attends ``q`` (L, N, qdim) over ``k``/``v`` (S, N, kdim/vdim); returns (L, N, E)."""
        length, batch, _ = q.shape
        h = self.num_heads

        def split(t: torch.Tensor) -> torch.Tensor:
            s, n, e = t.shape
            return t.reshape(s, n * h, e // h).transpose(0, 1)  # (N·h, S, E/h)

        qh, kh, vh = split(self.q_proj(q)), split(self.k_proj(k)), split(self.v_proj(v))
        attn = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(qh.shape[-1]), dim=-1)
        out = (attn @ vh).transpose(0, 1).reshape(length, batch, -1)
        return self.out_proj(out)


def _projections(blocks: Sequence[int], width: int) -> nn.ModuleList:
    return nn.ModuleList(nn.Linear(d, width) for d in blocks)


def _split(x: torch.Tensor, blocks: Sequence[int]) -> list[torch.Tensor]:
    return list(torch.split(x, list(blocks), dim=1))


def clip_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE over in-batch pairs with cosine similarity (CLIP)."""
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / temperature
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class FusionModule(nn.Module):
    """One head or fusion strategy over encoder blocks.

    Args:
        strategy: One of :data:`STRATEGIES`.
        blocks: Feature width of each encoder, in the order they are concatenated in ``x``.
        n_out: Number of target genes.
        embed_dim: Common width of projections and attention (1024 as released).
        num_heads: Attention heads (8 as released).
        hidden: Hidden width of ``mlp``.
        kv_block: Index of the key/value encoder for ``cross-attn-released`` (None: the widest).
        weight: Weight of the contrastive loss.
        temperature: CLIP temperature.
    """

    def __init__(
        self,
        strategy: str,
        blocks: Sequence[int],
        n_out: int,
        embed_dim: int = 1024,
        num_heads: int = 8,
        hidden: int = 512,
        kv_block: int | None = None,
        weight: float = 0.1,
        temperature: float = 0.5,
    ) -> None:
        super().__init__()
        if strategy not in STRATEGIES:
            raise HistofuseError(
                f"unknown head {strategy!r}; choose one of {', '.join(STRATEGIES)}"
            )
        self.strategy, self.blocks = strategy, [int(b) for b in blocks]
        self.weight, self.temperature = weight, temperature
        total, k = sum(self.blocks), len(self.blocks)
        needs_many = ("cross-attn-released", "contrastive", "token-attn", "mean", "gated")
        if strategy in needs_many and k < 2:
            raise HistofuseError(
                f"head {strategy!r} fuses encoders and needs a feature set of at least two; "
                "list it under heads only for `feature_sets.concat` groups"
            )
        if strategy in ("linear", "concat"):
            self.out = nn.Linear(total, n_out)
        elif strategy == "mlp":
            self.body = nn.Sequential(nn.Linear(total, hidden), nn.ReLU())
            self.out = nn.Linear(hidden, n_out)
        elif strategy == "self-attn-released":
            self.attn = ReleasedAttention(embed_dim, num_heads, total, total, total)
            self.out = nn.Linear(embed_dim, n_out)
        elif strategy == "cross-attn-released":
            self._cross_attention(embed_dim, num_heads, kv_block, n_out)
        else:
            self._projected(embed_dim, num_heads, n_out)

    def _cross_attention(
        self, embed_dim: int, num_heads: int, kv_block: int | None, n_out: int
    ) -> None:
        """Layers of ``cross-attn-released``: one attention per query encoder, then ``out``."""
        k = len(self.blocks)
        kv = int(np.argmax(self.blocks)) if kv_block is None else int(kv_block)
        if not -k <= kv < k:
            raise HistofuseError(
                f"head hyperparameter kv_block={kv_block} is out of range for {k} encoders"
            )
        self.kv = kv % k
        self.queries = [i for i in range(k) if i != self.kv]
        d_kv = self.blocks[self.kv]
        self.attns = nn.ModuleList(
            ReleasedAttention(embed_dim, num_heads, self.blocks[i], d_kv, d_kv)
            for i in self.queries
        )
        self.out = nn.Linear(embed_dim * len(self.queries), n_out)

    def _projected(self, embed_dim: int, num_heads: int, n_out: int) -> None:
        """Layers of the strategies on per-encoder projections (contrastive, token-attn, ...)."""
        k = len(self.blocks)
        self.proj = _projections(self.blocks, embed_dim)
        if self.strategy == "contrastive":
            self.out = nn.Linear(embed_dim * k, n_out)
            return
        if self.strategy == "token-attn":
            self.encoder_embedding = nn.Parameter(torch.zeros(k, embed_dim))
            self.layer = nn.TransformerEncoderLayer(
                embed_dim, num_heads, dim_feedforward=2 * embed_dim, dropout=0.0, batch_first=True
            )
        elif self.strategy == "gated":
            self.gate_logits = nn.Parameter(torch.zeros(k))
        self.out = nn.Linear(embed_dim, n_out)

    def gates(self) -> torch.Tensor:
        """The per-encoder weights of ``gated`` (softmax of learned logits)."""
        return torch.softmax(self.gate_logits, dim=0)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """``self-attn-released`` written as its linear form ``out(out_proj(v_proj(x)))``."""
        return self.out(self.attn.out_proj(self.attn.v_proj(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (prediction (N, n_out), auxiliary loss scalar)."""
        zero = x.new_zeros(())
        s = self.strategy
        if s in ("linear", "concat"):
            return self.out(x), zero
        if s == "mlp":
            return self.out(self.body(x)), zero
        if s == "self-attn-released":
            seq = x.unsqueeze(0)  # (L=1, N, E): the released call
            return self.out(self.attn(seq, seq, seq)[0]), zero
        parts = _split(x, self.blocks)
        if s == "cross-attn-released":
            kv = parts[self.kv].unsqueeze(0)
            outs = [
                attn(parts[i].unsqueeze(0), kv, kv)[0]
                for i, attn in zip(self.queries, self.attns, strict=True)
            ]
            return self.out(torch.cat(outs, dim=1)), zero
        z = [p(part) for p, part in zip(self.proj, parts, strict=True)]
        if s == "contrastive":
            pairs = [(i, j) for i in range(len(z)) for j in range(i + 1, len(z))]
            aux = torch.stack([clip_loss(z[i], z[j], self.temperature) for i, j in pairs]).mean()
            return self.out(torch.cat(z, dim=1)), self.weight * aux
        stack = torch.stack(z, dim=1)  # (N, k, E)
        if s == "token-attn":
            return self.out(self.layer(stack + self.encoder_embedding).mean(dim=1)), zero
        if s == "mean":
            return self.out(stack.mean(dim=1)), zero
        return self.out((stack * self.gates()[None, :, None]).sum(dim=1)), zero


class TorchHead(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """A :class:`FusionModule` trained as released, as a scikit-learn estimator.

    Args:
        strategy: One of :data:`STRATEGIES`.
        blocks: Encoder block widths of ``X`` (None: one block, the whole of ``X``). The fit stage
            sets it from the feature set.
        embed_dim: Common width (1024 as released).
        num_heads: Attention heads (8 as released).
        hidden: Hidden width of ``mlp``.
        kv_block: Key/value encoder of ``cross-attn-released`` (None: the widest block).
        weight: Contrastive loss weight (0.1 as released on HEST).
        temperature: CLIP temperature (0.5 as released).
        epochs: Training epochs (50 as released on HEST).
        batch_size: Minibatch size (512 as released).
        lr: Adam learning rate (1e-4 as released).
        min_lr: Floor of the per-step cosine schedule (1e-6 as released).
        weight_decay: Adam weight decay (0 as released).
        standardize: Standardise ``X`` with statistics of the training data (not in the release).
        random_state: Seed of initialisation and batch order.
        threads: CPU threads torch uses while fitting and predicting (restored afterwards). One
            is about ten times faster than two for these small matrices on a 2-core machine.
    """

    def __init__(
        self,
        strategy: str = "concat",
        blocks: Sequence[int] | None = None,
        embed_dim: int = 1024,
        num_heads: int = 8,
        hidden: int = 512,
        kv_block: int | None = None,
        weight: float = 0.1,
        temperature: float = 0.5,
        epochs: int = 50,
        batch_size: int = 512,
        lr: float = 1e-4,
        min_lr: float = 1e-6,
        weight_decay: float = 0.0,
        standardize: bool = False,
        random_state: int = 1,
        threads: int = 1,
    ) -> None:
        self.strategy = strategy
        self.blocks = blocks
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.hidden = hidden
        self.kv_block = kv_block
        self.weight = weight
        self.temperature = temperature
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.min_lr = min_lr
        self.weight_decay = weight_decay
        self.standardize = standardize
        self.random_state = random_state
        self.threads = threads

    def _blocks(self, n_features: int) -> list[int]:
        """The encoders' block widths (one block: all features), checked against the input."""
        blocks = list(self.blocks) if self.blocks else [n_features]
        if sum(blocks) != n_features:
            raise HistofuseError(
                f"head {self.strategy!r}: block widths {blocks} do not add up to the "
                f"{n_features} features"
            )
        return blocks

    def _module(self, n_features: int, n_out: int) -> FusionModule:
        return FusionModule(self.strategy, self._blocks(n_features), n_out, **module_params(self))

    def fit(self, X: np.ndarray, y: np.ndarray) -> TorchHead:
        """Trains the module on ``X`` (N, D) and targets ``y`` (N,) or (N, G)."""
        with torch_threads(self.threads):
            return self._fit(X, y)

    def fit_stream(self, X: LazyFeatures, y: np.ndarray, batch_rows: int) -> TorchHead:
        """Trains on features streamed from the cache in blocks of about ``batch_rows`` rows.

        See :mod:`histofuse.heads.streaming` for how this differs from :meth:`fit`: the scaler is
        fitted batch by batch and each epoch shuffles blocks of rows, then rows within a block.
        """
        from histofuse.heads.streaming import partial_scaler

        with torch_threads(self.threads):
            y = np.asarray(y)
            if len(y) != len(X):
                raise HistofuseError(f"{len(X)} feature rows but {len(y)} target rows")
            self.n_features_in_ = X.shape[1]
            self.scaler_ = partial_scaler(X, batch_rows) if self.standardize else None
            # Blocks are whole minibatches, so an epoch takes as many steps as in memory.
            rows = max(self.batch_size, batch_rows // self.batch_size * self.batch_size)
            return self._train(len(X), y, lambda: self._stream_epoch(X, rows))

    def _fit(self, X: np.ndarray, y: np.ndarray) -> TorchHead:
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True)
        self.scaler_ = StandardScaler().fit(X) if self.standardize else None
        xt = torch.from_numpy(self._prepare(X))
        return self._train(len(X), y, lambda: [(xt, None)])

    def _stream_epoch(self, X: LazyFeatures, rows: int) -> Iterator[tuple[torch.Tensor, slice]]:
        from histofuse.heads.streaming import batch_bounds

        bounds = batch_bounds(len(X), rows)
        for b in torch.randperm(len(bounds), generator=self._gen).tolist():
            start, stop = bounds[b]
            yield torch.from_numpy(self._prepare(X.read(slice(start, stop)))), slice(start, stop)

    def _train(
        self,
        n: int,
        y: np.ndarray,
        epoch_blocks: Callable[[], Iterable[tuple[torch.Tensor, slice | None]]],
    ) -> TorchHead:
        """The released training loop over blocks of rows (one block: all rows, in memory)."""
        self.single_output_ = y.ndim == 1
        yt = torch.from_numpy(np.asarray(y).reshape(len(y), -1).astype(np.float32))
        torch.manual_seed(self.random_state)
        self._gen = torch.Generator().manual_seed(self.random_state)
        module = self._module(self.n_features_in_, yt.shape[1])
        opt = torch.optim.Adam(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        steps = max(1, self.epochs * math.ceil(n / self.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=self.min_lr)
        module.train()
        self.loss_curve_: list[float] = []
        for _ in range(self.epochs):
            total = 0.0
            for xb, rows in epoch_blocks():
                yb = yt if rows is None else yt[rows]
                order = torch.randperm(len(xb), generator=self._gen)
                for start in range(0, len(xb), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    pred, aux = module(xb[idx])
                    loss = F.mse_loss(pred, yb[idx]) + aux
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                    total += loss.item() * len(idx)
            self.loss_curve_.append(total / n)
        module.eval()
        self.module_ = module
        del self._gen
        return self

    def _prepare(self, X: np.ndarray) -> np.ndarray:
        x = self.scaler_.transform(X) if self.scaler_ is not None else X
        return np.ascontiguousarray(x, dtype=np.float32)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicts targets for ``X``."""
        check_is_fitted(self, "module_")
        X = validate_data(self, X, reset=False)
        with torch_threads(self.threads), torch.no_grad():
            pred = self.module_(torch.from_numpy(self._prepare(X)))[0].numpy()
        return pred[:, 0] if self.single_output_ else pred
