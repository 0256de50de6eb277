"""Students: a PEFT-adapted body, the translate MLP and the distillation loss.

Two bodies, both frozen apart from their adapter:

* :class:`FeatureProjection` (``peka`` mode): a ``d × d`` linear layer initialised to the
  identity over cached pooled features. With a zero-initialised adapter it passes the frozen
  encoder's features through unchanged.
* :class:`TailModel` (``peka-tail`` mode): the encoder's own last ``k`` transformer blocks, final
  norm and pooling, run on the cached tokens that enter those blocks, so the adapter changes the
  real ``attn.qkv`` weights of the encoder without reading a tile.

Adapters come from PEFT: ``miss`` (Bone; ``MissConfig`` with the default initialisation adds
``sum_j x[j·r:(j+1)·r] @ B`` with ``B`` an ``r × d_out`` zero-initialised matrix), and the
baselines ``lora``, ``adalora`` and ``hra`` with PEKA's released settings where they apply.

The loss as released: ``α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1−α)·CE(z_s, cluster)``,
α = 0.5, T = 2, with ``z`` the frozen teacher classifier's logits of the teacher embedding
(``z_t``) and of the student embedding (``z_s``). The optional ``structure_weight`` term is this
project's interpretation of the paper's "structure alignment" (the released code has none): the
mean squared difference between the batch's pairwise cosine-similarity matrices of student and
teacher embeddings. It is off (0) by default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from histofuse.errors import HistofuseError

if TYPE_CHECKING:
    from histofuse.settings import StudentTraining

log = logging.getLogger(__name__)

METHODS = ("miss", "lora", "adalora", "hra")


class FeatureProjection(nn.Module):
    """A frozen identity projection of cached features, the site of the ``peka`` adapter.

    Args:
        dim: Feature width.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(dim))
            self.proj.bias.zero_()
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projects (B, dim) features."""
        return self.proj(x)


class TailModel(nn.Module):
    """The last ``k`` blocks of a timm ViT encoder, its final norm and its pooling.

    Input: the tokens entering block ``L − k`` (B, T, D) as cached by
    :func:`histofuse.peka.tokens.embed_tokens`; output: the encoder's pooled features (B, D'),
    identical to the full encoder's output when no adapter is active.

    Args:
        encoder: An encoder from :func:`histofuse.encoders.model.create_encoder`.
        k: Number of final blocks.

    Raises:
        HistofuseError: If the encoder is not a ViT with ``blocks[i].attn.qkv``.
    """

    def __init__(self, encoder: nn.Module, k: int) -> None:
        super().__init__()
        check_vit(encoder, k)
        trunk = encoder.trunk
        self.blocks = nn.ModuleList(list(trunk.blocks)[-k:])
        self.norm = trunk.norm
        self._pool: Callable[[torch.Tensor], torch.Tensor] = encoder.pool
        self.out_dim = int(encoder.spec.embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Runs the blocks, the norm and the pooling on (B, T, D) tokens."""
        x = tokens
        for block in self.blocks:
            x = block(x)
        return self._pool(self.norm(x))

    def targets(self) -> list[str]:
        """PEFT target module names: every block's fused ``attn.qkv``."""
        return [f"blocks.{i}.attn.qkv" for i in range(len(self.blocks))]


def check_vit(encoder: nn.Module, k: int) -> None:
    """Checks that an encoder is a ViT whose last ``k`` blocks have a fused ``attn.qkv``.

    Raises:
        HistofuseError: Naming the encoder and what is missing.
    """
    name = getattr(getattr(encoder, "spec", None), "name", "?")
    blocks = getattr(getattr(encoder, "trunk", None), "blocks", None)
    if blocks is None or not hasattr(encoder.trunk, "norm"):
        raise HistofuseError(
            f"encoder {name!r} is not a ViT with transformer blocks; tail mode (`peka-tail`) needs "
            "one, use `peka` (cached features) for it"
        )
    if not 1 <= k <= len(blocks):
        raise HistofuseError(
            f"config `peka.tail_blocks` = {k}, but encoder {name!r} has {len(blocks)} blocks"
        )
    if not all(
        isinstance(getattr(getattr(b, "attn", None), "qkv", None), nn.Linear) for b in blocks
    ):
        raise HistofuseError(f"encoder {name!r}: its blocks have no fused `attn.qkv` linear layer")


