"""Built-in encoders.

The tiny test encoders are registered exactly like the real foundation models: a timm
architecture with kwargs, a pooling rule and an input transform. They differ only in having no
published weights: they are initialised from a fixed seed, so every run builds the same network.
"""

from __future__ import annotations

from histofuse.encoders.registry import EncoderSpec, register_encoder


@register_encoder("tiny-vit")
def tiny_vit() -> EncoderSpec:
    """A 4-block ViT-Tiny at 112 px with CLS pooling, seeded random init (test encoder)."""
    return EncoderSpec(
        name="tiny-vit",
        arch="vit_tiny_patch16_224",
        kwargs={"img_size": 112, "depth": 4, "dynamic_img_size": True},
        pooling="cls",
        embed_dim=192,
        input_size=112,
        interpolation="bicubic",
        weights="random",
        seed=0,
        description="test encoder: ViT-Ti/16, 4 blocks, 112 px, CLS, seeded random init",
    )


@register_encoder("tiny-vit-mean")
def tiny_vit_mean() -> EncoderSpec:
    """The same network as ``tiny-vit`` pooled as the mean of patch tokens (test encoder)."""
    return EncoderSpec(
        name="tiny-vit-mean",
        arch="vit_tiny_patch16_224",
        kwargs={"img_size": 112, "depth": 4, "dynamic_img_size": True},
        pooling="mean",
        embed_dim=192,
        input_size=112,
        interpolation="bicubic",
        weights="random",
        seed=0,
        description="test encoder: tiny-vit pooled as the mean of patch tokens",
    )


@register_encoder("tiny-cnn")
def tiny_cnn() -> EncoderSpec:
    """A ResNet-10t at 112 px with global average pooling, seeded random init (test encoder)."""
    return EncoderSpec(
        name="tiny-cnn",
        arch="resnet10t",
        pooling="avg",
        embed_dim=512,
        input_size=112,
        interpolation="bilinear",
        weights="random",
        seed=0,
        description="test encoder: ResNet-10t, 112 px, average pool, seeded random init",
    )
