"""Slide-level heads: the released bulk MLP, fusion strategies with its tail, and ABMIL.

As released for the WSI-level bulk task (see the project's methods notes), every strategy ends in
``Linear(·, 512) → ReLU → Linear(512, n_genes)`` rather than the patch level's single
``Linear``: the single-encoder and ``concat`` heads are ``d → 512 → ReLU → genes``,
``self-attn-released`` is the length-1 attention followed by ``1024 → 512 → ReLU → genes``,
``cross-attn-released`` and ``contrastive`` concatenate their outputs into the same tail.
:func:`slide_module` builds these by replacing the ``out`` layer of a
:class:`~histofuse.heads.fusion.FusionModule`.

:class:`ABMILRegressor` learns the slide embedding end to end: gated attention (Ilse et al.,
2018) scores every tile, the slide vector is the attention-weighted mean of the tile features
(so it keeps the encoders' block layout and any fusion strategy can follow), and a slide head
predicts the genes. Bags are streamed from the cache in chunks of the memory budget; the
gradient through the softmax over all tiles of a bag is computed exactly in two passes:

1. without gradient, an online log-sum-exp gives the bag's normaliser ``L`` and slide vector
   ``z = Σ exp(a_i - L) x_i``; the head's loss on ``z`` is back-propagated, giving
   ``g = ∂loss/∂z``;
2. per chunk, the attention scores ``a_i`` are recomputed with gradient and
   ``Σ_i w_i (g·x_i − g·z) a_i`` (``w_i = exp(a_i − L)``, detached) is back-propagated; summed
   over chunks this is exactly ``g · ∂z/∂θ``.

Memory is one chunk per bag in flight, whatever the bag's size; a bag within the budget is read
once per step and kept for the second pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted
from torch import nn

from histofuse.bulk.bags import SlideBags
from histofuse.errors import HistofuseError
from histofuse.heads.fusion import FusionModule, TorchHead, module_params, torch_threads


def slide_module(
    strategy: str,
    blocks: Sequence[int],
    n_out: int,
    latent_dim: int | None = 512,
    **kwargs: object,
) -> FusionModule:
    """A fusion module with the released slide-level tail ``Linear(·, latent) → ReLU → Linear``.

    ``mlp`` already is ``d → hidden → ReLU → genes`` (``hidden`` 512 as released) and gets no
    extra tail; ``latent_dim=None`` keeps the patch-level single ``Linear``.
    """
    module = FusionModule(strategy, blocks, n_out, **kwargs)  # type: ignore[arg-type]
    if latent_dim and strategy != "mlp":
        width = module.out.in_features
        module.out = nn.Sequential(
            nn.Linear(width, int(latent_dim)), nn.ReLU(), nn.Linear(int(latent_dim), n_out)
        )
    return module


class SlideHead(TorchHead):
    """A :class:`~histofuse.heads.fusion.TorchHead` on slide vectors with the released tail.

    Args:
        latent_dim: Width of the ``Linear → ReLU`` tail (512 as released; None: none).
        **others: As :class:`~histofuse.heads.fusion.TorchHead`. ``hidden`` is the width of
            ``mlp`` (512 as released).
    """

    def __init__(
        self,
        strategy: str = "mlp",
        blocks: Sequence[int] | None = None,
        embed_dim: int = 1024,
        num_heads: int = 8,
        hidden: int = 512,
        kv_block: int | None = None,
        weight: float = 0.1,
        temperature: float = 0.5,
        epochs: int = 300,
        batch_size: int = 256,
        lr: float = 1e-4,
        min_lr: float = 1e-6,
        weight_decay: float = 0.0,
        standardize: bool = False,
        random_state: int = 1,
        threads: int = 1,
        latent_dim: int | None = 512,
    ) -> None:
        super().__init__(
            strategy=strategy,
            blocks=blocks,
            embed_dim=embed_dim,
            num_heads=num_heads,
            hidden=hidden,
            kv_block=kv_block,
            weight=weight,
            temperature=temperature,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            min_lr=min_lr,
            weight_decay=weight_decay,
            standardize=standardize,
            random_state=random_state,
            threads=threads,
        )
        self.latent_dim = latent_dim

    def _module(self, n_features: int, n_out: int) -> FusionModule:
        return slide_module(
            self.strategy,
            self._blocks(n_features),
            n_out,
            latent_dim=self.latent_dim,
            **module_params(self),
        )


class GatedAttention(nn.Module):
    """Gated attention scores ``w·(tanh(V x) ⊙ sigmoid(U x))`` of each tile (Ilse et al.)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.V = nn.Linear(dim, hidden)
        self.U = nn.Linear(dim, hidden)
        self.w = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores (N,) of tiles ``x`` (N, dim)."""
        return self.w(torch.tanh(self.V(x)) * torch.sigmoid(self.U(x)))[:, 0]


class ABMILRegressor(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """Gated-attention MIL pooling plus a slide head, trained end to end on streamed bags.

    ``fit(slides, y, bags=...)`` and ``predict(slides, bags=...)`` take slide ids and the
    :class:`~histofuse.bulk.bags.SlideBags` they are read from.

    Args:
        strategy: Slide head on the pooled vector (``mlp`` or a fusion strategy).
        attention_dim: Hidden width of the gated attention (128 as in Ilse et al.).
        latent_dim: Width of the released ``Linear → ReLU`` tail of fusion strategies.
        embed_dim, num_heads, hidden, kv_block, weight, temperature: As
            :class:`~histofuse.heads.fusion.TorchHead`.
        epochs: Passes over the training slides.
        batch_size: Slides per optimisation step.
        lr, min_lr, weight_decay: Adam with per-step cosine annealing, as the released heads.
        standardize: Standardise tile features with statistics of the training tiles.
        random_state: Seed of initialisation and slide order.
        threads: CPU threads torch uses while fitting and predicting.
    """

    def __init__(
        self,
        strategy: str = "mlp",
        attention_dim: int = 128,
        latent_dim: int | None = 512,
        embed_dim: int = 1024,
        num_heads: int = 8,
        hidden: int = 512,
        kv_block: int | None = None,
        weight: float = 0.1,
        temperature: float = 0.5,
        epochs: int = 100,
        batch_size: int = 32,
        lr: float = 1e-4,
        min_lr: float = 1e-6,
        weight_decay: float = 0.0,
        standardize: bool = False,
        random_state: int = 1,
        threads: int = 1,
    ) -> None:
        self.strategy = strategy
        self.attention_dim = attention_dim
        self.latent_dim = latent_dim
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

    # -- streaming -------------------------------------------------------------------------
    def _chunks(self, bags: SlideBags, slide: str):
        for chunk in bags.chunks(slide):
            if self.scale_ is not None:
                chunk = (chunk - self.scale_[0]) / self.scale_[1]
            yield torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))

    def _pool(
        self, bags: SlideBags, slide: str, keep: dict | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pass 1: the slide vector and log-normaliser, without gradient."""
        m = torch.tensor(-math.inf)
        s = torch.tensor(0.0)
        acc = torch.zeros(bags.dim)
        first, n_chunks = None, 0
        with torch.no_grad():
            for x in self._chunks(bags, slide):
                a = self.attention_(x)
                new_m = torch.maximum(m, a.max())
                e = torch.exp(a - new_m)
                scale = torch.exp(m - new_m)
                s = s * scale + e.sum()
                acc = acc * scale + e @ x
                m = new_m
                first, n_chunks = (x if n_chunks == 0 else None), n_chunks + 1
        if keep is not None and n_chunks == 1:
            keep[slide] = first
        return acc / s, m + torch.log(s)

    def _attention_backward(
        self,
        bags: SlideBags,
        slide: str,
        z: torch.Tensor,
        lse: torch.Tensor,
        g: torch.Tensor,
        keep: dict,
    ) -> None:
        """Pass 2: accumulates ``g · ∂z/∂θ`` into the attention's gradients, chunk by chunk."""
        gz = torch.dot(g, z)
        chunks = [keep[slide]] if slide in keep else self._chunks(bags, slide)
        for x in chunks:
            a = self.attention_(x)
            w = torch.exp(a.detach() - lse)
            surrogate = (w * ((x @ g) - gz) * a).sum()
            surrogate.backward()

    # -- estimator -------------------------------------------------------------------------
    def fit(self, slides: Sequence[str], y: np.ndarray, bags: SlideBags) -> ABMILRegressor:
        """Trains attention and head on the bags of ``slides`` and targets ``y`` (slides, genes)."""
        with torch_threads(self.threads):
            return self._fit(list(slides), np.asarray(y, dtype=np.float32), bags)

    def _fit(self, slides: list[str], y: np.ndarray, bags: SlideBags) -> ABMILRegressor:
        if len(slides) != len(y) or not slides:
            raise HistofuseError("ABMIL: slides and targets differ in length or are empty")
        y2 = torch.from_numpy(y.reshape(len(y), -1))
        self.blocks_ = list(bags.blocks)
        self.scale_ = bags.moments(slides) if self.standardize else None
        torch.manual_seed(self.random_state)
        gen = torch.Generator().manual_seed(self.random_state)
        self.attention_ = GatedAttention(bags.dim, self.attention_dim)
        self.head_ = slide_module(
            self.strategy,
            self.blocks_,
            y2.shape[1],
            latent_dim=self.latent_dim,
            **module_params(self),
        )
        params = [*self.attention_.parameters(), *self.head_.parameters()]
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        steps = max(1, self.epochs * math.ceil(len(slides) / self.batch_size))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=self.min_lr)
        self.loss_curve_: list[float] = []
        for _ in range(self.epochs):
            order = torch.randperm(len(slides), generator=gen).tolist()
            total = 0.0
            for start in range(0, len(slides), self.batch_size):
                idx = order[start : start + self.batch_size]
                opt.zero_grad()
                total += self._step([slides[i] for i in idx], y2[idx], bags) * len(idx)
                opt.step()
                sched.step()
            self.loss_curve_.append(total / len(slides))
        self.head_.eval()
        return self

    def _step(self, slides: list[str], y: torch.Tensor, bags: SlideBags) -> float:
        """One step's gradients (accumulated into ``.grad``); returns the loss."""
        keep: dict = {}
        pooled = [self._pool(bags, s, keep) for s in slides]
        z = torch.stack([p[0] for p in pooled]).requires_grad_(True)
        pred, aux = self.head_(z)
        loss = F.mse_loss(pred, y) + aux
        loss.backward()
        for i, slide in enumerate(slides):
            self._attention_backward(bags, slide, pooled[i][0], pooled[i][1], z.grad[i], keep)
        return float(loss.item())

    def embed(self, slides: Sequence[str], bags: SlideBags) -> np.ndarray:
        """The attention-pooled slide vectors (slides, dim) of the fitted attention."""
        check_is_fitted(self, "attention_")
        return torch.stack([self._pool(bags, s)[0] for s in slides]).numpy()

    def predict(self, slides: Sequence[str], bags: SlideBags) -> np.ndarray:
        """Predicted targets (slides, genes)."""
        check_is_fitted(self, "attention_")
        with torch_threads(self.threads), torch.no_grad():
            return self.head_(torch.from_numpy(self.embed(slides, bags)))[0].numpy()
