"""Layers that published encoders need and timm does not ship, and resolution of layer names.

Encoder specs are plain data, so layer classes appear in their kwargs as ``"module:attr"``
strings; :func:`resolve_kwargs` imports them when the architecture is built.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

_LAYER_KEYS = ("mlp_layer", "act_layer", "embed_layer", "norm_layer", "block_fn")


class ConvStem(nn.Module):
    """CTransPath's convolutional patch embedding for a Swin trunk (TransPath, Wang et al. 2022).

    Two stride-2 3×3 conv + BN + ReLU stages and a 1×1 projection replace Swin's 4×4 patchify
    conv; the output is channels-last ``(B, H/4, W/4, C)`` as timm's Swin expects.

    Args:
        img_size: Input size (unused; accepted for timm's embed-layer interface).
        patch_size: Must be 4.
        in_chans: Must be 3.
        embed_dim: Output channels.
        norm_layer: Optional norm applied to the output.
        output_fmt: Accepted for timm's interface; output is always NHWC.
        **kwargs: Other timm embed-layer arguments; ``device`` and ``dtype`` are honoured.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: type[nn.Module] | None = None,
        output_fmt: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if patch_size != 4 or in_chans != 3:
            raise ValueError("ConvStem supports patch_size=4 and in_chans=3 only")
        dd = {k: kwargs[k] for k in ("device", "dtype") if kwargs.get(k) is not None}
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        layers: list[nn.Module] = []
        c_in, c_out = in_chans, embed_dim // 8
        for _ in range(2):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1, bias=False, **dd),
                nn.BatchNorm2d(c_out, **dd),
                nn.ReLU(inplace=True),
            ]
            c_in, c_out = c_out, c_out * 2
        layers.append(nn.Conv2d(c_in, embed_dim, kernel_size=1, **dd))
        self.proj = nn.Sequential(*layers)
        self.norm = norm_layer(embed_dim, **dd) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeds (B, 3, H, W) images into (B, H/4, W/4, C) tokens."""
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


def resolve_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Returns timm kwargs with ``"module:attr"`` layer names replaced by the objects they name."""
    out = dict(kwargs)
    for key in _LAYER_KEYS:
        value = out.get(key)
        if isinstance(value, str) and ":" in value:
            module, attr = value.split(":", 1)
            out[key] = getattr(importlib.import_module(module), attr)
    return out