def peft_config(method: str, targets: list[str], r: int, total_step: int = 1) -> Any:
    """The PEFT config of an adapter method on the given target modules.

    Args:
        method: ``miss`` (Bone), ``lora``, ``adalora`` or ``hra``.
        targets: Module names to adapt.
        r: Rank (Bone: chunk size; AdaLoRA: initial rank, the target rank is half of it).
        total_step: Optimiser steps of the whole training (AdaLoRA's budget schedule).

    Raises:
        HistofuseError: For an unknown method.
    """
    import peft

    if method == "miss":
        return peft.MissConfig(r=r, target_modules=targets, init_weights=True)
    if method == "lora":
        return peft.LoraConfig(r=r, lora_alpha=32, lora_dropout=0.1, target_modules=targets)
    if method == "adalora":
        return peft.AdaLoraConfig(
            init_r=r,
            target_r=max(1, r // 2),
            beta1=0.85,
            beta2=0.85,
            total_step=max(2, total_step),
            target_modules=targets,
        )
    if method == "hra":
        return peft.HRAConfig(r=r, apply_GS=True, target_modules=targets)
    raise HistofuseError(f"unknown adapter method {method!r}; choose one of {', '.join(METHODS)}")


class Student(nn.Module):
    """``translate(adapted body(x))``: the student embedding in the teacher's space.

    Args:
        body: A PEFT-wrapped :class:`FeatureProjection` or :class:`TailModel`.
        in_dim: The body's output width.
        teacher_dim: The teacher embedding width.
        hidden: Width of the translate MLP (PEKA: 512).
    """

    def __init__(self, body: nn.Module, in_dim: int, teacher_dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.body = body
        self.translate = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, teacher_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Student embedding (B, teacher_dim)."""
        return self.translate(self.body(x))


def build_student(
    body: nn.Module,
    method: str,
    r: int,
    teacher_dim: int,
    hidden: int = 512,
    total_step: int = 1,
    seed: int = 0,
) -> Student:
    """Freezes a body, wraps it with a PEFT adapter and adds the translate MLP.

    Args:
        body: :class:`FeatureProjection` or :class:`TailModel` (modified in place by PEFT).
        method: Adapter method (:data:`METHODS`).
        r: Adapter rank, clipped to the body's width.
        teacher_dim: Teacher embedding width.
        hidden: Translate MLP width.
        total_step: Optimiser steps planned (AdaLoRA).
        seed: Seed of the adapter and translate initialisation.
    """
    import peft

    targets = body.targets() if isinstance(body, TailModel) else ["proj"]
    for p in body.parameters():
        p.requires_grad_(False)
    torch.manual_seed(seed)
    config = peft_config(method, targets, int(min(r, body.out_dim)), total_step)
    wrapped = peft.get_peft_model(body, config)
    return Student(wrapped, body.out_dim, teacher_dim, hidden)


def distill_loss(
    z_s: torch.Tensor,
    z_t: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 2.0,
) -> torch.Tensor:
    """PEKA's loss: ``α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T)) + (1−α)·CE(z_s, labels)``."""
    t = temperature
    kd = F.kl_div(F.log_softmax(z_s / t, dim=1), F.softmax(z_t / t, dim=1), reduction="batchmean")
    return alpha * t * t * kd + (1 - alpha) * F.cross_entropy(z_s, labels)


def structure_loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the batch's pairwise cosine similarities (student vs teacher)."""
    s = F.normalize(s, dim=1)
    t = F.normalize(t, dim=1)
    return F.mse_loss(s @ s.T, t @ t.T)


def train_student(
    student: Student,
    inputs: torch.Tensor,
    teacher_emb: torch.Tensor,
    labels: torch.Tensor,
    classifier: nn.Module,
    params: StudentTraining,
    seed: int = 0,
) -> list[float]:
    """Trains the adapter and translate MLP by distillation through the frozen classifier.

    Adam, StepLR(step_size, gamma) per epoch and gradient clipping by value, as released.

    Args:
        student: From :func:`build_student`.
        inputs: Training inputs (cached features or tokens), float32.
        teacher_emb: Teacher embeddings of the same rows.
        labels: Cluster labels of the same rows.
        classifier: The frozen teacher classifier.
        params: Epochs, batch size, optimiser and loss settings (``peka.train``).
        seed: Shuffling seed.

    Returns:
        Mean training loss per epoch.
    """
    trainable = [q for q in student.parameters() if q.requires_grad]
    opt = torch.optim.Adam(trainable, lr=float(params.lr))
    sched = torch.optim.lr_scheduler.StepLR(
        opt, step_size=int(params.step_size), gamma=params.gamma
    )
    with torch.no_grad():
        z_t_all = classifier(teacher_emb)
    adalora = type(student.body.peft_config["default"]).__name__ == "AdaLoraConfig"
    g = torch.Generator().manual_seed(seed)
    history, step = [], 0
    student.train()
    for _ in range(int(params.epochs)):
        total, n = 0.0, 0
        for idx in torch.randperm(len(inputs), generator=g).split(int(params.batch_size)):
            s = student(inputs[idx])
            loss = distill_loss(
                classifier(s), z_t_all[idx], labels[idx], params.alpha, params.temperature
            )
            if params.structure_weight and len(idx) > 1:
                loss = loss + params.structure_weight * structure_loss(s, teacher_emb[idx])
            opt.zero_grad()
            loss.backward()
            if params.clip:
                torch.nn.utils.clip_grad_value_(trainable, float(params.clip))
            opt.step()
            if adalora:
                student.body.base_model.update_and_allocate(step)
            step += 1
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        sched.step()
        history.append(total / max(n, 1))
    student.eval()
    return history


@torch.no_grad()
def student_features(student: Student, inputs: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Student embeddings of all rows (eval mode), as float32."""
    student.eval()
    out = [student(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, 0), np.float32)


def n_trainable(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(q.numel() for q in module.parameters() if q.requires_grad)
